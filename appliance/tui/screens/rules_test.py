"""Rules test (key w): where would these files go? Type a DICOM file or a folder of samples, optionally the
source node that "sends" them and a time, press Enter: per object, its destinations (TEST nodes labelled,
priority, per instance or per study, morph profiles, HELD with the reason) and why every other route did not
match, in the words of `dicom-router rules test` (the same library, through `Backend.rules_test`).

Nothing is sent and nothing changes. A folder can hold thousands of files, so the dry run runs in a thread
worker with progress on the status line (Escape stops it), and the report is shown by a view that renders only
the lines on screen."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from rich.style import Style
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Header, Input, Label, Select, Static

from ..backend import RulesTest
from ..widgets import ConsoleScreen, theme_style
from .keybar import KeyBar
from .report_view import Line, ReportView, wrap_lines

HELP = """\
WHAT THIS IS FOR
  Before a routing change goes live, or when someone asks "why did this study (not) go to X?": see where
  the router WOULD send some files, and why every other route did not match. Nothing is sent, nothing
  changes, the queue is not touched. The same words as `dicom-router rules test` at a shell.

FIELDS (Tab moves between them, Enter runs the test from any of them)
  Files    a DICOM file, or a folder of samples (every file below it, hidden ones skipped)
  Source   the node that "sends" them: routes that test source_node or calling_ae need it. Empty = an
           unknown caller (such routes then cannot match)
  At       the time to test time windows at: 2026-11-28 23:30, or 23:30 today; empty = now
  Config   empty = the live config; or the path of a PROPOSED config file, to test a change before
           `config apply`

READING THE RESULT
  file: modality, study, patient (SOP instance)   one block per object
    → PACS_MAIN  stat  via route ct-to-pacs  per instance       where it goes, how urgent, by which route
    → VNA  bulk  via route vna  when the study is complete      sent with its whole study, once complete
    → PACS_TEST [TEST] …                                       a test-environment destination
    → PACS_MAIN … HELD: no Patient ID …                        created held: someone must release it
    → nowhere: matches no route                                 kept as unrouted (Queue, n)
      route mr-hold: no — Modality is 'CT', wanted == 'MR'      why a route did not match
  REFUSED on arrival: the receiver would refuse the file (damaged, or not DICOM).
  The dry run does not look at the queue: an identical object sent before would be SKIPPED for real, and a
  route that forwards whole studies waits for the study in real life.

KEYS
  /        to the Files field (Tab to the next field)     Enter  run the test
  Esc      stop a test that is running; or leave the fields, so the screen keys (d, e, u …) work again
  ↑ ↓ PgUp PgDn Home End         scroll the result (Tab to it first)

COMMON CASES
  "Did the night route really send CT to the telerad?": Files = a sample CT, At = 23:30, Enter.
  A change to routes: save the proposed file (e.g. /tmp/router-proposed.yaml), put it in Config, run your
  sample folder, compare with the live config (clear Config, Enter). Then apply it through change control."""

DATE_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")
NO_SOURCE_PROMPT = "no source (unknown caller)"


def parse_when(text: str, now: datetime) -> datetime | None:
    """'2026-11-28 23:30' → that time; '23:30' → today at 23:30; '' or 'now' → None (the backend uses now)."""
    text = text.strip()
    if not text or text.lower() == "now":
        return None
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    try:
        clock = datetime.strptime(text, "%H:%M")
    except ValueError:
        raise ValueError(f"'{text}' is not a time: write 2026-11-28 23:30, or 23:30 for today (empty = now)") from None
    return now.replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)


def classify(line: str) -> str:
    """The style key of one line of `rules_dryrun.render`'s report (see READING THE RESULT in the help)."""
    body = line.strip()
    if not line.startswith(" "):
        if "REFUSED on arrival" in line:
            return "error"
        if line.startswith("STOPPED"):
            return "warning"
        return "heading" if body else "plain"
    if body.startswith("→ nowhere"):
        return "warning"
    if body.startswith("→"):
        return "held" if "HELD:" in body else "target"
    if body.startswith("note:"):
        return "warning"
    if body.startswith("route ") and body.endswith(": matched"):
        return "muted"
    return "plain"


