"""The delivery ledger in Store.add_instance: identical re-sends are SKIPPED, a different object reusing a SOP
Instance UID is a conflict (held or forwarded), hold routes create HELD jobs; and what `queue retry` does then."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.router.store import (
    Conflict,
    Duplicate,
    InstanceAdded,
    InstanceFacts,
    Job,
    JobFilter,
    JobState,
    NewJob,
    Store,
)

T0 = 1_800_000_000.0
SHA_A = "a" * 64
SHA_B = "b" * 64
EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"


_keys = iter(range(1, 1_000_000))


def receive(
    store: Store,
    destinations: tuple[str, ...] = ("PACS",),
    *,
    uid: str = "1.2.3.4.5",
    sha: str | None = SHA_A,
    ts: str = EVRLE,
    patient: str = "PAT1",
    now: float = T0,
    on_conflict: str = "hold",
    hold_reason: str | None = None,
) -> InstanceAdded:
    facts = InstanceFacts(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax=ts,
        size_bytes=1000,
        study_uid="1.2.3",
        series_uid="1.2.3.1",
        patient_id=patient,
        content_sha256=sha,
    )
    jobs = [NewJob(d, "all", 1, hold_reason=hold_reason) for d in destinations]
    return store.add_instance(f"key{next(_keys)}", facts, jobs, now, on_conflict=on_conflict)


def job(store: Store, job_id: int) -> Job:
    j = store.get_job(job_id)
    assert j is not None
    return j


def events(store: Store, job_id: int) -> list[tuple[str, str]]:
    return [(e["event"], e["detail"]) for e in store.job_events(job_id)]


def deliver(store: Store, destination: str = "PACS") -> None:
    for j in store.claim(destination, "w", 100, 60, T0):
        store.ack(j.id, 0, "stored", T0, keep_spool=True)


# -- duplicates ------------------------------------------------------------------------------------


def test_identical_resend_is_skipped_naming_the_earlier_job(store: Store) -> None:
    first = receive(store)
    deliver(store)
    again = receive(store, now=T0 + 5)
    (new_job,) = again.job_ids
    assert job(store, new_job).state == JobState.SKIPPED
    assert again.skipped == [Duplicate("PACS", new_job, first.job_ids[0], "done")]
    assert not again.conflicts and not again.late
    ((event, detail),) = events(store, new_job)
    assert event == "duplicate"
    assert f"by job {first.job_ids[0]}" in detail and "already done for PACS" in detail
    assert f"queue retry {new_job}" in detail  # the way to send it anyway, with the real id
    # Nothing to send: the copy falls under spool retention at once, like a delivered object.
    assert job(store, new_job).done_at == T0 + 5
    assert store.spool_keys_to_delete(T0 + 5) == [job(store, first.job_ids[0]).spool_key, job(store, new_job).spool_key]


@pytest.mark.parametrize("earlier", ["queued", "sending", "held", "done"])
def test_a_live_or_done_earlier_job_makes_a_duplicate(store: Store, earlier: str) -> None:
    first = receive(store)
    if earlier == "sending":
        store.claim("PACS", "w", 1, 60, T0)
    elif earlier == "held":
        store.hold(JobFilter(ids=first.job_ids), "op", "look", T0)
    elif earlier == "done":
        deliver(store)
    again = receive(store)
    assert job(store, again.job_ids[0]).state == JobState.SKIPPED
    assert again.skipped[0].earlier_state == earlier


@pytest.mark.parametrize("earlier", ["failed", "cancelled"])
def test_a_failed_or_cancelled_earlier_job_does_not_stop_a_resend(store: Store, earlier: str) -> None:
    first = receive(store)
    if earlier == "failed":
        (claimed,) = store.claim("PACS", "w", 1, 60, T0)
        store.fail(claimed.id, 0x0122, "refused", T0)
    else:
        store.cancel(JobFilter(ids=first.job_ids), "op", "no", T0, keep_spool=True)
    again = receive(store)
    assert job(store, again.job_ids[0]).state == JobState.QUEUED
    assert again.skipped == [] and again.conflicts == []


def test_only_destinations_that_had_it_are_skipped(store: Store) -> None:
    receive(store, ("PACS",))
    again = receive(store, ("PACS", "ARCHIVE"))
    pacs, archive = (job(store, i) for i in again.job_ids)
    assert (pacs.state, archive.state) == (JobState.SKIPPED, JobState.QUEUED)
    assert [d.destination for d in again.skipped] == ["PACS"]
    assert job(store, again.job_ids[0]).done_at is not None
    assert store.spool_keys_to_delete(T0 + 1) == []  # ARCHIVE still needs the file


def test_duplicate_among_several_earlier_copies_names_the_latest(store: Store) -> None:
    receive(store)
    store.cancel(JobFilter(), "op", "first try", T0, keep_spool=True)
    second = receive(store)
    third = receive(store)
    assert third.skipped[0].earlier_job_id == second.job_ids[0]


def test_no_hash_means_no_ledger(store: Store) -> None:
    """Objects recorded without a content hash (older rows, tools) are never compared."""
    receive(store, sha=None)
    again = receive(store, sha=None)
    assert job(store, again.job_ids[0]).state == JobState.QUEUED
    assert receive(store, sha=SHA_A).skipped == []  # an earlier row without a hash is not comparable


def test_another_transfer_syntax_is_neither_duplicate_nor_conflict(store: Store) -> None:
    """The same object re-sent in another encoding hashes differently without being different."""
    receive(store, ts=EVRLE, sha=SHA_A)
    again = receive(store, ts=IVRLE, sha=SHA_B)
    assert job(store, again.job_ids[0]).state == JobState.QUEUED
    assert again.skipped == [] and again.conflicts == []


def test_retry_sends_a_skipped_job_anyway(store: Store) -> None:
    receive(store)
    again = receive(store)
    (skipped,) = again.job_ids
    res = store.retry(JobFilter(ids=[skipped]), "op", "send anyway", T0 + 10)
    assert res.changed == 1
    j = job(store, skipped)
    assert (j.state, j.done_at, j.next_attempt_at, j.attempts) == (JobState.QUEUED, None, T0 + 10, 0)
    assert events(store, skipped)[-1] == ("operator_retry", "send anyway")
    assert store.spool_keys_to_delete(T0 + 100) == []  # reopened: retention no longer applies


def test_retry_cannot_send_a_skipped_job_whose_file_is_gone(store: Store) -> None:
    receive(store)
    again = receive(store)
    store.mark_spool_deleted(store.spool_keys_to_delete(T0 + 1))  # retention deleted the copy
    res = store.retry(JobFilter(ids=again.job_ids), "op", "send anyway", T0 + 10)
    assert (res.changed, res.skipped) == (0, 1)
    assert job(store, again.job_ids[0]).state == JobState.SKIPPED


def test_skipped_counts_as_finished_for_the_instance(store: Store) -> None:
    receive(store, ("PACS",))
    again = receive(store, ("PACS", "ARCHIVE"))
    (archive,) = store.claim("ARCHIVE", "w", 1, 60, T0)
    assert store.ack(archive.id, 0, "stored", T0, keep_spool=False) == archive.spool_key
    assert job(store, again.job_ids[0]).state == JobState.SKIPPED


def test_stats_count_skipped_jobs(store: Store) -> None:
    receive(store)
    receive(store)
    assert store.destination_stats(T0)["PACS"].counts == {"queued": 1, "skipped": 1}
    assert store.destination_stats(T0)["PACS"].backlog == 1
    assert store.count_jobs(JobFilter(states=["skipped"])) == 1


# -- conflicts -------------------------------------------------------------------------------------


def test_conflict_is_held_for_the_destination_that_had_the_other_version(store: Store) -> None:
    first = receive(store, ("PACS",), sha=SHA_A, patient="PAT1")
    deliver(store)
    second = receive(store, ("PACS", "ARCHIVE"), sha=SHA_B, patient="PAT2")
    pacs, archive = (job(store, i) for i in second.job_ids)
    assert (pacs.state, archive.state) == (JobState.HELD, JobState.QUEUED)  # ARCHIVE never had the other one
    assert second.conflicts == [
        Conflict(first.instance_id, SHA_A, "PACS", pacs.id, first.job_ids[0], held=True),
    ]
    assert second.held == [pacs.id]
    ((event, detail),) = events(store, pacs.id)
    assert event == "uid_conflict"
    assert f"job {first.job_ids[0]}" in detail and "check patient/study identifiers before releasing" in detail
    assert f"queue release {pacs.id}" in detail
    assert events(store, archive.id) == []
    assert store.count_jobs(JobFilter(states=["held"])) == 1

    # Released by an operator who checked: it goes.
    assert store.release(JobFilter(ids=[pacs.id]), "op", "checked with the modality", T0).changed == 1
    assert job(store, pacs.id).state == JobState.QUEUED


def test_conflict_is_recorded_and_listed(store: Store) -> None:
    first = receive(store, sha=SHA_A, patient="PAT1")
    second = receive(store, sha=SHA_B, patient="PAT2", now=T0 + 60)
    conn = sqlite3.connect(store.path)
    rows = conn.execute("SELECT id, conflict_of, content_sha256 FROM instances ORDER BY id").fetchall()
    assert rows == [(first.instance_id, None, SHA_A), (second.instance_id, first.instance_id, SHA_B)]
    conn.close()
    (c,) = store.conflicts()
    assert c["instance_id"] == second.instance_id and c["earlier_instance_id"] == first.instance_id
    assert (c["patient_id"], c["earlier_patient_id"]) == ("PAT2", "PAT1")
    assert (c["content_sha256"], c["earlier_sha256"]) == (SHA_B, SHA_A)
    assert c["received_at"] == T0 + 60 and c["earlier_received_at"] == T0
    assert c["jobs"] == [{"id": second.job_ids[0], "destination": "PACS", "state": "held"}]
    counts = store.study_counts()
    assert (counts["conflicts"], counts["conflicts_held"]) == (1, 1)
    store.cancel(JobFilter(ids=second.job_ids), "op", "wrong patient", T0, keep_spool=True)
    assert store.study_counts()["conflicts_held"] == 0


def test_conflict_forwarded_when_configured(store: Store) -> None:
    first = receive(store, sha=SHA_A)
    second = receive(store, sha=SHA_B, on_conflict="forward")
    assert job(store, second.job_ids[0]).state == JobState.QUEUED
    assert second.conflicts == [Conflict(first.instance_id, SHA_A, "PACS", second.job_ids[0], first.job_ids[0])]
    assert events(store, second.job_ids[0])[0][0] == "uid_conflict"
    assert "forwarded (router.on_conflict: forward)" in events(store, second.job_ids[0])[0][1]


def test_conflict_without_a_shared_destination_is_flagged_only(store: Store) -> None:
    first = receive(store, ("ARCHIVE",), sha=SHA_A)
    second = receive(store, ("PACS",), sha=SHA_B)
    assert job(store, second.job_ids[0]).state == JobState.QUEUED
    assert second.conflicts == [Conflict(first.instance_id, SHA_A)]
    assert store.study_counts()["conflicts"] == 1


def test_an_unrouted_earlier_version_is_still_a_conflict(store: Store) -> None:
    first = receive(store, (), sha=SHA_A)
    second = receive(store, (), sha=SHA_B)
    assert second.conflicts == [Conflict(first.instance_id, SHA_A)]


def test_what_a_destination_got_last_decides(store: Store) -> None:
    """A, then B (a conflict the operator cancelled), then A again: PACS last got A, so A is skipped there;
    the UID was last seen with B's content, so the new A is flagged against B."""
    receive(store, sha=SHA_A)
    b = receive(store, sha=SHA_B)
    store.cancel(JobFilter(ids=b.job_ids), "op", "wrong", T0, keep_spool=True)
    again = receive(store, sha=SHA_A)
    assert job(store, again.job_ids[0]).state == JobState.SKIPPED
    assert again.conflicts == [Conflict(b.instance_id, SHA_B)]  # flagged, nothing held


