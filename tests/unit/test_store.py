"""appliance.router.store: the SQLite queue (instances, jobs, claims, operator actions, stats)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.router.store import (
    SCHEMA_VERSION,
    InstanceFacts,
    Job,
    JobFilter,
    JobState,
    NewJob,
    Store,
    backoff_delay,
)

T0 = 1_800_000_000.0  # a fixed "now"; every call passes time explicitly
LEASE = 60.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queue.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    s.init()
    yield s
    s.close()


_counter = iter(range(1, 1_000_000))


def facts(
    *,
    study: str = "1.2.3.1",
    accession: str | None = "ACC1",
    patient: str | None = "PAT1",
    modality: str = "CT",
    size: int = 1000,
) -> InstanceFacts:
    n = next(_counter)
    return InstanceFacts(
        sop_instance_uid=f"1.2.3.9.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        size_bytes=size,
        study_uid=study,
        series_uid=study + ".1",
        patient_id=patient,
        accession=accession,
        modality=modality,
        calling_ae="CT1",
        called_ae="DICOM_ROUTER",
        source_node="CT1_NODE",
    )


def add(
    store: Store,
    destinations: tuple[str, ...] = ("PACS",),
    *,
    priority: int = 1,
    now: float = T0,
    key: str | None = None,
    **fact_kwargs: object,
) -> tuple[int, str]:
    key = key or f"key{next(_counter):06d}"
    jobs = [NewJob(d, "route-" + d.lower(), priority) for d in destinations]
    added = store.add_instance(key, facts(**fact_kwargs), jobs, now)  # type: ignore[arg-type]
    return added.instance_id, key


def jobs_of(store: Store, **flt: object) -> list[Job]:
    return store.list_jobs(JobFilter(**flt), limit=10_000)  # type: ignore[arg-type]


def job_for(store: Store, key: str, destination: str = "PACS") -> Job:
    (job,) = [j for j in jobs_of(store, destination=destination) if j.spool_key == key]
    return job


def claim_one(store: Store, destination: str = "PACS", now: float = T0, worker: str = "h:1:0") -> Job:
    jobs = store.claim(destination, worker, 1, LEASE, now)
    assert len(jobs) == 1, jobs
    return jobs[0]


def state_of(store: Store, job_id: int) -> str:
    job = store.get_job(job_id)
    assert job is not None
    return job.state


# -- schema and receiving -------------------------------------------------------------------------


def test_init_is_idempotent_and_creates_parent(db_path: Path) -> None:
    s = Store(db_path)
    s.init()
    s.init()
    assert db_path.exists()
    s.close()


def test_add_instance_with_jobs(store: Store) -> None:
    instance_id, key = add(store, ("PACS", "ARCHIVE"), priority=0, accession="A9", patient="P9")
    jobs = jobs_of(store)
    assert [j.destination for j in jobs] == ["PACS", "ARCHIVE"]
    for j in jobs:
        assert j.instance_id == instance_id
        assert j.spool_key == key
        assert j.state == JobState.QUEUED
        assert j.priority == 0
        assert j.attempts == 0
        assert j.next_attempt_at == T0 and j.created_at == T0 and j.received_at == T0
        assert j.accession == "A9" and j.patient_id == "P9" and j.modality == "CT"
        assert j.route == "route-" + j.destination.lower()
    assert store.instance_counts() == {"instances": 1, "unrouted": 0, "spooled": 1, "spooled_bytes": 1000}
    assert store.list_unrouted() == []


def test_add_instance_without_jobs_is_unrouted(store: Store) -> None:
    add(store, ("PACS",))
    _, key = add(store, (), size=77)
    assert store.instance_counts() == {"instances": 2, "unrouted": 1, "spooled": 2, "spooled_bytes": 1077}
    (row,) = store.list_unrouted()
    assert row["spool_key"] == key
    assert row["calling_ae"] == "CT1"
    assert store.count_jobs(JobFilter()) == 1
    assert store.known_spool_keys([key, "nope"]) == {key}


def test_spool_key_is_unique(store: Store) -> None:
    import sqlite3

    add(store, key="dup")
    with pytest.raises(sqlite3.IntegrityError):
        add(store, key="dup")
    assert store.instance_counts()["instances"] == 1
    assert store.count_jobs(JobFilter()) == 1  # the failed insert left no orphan jobs


# -- claiming -------------------------------------------------------------------------------------


def test_claim_orders_by_priority_then_arrival(store: Store) -> None:
    _, bulk1 = add(store, priority=2)
    _, routine1 = add(store, priority=1)
    _, stat1 = add(store, priority=0)
    _, routine2 = add(store, priority=1)
    _, stat2 = add(store, priority=0)
    claimed = store.claim("PACS", "h:1:0", 10, LEASE, T0)
    assert [j.spool_key for j in claimed] == [stat1, stat2, routine1, routine2, bulk1]
    assert all(j.state == JobState.SENDING and j.attempts == 1 for j in claimed)


def test_claim_limit_takes_the_best_first(store: Store) -> None:
    _, bulk = add(store, priority=2)
    _, routine = add(store, priority=1)
    _, stat = add(store, priority=0)
    first = store.claim("PACS", "w", 2, LEASE, T0)
    assert [j.spool_key for j in first] == [stat, routine]
    second = store.claim("PACS", "w", 2, LEASE, T0)
    assert [j.spool_key for j in second] == [bulk]
    assert store.claim("PACS", "w", 2, LEASE, T0) == []


def test_claim_only_its_destination(store: Store) -> None:
    add(store, ("ARCHIVE",))
    assert store.claim("PACS", "w", 5, LEASE, T0) == []
    assert len(store.claim("ARCHIVE", "w", 5, LEASE, T0)) == 1


def test_claim_respects_next_attempt_at(store: Store) -> None:
    _, early = add(store, now=T0)
    _, late = add(store, now=T0 + 100)
    assert [j.spool_key for j in store.claim("PACS", "w", 10, LEASE, T0 + 50)] == [early]
    assert store.claim("PACS", "w", 10, LEASE, T0 + 99.9) == []
    assert [j.spool_key for j in store.claim("PACS", "w", 10, LEASE, T0 + 100)] == [late]


def test_next_due_at(store: Store) -> None:
    assert store.next_due_at("PACS") is None
    add(store, now=T0 + 5)
    add(store, now=T0 + 3)
    assert store.next_due_at("PACS") == T0 + 3


def test_two_stores_never_claim_the_same_job(db_path: Path) -> None:
    setup = Store(db_path)
    setup.init()
    total = 300
    rng = random.Random(1)
    for _ in range(total):
        add(setup, priority=rng.randint(0, 2))
    setup.close()

    stores = [Store(db_path, durable=False), Store(db_path, durable=False)]
    threads_per_store = 4
    barrier = threading.Barrier(len(stores) * threads_per_store)
    claimed: list[tuple[str, int]] = []
    claimed_lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(s: Store, name: str) -> None:
        try:
            barrier.wait(timeout=30)
            while True:
                jobs = s.claim("PACS", name, 3, LEASE, T0)
                if not jobs:
                    return
                with claimed_lock:
                    claimed.extend((name, j.id) for j in jobs)
        except BaseException as exc:  # surfaced below; a thread's exception would be lost otherwise
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(s, f"host{si}:{ti}"))
        for si, s in enumerate(stores)
        for ti in range(threads_per_store)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    ids = Counter(job_id for _, job_id in claimed)
    assert [job_id for job_id, n in ids.items() if n > 1] == []
    assert len(ids) == total
    check = Store(db_path)
    assert check.count_jobs(JobFilter(states=[JobState.SENDING])) == total
    assert all(j.attempts == 1 for j in jobs_of(check))
    for s in (*stores, check):
        s.close()


def test_a_claim_by_one_store_is_invisible_to_the_other(db_path: Path) -> None:
    a, b = Store(db_path), Store(db_path)
    a.init()
    for _ in range(4):
        add(a)
    first = a.claim("PACS", "hostA:1:0", 2, LEASE, T0)
    second = b.claim("PACS", "hostB:2:0", 5, LEASE, T0)
    assert len(first) == 2 and len(second) == 2
    assert not {j.id for j in first} & {j.id for j in second}
    assert a.claim("PACS", "hostA:1:0", 5, LEASE, T0) == []
    a.close()
    b.close()


# -- finishing jobs -------------------------------------------------------------------------------


def test_ack_returns_key_only_when_every_job_is_done(store: Store) -> None:
    _, key = add(store, ("PACS", "ARCHIVE"))
    pacs = claim_one(store, "PACS")
    archive = claim_one(store, "ARCHIVE")
    assert store.ack(pacs.id, 0, "ok", T0 + 1, keep_spool=False) is None
    assert state_of(store, pacs.id) == JobState.DONE
    assert store.instance_counts()["spooled"] == 1
    assert store.ack(archive.id, 0, "ok", T0 + 2, keep_spool=False) == key
    done = store.get_job(archive.id)
    assert done is not None and done.done_at == T0 + 2 and done.last_status == 0
    assert store.instance_counts()["spooled"] == 0
    assert store.known_spool_keys([key]) == set()


def test_ack_with_retention_keeps_the_file(store: Store) -> None:
    _, key = add(store)
    job = claim_one(store)
    assert store.ack(job.id, 0, "ok", T0 + 10, keep_spool=True) is None
    assert store.instance_counts()["spooled"] == 1
    # The housekeeping sweep finds it once the retention time has passed.
    assert store.spool_keys_to_delete(T0 + 9) == []
    assert store.spool_keys_to_delete(T0 + 10) == [key]
    store.mark_spool_deleted([key])
    assert store.spool_keys_to_delete(T0 + 10) == []
    assert store.instance_counts()["spooled"] == 0


def test_ack_waits_for_a_failed_sibling(store: Store) -> None:
    _, key = add(store, ("PACS", "ARCHIVE"))
    store.fail(claim_one(store, "ARCHIVE").id, 0x0122, "refused", T0)
    assert store.ack(claim_one(store, "PACS").id, 0, "ok", T0, keep_spool=False) is None
    # Cancelling the failed one completes the instance.
    res = store.cancel(JobFilter(destination="ARCHIVE"), "op", "not needed", T0, keep_spool=False)
    assert (res.changed, res.skipped, res.spool_keys_freed) == (1, 0, [key])


def test_ack_after_a_cancelled_sibling_frees_the_key(store: Store) -> None:
    _, key = add(store, ("PACS", "ARCHIVE"))
    res = store.cancel(JobFilter(destination="ARCHIVE"), "op", "why", T0, keep_spool=False)
    assert res.spool_keys_freed == []  # the PACS job still needs the file
    assert store.ack(claim_one(store, "PACS").id, 0, "ok", T0, keep_spool=False) == key


def test_retry_later_requeues_with_delay(store: Store) -> None:
    _, key = add(store)
    job = claim_one(store)
    state = store.retry_later(job.id, 0xA700, "out of resources", T0 + 1, delay=30, max_attempts=5)
    assert state == JobState.QUEUED
    again = store.get_job(job.id)
    assert again is not None
    assert again.state == JobState.QUEUED
    assert again.next_attempt_at == T0 + 31
    assert again.last_status == 0xA700 and again.last_error == "out of resources"
    assert again.attempts == 1
    assert store.claim("PACS", "w", 5, LEASE, T0 + 30) == []
    assert claim_one(store, now=T0 + 31).attempts == 2
    assert store.job_events(job.id)[-1]["event"] == "attempt_failed"


def test_retry_later_fails_when_attempts_are_used_up(store: Store) -> None:
    add(store)
    job = claim_one(store)
    assert store.retry_later(job.id, None, "refused", T0, 0, max_attempts=2) == JobState.QUEUED
    job = claim_one(store)
    assert job.attempts == 2
    assert store.retry_later(job.id, None, "refused again", T0, 0, max_attempts=2) == JobState.FAILED
    assert state_of(store, job.id) == JobState.FAILED
    assert store.claim("PACS", "w", 5, LEASE, T0 + 3600) == []
    events = store.job_events(job.id)
    assert [e["event"] for e in events] == ["attempt_failed", "failed"]
    assert events[-1]["detail"] == "refused again"


def test_retry_later_without_limit_never_fails(store: Store) -> None:
    add(store)
    for _ in range(20):
        job = claim_one(store, now=T0 + 10_000)
        assert store.retry_later(job.id, None, "x", T0, 0, max_attempts=None) == JobState.QUEUED
    assert job.attempts == 20


def test_fail(store: Store) -> None:
    add(store)
    job = claim_one(store)
    store.fail(job.id, 0x0122, "SOP class not supported", T0 + 5)
    failed = store.get_job(job.id)
    assert failed is not None
    assert failed.state == JobState.FAILED
    assert failed.last_status == 0x0122 and failed.last_error == "SOP class not supported"
    assert failed.done_at is None
    assert store.claim("PACS", "w", 5, LEASE, T0 + 3600) == []
    (event,) = store.job_events(job.id)
    assert (event["event"], event["status"], event["detail"]) == ("failed", 0x0122, "SOP class not supported")


def test_give_back_does_not_count_the_attempt(store: Store) -> None:
    add(store)
    job = claim_one(store)
    assert job.attempts == 1
    store.give_back([job.id], T0 + 1, "shutting down")
    back = store.get_job(job.id)
    assert back is not None and back.state == JobState.QUEUED and back.attempts == 0
    assert claim_one(store, now=T0 + 1).attempts == 1
    assert store.job_events(job.id)[-1]["event"] == "returned"
    assert store.job_events(job.id)[-1]["detail"] == "shutting down"


def test_give_back_ignores_jobs_not_being_sent(store: Store) -> None:
    add(store)
    job = claim_one(store)
    store.ack(job.id, 0, "ok", T0, keep_spool=True)
    store.give_back([job.id], T0, "late")
    assert state_of(store, job.id) == JobState.DONE
    store.give_back([], T0, "nothing")  # no-op, no error


# -- recovery -------------------------------------------------------------------------------------


def test_recover_abandoned_requeues_expired_leases(store: Store) -> None:
    add(store)
    add(store)
    old = store.claim("PACS", "hostA:1:0", 1, 10, T0)[0]
    fresh = store.claim("PACS", "hostA:1:1", 1, 100, T0)[0]
    assert store.recover_abandoned(T0 + 10) == 0  # lease_until == now: not yet expired
    assert store.recover_abandoned(T0 + 11) == 1
    assert state_of(store, old.id) == JobState.QUEUED
    assert state_of(store, fresh.id) == JobState.SENDING
    assert store.job_events(old.id)[-1]["event"] == "requeued"
    # The lost attempt still counts (the object may have been sent).
    assert claim_one(store, now=T0 + 11).attempts == 2


def test_recover_abandoned_by_dead_claimant_prefix(store: Store) -> None:
    for _ in range(3):
        add(store)
    mine = store.claim("PACS", "hostA:100:0", 2, 600, T0)
    other = store.claim("PACS", "hostB:200:0", 1, 600, T0)
    assert store.recover_abandoned(T0 + 1, dead_claimants_prefix="hostA:") == 2
    assert {state_of(store, j.id) for j in mine} == {JobState.QUEUED}
    assert state_of(store, other[0].id) == JobState.SENDING


def test_recover_abandoned_prefix_is_literal(store: Store) -> None:
    """A hostname with `_` or `%` must not match other hosts' claims as a LIKE wildcard would."""
    add(store)
    add(store)
    other = store.claim("PACS", "ctxrouter:7:0", 1, 600, T0)[0]
    mine = store.claim("PACS", "ct_router:9:0", 1, 600, T0)[0]
    assert store.recover_abandoned(T0 + 1, dead_claimants_prefix="ct_router:") == 1
    assert state_of(store, mine.id) == JobState.QUEUED
    assert state_of(store, other.id) == JobState.SENDING
    assert store.recover_abandoned(T0 + 1, dead_claimants_prefix="%") == 0


