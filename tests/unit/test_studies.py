"""Study and series tracking in the store: WAITING jobs (routes with `forward: series|study`), completion by
quiet time or by the sender's expected count, late arrivals, pruning; and the UID map."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest

from appliance.router.store import InstanceAdded, InstanceFacts, Job, JobFilter, JobState, NewJob, Store, StudySweep

T0 = 1_800_000_000.0
QUIET = 120.0
STUDY = "1.2.826.1"


_n = iter(range(1, 1_000_000))


def receive(
    store: Store,
    wait_for: str | None = "study",
    *,
    study: str | None = STUDY,
    series: str | None = "s1",
    now: float = T0,
    uid: str | None = None,
    in_study: int | None = None,
    in_series: int | None = None,
    destinations: tuple[str, ...] = ("PACS",),
) -> InstanceAdded:
    n = next(_n)
    facts = InstanceFacts(
        sop_instance_uid=uid or f"1.2.826.9.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        size_bytes=1000,
        study_uid=study,
        series_uid=None if series is None else f"{study}.{series}",
        patient_id="PAT1",
        content_sha256=f"{n:064x}",
        expected_in_study=in_study,
        expected_in_series=in_series,
    )
    jobs = [NewJob(d, "r", 1, wait_for=wait_for) for d in destinations]
    return store.add_instance(f"k{n}", facts, jobs, now)


def job(store: Store, job_id: int) -> Job:
    j = store.get_job(job_id)
    assert j is not None
    return j


def state(store: Store, added: InstanceAdded) -> str:
    return job(store, added.job_ids[0]).state


def last_event(store: Store, added: InstanceAdded) -> tuple[str, str]:
    e = store.job_events(added.job_ids[0])[-1]
    return e["event"], e["detail"]


def study_row(store: Store, uid: str = STUDY) -> dict[str, object]:
    (row,) = [r for r in store.list_studies(limit=1000) if r["study_uid"] == uid]
    return row


# -- waiting for a study ---------------------------------------------------------------------------


def test_study_jobs_wait_until_the_study_is_quiet(store: Store) -> None:
    a = receive(store, now=T0)
    b = receive(store, series="s2", now=T0 + 30)
    assert (state(store, a), state(store, b)) == (JobState.WAITING, JobState.WAITING)
    assert a.waiting == a.job_ids
    assert store.claim("PACS", "w", 10, 60, T0 + 30) == []  # a waiting job is never claimed
    assert store.next_due_at("PACS") is None

    early = store.complete_studies(T0 + 30 + QUIET - 1, QUIET)  # the study is still within its quiet time
    assert (early.studies_completed, early.series_completed, early.jobs_released) == (0, 1, 0)  # series s1 is quiet
    sweep = store.complete_studies(T0 + 30 + QUIET, QUIET)
    assert (sweep.studies_completed, sweep.series_completed, sweep.jobs_released) == (1, 1, 2)
    now = T0 + 30 + QUIET
    for added in (a, b):
        j = job(store, added.job_ids[0])
        assert (j.state, j.next_attempt_at, j.wait_for) == (JobState.QUEUED, now, "study")
        event, detail = last_event(store, added)
        assert event == "study_complete" and f"no new object for {QUIET:g} s (2 instances)" in detail
    assert len(store.claim("PACS", "w", 10, 60, now)) == 2
    row = study_row(store)
    assert (row["state"], row["instances"], row["completed_at"], row["series"]) == ("complete", 2, now, 2)
    assert store.complete_studies(now + 1, QUIET) == StudySweep()


def test_series_jobs_are_released_per_series(store: Store) -> None:
    s1 = receive(store, "series", series="s1", now=T0)
    s1_study = receive(store, "study", series="s1", now=T0)
    s2 = receive(store, "series", series="s2", now=T0 + 100)  # keeps the study open
    sweep = store.complete_studies(T0 + QUIET, QUIET)
    assert (sweep.studies_completed, sweep.series_completed, sweep.jobs_released) == (0, 1, 1)
    assert state(store, s1) == JobState.QUEUED
    assert last_event(store, s1)[0] == "series_complete"
    assert state(store, s1_study) == JobState.WAITING  # waits for the whole study
    assert state(store, s2) == JobState.WAITING
    store.complete_studies(T0 + 100 + QUIET, QUIET)
    assert state(store, s1_study) == state(store, s2) == JobState.QUEUED


def test_expected_count_completes_the_study_at_once(store: Store) -> None:
    first = receive(store, in_study=3)
    receive(store, uid=None, in_study=3, now=T0 + 1)
    third = receive(store, in_study=3, now=T0 + 2)
    assert state(store, first) == JobState.QUEUED  # released by the third, without waiting for quiet
    assert last_event(store, first) == ("study_complete", f"study {STUDY} complete: all 3 expected instances arrived")
    assert state(store, third) == JobState.QUEUED and not third.waiting and not third.late
    assert last_event(store, third)[0] == "study_complete"
    assert study_row(store)["state"] == "complete"


def test_expected_count_completes_a_series(store: Store) -> None:
    a = receive(store, "series", in_series=2)
    other = receive(store, "series", series="s2", in_series=5)
    b = receive(store, "series", in_series=2)
    assert state(store, a) == state(store, b) == JobState.QUEUED
    assert state(store, other) == JobState.WAITING
    assert study_row(store)["state"] == "open"


def test_a_series_job_completes_with_its_study(store: Store) -> None:
    """The study's expected count is reached: its series are complete too (a series job is not left waiting)."""
    a = receive(store, "series", in_study=2)
    b = receive(store, "series", series="s2", in_study=2)
    assert state(store, a) == state(store, b) == JobState.QUEUED
    assert store.complete_studies(T0 + 10 * QUIET, QUIET).jobs_released == 0


