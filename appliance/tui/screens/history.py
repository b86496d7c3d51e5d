"""Config history: every version of router.yaml with who/when/why and its outcome, a diff of the highlighted
version against live (or against its parent), roll back, and a warning when the live file was edited
outside `config apply`. Reads and changes go through the backend, in thread workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Footer, Header, Static

from ..backend import BackendError
from ..widgets import ConfirmScreen, ConsoleScreen, MessageScreen, ReasonScreen, theme_style
from .config_common import apply_outcome, plain, styled
from .diff_view import Styles, change_counts, render_side, render_unified, side_by_side

if TYPE_CHECKING:
    from appliance.router.history import ApplyResult, Version

_WAS = {"failed": "failed", "refused": "was refused", "pending": "is still pending (or its apply crashed)"}
COLUMNS = (
    (" ", "live"),
    ("V", "v"),
    ("TIME (UTC)", "time"),
    ("OUTCOME", "outcome"),
    ("SOURCE", "source"),
    ("AUTHOR", "author"),
    ("TICKET", "ticket"),
    ("REASON", "reason"),
)
REASON_AFTER = 66  # columns taken by everything left of REASON (and the cell padding)
SIDE_BY_SIDE_MIN_WIDTH = 100  # narrower than this, two panes of ~40 columns are unreadable: unified diff

HELP = """\
WHAT THIS SHOWS
Every version of the router's config file, newest first: when (UTC), the outcome (applied, or FAILED /
REFUSED — a change that was tried and did not happen), where it came from (console, cli, ansible, rollback,
restore; "adopted" = a hand edit found on disk and recorded), who, the ticket and the reason. * marks the
version that is live now. Below: what the highlighted version changes — against the live file, or against
its parent (the version it replaced) after p. Removed lines are marked - and added lines +, with colour.

KEYS
  Up/Down  pick a version (its diff follows)
  p        diff against the live file / against its parent
  v        move into the diff to scroll it (v or Esc back to the table)
  r        roll back: make the highlighted version live again
  f5       reload

Rolling back shows how many lines change and asks you to confirm and give a reason. It records a NEW version
(source rollback, your name) with the old content, then the router reloads; nothing is deleted from the
history, so a rollback can itself be rolled back. Only applied versions can be rolled back to.

AT 3 A.M.
* Things broke right after a change: find the newest version (top), read its diff (p: against its parent =
  what that change did), highlight the version before it and press r.
* A red warning at the top says the live file was edited outside `config apply`: someone changed it by hand.
  The diff against live shows what. Roll back to the last applied version (r) or have the edit re-applied
  properly (Ansible or `dicom-router config apply`), so the history says who and why.