def test_live_process_claims_outlast_their_lease(store: Store) -> None:
    """A slow send by this (live) process is not requeued when its lease runs out; another process's is."""
    add(store)
    add(store)
    mine = store.claim("PACS", "host:100:PACS:0", 1, 10, T0)[0]
    theirs = store.claim("PACS", "host:200:PACS:0", 1, 10, T0)[0]
    assert store.recover_abandoned(T0 + 50, live_claimants_prefix="host:100:") == 1
    assert state_of(store, mine.id) == JobState.SENDING
    assert state_of(store, theirs.id) == JobState.QUEUED
    assert store.recover_abandoned(T0 + 50) == 1  # without the live prefix, any expired lease goes back


def test_make_due(store: Store) -> None:
    add(store)
    add(store)
    add(store, ("ARCHIVE",))
    a, b = store.claim("PACS", "w", 2, LEASE, T0)
    store.retry_later(a.id, None, "down", T0, 300, None)
    store.retry_later(b.id, None, "down", T0, 600, None)
    arch = claim_one(store, "ARCHIVE")
    store.retry_later(arch.id, None, "down", T0, 300, None)
    store.hold(JobFilter(ids=[b.id]), "op", "wait", T0)  # held jobs stay held
    assert store.make_due("PACS", T0 + 10) == 1
    assert store.get_job(a.id).next_attempt_at == T0 + 10  # type: ignore[union-attr]
    assert store.get_job(arch.id).next_attempt_at == T0 + 300  # type: ignore[union-attr]
    assert state_of(store, b.id) == JobState.HELD
    assert [j.id for j in store.claim("PACS", "w", 5, LEASE, T0 + 10)] == [a.id]
    assert store.make_due("PACS", T0 + 10) == 0