def test_a_conflict_released_and_sent_is_what_the_destination_has(store: Store) -> None:
    """A sent, B held and released and sent: a re-sent B is a duplicate, a re-sent A a conflict again."""
    a = receive(store, sha=SHA_A)
    deliver(store)
    b = receive(store, sha=SHA_B)
    store.release(JobFilter(ids=b.job_ids), "op", "checked", T0)
    deliver(store)
    assert job(store, receive(store, sha=SHA_B).job_ids[0]).state == JobState.SKIPPED
    a_again = receive(store, sha=SHA_A)
    assert job(store, a_again.job_ids[0]).state == JobState.HELD
    assert a_again.conflicts[0].earlier_job_id == b.job_ids[0] and a.instance_id != b.instance_id


# -- hold routes -----------------------------------------------------------------------------------


def test_hold_route_creates_held_jobs_with_the_reason(store: Store) -> None:
    added = receive(store, ("PACS", "ARCHIVE"), hold_reason="research: review before release")
    assert [job(store, i).state for i in added.job_ids] == [JobState.HELD, JobState.HELD]
    assert added.held == added.job_ids
    assert events(store, added.job_ids[0]) == [("route_hold", "research: review before release")]
    res = store.release(JobFilter(destination="PACS"), "op", "reviewed", T0 + 5)
    assert res.changed == 1
    assert job(store, added.job_ids[0]).next_attempt_at == T0 + 5


def test_hold_route_without_text_says_which_route(store: Store) -> None:
    added = receive(store, hold_reason="")
    assert events(store, added.job_ids[0]) == [("route_hold", "route all holds what it matches")]


def test_duplicate_of_a_held_object_is_skipped_not_held_twice(store: Store) -> None:
    receive(store, hold_reason="review")
    again = receive(store, hold_reason="review")
    assert job(store, again.job_ids[0]).state == JobState.SKIPPED


def test_the_receiver_maps_every_routing_decision_onto_the_job() -> None:
    from appliance.router.receiver import new_job
    from appliance.router.rules import Target

    target = Target("PACS", "research", 2, hold_reason="review", wait_for="series", morph=("a", "b"), transcode="never")
    assert new_job(target) == NewJob(
        "PACS", "research", 2, hold_reason="review", wait_for="series", morph=("a", "b"), transcode="never"
    )
    assert new_job(Target("PACS", "all", 1)) == NewJob("PACS", "all", 1)
