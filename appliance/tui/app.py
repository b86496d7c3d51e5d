"""`dicom-router console`: the on-call console. One screen per job; every screen reaches the router only
through `backend.Backend`. On a fresh appliance (no router.yaml yet) the first-boot setup screen comes first
and the other screens' keys wait until it is saved.
Keys: d dashboard · e endpoints · u queue · b backups · c config history ·
l logs · w rules test · ? help · ctrl+q quit.

The refresh tick: every `refresh_seconds` the app calls `refresh_data()` on the screen in front (only that
one: hidden screens do no I/O; none while a dialog is open, so nothing changes under a question), if the
screen has that method. `widgets.ConsoleScreen` provides it, with worker helpers that turn a backend failure
into words on screen instead of a traceback."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import WorkerFailed

from .backend import Backend, BackendError

CSS_PATH = Path(__file__).with_name("console.tcss")
# tty1 (TERM=linux) and 16-colour terminals: the terminal's own ANSI palette reads best; truecolor theme elsewhere.
ANSI_THEME, RICH_THEME = "ansi-dark", "textual-dark"


def pick_theme(environ: Mapping[str, str] = os.environ) -> str:
    few_colours = environ.get("TEXTUAL_COLOR_SYSTEM") in ("standard", "windows")
    return ANSI_THEME if few_colours or environ.get("TERM", "") in ("linux", "vt100", "vt220") else RICH_THEME


# mode → (module under appliance.tui.screens, class). Imported when first shown: a screen that fails to load
# shows why instead of taking the whole console (and the dashboard) down with it.
SCREENS = {
    "dashboard": ("dashboard", "DashboardScreen"),
    "endpoints": ("endpoints", "EndpointsScreen"),
    "queue": ("queue", "QueueScreen"),
    "backups": ("backups", "BackupsScreen"),
    "history": ("history", "HistoryScreen"),
    "logs": ("logs", "LogsScreen"),
    "rules": ("rules_test", "RulesTestScreen"),
    "setup": ("setup", "SetupScreen"),  # first boot only: shown instead of the dashboard when there is no config
}


def _lazy_screen(module: str, class_name: str) -> Callable[[], Screen[Any]]:
    def make() -> Screen[Any]:
        try:
            cls = getattr(importlib.import_module(f"{__package__}.screens.{module}"), class_name)
            return cast("Screen[Any]", cls())
        except Exception as exc:  # a broken screen module: say so on that screen only
            from .widgets import BrokenScreen

            return BrokenScreen(class_name, f"{type(exc).__name__}: {exc}")

    return make


# The seven screen keys share one footer slot so an 80-column footer still shows every screen's own keys;
# `?` spells them out (SCREEN_KEYS_HELP is appended to every screen's help).
SCREEN_KEYS = Binding.Group("Screens")
SCREEN_KEYS_HELP = (
    "SCREENS (any screen)\n  d dashboard · e endpoints · u queue · b backups · c config history · l logs\n"
    "  w rules test (where would these files go?)\n"
    "  ? this help · Escape closes a dialog · ctrl+q quits the console (the router keeps running)"
)


class ConsoleApp(App[None]):
    TITLE = "DICOM router console"
    CSS_PATH = CSS_PATH
    ENABLE_COMMAND_PALETTE = False  # every action has a key in the footer; no hidden second way in
    BINDINGS = [
        Binding("d", "switch_mode('dashboard')", "Dashboard", group=SCREEN_KEYS),
        Binding("e", "switch_mode('endpoints')", "Endpoints", group=SCREEN_KEYS),
        Binding("u", "switch_mode('queue')", "Queue", group=SCREEN_KEYS),
        Binding("b", "switch_mode('backups')", "Backups", group=SCREEN_KEYS),
        Binding("c", "switch_mode('history')", "Config history", group=SCREEN_KEYS),
        Binding("l", "switch_mode('logs')", "Logs", group=SCREEN_KEYS),
        Binding("w", "switch_mode('rules')", "Rules test", group=SCREEN_KEYS),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, backend: Backend, *, refresh_seconds: float = 5.0, theme: str | None = None):
        super().__init__()
        self.backend = backend
        self.refresh_seconds = refresh_seconds  # tests set it high and refresh explicitly
        self._theme_name = theme or pick_theme()
        self.setting_up = False  # first-boot setup in front: the other screens have no config to show yet

    def on_mount(self) -> None:
        self.theme = self._theme_name
        for mode, (module, class_name) in SCREENS.items():
            self.add_mode(mode, _lazy_screen(module, class_name))
        self.sub_title = f"operator {self.backend.operator} · {self.backend.config_path}"
        self.setting_up = self.backend.needs_setup()
        self.switch_mode("setup" if self.setting_up else "dashboard")
        self.set_interval(self.refresh_seconds, self.refresh_tick, name="refresh-tick")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # During first-boot setup the screen keys stay out of the footer and do nothing: there is no config.
        return not (self.setting_up and action == "switch_mode")

    def setup_finished(self, message: str) -> None:
        """The first config is saved: on to the normal console."""
        self.setting_up = False
        self.switch_mode("dashboard")
        self.refresh_bindings()
        self.notify(message, title="First-boot setup", timeout=15)

    def refresh_tick(self) -> None:
        """Ask the screen in front to reload its data (it runs the I/O in a worker and skips if one is running)."""
        if not self.screen_stack:  # a tick while the app closes (or between modes) has no screen to refresh
            return
        refresh = getattr(self.screen, "refresh_data", None)
        if callable(refresh):
            refresh()

    def action_help(self) -> None:
        from .widgets import HelpScreen

        screen = self.screen
        text = getattr(screen, "HELP", None) or "No help for this screen yet."
        if not self.setting_up:  # the screen keys do nothing before the first config is saved
            text = f"{text.rstrip()}\n\n{SCREEN_KEYS_HELP}"
        self.push_screen(HelpScreen(screen.title or screen.__class__.__name__, text))

    def show_error(self, what: str, error: BaseException | str) -> None:
        """A failure, in words, in a dialog; the console keeps running."""
        from .widgets import MessageScreen

        self.push_screen(MessageScreen(f"{what} failed", error_words(error), error=True))

    def _handle_exception(self, error: Exception) -> None:
        # A worker that raised (a backend call in a screen that did not catch it) must not end the console
        # at 3 a.m.: say what failed and carry on. Anything else is a bug in the console itself: Textual's
        # default (exit with the traceback) is the honest answer there.
        if isinstance(error, WorkerFailed):
            self.log.error("worker failed", repr(error.error))
            try:
                self.show_error("The last operation", error.error)
            except Exception:  # the app is shutting down: nothing left to show it on
                pass
            return
        super()._handle_exception(error)


def error_words(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, BackendError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}. Check the disk and the file's permissions, then try again."
    return (
        f"unexpected error: {type(error).__name__}: {error}. The console keeps running; if it happens again, "
        "note the time and what you pressed, and check the service log (l)."
    )


def run_console(config_path: Path, operator: str) -> int:
    import sys

    try:
        backend = Backend(config_path, operator)
    except BackendError as exc:
        print(f"dicom-router console: {exc}", file=sys.stderr)
        return 2
    ConsoleApp(backend).run()
    return 0