def summary(result: RulesTest) -> str:
    """One line: how many files, where they would go, what needs a look."""
    counts = result.run.per_destination()
    where = ", ".join(f"{n:,} → {dest}" for dest, n in sorted(counts.items())) or "none routed"
    under = f" under {result.config_label}" if result.proposed else ""  # the live config goes without saying
    text = f"{result.tested:,} file(s){under}: {where}"
    text += f" · {result.held:,} held · {result.unrouted:,} unrouted · {result.refused:,} refused"
    if result.stopped:
        text = f"STOPPED after {result.tested:,} of {result.files:,} file(s) · " + text
    return text


class RulesTestScreen(ConsoleScreen):
    TITLE = "Rules test"
    HELP = HELP
    DEFAULT_CSS = """
    RulesTestScreen .rt-row { height: 1; margin: 0 1; }
    RulesTestScreen .rt-row Label { width: 8; }
    RulesTestScreen .rt-row Input { width: 1fr; }
    RulesTestScreen #rt-source { width: 32; margin-right: 2; }
    RulesTestScreen #rt-at-label { width: 4; }
    RulesTestScreen #rt-status { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    RulesTestScreen #rt-status.problem { color: $text-error; text-style: bold; }
    RulesTestScreen #rt-report { height: 1fr; scrollbar-size-vertical: 1; }
    """
    BINDINGS = [
        Binding("enter", "run", "Test"),
        Binding("slash", "focus_path", "Files", key_display="/"),
        Binding("escape", "stop", "Stop/back"),
    ]
    FIELD_IDS = ("rt-path", "rt-source", "rt-at", "rt-config")

    def __init__(self) -> None:
        super().__init__()
        self.result: RulesTest | None = None
        self.running = False
        self.sources: list[tuple[str, str]] = []  # Select options: (label, node name)
        self._generation = 0  # a run (or re-wrap) that finishes after a newer one started is dropped
        self._stop: threading.Event | None = None
        self._wrapped_width = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(classes="rt-row"):
            yield Label("Files")
            yield Input(placeholder="a DICOM file or a folder of samples, e.g. /srv/samples/ct", id="rt-path",
                        compact=True)  # fmt: skip
        with Horizontal(classes="rt-row"):
            yield Label("Source")
            yield Select[str]([], prompt=NO_SOURCE_PROMPT, id="rt-source", compact=True)
            yield Label("At", id="rt-at-label")
            yield Input(placeholder="now (or 2026-11-28 23:30)", id="rt-at", compact=True)
        with Horizontal(classes="rt-row"):
            yield Label("Config")
            yield Input(placeholder="the live config, or the path of a proposed config file", id="rt-config",
                        compact=True)  # fmt: skip
        yield Static(
            "Press / and type the path of a DICOM file or a folder of samples, then Enter. Nothing is sent: this "
            "shows where each object WOULD go, and why the other routes do not match.",
            id="rt-status",
            markup=False,
        )
        yield ReportView(id="rt-report")
        yield KeyBar()

    def on_mount(self) -> None:
        # Not in a field: the screen keys (d, e, u …) work here as everywhere; / goes to the Files field.
        self.query_one(ReportView).focus()

    # -- the source list (the app's tick and returning to the screen: one config read) -----------------
    def _config_field(self) -> str | None:
        return self.query_one("#rt-config", Input).value.strip() or None

    def refresh_data(self) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        config_file = self._config_field()
        self.run_backend(
            "Reading the sources",
            lambda: (config_file, self.backend.rules_sources(config_file)),
            self._loaded,
            on_error=self._load_failed,
            group="refresh",
        )

    def show(self, data: Any) -> None:
        config_file, nodes = data
        if config_file != self._config_field():
            return  # the Config field changed meanwhile: its own refresh follows
        options = [(f"{name} ({node.ae_title})" + (" TEST" if node.environment == "test" else ""), name)
                   for name, node in nodes]  # fmt: skip
        if options == self.sources:
            return
        self.sources = options
        select = self.query_one("#rt-source", Select)
        keep = select.value
        with self.prevent(Select.Changed):
            select.set_options(options)
            if keep in {name for _, name in options}:
                select.value = keep

    def show_load_error(self, message: str) -> None:
        if self.result is None and not self.running:  # say it once, where the result would be; no pop-ups
            self._status(f"Cannot read the config: {message}", problem=True)

    # -- running a test --------------------------------------------------------------------------------
    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "rt-config":
            self.refresh_data()  # the sources of the config now named
        self.action_run()

    @on(Select.Changed, "#rt-source")
    def _source_changed(self, _event: Select.Changed) -> None:
        if self.result is not None:
            self.action_run()  # same files, another sender: the difference shows at once

    def action_focus_path(self) -> None:
        self.query_one("#rt-path", Input).focus()

    def _in_field(self) -> bool:
        return self.focused is not None and self.focused.id in self.FIELD_IDS

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return True if self.running or self._in_field() else None  # dimmed: nothing to stop or leave
        return True

    def action_run(self) -> None:
        path = self.query_one("#rt-path", Input).value.strip()
        if not path:
            self._status("Type the path of a DICOM file or of a folder of samples first.", problem=True)
            self.action_focus_path()
            return
        try:
            at = parse_when(self.query_one("#rt-at", Input).value, datetime.fromtimestamp(self.backend.clock()))
        except ValueError as exc:
            self._status(str(exc), problem=True)
            self.query_one("#rt-at", Input).focus()
            return
        chosen = self.query_one("#rt-source", Select).value
        source = chosen if isinstance(chosen, str) else None
        config_file = self._config_field()
        if self._stop is not None:
            self._stop.set()  # a run still going is superseded
        self._generation += 1
        gen, stop, width = self._generation, threading.Event(), self._wrap_width()
        self._stop, self.running = stop, True
        self.refresh_bindings()
        self._status(f"testing {path}… (Esc stops)")

        def progress(done: int, total: int) -> None:
            self._from_thread(self._progress, (gen, path, done, total))

        def call() -> tuple[RulesTest, list[Line]]:
            result = self.backend.rules_test(
                [path], source, at, config_file=config_file, progress=progress, stop=stop.is_set
            )
            return result, wrap_lines(result.text, width, classify)

        self.run_backend("Rules test", call, lambda done: self._done(gen, width, done),
                         on_error=lambda message: self._failed(gen, message), group="rules")  # fmt: skip

    def _progress(self, update: tuple[int, str, int, int]) -> None:
        gen, path, done, total = update
        if gen == self._generation and self.running:
            self._status(f"testing {path}… {done:,} of {total:,} file(s) read (Esc stops)")

    def _done(self, gen: int, width: int, outcome: tuple[RulesTest, list[Line]]) -> None:
        if gen != self._generation:
            return
        self.result, lines = outcome
        self.running, self._stop = False, None
        self.refresh_bindings()
        self._show_lines(lines, width)
        problem = bool(self.result.refused or self.result.unrouted or self.result.stopped)
        self._status(summary(self.result), problem=False, warning=problem)
        if isinstance(self.focused, Input):  # Enter in a field: on to the result, where ↑ ↓ scroll it
            self.query_one(ReportView).focus()

    def _failed(self, gen: int, message: str) -> None:
        if gen != self._generation:
            return
        self.running, self._stop = False, None
        self.refresh_bindings()
        self.result = None
        self.query_one(ReportView).show_lines([], {}, {})
        self._status(message, problem=True)

    def action_stop(self) -> None:
        """Escape: stop a running test; otherwise leave the field for the result (where the screen keys work)."""
        if self._stop is not None:
            self._stop.set()
            self._status("stopping after the files being read now…")
        elif self._in_field():
            self.query_one(ReportView).focus()

    # -- showing ---------------------------------------------------------------------------------------
    def _status(self, text: str, *, problem: bool = False, warning: bool = False) -> None:
        status = self.query_one("#rt-status", Static)
        status.set_class(problem, "problem")
        status.update(Text(text, style=theme_style(self.app, "warning", bold=True)) if warning else text)

    def _wrap_width(self) -> int:
        view = self.query_one(ReportView)
        return (view.size.width or self.app.size.width) - 1  # 1: the scroll bar

    def _show_lines(self, lines: list[Line], width: int) -> None:
        app = self.app
        styles = {
            "heading": Style(bold=True),
            "target": theme_style(app, "success"),
            "held": theme_style(app, "warning", bold=True),
            "warning": theme_style(app, "warning"),
            "error": theme_style(app, "error", bold=True),
            "muted": Style(dim=True),
        }
        emphasis = {"[TEST]": theme_style(app, "warning", bold=True) + Style(reverse=True)}
        self._wrapped_width = width
        self.query_one(ReportView).show_lines(lines, styles, emphasis)

    def on_resize(self, _event: events.Resize) -> None:
        width = self._wrap_width()
        if self.result is None or self.running or width == self._wrapped_width:
            return
        gen, text = self._generation, self.result.text
        self.run_backend(
            "Wrapping the report",
            lambda: wrap_lines(text, width, classify),
            lambda lines: self._show_lines(lines, width) if gen == self._generation else None,
            group="wrap",
        )