# -- operator actions -----------------------------------------------------------------------------


@pytest.fixture
def mixed(store: Store) -> dict[str, int]:
    """One job in every state on PACS, plus a queued ARCHIVE job; returns job ids by label.

    Instance n is received at T0+n with study 1.2.3.n, accession ACCn, patient PATn.
    """
    labels = ["queued", "sending", "done", "failed", "held", "cancelled"]
    to_claim = ("sending", "done", "failed")
    for n, label in enumerate(labels):
        # Priority 0 for the ones claimed below, so claims pick exactly them, in this order.
        priority = 0 if label in to_claim else 1
        add(
            store,
            ("PACS",),
            priority=priority,
            study=f"1.2.3.{n}",
            accession=f"ACC{n}",
            patient=f"PAT{n}",
            now=T0 + n,
        )
    by_accession = {j.accession: j.id for j in jobs_of(store)}
    ids = {label: by_accession[f"ACC{n}"] for n, label in enumerate(labels)}
    for label in to_claim:
        job = claim_one(store, now=T0 + 10)
        assert job.id == ids[label]
        if label == "done":
            store.ack(job.id, 0, "ok", T0 + 10, keep_spool=True)
        elif label == "failed":
            store.fail(job.id, 0x0122, "refused", T0 + 10)
    store.hold(JobFilter(ids=[ids["held"]]), "setup", "", T0)
    store.cancel(JobFilter(ids=[ids["cancelled"]]), "setup", "", T0, keep_spool=True)
    add(store, ("ARCHIVE",), study="1.2.3.9", accession="ACC9", patient="PAT9", now=T0 + 9)
    ids["archive_queued"] = jobs_of(store, destination="ARCHIVE")[0].id
    states = {lbl: state_of(store, i) for lbl, i in ids.items()}
    assert states == {
        "queued": "queued",
        "sending": "sending",
        "done": "done",
        "failed": "failed",
        "held": "held",
        "cancelled": "cancelled",
        "archive_queued": "queued",
    }
    return ids


