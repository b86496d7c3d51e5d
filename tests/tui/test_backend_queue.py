"""The queue screen's side of the backend, without Textual: paging, filters, actions, re-route, pause, unrouted,
evidence against a real queue database (and once against a running router) — plus the screen's pure helpers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.tui.backend import Backend, BackendError, JobQuery
from appliance.tui.screens.queue_model import (
    ACTIONS,
    FilterError,
    Pager,
    Target,
    advice,
    confirm_body,
    confirm_title,
    describe_query,
    fmt_duration,
    parse_age,
    short_error,
)
from tests.support.data import make_ct_series
from tests.support.peers import Router, StoreSCP, dest_node, storescu, wait_until
from tests.tui.fixtures_queue import AE_REJECTED, COUNTS, NOW, QueueState, queue_state, utc

__all__ = ["queue_state", "utc"]

TOTAL = sum(v for k, v in COUNTS.items() if k != "unrouted")


@pytest.fixture
def backend(queue_state: QueueState, monkeypatch: pytest.MonkeyPatch) -> Backend:
    monkeypatch.setattr("appliance.router.store.time", SimpleNamespace(time=lambda: NOW))  # "older than" cut-off
    return Backend(queue_state.config_path, "night-nurse", clock=lambda: NOW)


def audit(state: QueueState) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state.root / "log" / "audit.jsonl").read_text().splitlines()]


# -- paging and filters ---------------------------------------------------------------------------------------
def test_keyset_pages_cover_every_job_exactly_once(backend: Backend) -> None:
    seen, after, pages = [], None, 0
    while True:
        page = backend.jobs(JobQuery(), after, limit=40)
        pages += 1
        assert page.total == TOTAL
        seen += [j.id for j in page.jobs]
        if page.after_id is None:
            break
        after = page.after_id
    assert seen == list(range(1, TOTAL + 1)) and pages == -(-TOTAL // 40)


@pytest.mark.parametrize(
    ("query", "total"),
    [
        (JobQuery(destination="PACS_MAIN"), 149),
        (JobQuery(states=("failed",)), 14),
        (JobQuery(destination="PACS_MAIN", states=("queued", "failed", "held")), 149),
        (JobQuery(accession="ACC-MIX"), 5),
        (JobQuery(patient_id="PID-MIX"), 5),
        (JobQuery(study_uid="1.2.826.0.1.3680043.10.77.20"), 2),
        (JobQuery(older_than_seconds=4 * 3600), 14),
        (JobQuery(destination="ARCHIVE", states=("done",), older_than_seconds=3600), 30),
    ],
)
def test_filters_select_what_they_say(backend: Backend, query: JobQuery, total: int) -> None:
    page = backend.jobs(query)
    assert page.total == total == backend.count(query)
    assert len(page.jobs) == min(total, 100)


def test_a_slow_total_is_capped_on_the_page_but_exact_for_actions(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("appliance.tui.backend.COUNT_CAP", 10)
    query = JobQuery(older_than_seconds=4 * 3600)  # an instance column: the count needs the join
    page = backend.jobs(query)
    assert page.total_capped and page.total == 10
    assert backend.count(query) == 14  # what a confirmation shows
    assert not backend.jobs(JobQuery(destination="PACS_MAIN")).total_capped  # job-only filters stay exact


# -- actions, as the screen sends them ---------------------------------------------------------------------------
def test_act_on_ids_and_on_a_filter(backend: Backend, queue_state: QueueState) -> None:
    out = backend.act("hold", Target.for_ids([1, 2, 15]).query, "wrong patient?")
    assert (out.changed, out.skipped) == (2, 1)  # job 15 is done: hold does not apply
    out = backend.act("retry", JobQuery(destination="PACS_MAIN", states=("failed",)), "INC1: AE fixed")
    assert out.changed == 12
    assert queue_state.states(destination="PACS_MAIN") == {"held": 2, "queued": 147}
    entries = audit(queue_state)
    assert [(e["event"], e["operator"], e["process"]) for e in entries] == [
        ("queue_hold", "night-nurse", "console"),
        ("queue_retry", "night-nurse", "console"),
    ]
    assert entries[1]["filter"] == {"destination": "PACS_MAIN", "states": ["failed"]}


def test_acting_on_everything_needs_allow_all(backend: Backend, queue_state: QueueState) -> None:
    target = Target.for_filter(JobQuery(), backend.count(JobQuery()))
    assert target.allow_all and target.count == TOTAL
    with pytest.raises(BackendError, match="name the jobs to hold"):
        backend.act("hold", target.query, "x")
    assert backend.act("hold", target.query, "x", allow_all=target.allow_all).changed == 149


def test_reroute_and_its_refusal(backend: Backend, queue_state: QueueState) -> None:
    with pytest.raises(BackendError, match=r"NOWHERE is not a destination in the config \(destinations: ARCHIVE, "):
        backend.reroute(JobQuery(accession="ACC-MIX"), "NOWHERE", "x")
    out = backend.reroute(JobQuery(accession="ACC-MIX"), "PACS_DR", "misrouted")
    assert out.changed == 5 and out.detail["new_jobs"] == 5
    assert queue_state.states(destination="PACS_DR") == {"queued": 5}


def test_pause_resume_and_destination_state(backend: Backend) -> None:
    assert backend.destination_state("PACS_DR") is None  # never recorded: not paused
    backend.set_paused("PACS_MAIN", True, "maintenance")
    state = backend.destination_state("PACS_MAIN")
    assert state is not None and state.paused and state.paused_by == "night-nurse" and state.circuit == "open"
    assert state.paused_reason == "maintenance"
    assert backend.set_paused("PACS_MAIN", False, "done").changed == 1
    state = backend.destination_state("PACS_MAIN")
    assert state is not None and not state.paused


def test_destination_names_status_words_and_a_broken_config(backend: Backend, queue_state: QueueState) -> None:
    assert backend.destination_names() == ["ARCHIVE", "PACS_DR", "PACS_MAIN"]
    assert backend.describe_status(0x0122) == "0x0122 (refused: the destination does not support this SOP class)"
    queue_state.config_path.write_text(queue_state.config_path.read_text() + "bogus_key: 1\n")
    assert backend.destination_names() == []  # the queue still shows; re-route explains itself
    assert backend.jobs(JobQuery()).total == TOTAL
    with pytest.raises(BackendError, match="the live config has 1 problem"):
        backend.reroute(JobQuery(ids=(1,)), "PACS_DR", "x")


def test_unrouted_objects_routed_by_id(backend: Backend, queue_state: QueueState) -> None:
    rows = backend.unrouted()
    assert [r["id"] for r in rows] == [190, 191, 192] and {r["calling_ae"] for r in rows} == {"US9"}
    assert backend.route_unrouted([190], ["ARCHIVE", "PACS_DR"], "US to archive").changed == 1
    assert [r["id"] for r in backend.unrouted()] == [191, 192]
    assert backend.jobs(JobQuery(destination="PACS_DR")).total == 1


def test_evidence_for_a_study_leaves_patient_ids_out(backend: Backend, queue_state: QueueState) -> None:
    path = backend.evidence(study_uid="1.2.826.0.1.3680043.10.77.10")
    text = path.read_text()
    assert "4 job(s) match" in text and AE_REJECTED.split(" (retry")[0] in text
    assert "PID00010" not in text
    assert audit(queue_state)[-1]["event"] == "evidence_export"


def test_job_detail_has_every_event(backend: Backend) -> None:
    detail = backend.job(1)
    assert [e["event"] for e in detail.events] == ["attempt_failed", "attempt_failed", "failed"]
    with pytest.raises(BackendError, match="there is no job 9999"):
        backend.job(9999)


# -- the screen's pure helpers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("", None), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("90s", 90), ("1.5h", 5400), ("45", 2700),
     ("older than 2h", 7200), (" 1w ", 604800)],
)  # fmt: skip
def test_parse_age(text: str, seconds: float | None) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "2 hours", "4h50m", "-3m"])
def test_parse_age_says_how_to_write_it(bad: str) -> None:
    with pytest.raises(FilterError, match="write 30m, 2h or 7d"):
        parse_age(bad)


def test_words_for_people() -> None:
    assert [fmt_duration(s) for s in (5, 125, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == ["5s", "2m", "3h05m", "2d04h"]
    q = JobQuery(destination="PACS_MAIN", states=("queued", "failed"), older_than_seconds=1800)
    assert describe_query(q) == "destination PACS_MAIN, state queued or failed, older than 30m"
    assert describe_query(JobQuery()) == "no filter: every job in the queue"
    assert Target.for_ids([7]).words == "job 7" and Target.for_ids([3, 1, 2]).query.ids == (1, 2, 3)
    target = Target.for_filter(q, 1204)
    assert confirm_title(ACTIONS["retry"], target) == (
        "Retry 1,204 jobs (all matching: destination PACS_MAIN, state queued or failed, older than 30m)?"
    )
    assert "EVERY job" not in confirm_body(ACTIONS["retry"], target)
    assert short_error(AE_REJECTED).startswith("rejected the association permanently: called AE title not recog")
    assert advice("failed", AE_REJECTED).startswith("the AE title in our config does not match")
    assert advice("held", None, why={"event": "operator_hold"}) == "an operator is holding it: s releases it"
    assert advice("held", None) == "held: its history (Enter) says who or what holds it and why; s releases it"


def test_pager_keeps_exact_page_starts() -> None:
    pager = Pager()
    assert not pager.forward() and not pager.back() and pager.page == 1
    pager.next_after = 100
    assert pager.forward() and pager.current == 100 and pager.page == 2
    pager.next_after = 200
    assert pager.forward() and pager.back() and pager.current == 100
    pager.reset()
    assert pager.current is None and pager.page == 1


# -- against a running router ----------------------------------------------------------------------------------
def test_backend_against_a_running_router(tmp_path: Path) -> None:
    """A destination with nothing listening and max_attempts 1: jobs fail; the console's retry (by query, as the
    screen's "all matching" sends it) delivers them once the destination is up, audited under the operator."""
    scp = StoreSCP(tmp_path, "PACS")  # port reserved, nothing listening yet
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port, retry={"base_seconds": 0.2, "max_attempts": 1},
                                             circuit={"open_after_failures": 50})},
        router_extra={"drain_seconds": 0.5},  # nothing in flight at the end: do not wait the default 5 s
    ).start()  # fmt: skip
    try:
        files = make_ct_series(tmp_path / "in", 3, rows=16, cols=16, accession="ACC_LIVE")
        assert storescu(router.port, files).returncode == 0
        backend = Backend(router.config_path, "e2e-operator")
        failed = JobQuery(destination="PACS_MAIN", states=("failed",))
        wait_until(lambda: backend.count(failed) == 3, 30, "3 failed jobs")
        page = backend.jobs(failed)
        assert "connection refused" in (page.jobs[0].last_error or "")
        scp.start()
        assert backend.act("retry", failed, "PACS is back").changed == 3
        router.wait_delivered(3, timeout=60)
        detail = backend.job(page.jobs[0].id)
        events = [(e["event"], e["actor"]) for e in detail.events]
        assert ("operator_retry", "e2e-operator") in events and events[-1][0] == "delivered"
        retry = [e for e in router.audit() if e["event"] == "queue_retry"]
        assert retry and retry[0]["operator"] == "e2e-operator" and retry[0]["process"] == "console"
    finally:
        router.stop()
        scp.stop()
