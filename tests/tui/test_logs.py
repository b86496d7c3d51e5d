"""Logs/Audit: the service log and the audit trail as written by the router, toggle, filter (any case), follow
and hold, errors in words; snapshots at 80×24 and 120×40."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Label, RichLog

from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend
from appliance.tui.screens.logs import LogsScreen, format_line, log_level
from tests.tui.fixtures_dashboard import NOW, State, build_outage, freeze_host, write_config

Settle = Callable[[Pilot[Any]], Awaitable[None]]
SNAP_ROOT = Path("/tmp/dicom-router-snap-logs")


@pytest.fixture
def outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> State:
    freeze_host(monkeypatch)
    return build_outage(tmp_path / "site")


def make_app(config_path: Path) -> ConsoleApp:
    return ConsoleApp(Backend(config_path, "alice", clock=lambda: NOW), refresh_seconds=3600)


def shown(app: ConsoleApp) -> list[str]:
    """The rows on screen (a long line wraps onto several)."""
    view = app.screen.query_one("#logs-view", RichLog)
    return [strip.text.rstrip() for strip in view.lines]


def entries(app: ConsoleApp) -> list[str]:
    """The log lines the screen shows, before wrapping."""
    screen = app.screen
    assert isinstance(screen, LogsScreen) and screen.shown is not None
    return screen.shown.lines


def title(app: ConsoleApp) -> str:
    return str(app.screen.query_one("#logs-title", Label).render())


async def open_logs(pilot: Pilot[Any], settle: Settle) -> LogsScreen:
    await settle(pilot)
    await pilot.press("l")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, LogsScreen)
    return screen


async def filter_on(pilot: Pilot[Any], settle: Settle, text: str) -> None:
    await pilot.press("slash")
    pilot.app.screen.query_one("#logs-filter", Input).value = text
    await pilot.press("enter")
    await settle(pilot)


def test_service_log_tail_then_audit_trail(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(200, 60)) as pilot:
            await open_logs(pilot, settle)
            lines = shown(app)
            assert lines[-1] == (
                "2027-01-15T07:59:05.000Z info receiver: accepted 1 object(s) from CT1 (10.1.2.3), "
                "study 1.2.826.0.1.3680043.10.511.1"
            )
            assert any("error forwarder: destination PACS_MAIN: 5 connection failures in a row" in ln for ln in lines)
            assert title(app).startswith("Service log · following · 60 lines")

            await pilot.press("t")
            await settle(pilot)
            lines = [format_line(line)[0] for line in entries(app)]
            assert title(app).startswith("Audit trail")
            assert lines[0].startswith(
                "2027-01-15T07:25:00.000Z forward_failed FAILURE (forwarder): destination PACS_MAIN "
                "(PACS@10.1.2.10:104) does not accept SOP class"
            )
            assert lines[1] == (
                "2027-01-15T07:35:00.000Z destination_pause by alice (console): vendor maintenance window (CHG0412) "
                "· destination=AI_CLOUD changed=true"
            )
            assert lines[2].startswith("2027-01-15T07:40:00.000Z queue_retry by bob (cli): INC0042 PACS restarted?")

            await pilot.press("t")
            await settle(pilot)
            assert title(app).startswith("Service log")

    asyncio.run(go())


def test_filter_any_case_and_clearing_it(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(200, 60)) as pilot:
            await open_logs(pilot, settle)
            await filter_on(pilot, settle, "pacs_main")
            lines = entries(app)
            assert len(lines) == 10 and all("PACS_MAIN" in ln for ln in lines)
            assert "filter “pacs_main”" in title(app) and "10 lines" in title(app)
            assert app.focused is app.screen.query_one("#logs-view")  # back to the lines for scrolling

            await filter_on(pilot, settle, "no-such-thing")
            assert shown(app) == [
                "No line of the service log contains “no-such-thing” (its last 4 MB). To clear the filter: / then "
                "Enter."
            ]
            await filter_on(pilot, settle, "")
            assert len(entries(app)) == 60

    asyncio.run(go())


def test_escape_leaves_the_filter_without_applying_it(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_logs(pilot, settle)
            await pilot.press("slash", "x")
            assert app.focused is screen.query_one("#logs-filter")
            await pilot.press("escape")
            await settle(pilot)
            assert app.focused is screen.query_one("#logs-view")
            assert screen.contains == "" and len(shown(app)) > 0

    asyncio.run(go())


def _append_log(state: State, message: str) -> None:
    rec = {"time": "2027-01-15T08:00:01.000Z", "level": "error", "process": "forwarder", "logger": "x",
           "message": message}  # fmt: skip
    with state.log_path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def test_follow_reloads_on_the_tick_and_hold_keeps_still(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage.config_path)
        async with app.run_test(size=(200, 60)) as pilot:
            await open_logs(pilot, settle)
            _append_log(outage, "first new line")
            app.refresh_tick()
            await settle(pilot)
            assert shown(app)[-1].endswith("error forwarder: first new line")

            await pilot.press("f")
            assert "held" in title(app)
            _append_log(outage, "second new line")
            app.refresh_tick()
            await settle(pilot)
            assert shown(app)[-1].endswith("first new line")  # held: the view does not move

            await pilot.press("r")  # but r reloads on demand
            await settle(pilot)
            assert shown(app)[-1].endswith("second new line")

            await pilot.press("f")
            assert "following" in title(app)

    asyncio.run(go())


def test_no_log_yet_and_unreadable_config_are_words(tmp_path: Path, settle: Settle) -> None:
    config_path = write_config(tmp_path / "fresh")

    async def go() -> None:
        app = make_app(config_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await open_logs(pilot, settle)
            assert shown(app) == ["The service log is empty (or not written yet): has the router run with this config?"]
            config_path.write_text("router: [unclosed\n")  # broken beyond reading the state locations
            await pilot.press("r")
            await settle(pilot)
            assert " ".join(shown(app)).startswith("Cannot read the service log: ")
            assert isinstance(app.screen, LogsScreen) and app.is_running

    asyncio.run(go())


def test_backend_tails_filter_in_any_case_only_when_asked(outage: State) -> None:
    backend = Backend(outage.config_path, "alice", clock=lambda: NOW)
    assert backend.log_tail(5, "pacs_main") == []  # exact, as the evidence export needs it
    lines = backend.log_tail(5, "pacs_main", ignore_case=True)
    assert len(lines) == 5 and all("PACS_MAIN" in ln for ln in lines)
    assert lines[-1].startswith("2027-01-15T07:55:00.000Z warning forwarder: PACS_MAIN:")
    audit = backend.audit_tail(10, "ai_cloud", ignore_case=True)
    assert len(audit) == 1 and json.loads(audit[0])["event"] == "destination_pause"


def test_audit_lines_read_as_sentences() -> None:
    entry = {"time": "T", "event": "config_apply", "outcome": "failure", "process": "cli", "author": "jdoe",
             "reason": "add ARCHIVE", "version": 4, "problems": ["line 3: unknown key"], "ticket": None}  # fmt: skip
    line = json.dumps(entry)
    assert format_line(line) == (
        'T config_apply FAILURE by jdoe (cli): add ARCHIVE · version=4 problems=["line 3: unknown key"]',
        "error",
    )
    assert format_line("not json") == ("not json", "")
    assert format_line("[1, 2]") == ("[1, 2]", "")
    assert format_line(json.dumps({"time": "T", "event": "x", "filter": {"a": "b" * 300}}))[0].endswith("…")


def test_log_levels() -> None:
    assert log_level("T error forwarder: x") == "error"
    assert log_level("T critical receiver: x") == "error"
    assert log_level("T warning scheduler: x") == "warning"
    assert log_level("T info receiver: error in the message does not count") == ""
    assert log_level("plain text line") == ""


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("source", ["log", "audit"])
def test_snapshot(
    snap_compare: Any, monkeypatch: pytest.MonkeyPatch, settle: Settle, size: tuple[int, int], source: str
) -> None:
    freeze_host(monkeypatch)
    state = build_outage(SNAP_ROOT)

    async def before(pilot: Pilot[Any]) -> None:
        await open_logs(pilot, settle)
        if source == "audit":
            await pilot.press("t")
            await settle(pilot)

    assert snap_compare(make_app(state.config_path), terminal_size=size, run_before=before)
