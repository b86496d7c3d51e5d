"""The queue states the routing features added — waiting (for the study), skipped (a duplicate the delivery ledger
kept from going twice), held by a review route or by a SOP Instance UID conflict — in the filter, the line under
the table, the job detail's "what to do", and the actions that apply to them (retry sends a skipped job anyway).
The queue is built with the router's own Store (its real ledger), not by writing states into the database."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, Static

from appliance.router.store import AWAITING_COMMITMENT, InstanceFacts, JobState, NewJob, Store
from appliance.tui.backend import Backend, JobQuery
from appliance.tui.screens.job import JobScreen
from appliance.tui.screens.queue import STATE_OPTIONS, QueueScreen
from appliance.tui.screens.queue_model import ACTIONS, STATES, Target, advice, cause, confirm_body
from appliance.tui.widgets import ConfirmScreen, ReasonScreen
from tests.tui.fixtures_queue import QueueApp, utc
from tests.tui.test_queue import settle

__all__ = ["utc"]  # a fixture, used by name
NOW = 1_800_000_000.0
CT = "1.2.840.10008.5.1.4.1.1.2"
REVIEW = "no Patient ID: reconcile with the RIS order before releasing"


@dataclass
class Jobs:
    """Job ids of the queue below, by what happened to them."""

    first_copy: int  # delivered to PACS_MAIN
    duplicate: int  # the same object again: skipped
    conflict: int  # another object under the first one's SOP Instance UID: held
    waiting: int  # VNA gets whole studies
    review: int  # held by a review route


def facts(n: int, sha: str, sop: str | None = None) -> InstanceFacts:
    return InstanceFacts(
        sop_instance_uid=sop or f"1.2.826.0.1.3680043.10.88.{n}",
        sop_class_uid=CT,
        transfer_syntax="1.2.840.10008.1.2.1",
        size_bytes=1000,
        study_uid="1.2.826.0.1.3680043.10.88",
        series_uid="1.2.826.0.1.3680043.10.88.1",
        patient_id="PID-42",
        accession="ACC-42",
        modality="CT",
        calling_ae="CT1",
        called_ae="DICOM_ROUTER",
        source_node="CT_SCANNER_1",
        content_sha256=sha * 64,
    )


def build(root: Path) -> tuple[Path, Jobs]:
    cfg = {
        "router": {"ae_title": "DICOM_ROUTER", "state_dir": str(root / "state"), "log_dir": str(root / "log")},
        "nodes": {
            "CT_SCANNER_1": {"ae_title": "CT1", "host": "10.1.2.3", "port": 104, "role": "source"},
            "PACS_MAIN": {"ae_title": "PACS", "host": "10.1.2.10", "port": 104, "role": "destination"},
            "VNA": {"ae_title": "VNA", "host": "10.1.2.12", "port": 104, "role": "destination"},
        },
        "routes": [{"name": "ct-to-pacs", "match": {"Modality": "CT"}, "to": ["PACS_MAIN"]}],
    }
    root.mkdir(parents=True)
    config = root / "router.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    store = Store(root / "state" / "queue.sqlite3", durable=False)
    store.init()
    pacs = [NewJob("PACS_MAIN", "ct-to-pacs", 1)]
    try:
        sop = "1.2.826.0.1.3680043.10.88.1"
        first = store.add_instance("a1", facts(1, "a", sop), pacs, NOW - 600).job_ids[0]
        for job in store.claim("PACS_MAIN", "fwd-1", 10, 60, NOW - 590):
            store.ack(job.id, 0x0000, "stored by PACS_MAIN", NOW - 589, keep_spool=False)
        duplicate = store.add_instance("a2", facts(1, "a", sop), pacs, NOW - 300).skipped[0].job_id
        conflict = store.add_instance("a3", facts(1, "b", sop), pacs, NOW - 200).held[0]
        waiting = store.add_instance("c1", facts(3, "c"), [NewJob("VNA", "vna", 3, wait_for="study")], NOW - 100)
        review = store.add_instance("d1", facts(4, "d"), [NewJob("PACS_MAIN", "no-pid", 1, hold_reason=REVIEW)], NOW)
    finally:
        store.close()
    return config, Jobs(first, duplicate, conflict, waiting.waiting[0], review.held[0])


@pytest.fixture
def queue(tmp_path: Path, utc: None) -> tuple[Path, Jobs]:
    return build(tmp_path / "site")


def run(config: Path, script: Callable[[Pilot[Any]], Awaitable[None]]) -> None:
    app = QueueApp(Backend(config, "night-nurse", clock=lambda: NOW), refresh_seconds=3600, theme="textual-dark")

    async def main() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot)
            await script(pilot)

    asyncio.run(main())


def plain(where: Any, selector: str) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(where.query_one(selector, Static).content)
    return console.export_text()


def test_the_store_made_the_states_these_tests_are_about(queue: tuple[Path, Jobs]) -> None:
    config, jobs = queue
    backend = Backend(config, "night-nurse", clock=lambda: NOW)
    states = {j.id: j.state for j in backend.jobs(JobQuery()).jobs}
    assert states == {jobs.first_copy: "done", jobs.duplicate: "skipped", jobs.conflict: "held",
                      jobs.waiting: "waiting", jobs.review: "held"}  # fmt: skip


# -- words --------------------------------------------------------------------------------------------------------
def test_every_state_is_offered_in_the_filter_and_not_done_includes_waiting() -> None:
    assert set(STATES) == {s.value for s in JobState}  # every state the store knows, committed included
    assert ("not done (queued, waiting, failed, held)", "queued,waiting,failed,held") in STATE_OPTIONS
    assert ("sent, awaiting commitment", AWAITING_COMMITMENT) in STATE_OPTIONS
    # as Store.retry/hold/cancel take them
    assert ACTIONS["retry"].applies_to == "failed, queued, skipped or sent-awaiting-commitment"
    assert ACTIONS["hold"].applies_to == "queued, waiting or failed"
    assert ACTIONS["cancel"].applies_to == "queued, waiting, held or failed"
    body = confirm_body(ACTIONS["retry"], Target.for_ids([7]))
    assert "a skipped duplicate is sent anyway" in body
    assert "Only failed, queued, skipped or sent-awaiting-commitment jobs change" in body


def test_advice_for_the_new_states() -> None:
    dup = {"event": "duplicate", "detail": "identical object already done for PACS_MAIN by job 12: not sent again; "
           "`dicom-router queue retry 17` sends it anyway"}  # fmt: skip
    assert advice("skipped", None, why=dup, destination="PACS_MAIN") == (
        "identical object already sent to PACS_MAIN by an earlier job (job 12): not sent twice. "
        "r (retry) sends it anyway."
    )
    queued = {"event": "duplicate", "detail": "identical object already queued for VNA by job 3: not sent again"}
    assert advice("skipped", None, why=queued, destination="VNA").startswith("identical object already queued for VNA")
    assert advice("skipped", None).startswith("identical object already sent to its destination by an earlier job:")
    assert advice("waiting", None, wait_for="series").startswith("nothing: it is sent with the rest of its series")
    conflict = {"event": "uid_conflict", "detail": "held: job 5 took another object with the same SOP Instance UID"}
    words = advice("held", None, why=conflict, destination="PACS_MAIN")
    assert words.startswith("CONFLICT: a different object with the same SOP Instance UID already went to PACS_MAIN "
                            "(job 5). Check the patient and study identifiers of both versions")  # fmt: skip
    assert advice("held", None, why={"event": "route_hold", "detail": REVIEW}) == (
        f"held by its route for review: {REVIEW}. Check, then s releases it."
    )
    assert advice("held", None, why={"event": "operator_hold"}) == "an operator is holding it: s releases it"
    assert cause([{"event": "operator_hold"}, {"event": "operator_release"}, {"event": "uid_conflict"}]) == {
        "event": "uid_conflict"
    }


# -- the screens --------------------------------------------------------------------------------------------------
def test_skipped_filter_explains_and_retry_sends_it_anyway(queue: tuple[Path, Jobs]) -> None:
    config, jobs = queue

    async def script(pilot: Pilot[Any]) -> None:
        s = pilot.app.screen
        assert isinstance(s, QueueScreen)
        s.query_one("#f-state", Select).value = "skipped"
        await settle(pilot)
        assert [r.id for r in s.rows] == [jobs.duplicate]
        current = str(s.query_one("#current", Static).render())
        assert "identical object already sent to PACS_MAIN by an earlier job: not sent twice" in current
        await pilot.press("enter")
        await settle(pilot)
        detail = pilot.app.screen
        assert isinstance(detail, JobScreen)
        facts_text = plain(detail, "#job-facts")
        assert f"already sent to PACS_MAIN by an earlier job (job {jobs.first_copy})" in facts_text
        assert "skipped: duplicate" in plain(detail, "#events") and "SKIPPED" in facts_text
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        reason = pilot.app.screen
        assert isinstance(reason, ReasonScreen)
        reason.query_one("#reason", Input).value = "PACS lost it: resend"
        await pilot.press("enter", "enter")
        await settle(pilot)
        assert "QUEUED" in plain(pilot.app.screen, "#job-facts")
        assert "retried by operator" in plain(pilot.app.screen, "#events")

    run(config, script)


def test_held_for_a_conflict_and_waiting_say_what_to_check(queue: tuple[Path, Jobs]) -> None:
    config, jobs = queue

    async def script(pilot: Pilot[Any]) -> None:
        s = pilot.app.screen
        assert isinstance(s, QueueScreen)
        table = s.query_one("#jobs", DataTable)
        ids = [r.id for r in s.rows]
        for job_id, words in (
            (jobs.conflict, f"CONFLICT: a different object with the same SOP Instance UID already went to PACS_MAIN "
                            f"(job {jobs.first_copy}). Check the patient and study identifiers"),
            (jobs.review, f"held by its route for review: {REVIEW}"),
            (jobs.waiting, "nothing: it is sent with the rest of its study once the study is complete"),
        ):  # fmt: skip
            table.move_cursor(row=ids.index(job_id))
            await pilot.press("enter")
            await settle(pilot)
            detail = pilot.app.screen
            assert isinstance(detail, JobScreen) and detail.job_id == job_id
            assert words in " ".join(plain(detail, "#job-facts").split())
            if job_id == jobs.conflict:
                assert "UID CONFLICT" in plain(detail, "#events")
            if job_id == jobs.waiting:
                assert "when its study is complete" in plain(detail, "#job-facts")
            await pilot.press("escape")
            await settle(pilot)

    run(config, script)