def test_retry_action(store: Store, mixed: dict[str, int]) -> None:
    res = store.retry(JobFilter(destination="PACS"), "alice", "PACS is back", T0 + 100)
    # queued + failed change; sending, done, held, cancelled are skipped.
    assert (res.changed, res.skipped) == (2, 4)
    failed = store.get_job(mixed["failed"])
    assert failed is not None
    assert failed.state == JobState.QUEUED and failed.attempts == 0 and failed.next_attempt_at == T0 + 100
    assert state_of(store, mixed["archive_queued"]) == JobState.QUEUED
    assert state_of(store, mixed["held"]) == JobState.HELD


def test_hold_and_release(store: Store, mixed: dict[str, int]) -> None:
    res = store.hold(JobFilter(destination="PACS"), "bob", "PACS maintenance", T0 + 100)
    assert (res.changed, res.skipped) == (2, 4)  # queued + failed; held already held is skipped
    assert state_of(store, mixed["queued"]) == JobState.HELD
    assert state_of(store, mixed["failed"]) == JobState.HELD
    assert store.claim("PACS", "w", 10, LEASE, T0 + 1000) == []
    res = store.release(JobFilter(destination="PACS"), "bob", "done", T0 + 200)
    assert (res.changed, res.skipped) == (3, 3)
    assert len(store.claim("PACS", "w", 10, LEASE, T0 + 200)) == 3


