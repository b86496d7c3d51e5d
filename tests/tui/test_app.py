"""The console's shell: screen keys, help, quit, the refresh tick, the theme on a 16-colour terminal, and that a
failure in a worker or a broken screen module becomes words on screen instead of ending the console."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Static

from appliance.tui import app as app_module
from appliance.tui.app import ANSI_THEME, RICH_THEME, ConsoleApp, error_words, pick_theme
from appliance.tui.backend import Backend, BackendError
from appliance.tui.screens.dashboard import DashboardScreen
from appliance.tui.widgets import BrokenScreen, ConsoleScreen, HelpScreen, MessageScreen
from tests.tui.fixtures_dashboard import NOW, State, build_outage, freeze_host

Settle = Callable[[Pilot[Any]], Awaitable[None]]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> State:
    freeze_host(monkeypatch)
    return build_outage(tmp_path / "site")


def make_app(state: State, **kw: Any) -> ConsoleApp:
    kw.setdefault("refresh_seconds", 3600)
    return ConsoleApp(Backend(state.config_path, "alice", clock=lambda: NOW), **kw)


def test_header_names_the_operator_and_the_config(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage)
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot)
            assert app.current_mode == "dashboard"
            assert app.sub_title == f"operator alice · {outage.config_path}"

    asyncio.run(go())


def test_every_screen_key_reaches_its_screen(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage)
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot)
            for key, mode in (("e", "endpoints"), ("u", "queue"), ("b", "backups"), ("c", "history"),
                              ("l", "logs"), ("w", "rules"), ("d", "dashboard")):  # fmt: skip
                await pilot.press(key)
                await settle(pilot)
                assert app.current_mode == mode
                expected = app_module.SCREENS[mode][1]
                assert type(app.screen).__name__ == expected, f"{mode}: {getattr(app.screen, 'error', '')}"

    asyncio.run(go())


def test_question_mark_explains_the_screen_and_escape_closes_it(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            assert app.screen.title_text == "Help — Dashboard"
            assert "COMMON CASES" in app.screen.body and "circuit OPEN" in app.screen.body
            assert "d dashboard · e endpoints · u queue" in app.screen.body  # the screen keys, on every help
            scroll = app.screen.query_one("#dialog-scroll")
            assert app.focused is scroll  # arrows and PgDn read on at once
            await pilot.press("pagedown")
            await pilot.pause()
            assert scroll.scroll_y > 0
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, DashboardScreen)

    asyncio.run(go())


def test_ctrl_q_quits_even_from_a_dialog(outage: State, settle: Settle) -> None:
    async def go() -> None:
        app = make_app(outage)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("question_mark")
            await pilot.press("ctrl+q")
            await pilot.pause()
            assert not app.is_running

    asyncio.run(go())


class Counting(ConsoleScreen):
    loads = 0

    def load(self) -> int:
        Counting.loads += 1
        return Counting.loads

    def compose(self) -> Any:
        yield Static("counting")


def test_a_tick_with_no_screen_in_front_does_nothing(outage: State) -> None:
    # Seen in CI under load: the timer fired while the app was closing and `app.screen` raised ScreenStackError.
    app = make_app(outage)
    assert not app.screen_stack
    app.refresh_tick()


def test_the_tick_refreshes_the_screen_in_front_only(outage: State, monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.tui.screens.logs as logs_module

    monkeypatch.setattr(logs_module, "LogsScreen", Counting)
    Counting.loads = 0

    async def go() -> None:
        app = make_app(outage, refresh_seconds=0.05)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("l")
            for _ in range(200):  # poll with a deadline (10 s); the tick runs every 50 ms
                await pilot.pause(0.05)
                if Counting.loads >= 3:
                    break
            assert Counting.loads >= 3
            await pilot.press("d")
            await pilot.pause()
            await app.workers.wait_for_complete()
            seen = Counting.loads
            await pilot.pause(0.3)
            await app.workers.wait_for_complete()
            assert Counting.loads == seen  # hidden: no I/O for it

    asyncio.run(go())


class Gated(ConsoleScreen):
    """A screen whose load waits for the test: a refresh that is still reading when an action asks for another."""

    gate = threading.Event()
    loads: list[int] = []
    shown: list[int] = []

    def load(self) -> int:
        Gated.loads.append(len(Gated.loads) + 1)
        n = len(Gated.loads)
        if n == 1:
            Gated.gate.wait(10)
        return n

    def show(self, data: int) -> None:
        Gated.shown.append(data)

    def compose(self) -> Any:
        yield Static("gated")


def test_a_refresh_asked_for_while_one_runs_follows_it_instead_of_being_dropped(
    outage: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an action (pause, retry …) the screen asks for a refresh; if a tick's refresh is still reading the
    state from before the action, the asked-for one must run after it, or the screen shows the old state."""
    import appliance.tui.screens.logs as logs_module

    monkeypatch.setattr(logs_module, "LogsScreen", Gated)
    Gated.gate.clear()
    Gated.loads, Gated.shown = [], []

    async def go() -> None:
        app = make_app(outage)  # no tick during the test (refresh_seconds 3600)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("l")  # the first refresh starts and blocks in load()
            for _ in range(200):
                await pilot.pause(0.05)
                if Gated.loads:
                    break
            screen = app.screen
            assert isinstance(screen, Gated) and Gated.loads == [1]
            screen.refresh_data()  # what an action's callback does
            assert Gated.loads == [1]  # not a second overlapping read
            Gated.gate.set()
            for _ in range(200):
                await pilot.pause(0.05)
                if Gated.shown == [1, 2]:
                    break
            assert Gated.shown == [1, 2]  # the requested refresh ran after the first and was shown last

    asyncio.run(go())