def test_a_resent_object_counts_once(store: Store) -> None:
    receive(store, uid="1.2.9.1", in_study=2)
    receive(store, uid="1.2.9.1", in_study=2)  # the same SOP Instance UID again
    assert study_row(store)["state"] == "open" and study_row(store)["instances"] == 1
    receive(store, uid="1.2.9.2", in_study=2)
    assert study_row(store)["state"] == "complete"


@pytest.mark.parametrize("bad", [None, 0])
def test_no_expected_count_means_quiet_time_decides(store: Store, bad: int | None) -> None:
    for _ in range(3):
        receive(store, in_study=bad)
    assert study_row(store)["state"] == "open" and study_row(store)["expected"] is None


# -- late arrivals ---------------------------------------------------------------------------------


def test_late_arrival_is_sent_at_once_and_flagged(store: Store) -> None:
    receive(store)
    store.complete_studies(T0 + QUIET, QUIET)
    late = receive(store, now=T0 + 500)
    assert late.late and not late.waiting
    assert state(store, late) == JobState.QUEUED
    assert last_event(store, late) == ("late_arrival", f"study {STUDY} was already complete: sent at once as a delta")
    row = study_row(store)
    assert (row["state"], row["late_count"], row["instances"], row["last_at"]) == ("complete", 1, 2, T0 + 500)
    assert store.study_counts() == {
        "open": 0,
        "complete": 1,
        "late_instances": 1,
        "conflicts": 0,
        "conflicts_held": 0,
    }


def test_late_arrival_into_a_complete_series(store: Store) -> None:
    receive(store, "series", in_series=1)
    late = receive(store, "series", now=T0 + 5)
    assert late.late and state(store, late) == JobState.QUEUED
    assert last_event(store, late)[0] == "late_arrival"
    fresh = receive(store, "series", series="s2", now=T0 + 6)  # a new series of that study waits normally
    assert state(store, fresh) == JobState.WAITING and not fresh.late


def test_instance_routes_never_make_late_arrivals(store: Store) -> None:
    receive(store)
    store.complete_studies(T0 + QUIET, QUIET)
    plain = receive(store, None, now=T0 + 500)
    assert not plain.late and state(store, plain) == JobState.QUEUED
    assert store.job_events(plain.job_ids[0]) == []
    assert study_row(store)["late_count"] == 0


def test_nothing_to_wait_for_without_a_uid(store: Store) -> None:
    no_study = receive(store, "study", study=None, series=None)
    assert state(store, no_study) == JobState.QUEUED
    assert last_event(store, no_study) == ("not_waiting", "no Study Instance UID to wait for: sent at once")
    no_series = receive(store, "series", series=None)
    assert last_event(store, no_series) == ("not_waiting", "no Series Instance UID to wait for: sent at once")


# -- holds, operator actions -----------------------------------------------------------------------


def test_a_hold_route_that_also_waits_is_held(store: Store) -> None:
    facts = InstanceFacts("1.2.826.9.999", "1.2.3", "1.2.840.10008.1.2.1", 10, study_uid=STUDY, content_sha256="c")
    added = store.add_instance("kh", facts, [NewJob("PACS", "r", 1, hold_reason="review", wait_for="study")], T0)
    assert state(store, added) == JobState.HELD
    store.complete_studies(T0 + QUIET, QUIET)
    assert state(store, added) == JobState.HELD  # completion releases only waiting jobs