* FAILED versions were never live: their error is shown under the table.
"""


@dataclass
class DiffState:
    old_label: str
    new_label: str
    old: str
    new: str
    note: str = ""  # e.g. "the first version: no parent"


class HistoryScreen(ConsoleScreen):
    TITLE = "Config history"
    HELP = HELP
    BINDINGS = [
        Binding("p", "toggle_base", "Parent/live"),
        Binding("r", "rollback", "Roll back"),
        Binding("v", "focus_diff", "Diff"),
        Binding("f5", "reload", "Reload", show=False),  # it reloads by itself; f5 is in the help
    ]
    DEFAULT_CSS = """
    HistoryScreen #hist-live { height: auto; padding: 0 1; }
    HistoryScreen #hist-live.problem { color: $text-error; text-style: bold; }
    HistoryScreen #versions { height: auto; max-height: 45%; min-height: 3; }
    HistoryScreen #hist-detail { height: auto; max-height: 4; padding: 0 1; }
    HistoryScreen #diff-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    HistoryScreen #diff { height: 1fr; min-height: 4; }
    HistoryScreen #diff:focus { background: $boost; }
    HistoryScreen #diff-sides { height: auto; }
    HistoryScreen #diff-left, HistoryScreen #diff-right { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    HistoryScreen #diff-left { border-right: vkey $primary; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.versions: list[Version] = []  # newest first
        self.live: dict[str, Any] = {}
        self.against_parent = False
        self.diff: DiffState | None = None
        self._texts: dict[int, str] = {}  # version contents never change: read each once
        self._signature: object = None
        self._to_newest = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading the config history…", id="hist-live")
        table: DataTable[Text] = DataTable(id="versions", cursor_type="row")
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static("", id="hist-detail")
        yield Static("", id="diff-title")
        with VerticalScroll(id="diff", can_focus=True):
            with Horizontal(id="diff-sides"):
                yield Static("", id="diff-left")
                yield Static("", id="diff-right")
            yield Static("", id="diff-unified")
        yield Footer()

    # -- loading (ConsoleScreen calls load() in a thread on every tick and return to the screen) --------
    def action_reload(self) -> None:
        """Reload now, even if a tick's refresh is still reading (it may have read before a change)."""
        self._signature = None
        self.run_backend("Reading the history", self.load, self.show, on_error=self.show_load_error, group="reload")

    def load(self) -> tuple[list[Version], dict[str, Any]]:
        return list(reversed(self.backend.versions())), self.backend.live()

    def show_load_error(self, message: str) -> None:
        banner = self.query_one("#hist-live", Static)
        banner.update(f"! cannot read the config history: {plain(message)}")
        banner.add_class("problem")
        self._signature = None

    def show(self, data: tuple[list[Version], dict[str, Any]]) -> None:
        versions, live = data
        signature = ([(v.version, v.outcome) for v in versions], live)
        if signature == self._signature:
            return  # the tick found nothing new: keep the table, the cursor and the diff as they are
        self._signature = signature
        self.versions, self.live = versions, live
        self._show_live()
        table = self.query_one(DataTable)
        keep = self.current()
        table.clear()
        for v in versions:
            table.add_row(*self._cells(v), key=str(v.version))
        if self._to_newest:
            self._to_newest = False
        elif keep is not None and any(v.version == keep.version for v in versions):
            table.move_cursor(row=table.get_row_index(str(keep.version)))
        self._show_version()

    def _show_live(self) -> None:
        banner = self.query_one("#hist-live", Static)
        live = self.live
        applied = next((v for v in self.versions if v.outcome == "applied"), None)
        if live.get("drifted"):
            last = f"version {applied.version}" if applied else "any recorded version"
            banner.update(
                f"! DRIFT: the live config file was edited outside `config apply` — it differs from {last} and "
                "the history does not say who or why. The diff against live shows what changed; r rolls back."
            )
            banner.add_class("problem")
            return
        banner.remove_class("problem")
        if live.get("version") is None:
            banner.update("no version recorded yet: the first `config apply` (or a console change) records one")
            return
        runs = {None: "router not running", True: "the router runs it", False: "the router has NOT loaded it"}
        text = (
            f"live: version {live['version']} · {runs[live.get('daemon_runs_live')]} · {len(self.versions)} version(s)"
        )
        if live.get("daemon_runs_live") is False:
            text += " — a reload failed? see the Logs screen (l)"
            banner.add_class("problem")
        banner.update(text)

    def _cells(self, v: Version) -> list[Text]:
        app = self.app
        live_mark = Text("*", style="bold") if v.version == self.live.get("version") else Text(" ")
        failed = v.outcome in ("failed", "refused")
        if failed:
            outcome = styled(app, v.outcome.upper(), "error", bold=True)
            number = styled(app, str(v.version), "error", bold=True)
        elif v.outcome == "pending":
            outcome, number = styled(app, "pending", "warning"), Text(str(v.version))
        else:
            outcome, number = Text(v.outcome), Text(str(v.version))
        room = max(12, self.size.width - REASON_AFTER)  # no sideways scrolling: the full reason is below the table
        reason = v.reason if len(v.reason) <= room else v.reason[: room - 1] + "…"
        return [
            live_mark,
            number,
            Text(v.time.replace("T", " ").removesuffix("Z")[:16]),
            outcome,
            Text(v.source),
            Text(v.author),
            Text(v.ticket or "-"),
            Text(reason),
        ]

    # -- the highlighted version -----------------------------------------------------------------------
    def current(self) -> Version | None:
        table = self.query_one(DataTable)
        if not self.versions or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return next((v for v in self.versions if str(v.version) == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_version()

    def _show_version(self) -> None:
        detail = self.query_one("#hist-detail", Static)
        v = self.current()
        if v is None:
            detail.update("")
            self._render_diff(None)
            return
        text = Text()
        text.append(f"version {v.version}", style="bold")
        ticket = f", ticket {v.ticket}" if v.ticket else ""
        text.append(f"  {v.time} by {v.author} ({v.source}{ticket}): {v.reason}")
        if v.rollback_of:
            text.append(f"  [rolls back to version {v.rollback_of}]")
        if v.outcome == "applied" and v.daemon:
            text.append(f"\nrouter: {v.daemon}")
        if v.error:
            text.append("\n")
            text.append_text(styled(self.app, f"{v.outcome.upper()}: {v.error}", "error"))
        detail.update(text)
        self._load_diff(v, self.against_parent)

    def _parent_of(self, v: Version) -> Version | None:
        if v.parent_version is not None:
            return next((p for p in self.versions if p.version == v.parent_version), None)
        # Refused/failed attempts record no parent: compare with what was live before them.
        return next((p for p in self.versions if p.version < v.version and p.outcome == "applied"), None)

    @work(thread=True, exclusive=True, group="diff")
    def _load_diff(self, v: Version, against_parent: bool) -> None:
        backend = self.backend
        try:
            text = self._text(v.version)
            if against_parent:
                parent = self._parent_of(v)
                if parent is None:
                    state = DiffState("(no file)", f"version {v.version}", "", text, "the first version: no parent")
                else:
                    state = DiffState(
                        f"version {parent.version}", f"version {v.version}", self._text(parent.version), text
                    )
            else:
                state = DiffState(f"version {v.version}", "live", text, backend.version_text("live"))
        except (BackendError, OSError) as exc:
            state = DiffState("", "", "", "", f"cannot read the versions: {exc}")
        self.app.call_from_thread(self._render_diff, state)

    def _text(self, version: int) -> str:
        if version not in self._texts:
            self._texts[version] = self.backend.version_text(version)
        return self._texts[version]

    def on_resize(self) -> None:
        if self.versions:
            self._signature = None
            self.show((list(self.versions), self.live))  # the reason column fits the new width
        self._render_diff(self.diff)

    def _render_diff(self, state: DiffState | None) -> None:
        self.diff = state
        title = self.query_one("#diff-title", Static)
        sides, unified = self.query_one("#diff-sides"), self.query_one("#diff-unified", Static)
        left, right = self.query_one("#diff-left", Static), self.query_one("#diff-right", Static)
        toggle = "p: against live" if self.against_parent else "p: against its parent"
        if state is None:
            title.update("")
            sides.display, unified.display = False, False
            return
        added, removed = change_counts(state.old, state.new)
        if state.note and not (state.old or state.new):
            title.update(Text(f"{state.note}  ({toggle})"))
            sides.display, unified.display = False, False
            return
        head = Text(f"{state.old_label} → {state.new_label}: ")
        head.append(f"+{added}", style=theme_style(self.app, "success", bold=True))
        head.append(" / ")
        head.append(f"-{removed}", style=theme_style(self.app, "error", bold=True))
        head.append(f" lines   ({toggle})" + (f" — {state.note}" if state.note else ""))
        title.update(head)
        styles = Styles(theme_style(self.app, "error", bold=True), theme_style(self.app, "success", bold=True))
        if not added and not removed:
            sides.display, unified.display = False, True
            if state.new_label == "live":
                same = f"{state.old_label} has the same content as the live file (p: what it changed)"
            else:
                same = f"{state.old_label} and {state.new_label} have the same content"
            unified.update(Text(same))
        elif self.size.width >= SIDE_BY_SIDE_MIN_WIDTH:
            rows = side_by_side(state.old, state.new)
            sides.display, unified.display = True, False
            pane = (self.size.width - 3) // 2 - 1  # half the width, less the scrollbar and the divider
            left.update(render_side(rows, "left", styles, pane))
            right.update(render_side(rows, "right", styles, pane))
            left.border_title, right.border_title = state.old_label, state.new_label
        else:
            sides.display, unified.display = False, True
            unified.update(render_unified(state.old, state.new, state.old_label, state.new_label, styles))

    def action_toggle_base(self) -> None:
        self.against_parent = not self.against_parent
        self._show_version()

    def action_focus_diff(self) -> None:
        diff = self.query_one("#diff")
        if diff.has_focus:
            self.query_one(DataTable).focus()
        else:
            diff.focus()

    def key_escape(self) -> None:
        if self.query_one("#diff").has_focus:
            self.query_one(DataTable).focus()

    # -- roll back -----------------------------------------------------------------------------------
    def action_rollback(self) -> None:
        v = self.current()
        if v is None:
            self.app.bell()
            return
        if v.outcome != "applied":
            self.app.push_screen(
                MessageScreen(
                    f"Cannot roll back to version {v.version}",
                    f"version {v.version} {_WAS.get(v.outcome, v.outcome)}: it was never live, so there is "
                    "nothing to go back to. "
                    "Pick an applied version (OUTCOME applied).",
                    error=True,
                )
            )
            return
        if v.version == self.live.get("version"):
            self.app.push_screen(MessageScreen("Nothing to roll back", f"version {v.version} is live already."))
            return
        self._prepare_rollback(v)

    def _prepare_rollback(self, v: Version) -> None:
        def counts() -> tuple[int, int]:
            return change_counts(self.backend.version_text("live"), self._text(v.version))

        self.run_backend("Preparing the rollback", counts, lambda c: self._confirm_rollback(v, *c))

    def _confirm_rollback(self, v: Version, added: int, removed: int) -> None:
        ticket = f", ticket {v.ticket}" if v.ticket else ""
        body = (
            f"The live config becomes the content of version {v.version} ({v.time}, {v.source} by {v.author}"
            f"{plain(ticket)}: {plain(v.reason)}).\n"
            f"Change to the live file: +{added} / -{removed} lines.\n"
            "It is recorded as a new version (source rollback) under your name and the router reloads."
        )

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.app.push_screen(
                    ReasonScreen(f"Why roll back to version {v.version}?", "The reason goes into the history."),
                    reasoned,
                )

        def reasoned(answer: tuple[str, str | None] | None) -> None:
            if answer is not None:
                self._rollback(v.version, answer[0], answer[1])

        self.app.push_screen(
            ConfirmScreen(f"Roll back to version {v.version}?", body, yes="Roll back", danger=True), confirmed
        )

    def _rollback(self, version: int, reason: str, ticket: str | None) -> None:
        def done(result: ApplyResult) -> None:
            self.app.push_screen(MessageScreen("Rolled back", f"to version {version}: {apply_outcome(result)}"))
            self._to_newest = True  # show the new version the rollback made
            self.action_reload()

        def failed(message: str) -> None:
            self.app.push_screen(
                MessageScreen(
                    f"Version {version} was NOT rolled back to", f"{message}\n\nThe live config is unchanged.", True
                )
            )
            self.action_reload()  # a failed attempt is in the history too

        self.run_backend("Rolling back", lambda: self.backend.rollback(version, reason, ticket), done, on_error=failed)