def test_cancel_action_frees_keys(store: Store, mixed: dict[str, int]) -> None:
    res = store.cancel(JobFilter(destination="PACS"), "carol", "duplicate study", T0 + 100, keep_spool=False)
    assert (res.changed, res.skipped) == (3, 3)  # queued, held, failed
    keys = {j.id: j.spool_key for j in jobs_of(store)}
    assert sorted(res.spool_keys_freed) == sorted(keys[mixed[label]] for label in ("queued", "failed", "held"))
    assert state_of(store, mixed["sending"]) == JobState.SENDING


def test_cancel_with_retention_frees_nothing(store: Store, mixed: dict[str, int]) -> None:
    res = store.cancel(JobFilter(ids=[mixed["queued"]]), "carol", "x", T0 + 100, keep_spool=True)
    assert (res.changed, res.skipped, res.spool_keys_freed) == (1, 0, [])
    key = store.get_job(mixed["queued"]).spool_key  # type: ignore[union-attr]
    assert key in store.spool_keys_to_delete(T0 + 100)


def test_cancel_frees_key_only_after_last_job_of_instance(store: Store) -> None:
    _, key = add(store, ("PACS", "ARCHIVE", "AI"))
    res = store.cancel(JobFilter(), "op", "wrong patient", T0, keep_spool=False)
    assert res.changed == 3
    assert res.spool_keys_freed == [key]  # once, not three times


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (JobFilter(study_uid="1.2.3.3"), {"failed"}),
        (JobFilter(accession="ACC0"), {"queued"}),
        (JobFilter(patient_id="PAT9"), {"archive_queued"}),
        (JobFilter(states=[JobState.QUEUED]), {"queued", "archive_queued"}),
        (JobFilter(destination="PACS", states=[JobState.QUEUED]), {"queued"}),
        (JobFilter(accession="NOPE"), set()),
    ],
)
def test_action_filters(store: Store, mixed: dict[str, int], flt: JobFilter, expected: set[str]) -> None:
    res = store.hold(flt, "op", "r", T0 + 100)
    held_now = {lbl for lbl, i in mixed.items() if state_of(store, i) == JobState.HELD} - {"held"}
    assert held_now == expected
    assert res.changed == len(expected)
    assert res.skipped == 0