def test_operator_can_hold_or_cancel_waiting_jobs(store: Store) -> None:
    a = receive(store)
    b = receive(store)
    assert store.hold(JobFilter(ids=a.job_ids), "op", "check first", T0).changed == 1
    assert store.cancel(JobFilter(ids=b.job_ids), "op", "not wanted", T0, keep_spool=True).changed == 1
    assert store.complete_studies(T0 + QUIET, QUIET).jobs_released == 0
    assert state(store, a) == JobState.HELD and state(store, b) == JobState.CANCELLED


def test_stats_count_waiting_jobs_apart_from_the_backlog(store: Store) -> None:
    receive(store)
    stats = store.destination_stats(T0)["PACS"]
    assert stats.counts == {"waiting": 1} and stats.backlog == 0


def test_unknown_wait_for_is_refused() -> None:
    with pytest.raises(ValueError, match="wait_for"):
        NewJob("PACS", "r", 1, wait_for="patient")


# -- the sweep: cheap, and it forgets old studies --------------------------------------------------


def test_complete_studies_takes_no_write_lock_when_there_is_nothing_to_do(tmp_path: Path) -> None:
    s = Store(tmp_path / "q.sqlite3", busy_timeout_ms=50)
    s.init()
    receive(s, now=T0)
    blocker = sqlite3.connect(s.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process is writing
    try:
        assert s.complete_studies(T0 + 1, QUIET) == StudySweep()  # read only: not blocked
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            s.complete_studies(T0 + QUIET, QUIET)  # real work needs the lock (proves the check above)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        s.close()


def test_complete_studies_forgets_old_complete_studies(store: Store) -> None:
    day = 86400.0
    receive(store, study="1.2.826.2", now=T0)
    receive(store, study="1.2.826.3", now=T0 + 20 * day)
    first = store.complete_studies(T0 + 20 * day + QUIET, QUIET, keep_days=30)
    assert (first.studies_completed, first.studies_pruned) == (2, 0)
    second = store.complete_studies(T0 + 31 * day, QUIET, keep_days=30)
    assert (second.studies_completed, second.studies_pruned, second.series_pruned) == (0, 1, 1)
    assert [r["study_uid"] for r in store.list_studies()] == ["1.2.826.3"]
    # A study forgotten and then sent again is simply a new one: it waits again.
    again = receive(store, study="1.2.826.2", now=T0 + 42 * day)
    assert state(store, again) == JobState.WAITING and not again.late


def test_open_studies_are_never_pruned(store: Store) -> None:
    receive(store, None, now=T0)
    assert store.complete_studies(T0 + 365 * 86400, 10 * 365 * 86400, keep_days=1).studies_pruned == 0
    assert study_row(store)["state"] == "open"


def test_list_studies_by_state_newest_first(store: Store) -> None:
    receive(store, None, study="1.2.826.10", now=T0)
    receive(store, None, study="1.2.826.11", now=T0 + 1000)
    store.complete_studies(T0 + 1000, QUIET)
    assert [r["study_uid"] for r in store.list_studies()] == ["1.2.826.11", "1.2.826.10"]
    assert [r["study_uid"] for r in store.list_studies(state="complete")] == ["1.2.826.10"]
    assert [r["study_uid"] for r in store.list_studies(state="open")] == ["1.2.826.11"]
    assert store.list_studies(limit=1)[0]["patient_id"] == "PAT1"


# -- the UID map ---------------------------------------------------------------------------------


def test_map_uid_is_stable_per_namespace(store: Store) -> None:
    first = store.map_uid("study", "1.2.3")
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", first) and len(first) <= 64
    assert store.map_uid("study", "1.2.3") == first
    assert store.map_uid("series", "1.2.3") != first
    assert store.map_uid("study", "1.2.4") != first


def test_map_uid_agrees_across_stores_and_threads(tmp_path: Path) -> None:
    """Several processes (here: Store objects, in threads) asking at once all get the one replacement."""
    path = tmp_path / "q.sqlite3"
    Store(path).init()
    stores = [Store(path, durable=i % 2 == 0) for i in range(6)]
    results: list[str] = []
    barrier = threading.Barrier(len(stores))

    def ask(s: Store) -> None:
        barrier.wait()
        results.append(s.map_uid("study", "1.2.840.1"))

    threads = [threading.Thread(target=ask, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
    reopened = Store(path)
    assert reopened.map_uid("study", "1.2.840.1") == results[0]
    for s in [*stores, reopened]:
        s.close()
