"""Storage commitment in the queue (store.py): done → committed / failed, the spool file kept while a report is
awaited, requests recorded before they go out, interrupted requests asked again, overdue reports, schema 3."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.router.store import (
    AWAITING_COMMITMENT,
    SCHEMA_VERSION,
    InstanceFacts,
    JobFilter,
    JobState,
    NewJob,
    Store,
)

T0 = 1_800_000_000.0
CT = "1.2.840.10008.5.1.4.1.1.2"


def _sent(store: Store, n: int, *, dest: str = "PACS", others: tuple[str, ...] = (), keep: bool = False) -> list[int]:
    """n objects received, claimed and acked to `dest` with commitment wanted; returns their job ids there."""
    ids = []
    for i in range(n):
        facts = InstanceFacts(f"1.2.3.{dest}.{i}", CT, "1.2.840.10008.1.2.1", 100, study_uid="1.2.3")
        store.add_instance(f"{dest}-{i}", facts, [NewJob(d, "r", 1) for d in (dest, *others)], T0)
    for job in store.claim(dest, "h:1:PACS:0", n, 60, T0):
        assert store.ack(job.id, 0, "ok", T0 + 1, keep_spool=keep, commit=True) is None  # file kept
        ids.append(job.id)
    return ids


def test_a_sent_job_awaits_commitment_and_keeps_its_file(store: Store) -> None:
    (job_id,) = _sent(store, 1)
    job = store.get_job(job_id)
    assert job is not None and job.state == JobState.DONE and job.awaiting_commit and job.commit_tx is None
    assert store.spool_keys_to_delete(T0 + 10**6) == []  # retention never takes it while a report is awaited
    assert store.known_spool_keys(["PACS-0"]) == {"PACS-0"}
    assert [j.id for j in store.list_jobs(JobFilter(states=[AWAITING_COMMITMENT]))] == [job_id]
    assert store.commitment_due("PACS") == 1


def test_a_request_lists_the_sent_uid_and_a_report_commits_and_frees_the_file(store: Store) -> None:
    facts = InstanceFacts("1.2.3.orig", CT, "1.2.840.10008.1.2.1", 100)
    store.add_instance("k-morph", facts, [NewJob("PACS", "r", 1)], T0)
    (job,) = store.claim("PACS", "w", 1, 60, T0)
    store.ack(job.id, 0, "ok", T0, keep_spool=False, commit=True, sent_uid="1.2.3.morphed")

    (item,) = store.begin_commitment("PACS", "2.25.1", "h:1:PACS:0", T0 + 2, 500)
    assert (item.job_id, item.sop_class_uid, item.sop_instance_uid) == (job.id, CT, "1.2.3.morphed")
    assert store.begin_commitment("PACS", "2.25.2", "h:1:PACS:1", T0 + 2, 500) == []  # asked once only
    assert store.commitment_transaction("2.25.1")["state"] == "requesting"  # type: ignore[index]
    store.commitment_sent("2.25.1", T0 + 3)

    out = store.record_commitment_report("2.25.1", ["1.2.3.morphed"], [], "same association", T0 + 4, False)
    assert out is not None and out.committed_jobs == [job.id] and out.spool_keys_freed == ["k-morph"]
    done = store.get_job(job.id)
    assert done is not None and done.state == JobState.COMMITTED and not done.awaiting_commit
    assert [e["event"] for e in store.job_events(job.id)][-2:] == ["commitment_requested", "committed"]
    assert store.commitment_transaction("2.25.1")["committed"] == 1  # type: ignore[index]


def test_a_partial_failure_fails_those_jobs_with_the_reason(store: Store) -> None:
    a, b, c = _sent(store, 3)
    store.begin_commitment("PACS", "2.25.9", "w", T0, 500)
    out = store.record_commitment_report(
        "2.25.9",
        ["1.2.3.PACS.0", "1.2.3.PACS.2"],
        [("1.2.3.PACS.1", 0x0112, "no such object instance (0x0112)")],
        "new association from PACS@127.0.0.1",
        T0 + 5,
        keep_spool=False,
    )
    assert out is not None and sorted(out.committed_jobs) == [a, c] and out.failed_jobs[0][0] == b
    failed = store.get_job(b)
    assert failed is not None and failed.state == JobState.FAILED and failed.last_status == 0x0112
    assert "storage commitment FAILED at PACS: no such object instance" in (failed.last_error or "")
    assert f"queue retry {b}" in (failed.last_error or "")
    assert store.known_spool_keys(["PACS-1"]) == {"PACS-1"}  # the failed one's file stays

    # `queue retry` sends it again: queued, a fresh attempt budget, no commitment state left over.
    assert store.retry(JobFilter(ids=[b]), "alice", "PACS fixed", T0 + 6).changed == 1
    again = store.get_job(b)
    assert again is not None and again.state == JobState.QUEUED and not again.awaiting_commit


def test_the_file_waits_for_every_destination_and_for_the_report(store: Store) -> None:
    (job_id,) = _sent(store, 1, others=("ARCHIVE",))
    (archive,) = store.claim("ARCHIVE", "w", 1, 60, T0)
    assert store.ack(archive.id, 0, "ok", T0, keep_spool=False) is None  # PACS's report still awaited
    store.begin_commitment("PACS", "2.25.3", "w", T0, 500)
    out = store.record_commitment_report("2.25.3", ["1.2.3.PACS.0"], [], "r", T0 + 1, keep_spool=False)
    assert out is not None and out.spool_keys_freed == ["PACS-0"]


def test_a_late_report_still_commits_and_an_unknown_transaction_is_none(store: Store) -> None:
    (job_id,) = _sent(store, 1)
    store.begin_commitment("PACS", "2.25.4", "w", T0, 500)
    store.commitment_sent("2.25.4", T0)
    assert [o["transaction_uid"] for o in store.overdue_commitments("PACS", T0 + 3600)] == ["2.25.4"]
    out = store.record_commitment_report("2.25.4", ["1.2.3.PACS.0"], [], "r", T0 + 7200, keep_spool=True)
    assert out is not None and out.committed_jobs == [job_id] and out.spool_keys_freed == []  # kept: retention
    assert store.overdue_commitments("PACS", T0 + 7200) == []
    assert store.record_commitment_report("2.25.404", ["x"], [], "r", T0, keep_spool=False) is None


def test_a_report_before_the_n_action_response_is_not_undone(store: Store) -> None:
    _sent(store, 1)
    store.begin_commitment("PACS", "2.25.5", "w", T0, 500)
    store.record_commitment_report("2.25.5", ["1.2.3.PACS.0"], [], "r", T0, keep_spool=False)
    store.commitment_sent("2.25.5", T0)  # the N-ACTION response arrives after the report
    assert store.commitment_transaction("2.25.5")["state"] == "reported"  # type: ignore[index]


def test_a_failed_request_and_an_interrupted_one_are_asked_again(store: Store) -> None:
    _sent(store, 4)
    store.begin_commitment("PACS", "2.25.6", "hostA:111:PACS:0", T0, 1)
    store.begin_commitment("PACS", "2.25.7", "hostB:222:PACS:0", T0, 1)  # hostB's forwarder dies mid-request
    store.begin_commitment("PACS", "2.25.11", "hostB:222:PACS:1", T0, 1)  # ... and while awaiting this report
    store.commitment_sent("2.25.11", T0)
    store.begin_commitment("PACS", "2.25.12", "hostB:222:PACS:1", T0, 1)  # reported: nothing to ask again
    store.record_commitment_report("2.25.12", ["1.2.3.PACS.3"], [], "r", T0, keep_spool=False)
    assert store.commitment_due("PACS") == 0
    assert store.abandon_commitment("2.25.6", "no N-ACTION response", T0) == 1
    assert store.abandon_interrupted_requests("hostB:", T0) == 2
    assert store.commitment_due("PACS") == 3
    assert store.commitment_transaction("2.25.7")["state"] == "abandoned"  # type: ignore[index]
    # The old request's report, should it still come, is applied all the same.
    out = store.record_commitment_report("2.25.7", ["1.2.3.PACS.1"], [], "r", T0 + 1, keep_spool=False)
    assert out is not None and len(out.committed_jobs) == 1


def test_overview_and_overdue_count_unasked_objects_too(store: Store) -> None:
    _sent(store, 3)
    store.begin_commitment("PACS", "2.25.8", "w", T0 + 10, 2)
    summary = store.commitment_overview(T0 + 20)["PACS"]
    assert (summary.requested, summary.unasked, summary.awaiting, summary.oldest_at) == (2, 1, 3, T0 + 1)
    rows = store.overdue_commitments("PACS", T0 + 100)
    assert sorted((r["transaction_uid"] or "", r["objects"], r["overdue_noted"]) for r in rows) == [
        ("", 1, 1),  # not asked about yet: counted, nothing to audit it under
        ("2.25.8", 2, 0),
    ]
    assert store.overdue_commitments("PACS", T0 + 1) == []  # the deadline counts from sending
    store.note_overdue(["2.25.8"])
    assert {r["overdue_noted"] for r in store.overdue_commitments("PACS", T0 + 100)} == {1}


def test_cancel_stops_waiting_and_releases_the_file(store: Store) -> None:
    (job_id,) = _sent(store, 1)
    out = store.cancel(JobFilter(states=[AWAITING_COMMITMENT]), "bob", "PACS confirmed by phone", T0, keep_spool=False)
    assert out.changed == 1 and out.spool_keys_freed == ["PACS-0"]


def test_a_committed_object_counts_in_the_delivery_ledger(store: Store) -> None:
    facts = InstanceFacts("1.2.3.same", CT, "1.2.840.10008.1.2.1", 100, content_sha256="ab" * 32)
    store.add_instance("first", facts, [NewJob("PACS", "r", 1)], T0)
    (job,) = store.claim("PACS", "w", 1, 60, T0)
    store.ack(job.id, 0, "ok", T0, keep_spool=False, commit=True)
    store.begin_commitment("PACS", "2.25.10", "w", T0, 500)
    store.record_commitment_report("2.25.10", ["1.2.3.same"], [], "r", T0, keep_spool=False)
    again = store.add_instance("again", facts, [NewJob("PACS", "r", 1)], T0 + 1)
    assert [(d.earlier_job_id, d.earlier_state) for d in again.skipped] == [(job.id, "committed")]


# A schema-2 queue (issue 3's release) with a done and a queued job: the upgrade keeps them as they were.
def test_a_schema_2_queue_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    old = Store(path)
    old.init()
    old.add_instance("a", InstanceFacts("1.2.9.1", CT, "1.2.840.10008.1.2.1", 1), [NewJob("PACS", "r", 1)], T0)
    old.add_instance("b", InstanceFacts("1.2.9.2", CT, "1.2.840.10008.1.2.1", 1), [NewJob("PACS", "r", 1)], T0)
    (first, _) = old.claim("PACS", "w", 2, 60, T0)
    old.ack(first.id, 0, "ok", T0, keep_spool=False)
    old.close()
    conn = sqlite3.connect(path)  # back to what schema 2 had
    conn.execute("DROP INDEX jobs_awaiting_commit")
    conn.execute("DROP TABLE commitments")
    for column in ("awaiting_commit", "commit_tx", "sent_uid"):
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()

    s = Store(path)
    s.init()
    s.init()  # idempotent
    done = s.get_job(first.id)
    assert done is not None and done.state == JobState.DONE and not done.awaiting_commit
    assert s.commitment_overview(T0) == {}
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    check.close()
    s.close()