def test_action_filter_by_ids_counts_skips(store: Store, mixed: dict[str, int]) -> None:
    res = store.release(JobFilter(ids=[mixed["held"], mixed["done"], mixed["sending"]]), "op", "r", T0)
    assert (res.changed, res.skipped) == (1, 2)
    assert state_of(store, mixed["held"]) == JobState.QUEUED
    assert state_of(store, mixed["done"]) == JobState.DONE


def test_action_filter_older_than(store: Store, mixed: dict[str, int]) -> None:
    # Instances were received at T0+0 … T0+5 (PACS) and T0+9 (ARCHIVE); "older than 7 s" at T0+10
    # selects those received before T0+3: queued (T0), sending (T0+1), done (T0+2).
    res = store.cancel(JobFilter(older_than_seconds=7), "op", "r", T0 + 10, keep_spool=True)
    assert (res.changed, res.skipped) == (1, 2)
    assert state_of(store, mixed["queued"]) == JobState.CANCELLED
    assert state_of(store, mixed["failed"]) == JobState.FAILED  # received T0+3: not older


def test_list_and_count_with_filters(store: Store, mixed: dict[str, int]) -> None:
    assert store.count_jobs(JobFilter()) == 7
    assert store.count_jobs(JobFilter(destination="PACS")) == 6
    assert store.count_jobs(JobFilter(states=[JobState.DONE, JobState.CANCELLED])) == 2
    assert [j.id for j in store.list_jobs(JobFilter(), limit=2, offset=1)] == sorted(mixed.values())[1:3]
    assert JobFilter().is_empty() and not JobFilter(states=["queued"]).is_empty()
    assert not JobFilter(older_than_seconds=0).is_empty()


def test_job_events_record_actor_and_reason(store: Store) -> None:
    add(store)
    job = claim_one(store)
    store.retry_later(job.id, 0xA700, "disk full", T0 + 1, 0, None)
    store.hold(JobFilter(ids=[job.id]), "alice", "PACS upgrade tonight", T0 + 2)
    store.release(JobFilter(ids=[job.id]), "bob", "upgrade done", T0 + 3)
    job = claim_one(store, now=T0 + 4)
    store.ack(job.id, 0, "stored", T0 + 5, keep_spool=True)
    events = store.job_events(job.id)
    assert [(e["event"], e["actor"], e["detail"]) for e in events] == [
        ("attempt_failed", None, "disk full"),
        ("operator_hold", "alice", "PACS upgrade tonight"),
        ("operator_release", "bob", "upgrade done"),
        ("delivered", None, "stored"),
    ]
    assert [e["at"] for e in events] == [T0 + 1, T0 + 2, T0 + 3, T0 + 5]
    assert events[0]["status"] == 0xA700
    assert store.job_events(9999) == []


# -- stats and circuit ----------------------------------------------------------------------------


def test_destination_stats(store: Store) -> None:
    now = T0 + 10_000
    add(store, ("PACS",), now=T0 + 100)  # will be failed, over an hour ago
    add(store, ("PACS",), now=T0 + 200)  # attempt failed recently, queued
    add(store, ("PACS",), now=T0 + 300)  # sending
    add(store, ("PACS",), now=T0 + 400)  # done
    add(store, ("ARCHIVE",), now=T0 + 50)
    j1 = claim_one(store, now=now)
    store.fail(j1.id, 0x0122, "refused", now - 3700)  # older than an hour: not counted
    j2 = claim_one(store, now=now)
    store.retry_later(j2.id, None, "timeout", now - 60, 10_000, None)
    claim_one(store, now=now)
    j4 = claim_one(store, now=now)
    store.ack(j4.id, 0, "ok", now, keep_spool=True)
    store.set_circuit("PACS", "open", now - 30, error="connection refused")

    stats = store.destination_stats(now)
    pacs = stats["PACS"]
    assert pacs.counts == {"failed": 1, "queued": 1, "sending": 1, "done": 1}
    assert pacs.backlog == 2
    assert pacs.oldest_pending_at == T0 + 200  # oldest queued/sending; the failed one is not pending
    assert pacs.failures_last_hour == 1
    assert (pacs.circuit, pacs.circuit_since, pacs.last_error) == ("open", now - 30, "connection refused")
    archive = stats["ARCHIVE"]
    assert archive.counts == {"queued": 1}
    assert archive.oldest_pending_at == T0 + 50
    assert archive.failures_last_hour == 0
    assert archive.circuit == "closed"
    assert store.circuit_of("PACS") == "open" and store.circuit_of("NEVER_SEEN") == "closed"


