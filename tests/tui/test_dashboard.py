"""The dashboard: problems in plain words worst first (backend, no Textual), then every key on the screen with a
real queue database and config history, errors included, and snapshots of a 3 a.m. outage at 80×24 and 120×40."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Input, Sparkline, Static

from appliance.router.clock import ClockState
from appliance.router.store import Store
from appliance.tui import problems as pr
from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend, BackendError
from appliance.tui.screens.dashboard import DashboardScreen
from appliance.tui.widgets import MessageScreen, ReasonScreen
from tests.tui.fixtures_config import wait_for
from tests.tui.fixtures_dashboard import NOW, State, build_outage, freeze_host, write_config

Settle = Callable[[Pilot[Any]], Awaitable[None]]
SNAP_ROOT = Path("/tmp/dicom-router-snap-dashboard")


@pytest.fixture
def outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> State:
    freeze_host(monkeypatch)
    return build_outage(tmp_path / "site")


def make_app(config_path: Path, operator: str = "alice") -> ConsoleApp:
    return ConsoleApp(Backend(config_path, operator, clock=lambda: NOW), refresh_seconds=3600)


def text_of(app: ConsoleApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def audit(state: State) -> list[dict[str, Any]]:
    return [json.loads(line) for line in state.audit_path.read_text().splitlines() if line.strip()]


# -- problems in words (backend, no Textual) --------------------------------------------------------------
def test_dashboard_problems_are_sentences_worst_first(outage: State) -> None:
    dash = Backend(outage.config_path, "alice", clock=lambda: NOW).dashboard()
    assert dash.levels == ["error", "error", "warning"]
    down, refused, paused = dash.problems
    assert down.startswith(
        "PACS_MAIN (PACS@10.1.2.10:104) unreachable for 42 min: connection refused by 10.1.2.10:104 — nothing "
        "listens on that port"
    )
    assert "45 waiting (oldest 45 min)" in down and "resumes by itself" in down
    assert refused.startswith("PACS_MAIN has refused 3 object(s) for 51 min: does not accept SOP class")
    assert "retry them" in refused
    assert paused.startswith("AI_CLOUD PAUSED by alice 25 min ago (vendor maintenance window (CHG0412)): 15 waiting")
    assert not any("sends paused" in p for p in dash.problems)  # status's own wording is replaced, not repeated
    assert sum(dash.throughput) == 90 and len(dash.throughput) == 30


def _dest(name: str = "PACS_MAIN", **kw: Any) -> dict[str, Any]:
    d = {"name": name, "backlog": 0, "oldest_pending_age_seconds": None, "failures_last_hour": 0, "circuit": "closed",
         "circuit_since": None, "last_error": None, "paused": False, "paused_by": None, "paused_reason": None,
         "paused_at": None, "configured": True, "counts": {"failed": 0}}  # fmt: skip
    d.update(kw)
    return d


def _report(problems: list[str], destinations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"problems": problems, "destinations": destinations or []}


NO_CHRONY = ClockState(False, message="chrony is not installed here")


def test_ranking_puts_stopped_services_and_outages_before_housekeeping() -> None:
    report = _report(
        [
            "1 object(s) matched no route (kept; see `queue ls --state unrouted`)",
            "config /etc/dicom-router/router.yaml was edited outside `config apply` (differs from version 3)",
            "spool disk 91% full (above router.disk_warn_percent 85%): free space or fix the destinations",
            "certificate CN=router in /etc/dicom-router/tls/router.pem expires in 12 day(s), on 2027-01-27 — renew it",
            "scheduled job backup failed (last 7h ago): SFTP server 10.0.0.9 unreachable",
            "forwarder is not running (no heartbeat)",
            "spool disk has 300 MB free, below the 512 MB reserve: senders are refused with 0xA700",
            "PACS_MAIN unreachable, sends paused: whatever status said",
        ],
        [
            _dest(
                circuit="open",
                circuit_since=NOW - 600,
                backlog=5,
                oldest_pending_age_seconds=700,
                last_error="no answer from 10.1.2.10:104 within 10 s — host down or firewall",
            )
        ],
    )
    ranked = pr.console_problems(report, NO_CHRONY, {}, NOW)
    starts = [p.text.split(" ")[0] + " " + p.text.split(" ")[1] for p in ranked]
    assert starts == [
        "forwarder is",
        "PACS_MAIN unreachable",
        "spool disk",  # the reserve: senders refused
        "spool disk",  # above the warning mark
        "scheduled job",
        "certificate CN=router",
        "config /etc/dicom-router/router.yaml",
        "1 object(s)",
    ]
    assert "below the 512 MB reserve" in ranked[2].text
    assert [p.level for p in ranked][:3] == ["error", "error", "error"] and ranked[3].level == "warning"
    assert ranked[1].text == (
        "PACS_MAIN unreachable for 10 min: no answer from 10.1.2.10:104 within 10 s — host down or firewall. "
        "5 waiting (oldest 11 min); sending resumes by itself when it answers."
    )


def test_a_uid_conflict_ranks_above_housekeeping_in_console_words() -> None:
    conflict = (
        "2 job(s) held: a different object arrived under an already-seen SOP Instance UID — compare patient and "
        "study of both versions before releasing (`queue ls --state held`)"
    )
    ranked = pr.console_problems(
        _report(["1 object(s) matched no route (kept; see `queue ls --state unrouted`)", conflict]), NO_CHRONY, {}, NOW
    )
    assert ranked[0].text == conflict.replace(
        "(`queue ls --state held`)",
        "(Queue: u, filter state held; Enter on a job shows which earlier job it conflicts with)",
    )
    assert ranked[0].level == "error"


def test_a_slow_destination_and_a_removed_one_are_named() -> None:
    slow = _dest("ARCHIVE", backlog=300, oldest_pending_age_seconds=2 * 3600 + 300, failures_last_hour=4,
                 last_error="destination ARCHIVE (ARCHIVE@10.1.2.20:104): association aborted")  # fmt: skip
    gone = _dest("OLD_PACS", backlog=12, oldest_pending_age_seconds=90, configured=False)
    ranked = pr.console_problems(_report([], [slow, gone]), NO_CHRONY, {}, NOW)
    assert [p.text for p in ranked] == [
        "OLD_PACS is no longer in the config but 12 waiting (oldest 90 s): re-route or cancel them in the queue.",
        "ARCHIVE is falling behind: 300 waiting (oldest 2 h 05 min); 4 failed attempt(s) in the last hour, the last: "
        "association aborted.",
    ]


def test_clock_problems_only_when_chrony_says_so() -> None:
    unsynced = ClockState(True, False, message="NOT synchronised: timestamps may be wrong")
    off = ClockState(True, True, 3.5, "ntp1", 2, "synchronised to ntp1 but +3.500 s off — still converging")
    fine = ClockState(True, True, 0.0001, "ntp1", 2, "synchronised")
    assert [p.text for p in pr.console_problems(_report([]), unsynced, {}, NOW)] == [
        "clock NOT synchronised: timestamps may be wrong"
    ]
    assert pr.console_problems(_report([]), off, {}, NOW)[0].level == "warning"
    assert pr.console_problems(_report([]), fine, {}, NOW) == []
    assert pr.console_problems(_report([]), NO_CHRONY, {}, NOW) == []


def test_age_words() -> None:
    assert [pr.age_words(s) for s in (None, 5, 119, 120, 7199, 7200, 172800 + 3600)] == [
        "-", "5 s", "119 s", "2 min", "119 min", "2 h 00 min", "2 days 1 h"
    ]  # fmt: skip


# -- the screen -------------------------------------------------------------------------------------------
def test_outage_at_a_glance(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            assert isinstance(app.screen, DashboardScreen)
            services = text_of(app, "#services")
            assert "receiver" in services and "running" in services and "3 problem(s)" in services
            problems = text_of(app, "#problems").splitlines()
            assert problems[0].startswith("✗ PACS_MAIN (PACS@10.1.2.10:104) unreachable for 42 min")
            assert any(line.startswith("! AI_CLOUD PAUSED by alice") for line in problems)
            table = app.screen.query_one("#destinations", DataTable)
            rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
            assert rows == [
                ["PACS_MAIN", "45", "45m", "3", "20", "OPEN", "no"],
                ["ARCHIVE", "0", "-", "0", "0", "closed", "no"],
                ["AI_CLOUD", "15", "20m", "0", "0", "closed", "PAUSED"],
            ]
            assert sum(app.screen.query_one(Sparkline).data or []) == 90
            facts = text_of(app, "#facts")
            assert "41%" in facts and "118.0 GB free" in facts
            assert "synchronised, offset +0.012 ms · ntp1.hospital.example stratum 2" in facts
            assert "version 1 (ansible by jdoe, 2027-01-14T16:05:00Z)" in facts
            assert "3 certificate(s)" in facts

    asyncio.run(go())


class FakeQueue(Screen[None]):
    """Stands in for the queue screen (its own tests are elsewhere): records the filter the dashboard asks for."""

    filters: list[dict[str, Any]] = []

    def apply_filter(self, **fields: Any) -> None:
        FakeQueue.filters.append(fields)


def test_enter_shows_the_destinations_jobs_in_the_queue(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    import appliance.tui.screens.queue as queue_module

    monkeypatch.setattr(queue_module, "QueueScreen", FakeQueue)
    FakeQueue.filters = []

    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("down", "enter")
            await pilot.pause()
            assert app.current_mode == "queue" and isinstance(app.screen, FakeQueue)
            assert FakeQueue.filters == [{"destination": "ARCHIVE"}]
            await pilot.press("d")
            await settle(pilot)
            assert isinstance(app.screen, DashboardScreen)
            assert app.screen.selected_destination() == "ARCHIVE"  # the cursor stays where it was

    asyncio.run(go())


def test_enter_on_a_queue_screen_without_filters_says_so(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    import appliance.tui.screens.queue as queue_module

    class Plain(Screen[None]):
        pass

    monkeypatch.setattr(queue_module, "QueueScreen", Plain)

    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("enter")
            await pilot.pause()
            assert app.current_mode == "queue"
            assert any("look for PACS_MAIN by hand" in str(n.message) for n in app._notifications)

    asyncio.run(go())


async def _answer_reason(pilot: Pilot[Any], reason: str, ticket: str = "") -> None:
    screen = pilot.app.screen
    assert isinstance(screen, ReasonScreen)
    screen.query_one("#reason", Input).value = reason
    await pilot.press("enter")
    screen.query_one("#ticket", Input).value = ticket
    await pilot.press("enter")


def test_pause_and_resume_ask_why_and_are_audited_under_the_operator(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage.config_path, operator="night-oncall")
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await pilot.press("down", "p")  # ARCHIVE
            await pilot.pause()
            assert isinstance(app.screen, ReasonScreen)
            assert app.screen.title_text == "Pause sending to ARCHIVE?"
            await pilot.press("enter", "enter")  # reason → ticket → OK with no reason: refused, the dialog stays
            assert isinstance(app.screen, ReasonScreen)
            assert "reason is required" in str(app.screen.query_one("#dialog-error").render())
            await _answer_reason(pilot, "network switch replaced", "CHG0777")
            await settle(pilot)
            store = Store(outage.db_path)
            try:
                s = store.destination_stats(NOW)["ARCHIVE"]
                assert s.paused and s.paused_by == "night-oncall"
                assert s.paused_reason == "CHG0777: network switch replaced"
            finally:
                store.close()
            table = app.screen.query_one("#destinations", DataTable)
            # The refresh the action triggers starts when it returns: under load, after the settle above.
            await wait_for(pilot, lambda: str(table.get_row_at(1)[6]) == "PAUSED", "the table to show PAUSED")
            assert any("ARCHIVE paused" in str(n.message) for n in app._notifications)

            await pilot.press("p")
            await pilot.pause()
            assert app.screen.title_text == "Resume sending to ARCHIVE?"  # type: ignore[attr-defined]
            await _answer_reason(pilot, "switch back")
            await settle(pilot)
            # The table is redrawn by the refresh the action triggers; under load that can take a few ticks.
            deadline = time.monotonic() + 10
            while str(table.get_row_at(1)[6]) != "no" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                await settle(pilot)
            assert str(table.get_row_at(1)[6]) == "no"

    asyncio.run(go())
    entries = [e for e in audit(outage) if e["event"].startswith("destination_")]
    assert [(e["event"], e["operator"], e["destination"], e["reason"]) for e in entries[-2:]] == [
        ("destination_pause", "night-oncall", "ARCHIVE", "CHG0777: network switch replaced"),
        ("destination_resume", "night-oncall", "ARCHIVE", "switch back"),
    ]


def test_escape_cancels_a_pause(outage: State, settle: Settle) -> None:
    before = outage.audit_path.read_text()

    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("p")
            await pilot.pause()
            assert isinstance(app.screen, ReasonScreen)
            await pilot.press("escape")
            await settle(pilot)
            assert isinstance(app.screen, DashboardScreen)

    asyncio.run(go())
    assert outage.audit_path.read_text() == before
    store = Store(outage.db_path)
    try:
        assert not store.destination_stats(NOW)["PACS_MAIN"].paused
    finally:
        store.close()


def test_a_refused_pause_is_explained_in_a_dialog(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Backend, destination: str, paused: bool, reason: str) -> Any:
        raise BackendError("the live config has 1 problem(s); fix it first (Config history → roll back): line 3")

    monkeypatch.setattr(Backend, "set_paused", refuse)

    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("p")
            await pilot.pause()
            await _answer_reason(pilot, "test")
            await settle(pilot)
            assert isinstance(app.screen, MessageScreen) and app.screen.error
            assert app.screen.title_text == "Pause failed"
            assert "fix it first" in app.screen.body
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, DashboardScreen)

    asyncio.run(go())


def test_x_writes_evidence_for_the_selected_destination(outage: State, settle: Settle) -> None:
    async def go() -> MessageScreen:
        app = make_app(outage.config_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("x")
            await settle(pilot)
            assert isinstance(app.screen, MessageScreen) and not app.screen.error
            return app.screen

    shown = asyncio.run(go())
    assert shown.title_text == "Evidence for PACS_MAIN saved"
    path = Path(shown.body.splitlines()[0])
    assert path.parent == outage.root / "state" / "evidence" and path.exists()
    evidence = path.read_text()
    assert "destination PACS_MAIN" in evidence and "connection refused" in evidence
    assert "PID0" not in evidence  # patient IDs stay out of tickets
    last = audit(outage)[-1]
    assert (last["event"], last["operator"], last["subject"]) == ("evidence_export", "alice", "destination PACS_MAIN")


def test_no_queue_database_yet_is_a_message_not_a_crash(tmp_path: Path, settle: Settle) -> None:
    config_path = write_config(tmp_path / "fresh")

    async def go() -> None:
        app = make_app(config_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            problems = text_of(app, "#problems")
            assert "Cannot read the router's state: no queue database at" in problems
            assert "has the router ever run with this config?" in problems
            assert "unknown" in text_of(app, "#services")
            for key in ("p", "x", "enter"):
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.screen, DashboardScreen)
            assert sum("No destination to act on" in str(n.message) for n in app._notifications) >= 2

    asyncio.run(go())


def test_a_failed_refresh_keeps_the_last_figures_and_says_since_when(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)

            def broken(self: Backend) -> Any:
                raise OSError(5, "Input/output error", str(outage.db_path))

            monkeypatch.setattr(Backend, "dashboard", broken)
            app.refresh_tick()
            await settle(pilot)
            problems = text_of(app, "#problems")
            assert "Cannot read the router's state: Input/output error" in problems
            assert "the figures below are from" in problems
            assert app.screen.query_one("#destinations", DataTable).row_count == 3
            assert isinstance(app.screen, DashboardScreen)  # no dialog every few seconds for a refresh

    asyncio.run(go())


def test_the_tick_shows_new_work(outage: State, settle: Settle) -> None:
    from appliance.router.store import NewJob
    from tests.tui.fixtures_dashboard import _facts

    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            store = Store(outage.db_path)
            try:
                store.add_instance("knew", _facts("CT", 9), [NewJob("ARCHIVE", "ct", 1)], NOW - 30)
            finally:
                store.close()
            app.refresh_tick()
            await settle(pilot)
            table = app.screen.query_one("#destinations", DataTable)
            assert [str(c) for c in table.get_row_at(1)][:3] == ["ARCHIVE", "1", "30s"]

    asyncio.run(go())


# -- snapshots --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_outage(
    snap_compare: Any, monkeypatch: pytest.MonkeyPatch, settle: Settle, size: tuple[int, int]
) -> None:
    freeze_host(monkeypatch)
    state = build_outage(SNAP_ROOT)
    assert snap_compare(make_app(state.config_path), terminal_size=size, run_before=settle)


def test_snapshot_disk_filling(snap_compare: Any, monkeypatch: pytest.MonkeyPatch, settle: Settle) -> None:
    freeze_host(monkeypatch, used_fraction=0.93)
    state = build_outage(SNAP_ROOT)
    assert snap_compare(make_app(state.config_path), terminal_size=(80, 24), run_before=settle)
