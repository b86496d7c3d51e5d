"""Logs (key l): a live tail of the service log or of the audit trail (who did what, when), with a filter.
Newest at the bottom. Follow mode reloads on every refresh tick and keeps the end in view."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, Label, RichLog

from ..widgets import ConsoleScreen, theme_style

TAIL_LINES = 500
SOURCES = {"log": "Service log", "audit": "Audit trail"}

HELP = """\
WHAT YOU SEE
The newest lines of the router's service log (what each process did, and why something failed in words), or \
of the audit trail (every operator action, config change and refused object: who, when, why). Newest at the \
bottom. Red = error or failure, yellow = warning. Times are UTC (the Z at the end).

KEYS
• t: switch between the service log and the audit trail.
• /: type a filter. Only lines containing that text (any case) are shown. Enter applies it, Escape goes back \
to the lines. Clear the text and press Enter to see everything again.
• f: follow on/off. On = reload every few seconds and stay at the end; off = hold still while you read.
• r: reload now.
• ↑ ↓ PgUp PgDn Home End: scroll.

COMMON CASES
• A destination fails: filter on its name (e.g. PACS_MAIN) in the service log; the reason is in words.
• "Who paused, retried or cancelled this?": the audit trail, filtered on the destination, accession number or \
study UID.
• A sender says its images are refused: filter on the sender's AE title or IP address.
• For a ticket, the dashboard's x (evidence) collects these lines for one destination into one file.
"""


@dataclass(frozen=True)
class Tail:
    source: str
    contains: str
    lines: list[str]


class LogsScreen(ConsoleScreen):
    TITLE = "Logs"
    HELP = HELP
    BINDINGS = [
        Binding("t", "toggle_source", "Log/audit"),
        Binding("slash", "focus_filter", "Filter", key_display="/"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("r", "reload", "Reload"),
        Binding("escape", "leave_filter", "Back to lines", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.source = "log"
        self.contains = ""
        self.follow = True
        self.shown: Tail | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="logs-bar"):
            yield Label("", id="logs-title")
            yield Input(placeholder="/ filter (any case), Enter applies", id="logs-filter")
        yield RichLog(id="logs-view", wrap=True, min_width=20, max_lines=TAIL_LINES * 2, auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._update_title()
        self.query_one("#logs-view", RichLog).focus()

    # -- refresh ---------------------------------------------------------------------------------------
    def refresh_data(self, force: bool = False) -> None:
        if self.follow or force or self.shown is None:
            super().refresh_data()

    def load(self) -> Tail:
        source, contains = self.source, self.contains
        read = self.backend.audit_tail if source == "audit" else self.backend.log_tail
        return Tail(source, contains, read(TAIL_LINES, contains, ignore_case=True))

    def show(self, data: Tail) -> None:
        if (data.source, data.contains) != (self.source, self.contains):
            self.refresh_data(force=True)  # the choice changed while this was read: read again
            return
        if data == self.shown:
            return  # nothing new: leave the view (and where it is scrolled to) alone
        self.shown = data
        self._render_lines(data)
        self._update_title()

    def _render_lines(self, data: Tail) -> None:
        view = self.query_one("#logs-view", RichLog)
        view.clear()
        # Wrap at the view's width (RichLog would use the console's); None until the layout is known.
        width = view.scrollable_content_region.width or None
        if not data.lines:
            view.write(Text(self._empty_words(data), style=theme_style(self.app, "warning")), width=width)
        styles = {
            level: theme_style(self.app, var, bold=level == "error")
            for level, var in (("error", "error"), ("warning", "warning"))
        }
        for line in data.lines:
            text, level = format_line(line) if data.source == "audit" else (line, log_level(line))
            view.write(Text(text, style=styles.get(level, Style())), width=width, scroll_end=self.follow)

    def on_resize(self) -> None:
        if self.shown is not None:
            self._render_lines(self.shown)

    def show_load_error(self, message: str) -> None:
        self.shown = None
        view = self.query_one("#logs-view", RichLog)
        view.clear()
        view.write(Text(f"Cannot read the {SOURCES[self.source].lower()}: {message}", theme_style(self.app, "error")))

    def _empty_words(self, data: Tail) -> str:
        what = SOURCES[data.source].lower()
        if data.contains:
            return (
                f"No line of the {what} contains “{data.contains}” (its last 4 MB). To clear the filter: / then Enter."
            )
        return f"The {what} is empty (or not written yet): has the router run with this config?"

    def _update_title(self) -> None:
        follow = "following" if self.follow else "[$warning]held[/] (f follows)"
        filt = f" · filter “{self.contains}”" if self.contains else ""
        count = f" · {len(self.shown.lines)} lines" if self.shown else ""
        self.query_one("#logs-title", Label).update(f"[b]{SOURCES[self.source]}[/] · {follow}{filt}{count}")

    # -- actions ---------------------------------------------------------------------------------------
    def action_toggle_source(self) -> None:
        self.source = "audit" if self.source == "log" else "log"
        self.shown = None
        self._update_title()
        self.refresh_data(force=True)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self._update_title()
        if self.follow:
            self.query_one("#logs-view", RichLog).scroll_end(animate=False)
            self.refresh_data(force=True)

    def action_reload(self) -> None:
        self.shown = None
        self.refresh_data(force=True)

    def action_focus_filter(self) -> None:
        self.query_one("#logs-filter", Input).focus()

    def action_leave_filter(self) -> None:
        self.query_one("#logs-view", RichLog).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.contains = event.value.strip()
        self.shown = None
        self._update_title()
        self.query_one("#logs-view", RichLog).focus()
        self.refresh_data(force=True)


def log_level(line: str) -> str:
    """'2027-01-15T07:18:00.000Z warning forwarder: …' → 'warning' (the backend's one-line form)."""
    parts = line.split(" ", 2)
    level = parts[1] if len(parts) > 1 else ""
    return "error" if level in ("error", "critical") else "warning" if level == "warning" else ""


def format_line(line: str) -> tuple[str, str]:
    """An audit entry (one JSON object) as one readable line: time, what, outcome, who, the rest."""
    try:
        entry: Any = json.loads(line)
    except ValueError:
        return line, ""
    if not isinstance(entry, dict):
        return line, ""
    entry = dict(entry)
    when = entry.pop("time", "")
    event = entry.pop("event", "?")
    outcome = entry.pop("outcome", "")
    who = entry.pop("operator", None) or entry.pop("author", None)
    process = entry.pop("process", "")
    reason = entry.pop("reason", None)
    head = f"{when} {event}"
    if outcome and outcome != "success":
        head += f" {outcome.upper()}"
    head += f" by {who} ({process})" if who else f" ({process})" if process else ""
    if reason:
        head += f": {reason}"
    rest = " ".join(f"{k}={_short(v)}" for k, v in entry.items() if v not in (None, "", [], {}))
    level = "error" if outcome == "failure" else ""
    return (f"{head} · {rest}" if rest else head), level


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