def test_record_connect_result_counts_consecutive_failures(store: Store) -> None:
    assert store.record_connect_result("PACS", False, "refused", T0) == 1
    assert store.record_connect_result("PACS", False, "timeout", T0 + 1) == 2
    assert store.destination_stats(T0)["PACS"].last_error == "timeout"
    assert store.record_connect_result("PACS", True, None, T0 + 2) == 0
    assert store.record_connect_result("PACS", False, "refused", T0 + 3) == 1
    assert store.destination_stats(T0)["PACS"].last_success_at == T0 + 2


# -- backoff --------------------------------------------------------------------------------------


class FixedRandom(random.Random):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("attempts", "full"),
    [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (7, 320.0), (8, 600.0), (50, 600.0)],
)
def test_backoff_delay_bounds(attempts: int, full: float) -> None:
    assert backoff_delay(attempts, 5.0, 600.0, FixedRandom(0.0)) == pytest.approx(full / 2)
    assert backoff_delay(attempts, 5.0, 600.0, FixedRandom(0.5)) == pytest.approx(full * 0.75)
    top = backoff_delay(attempts, 5.0, 600.0, FixedRandom(0.999999))
    assert full / 2 < top < full
    rng = random.Random(attempts)
    for _ in range(200):
        assert full / 2 <= backoff_delay(attempts, 5.0, 600.0, rng) < full


def test_backoff_delay_spreads() -> None:
    rng = random.Random(42)
    values = {round(backoff_delay(3, 5.0, 600.0, rng), 6) for _ in range(50)}
    assert len(values) > 40  # jitter: many jobs failing together do not retry together


def test_paused_destination_is_never_claimed_until_resumed(store: Store) -> None:
    add(store, ("PACS", "ARCHIVE"))
    assert store.set_paused("PACS", True, "carol", "maintenance", T0)
    assert not store.set_paused("PACS", True, "carol", "again", T0)  # already paused: no change
    assert store.claim("PACS", "w", 10, LEASE, T0) == []
    assert store.due_contexts("PACS", T0, 10) == [] and store.next_due_at("PACS") is None
    assert len(store.claim("ARCHIVE", "w", 10, LEASE, T0)) == 1  # other destinations carry on
    stats = store.destination_stats(T0)["PACS"]
    assert stats.paused and stats.paused_by == "carol" and stats.paused_reason == "maintenance"
    assert store.set_paused("PACS", False, "carol", "done", T0 + 1)
    assert len(store.claim("PACS", "w", 10, LEASE, T0 + 1)) == 1
    assert not store.destination_stats(T0)["PACS"].paused


def test_reroute_moves_unsent_jobs_and_never_duplicates(store: Store) -> None:
    _, k1 = add(store, accession="R1")
    _, k2 = add(store, accession="R1")
    _, k3 = add(store, ("PACS", "ARCHIVE"), accession="R1")  # already has an ARCHIVE job
    store.claim("PACS", "w", 1, LEASE, T0)  # k1's job is in flight: not movable
    res = store.reroute(JobFilter(accession="R1", destination="PACS"), "ARCHIVE", "dave", "misrouted", T0)
    assert res.changed == 2 and res.skipped == 1 and len(res.job_ids) == 1
    assert job_for(store, k1).state == JobState.SENDING
    assert job_for(store, k2).state == JobState.CANCELLED
    assert job_for(store, k2, "ARCHIVE").state == JobState.QUEUED
    assert len([j for j in jobs_of(store, destination="ARCHIVE") if j.spool_key == k3]) == 1
    new = job_for(store, k2, "ARCHIVE")
    assert store.job_events(new.id)[-1]["event"] == "operator_reroute"
    assert store.job_events(job_for(store, k2).id)[-1]["detail"] == "to ARCHIVE: misrouted"


def test_list_jobs_pages_by_id(store: Store) -> None:
    for _ in range(7):
        add(store)
    first = store.list_jobs(JobFilter(), limit=3)
    second = store.list_jobs(JobFilter(), limit=3, after_id=first[-1].id)
    assert [j.id for j in first + second] == sorted(j.id for j in first + second)
    assert len(second) == 3 and second[0].id > first[-1].id