class Crashing(ConsoleScreen):
    """A screen written without run_backend: a plain @work worker that raises."""

    def compose(self) -> Any:
        yield Static("crashing")

    def on_mount(self) -> None:
        def boom() -> None:
            raise BackendError("no queue database at /var/lib/dicom-router/queue.sqlite3: has the router ever run?")

        self.run_worker(boom, thread=True)  # exit_on_error defaults to True: Textual would end the app


def test_an_uncaught_worker_error_is_a_dialog_not_the_end(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    import appliance.tui.screens.backups as backups_module

    monkeypatch.setattr(backups_module, "BackupsScreen", Crashing)

    async def go() -> None:
        app = make_app(outage)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("b")
            await settle(pilot)
            assert app.is_running
            assert isinstance(app.screen, MessageScreen) and app.screen.error
            assert app.screen.body.startswith("no queue database at /var/lib/dicom-router/queue.sqlite3")
            await pilot.press("enter")
            await pilot.press("d")
            await settle(pilot)
            assert isinstance(app.screen, DashboardScreen)

    asyncio.run(go())


def test_a_screen_that_fails_to_import_does_not_take_the_console_down(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app_module.SCREENS, "endpoints", ("no_such_module", "EndpointsScreen"))

    async def go() -> None:
        app = make_app(outage)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("e")
            await settle(pilot)
            assert isinstance(app.screen, BrokenScreen)
            assert "ModuleNotFoundError" in app.screen.error
            await pilot.press("d")
            await settle(pilot)
            assert isinstance(app.screen, DashboardScreen)

    asyncio.run(go())


def test_sixteen_colours_use_the_terminals_own_palette(
    outage: State, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tty1 has 16 colours: TEXTUAL_COLOR_SYSTEM=standard picks the ANSI theme, and the whole dashboard, outage
    included, renders in at most the 16 ANSI colours (no RGB that would be rounded to something unreadable)."""
    monkeypatch.setenv("TEXTUAL_COLOR_SYSTEM", "standard")

    async def go() -> str:
        app = make_app(outage)  # theme chosen from the environment
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            assert app.theme == ANSI_THEME
            assert isinstance(app.screen, DashboardScreen) and "3 problem(s)" in str(
                app.screen.query_one("#services", Static).render()
            )
            return app.export_screenshot()

    svg = asyncio.run(go())
    colours = set(re.findall(r"fill: (#[0-9a-f]{6})", svg))
    assert 3 <= len(colours) <= 16, colours


def test_theme_choice() -> None:
    assert pick_theme({"TERM": "linux"}) == ANSI_THEME
    assert pick_theme({"TERM": "xterm-256color", "TEXTUAL_COLOR_SYSTEM": "standard"}) == ANSI_THEME
    assert pick_theme({"TERM": "xterm-256color", "COLORTERM": "truecolor"}) == RICH_THEME


def test_error_words() -> None:
    assert error_words(BackendError("there is no job 7")) == "there is no job 7"
    disk = error_words(OSError(28, "No space left on device", "/var/lib/dicom-router/queue.sqlite3"))
    assert disk.startswith("No space left on device (/var/lib/dicom-router/queue.sqlite3).")
    assert error_words(KeyError("x")).startswith("unexpected error: KeyError: 'x'. The console keeps running")


def test_console_command_refuses_an_empty_operator(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "appliance.router", "console", "--config", str(tmp_path / "r.yaml"), "--operator", " "],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "TERM": "dumb"},
    )  # fmt: skip
    assert out.returncode == 2
    assert "the console needs an operator name" in out.stderr and "Traceback" not in out.stderr


def test_broken_screen_keeps_its_title() -> None:
    screen: Screen[None] = BrokenScreen("EndpointsScreen", "ImportError: boom")
    assert screen.title == "EndpointsScreen"