def test_init_upgrades_a_database_from_an_older_release(db_path: Path) -> None:
    import sqlite3

    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(
        "CREATE TABLE destinations (name TEXT PRIMARY KEY, circuit TEXT NOT NULL DEFAULT 'closed', "
        "circuit_since REAL, consecutive_failures INTEGER NOT NULL DEFAULT 0, last_error TEXT, last_success_at REAL);"
        "CREATE TABLE processes (name TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, "
        "started_at REAL NOT NULL, heartbeat_at REAL NOT NULL, detail TEXT);"
        "INSERT INTO destinations(name) VALUES ('PACS');"
    )
    conn.close()
    s = Store(db_path)
    s.init()
    s.init()  # idempotent
    assert not s.destination_stats(T0)["PACS"].paused
    s.heartbeat("receiver", T0, T0, "", "abc123")
    assert s.processes()[0]["config_sha"] == "abc123"
    s.close()


def test_count_with_a_cap_stops_early_only_when_instances_are_joined(store: Store) -> None:
    for _ in range(5):
        add(store, accession="CAP")
    assert store.count_jobs(JobFilter(accession="CAP"), cap=2) == 3  # "more than 2"
    assert store.count_jobs(JobFilter(accession="CAP")) == 5
    assert store.count_jobs(JobFilter(destination="PACS"), cap=2) >= 5  # job-only filters stay exact and fast


# The schema-1 tables the first releases created (instances, jobs, meta), verbatim: an upgrade must keep their
# rows and make them usable by everything schema 2 added.
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE instances (
    id INTEGER PRIMARY KEY, spool_key TEXT NOT NULL UNIQUE, sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL, transfer_syntax TEXT NOT NULL, study_uid TEXT, series_uid TEXT, patient_id TEXT,
    accession TEXT, modality TEXT, calling_ae TEXT, called_ae TEXT, source_node TEXT, size_bytes INTEGER NOT NULL,
    received_at REAL NOT NULL, routed INTEGER NOT NULL, spool_state TEXT NOT NULL DEFAULT 'kept', finished_at REAL
);
CREATE INDEX instances_study ON instances(study_uid);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY, instance_id INTEGER NOT NULL REFERENCES instances(id), destination TEXT NOT NULL,
    route TEXT, priority INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, lease_until REAL, claimed_by TEXT, last_status INTEGER, last_error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, done_at REAL
);
CREATE INDEX jobs_instance ON jobs(instance_id);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO instances(spool_key, sop_instance_uid, sop_class_uid, transfer_syntax, study_uid, series_uid, size_bytes,
    received_at, routed) VALUES ('old1', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', '1.2.3',
    '1.2.3.1', 500, 1800000000.0, 1);
INSERT INTO jobs(instance_id, destination, route, priority, state, next_attempt_at, created_at, updated_at)
    VALUES (1, 'PACS', 'all', 1, 'queued', 1800000000.0, 1800000000.0, 1800000000.0);
"""


def test_init_upgrades_a_schema_1_queue_in_place(db_path: Path) -> None:
    import sqlite3

    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(_SCHEMA_1)
    conn.close()
    s = Store(db_path)
    s.init()
    s.init()  # idempotent
    (old,) = jobs_of(s)
    assert (old.state, old.morph, old.transcode, old.wait_for, old.content_sha256) == (
        JobState.QUEUED,
        (),
        "decompress",
        None,
        None,
    )
    assert old.series_uid == "1.2.3.1"
    # The old row has no hash: the same UID arriving now is not compared with it (no ledger decision).
    new = s.add_instance(
        "new1",
        InstanceFacts("1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", 500, study_uid="1.2.3",
                      content_sha256="ab" * 32),
        [NewJob("PACS", "all", 1, morph=("strip",), transcode="never")],
        T0,
    )  # fmt: skip
    assert new.skipped == [] and new.conflicts == []
    assert s.get_job(new.job_ids[0]).morph == ("strip",)  # type: ignore[union-attr]
    assert s.study_counts()["open"] == 1 and s.map_uid("study", "1.2.3")
    check = sqlite3.connect(db_path)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    indexes = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"instances_sop", "instances_late", "instances_conflict", "studies_state", "series_state"} <= indexes
    check.close()
    s.close()


def test_jobs_carry_their_outgoing_steps(store: Store) -> None:
    added = store.add_instance(
        "k-morph",
        facts(),
        [NewJob("PACS", "r", 1, morph=("research", "site-prefix"), transcode="never"), NewJob("ARCHIVE", "r", 1)],
        T0,
    )
    pacs, archive = (store.get_job(i) for i in added.job_ids)
    assert pacs is not None and archive is not None
    assert (pacs.morph, pacs.transcode) == (("research", "site-prefix"), "never")
    assert (archive.morph, archive.transcode) == ((), "decompress")
    assert pacs.as_dict()["morph"] == ("research", "site-prefix")
    (claimed,) = store.claim("PACS", "w", 1, LEASE, T0)
    assert claimed.morph == ("research", "site-prefix")
