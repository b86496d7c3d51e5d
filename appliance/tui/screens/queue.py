"""Queue (key u): the jobs, 100 per page, filtered by destination, state, accession, patient ID, study and age;
retry / hold / release / cancel / re-route the selection, the highlighted job, or everything the filter matches;
pause a destination; open a job's full history; write evidence for its study; route unrouted objects.

Paging is keyset paging (`Backend.jobs(query, after_id)`): a stack of page start ids makes PageUp exact, and no
query ever reads more than one page of rows, however deep the queue (1M jobs)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Header, Input, Select, Static

from ..backend import AWAITING_COMMITMENT, PAGE_SIZE, JobQuery, Page
from ..widgets import theme_style
from .keybar import KeyBar
from .queue_actions import JobActionsScreen
from .queue_model import (
    NOT_DONE,
    STATES,
    FilterError,
    Pager,
    Target,
    advice,
    describe_query,
    fmt_duration,
    jobs_word,
    parse_age,
    short_error,
    shown_state,
)

JOB_COLUMNS: tuple[tuple[str, int | None], ...] = (
    ("", 1),
    ("Job", 7),
    ("State", 9),
    ("Destination", 12),
    ("Tries", 5),
    ("Mod", 4),
    ("Accession", 12),
    ("Age", 6),
    ("Last error", None),
)
UNROUTED_COLUMNS: tuple[tuple[str, int | None], ...] = (
    ("", 1),
    ("Object", 7),
    ("Mod", 4),
    ("From", 12),
    ("Accession", 12),
    ("Age", 6),
    ("Study UID", None),
)
NARROW_DROP = {"Mod", "Accession"}  # below WIDE columns; the line under the table shows them
STATE_STYLE = {
    "failed": "error",
    "held": "warning",
    "done": "success",
    "committed": "success",
    "sent": "primary",
    "sending": "accent",
    "waiting": "primary",
    "cancelled": "secondary",
    "skipped": "secondary",
}
STATE_OPTIONS = [(s, s) for s in STATES] + [
    (f"not done ({', '.join(NOT_DONE)})", ",".join(NOT_DONE)),
    ("sent, awaiting commitment", AWAITING_COMMITMENT),
]
MARK = "*"
WIDE = 110  # narrower than this (80×24 on tty1): fewer columns

HELP = """\
WHAT YOU SEE
  One row per job (one object for one destination), oldest first, 100 per page. Tries = attempts so far;
  Age = how long ago the router received the object; Last error = why the last attempt failed.
  The line under the table shows the highlighted job's full last error.
  Above the table: the filter, and how many jobs match it.

STATES
  queued   waiting its turn (perhaps backing off after a failed attempt: it is retried by itself)
  waiting  its route sends whole studies (or series): sent once the study is complete, by itself
  failed   refused for good, or out of attempts: WAITS FOR YOU (fix the cause, then r; or x)
  held     stopped by an operator, by a review route, or by a UID conflict (Enter shows which; s releases)
           CONFLICT: another object with the same SOP Instance UID but other content went there before:
           check patient and study identifiers of both with the sender BEFORE releasing
  skipped  an identical object already went (or is going) there: not sent twice (r sends it anyway)
  sending  being sent now         done  delivered         cancelled  will never be sent
  sent     delivered to a destination that confirms by storage commitment; its report has not come yet
           (filter: "sent, awaiting commitment"). No report by the deadline: the dashboard warns
  committed  the destination confirmed (storage commitment) that it keeps the object
  A failed job whose error says "storage commitment FAILED": the destination says it does NOT keep the
           object; check there why, then r sends it again (and asks again)

KEYS
  /        filter (Tab between fields, Enter applies; age like 30m, 2h, 7d)    Esc  clear the filter
  ↑ ↓      move · PgDn/PgUp next/previous page · Enter  the job's full history
  space    select/unselect the highlighted job        A  select ALL jobs the filter matches (A again: off)
  r retry   h hold   s release   x cancel   o re-route to another destination
           (on the selected jobs; with none selected, on the highlighted job; with A, on all matching)
           Every action shows the exact count, asks "are you sure", then a reason for the audit trail.
  p        pause / resume sending to the filtered destination (or the highlighted job's)
  v        write an evidence file for the highlighted job's study (to attach to a ticket)
  n        unrouted objects (matched no route) instead of jobs; there o sends them to destinations
  Esc      first clears the selection, then the filter

COMMON CASES
  Destination was down and is back: jobs retry by themselves within the probe interval. To skip the
    wait: filter destination + state queued (or failed), A, r.
  Jobs failed with "called AE title not recognised": fix the AE title (Endpoints: key e), echo it,
    then here: filter destination + state failed, A, r.
  A study went to the wrong place: filter its accession, A, h (hold) to stop it, then o to re-route.
  To escalate: highlight a job of the study, v, and attach the file it names."""


class JobTable(DataTable[Any]):
    """PageUp/PageDown move through pages of the query (not just the visible rows of this one)."""

    BINDINGS = [
        Binding("pagedown", "screen.next_page", "Next page", show=False),
        Binding("pageup", "screen.prev_page", "Prev page", show=False),
    ]


class QueueScreen(JobActionsScreen):
    TITLE = "Queue"
    HELP = HELP
    DEFAULT_CSS = """
    QueueScreen .filter-row { height: 1; margin: 0 1; }
    QueueScreen .filter-row > * { margin-right: 1; }
    QueueScreen #f-destination { width: 22; }
    QueueScreen #f-state { width: 30; }
    QueueScreen #f-age { width: 1fr; margin-right: 0; }
    QueueScreen #f-accession, QueueScreen #f-patient { width: 1fr; }
    QueueScreen #f-study { width: 2fr; margin-right: 0; }
    QueueScreen #summary { height: 1; padding: 0 1; background: $boost; }
    QueueScreen #jobs { height: 1fr; }
    QueueScreen #current { height: 3; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter", key_display="/"),
        Binding("escape", "clear", "Clear", show=False),
        Binding("space", "toggle_select", "Select", show=False),
        Binding("A", "toggle_all", "All"),
        Binding("r", "act('retry')", "Retry"),
        Binding("h", "act('hold')", "Hold"),
        Binding("s", "act('release')", "Release"),
        Binding("x", "act('cancel')", "Cancel"),
        Binding("o", "reroute", "Re-route"),
        Binding("p", "pause", "Pause"),
        Binding("v", "evidence", "Evidence"),
        Binding("n", "toggle_unrouted", "Unrouted"),
        Binding("enter", "open_job", "History", show=False),
    ]
    FILTER_IDS = ("f-destination", "f-state", "f-age", "f-accession", "f-patient", "f-study")
    # Keys that act on jobs must not fire while a filter field has focus (a Select lets letters through).
    JOB_KEYS = {"toggle_select", "toggle_all", "act", "reroute", "pause", "evidence", "toggle_unrouted", "open_job"}

    def __init__(self) -> None:
        super().__init__()
        self.query_: JobQuery = JobQuery()
        self.pager = Pager()
        self.page: Page | None = None
        self.rows: list[Any] = []  # Job objects, or unrouted dicts, of the page shown
        self.selected: set[int] = set()
        self.all_mode = False
        self.unrouted = False
        self.unrouted_page = 0
        self.error: str | None = None
        self.columns: list[str] = []
        self.destinations: list[str] = []
        self._generation = 0  # a load that finishes after a newer one started is dropped
        self._load_running = False
        self._select_options: dict[str, list[tuple[str, str]]] = {"f-destination": [], "f-state": STATE_OPTIONS}

    # -- layout ---------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(classes="filter-row"):
            yield Select[str]([], prompt="any destination", id="f-destination", compact=True)
            yield Select[str](STATE_OPTIONS, prompt="any state", id="f-state", compact=True)
            yield Input(placeholder="older than: 30m 2h 7d", id="f-age", compact=True)
        with Horizontal(classes="filter-row"):
            yield Input(placeholder="accession", id="f-accession", compact=True)
            yield Input(placeholder="patient ID", id="f-patient", compact=True)
            yield Input(placeholder="study UID", id="f-study", compact=True)
        yield Static("reading the queue…", id="summary")
        yield JobTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="current", markup=False)
        yield KeyBar()

    def on_mount(self) -> None:
        self._set_columns()
        self._sync_widgets()
        self.query_one(JobTable).focus()
        self.run_backend(
            "Reading destinations",
            self.backend.destination_names,
            self._got_destinations,
            on_error=lambda _msg: None,
            group="destinations",
        )

    def _set_columns(self) -> None:
        """(Re)build the columns; the last one takes the width left, so nothing scrolls sideways."""
        table = self.query_one(JobTable)
        table.clear(columns=True)
        width = self.size.width or self.app.size.width
        columns = UNROUTED_COLUMNS if self.unrouted else JOB_COLUMNS
        if width < WIDE:
            columns = tuple(c for c in columns if c[0] not in NARROW_DROP)
        self.columns = [label for label, _ in columns]
        pad = 2 * table.cell_padding
        rest = max(12, width - 2 - sum((w or 0) + pad for _, w in columns) - pad)  # 2: the scrollbar
        for label, w in columns:
            table.add_column(label, width=w or rest, key=label or "mark")

    def on_resize(self, event: events.Resize) -> None:
        self._set_columns()
        self._fill_table()

    def _got_destinations(self, names: list[str]) -> None:
        self.destinations = names
        self._sync_widgets()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        in_filter = self.focused is not None and self.focused.id in self.FILTER_IDS
        return None if in_filter and action in self.JOB_KEYS else True  # None: shown dimmed, does nothing

    # -- loading --------------------------------------------------------------------------------------
    def refresh_data(self) -> None:
        """The app's tick and returning to the screen: reload the page shown (same filter, same page) — unless
        a load is still running (a busy database must not pile up one thread per tick)."""
        if not self._load_running:
            self.reload()

    def reload(self) -> None:
        self._generation += 1
        gen, query, after, unrouted, offset = (
            self._generation,
            self.query_,
            self.pager.current,
            self.unrouted,
            self.unrouted_page * PAGE_SIZE,
        )

        def load() -> tuple[int, Any]:
            if unrouted:
                return gen, self.backend.unrouted(limit=PAGE_SIZE + 1, offset=offset)
            return gen, self.backend.jobs(query, after)

        self._load_running = True
        self.run_backend("Reading the queue", load, self._loaded_page, on_error=lambda m: self._load_error(gen, m),
                         group="load")  # fmt: skip

    def _loaded_page(self, result: tuple[int, Any]) -> None:
        gen, data = result
        if gen != self._generation:
            return
        self._load_running = False
        self.error = None
        if self.unrouted:
            self.page = None
            self.rows = data[:PAGE_SIZE]
            self.pager.next_after = 1 if len(data) > PAGE_SIZE else None
        else:
            self.page = data
            self.rows = data.jobs
            self.pager.next_after = data.after_id
        self._fill_table()

    def _load_error(self, gen: int, message: str) -> None:
        if gen != self._generation:
            return
        self._load_running = False
        self.error = f"Cannot read the queue: {message}"
        self._update_summary()

    # -- showing --------------------------------------------------------------------------------------
    def _fill_table(self) -> None:
        table = self.query_one(JobTable)
        keep = self._highlighted_id()
        old_row = table.cursor_row
        table.clear()
        now = self.backend.clock()
        for row in self.rows:
            cells = self._unrouted_cells(row, now) if self.unrouted else self._job_cells(row, now)
            table.add_row(*[cells[c] for c in self.columns], key=str(self._row_id(row)))
        ids = [self._row_id(r) for r in self.rows]
        if ids:
            table.move_cursor(row=ids.index(keep) if keep in ids else min(old_row, len(ids) - 1))
        self._update_summary()
        self._update_current()

    def _mark(self, ident: int) -> str:
        return MARK if self.all_mode or ident in self.selected else " "

    def _job_cells(self, j: Any, now: float) -> dict[str, Any]:
        state = shown_state(j.state, j.awaiting_commit)
        style = theme_style(self.app, STATE_STYLE[state], bold=state == "failed") if state in STATE_STYLE else ""
        return {
            "": self._mark(j.id),
            "Job": Text(str(j.id), justify="right"),
            "State": Text(state, style=style),
            "Destination": j.destination,
            "Tries": Text(str(j.attempts), justify="right"),
            "Mod": j.modality or "-",
            "Accession": j.accession or "-",
            "Age": fmt_duration(now - j.received_at),
            "Last error": short_error(j.last_error),
        }

    def _unrouted_cells(self, r: dict[str, Any], now: float) -> dict[str, Any]:
        return {
            "": self._mark(r["id"]),
            "Object": Text(str(r["id"]), justify="right"),
            "Mod": r["modality"] or "-",
            "From": r["calling_ae"] or "-",
            "Accession": r["accession"] or "-",
            "Age": fmt_duration(now - r["received_at"]),
            "Study UID": r["study_uid"] or "-",
        }

    def _update_summary(self) -> None:
        summary = self.query_one("#summary", Static)
        if self.error:
            summary.update(Text(self.error, style=theme_style(self.app, "error", bold=True)))
            return
        if self.unrouted:
            more = " (more on the next page)" if self.pager.next_after else ""
            text = (
                f"UNROUTED objects (matched no route, kept on disk) · page {self.unrouted_page + 1}: "
                f"{len(self.rows)} shown{more} · n: back to jobs"
            )
        elif self.page is None:
            text = "reading the queue…"
        else:
            pages = max(1, -(-self.page.total // PAGE_SIZE))
            if self.page.total_capped:
                text = f"more than {self.page.total:,} jobs match · page {self.pager.page}"
            else:
                text = f"{jobs_word(self.page.total)} match · page {self.pager.page} of {pages:,}"
            if not self.query_.is_empty():
                text += f" · {describe_query(self.query_)}"
        if self.all_mode:
            text = f"ALL MATCHING SELECTED (A undoes) · {text}"
        elif self.selected:
            text = f"{len(self.selected):,} selected · {text}"
        summary.update(Text(text, style=theme_style(self.app, "warning", bold=True) if self.all_mode else ""))

    def _update_current(self) -> None:
        row = self._highlighted_row()
        current = self.query_one("#current", Static)
        if row is None:
            current.update("no jobs match the filter" if not self.unrouted else "no unrouted objects")
        elif self.unrouted:
            current.update(
                f"object {row['id']} from {row['calling_ae'] or '?'} · study {row['study_uid'] or '-'} · "
                f"SOP instance {row['sop_instance_uid']}"
            )
        else:
            error = short_error(row.last_error)
            # The status with its meaning, when there is an error to explain (a delivered job's Success is none).
            if row.last_status is not None and (error or row.state == "failed") and "0x" not in error:
                error = f"{self.backend.describe_status(row.last_status)} {error}"
            if error:
                more = f"\nlast error: {error}"
            elif row.state in ("waiting", "skipped", "held", "committed") or row.awaiting_commit:
                # no error to read: say what the state means
                more = "\n" + advice(
                    row.state,
                    None,
                    destination=row.destination,
                    wait_for=row.wait_for,
                    awaiting_commit=row.awaiting_commit,
                )
            else:
                more = ""
            current.update(
                f"job {row.id} {shown_state(row.state, row.awaiting_commit)}, {row.attempts} tries → "
                f"{row.destination} · {row.modality or '?'} from "
                f"{row.calling_ae or '?'} · {row.accession or '-'}" + more
            )

    @on(DataTable.RowHighlighted, "#jobs")
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._update_current()

    @on(DataTable.RowSelected, "#jobs")
    def _row_chosen(self, _event: DataTable.RowSelected) -> None:
        self.action_open_job()

    # -- rows -----------------------------------------------------------------------------------------
    def _row_id(self, row: Any) -> int:
        return int(row["id"]) if self.unrouted else int(row.id)

    def _highlighted_row(self) -> Any:
        table = self.query_one(JobTable)
        if not self.rows or table.cursor_row < 0 or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def _highlighted_id(self) -> int | None:
        row = self._highlighted_row()
        return None if row is None else self._row_id(row)

    def _refresh_marks(self) -> None:
        table = self.query_one(JobTable)
        for row in self.rows:
            ident = self._row_id(row)
            table.update_cell(str(ident), "mark", self._mark(ident))
        self._update_summary()

    # -- filter ---------------------------------------------------------------------------------------
    def apply_filter(self, **fields: Any) -> None:
        """Show exactly these filters (others cleared), from page 1: destination, state (or states), study_uid,
        accession, patient_id, older_than ('2h' or seconds). The dashboard calls apply_filter(destination=…)."""
        states = fields.get("states") or fields.get("state") or ()
        older = fields.get("older_than")
        self._set_query(
            JobQuery(
                destination=fields.get("destination") or None,
                states=tuple(states.split(",")) if isinstance(states, str) else tuple(states),
                study_uid=fields.get("study_uid") or None,
                accession=fields.get("accession") or None,
                patient_id=fields.get("patient_id") or None,
                older_than_seconds=parse_age(older) if isinstance(older, str) else older,
            )
        )
        if self.is_mounted:
            self._sync_widgets()

    def _set_query(self, query: JobQuery) -> None:
        self.query_ = query
        self.unrouted, self.all_mode, self.error = False, False, None
        self.selected.clear()
        self.pager.reset()
        if self.is_mounted:
            self._set_columns()
            self.reload()

    def _sync_widgets(self) -> None:
        """Make the filter bar show `self.query_` (without its change events re-applying it)."""
        q = self.query_
        dest_select = self.query_one("#f-destination", Select)
        state_select = self.query_one("#f-state", Select)
        names = list(self.destinations)
        if q.destination and q.destination not in names:
            names.append(q.destination)  # e.g. a destination since removed from the config
        state_value = ",".join(q.states)
        options = list(STATE_OPTIONS)
        if state_value and state_value not in {v for _, v in options}:
            options.append((state_value.replace(",", ", "), state_value))
        with self.prevent(Select.Changed, Input.Changed):
            self._set_select(dest_select, [(n, n) for n in names], q.destination or Select.NULL)
            self._set_select(state_select, options, state_value or Select.NULL)
            age = q.older_than_seconds
            self.query_one("#f-age", Input).value = fmt_duration(age) if age is not None else ""
            self.query_one("#f-accession", Input).value = q.accession or ""
            self.query_one("#f-patient", Input).value = q.patient_id or ""
            self.query_one("#f-study", Input).value = q.study_uid or ""

    def _set_select(self, select: Select[str], options: list[tuple[str, str]], value: Any) -> None:
        """Options only when they changed (setting them resets the widget's label), then the value."""
        if self._select_options.get(str(select.id)) != options:
            self._select_options[str(select.id)] = options
            select.set_options(options)
        if select.value != value:
            select.value = value

    def _query_from_widgets(self) -> JobQuery:
        dest = self.query_one("#f-destination", Select).value
        state = self.query_one("#f-state", Select).value
        return JobQuery(
            destination=dest if isinstance(dest, str) else None,
            states=tuple(state.split(",")) if isinstance(state, str) else (),
            accession=self.query_one("#f-accession", Input).value.strip() or None,
            patient_id=self.query_one("#f-patient", Input).value.strip() or None,
            study_uid=self.query_one("#f-study", Input).value.strip() or None,
            older_than_seconds=parse_age(self.query_one("#f-age", Input).value),
        )

    def _apply_widgets(self) -> bool:
        try:
            query = self._query_from_widgets()
        except FilterError as exc:
            self.error = str(exc)
            self._update_summary()
            return False
        if query != self.query_ or self.error or self.unrouted:
            self._set_query(query)
        return True

    @on(Select.Changed)
    def _select_changed(self, _event: Select.Changed) -> None:
        self._apply_widgets()

    @on(Input.Submitted)
    def _input_submitted(self, _event: Input.Submitted) -> None:
        if self._apply_widgets():
            self.query_one(JobTable).focus()

    @on(Input.Blurred)
    def _input_left(self, _event: Input.Blurred) -> None:
        self._apply_widgets()

    def action_focus_filter(self) -> None:
        self.query_one("#f-destination", Select).focus()

    def action_clear(self) -> None:
        in_filter = self.focused is not None and self.focused.id in self.FILTER_IDS
        if not in_filter and (self.selected or self.all_mode):
            self.selected.clear()
            self.all_mode = False
            self._refresh_marks()
            return
        self._set_query(JobQuery())
        self._sync_widgets()
        self.query_one(JobTable).focus()

    # -- paging ---------------------------------------------------------------------------------------
    def action_next_page(self) -> None:
        if self.unrouted:
            if self.pager.next_after is None:
                return self.notify("This is the last page.", timeout=2)
            self.unrouted_page += 1
        elif not self.pager.forward():
            return self.notify("This is the last page.", timeout=2)
        self.reload()

    def action_prev_page(self) -> None:
        if self.unrouted:
            if self.unrouted_page == 0:
                return self.notify("This is the first page.", timeout=2)
            self.unrouted_page -= 1
        elif not self.pager.back():
            return self.notify("This is the first page.", timeout=2)
        self.reload()

    # -- selection ------------------------------------------------------------------------------------
    def action_toggle_select(self) -> None:
        ident = self._highlighted_id()
        if ident is None:
            return
        self.all_mode = False
        self.selected.symmetric_difference_update({ident})
        self._refresh_marks()
        table = self.query_one(JobTable)
        if table.cursor_row < len(self.rows) - 1:
            table.move_cursor(row=table.cursor_row + 1)  # space, space, space selects a run of rows

    def action_toggle_all(self) -> None:
        self.all_mode = not self.all_mode
        self.selected.clear()
        self._refresh_marks()

    async def current_target(self) -> Target | None:
        if self.unrouted:
            self.notify("That acts on jobs: press n to go back from the unrouted objects.", severity="warning")
            return None
        if self.all_mode:
            query = self.query_
            try:
                count = await self.in_thread(lambda: self.backend.count(query))  # exact, not the page's figure
            except Exception as exc:
                self.failed("Counting the matching jobs", exc)
                return None
            return Target.for_filter(query, count)
        if self.selected:
            return Target.for_ids(sorted(self.selected))
        ident = self._highlighted_id()
        if ident is None:
            self.notify("No job here: change the filter (/) or press Esc to clear it.", severity="warning")
            return None
        return Target.for_ids([ident])

    def after_change(self) -> None:
        self.selected.clear()
        self.all_mode = False
        self.reload()

    # -- actions --------------------------------------------------------------------------------------
    def action_act(self, name: str) -> None:
        self.start_flow(lambda: self.job_action_flow(name))

    def action_reroute(self) -> None:
        if self.unrouted:
            ids: list[int] | None
            if self.all_mode:
                ids, words = None, "ALL unrouted objects"
            else:
                ids = sorted(self.selected) or ([i] if (i := self._highlighted_id()) is not None else [])
                words = f"{len(ids):,} unrouted object(s)"
            if ids == []:
                return self.notify("No unrouted object here.", severity="warning")
            self.start_flow(lambda: self.route_unrouted_flow(ids, words))
        else:
            self.start_flow(self.reroute_flow)

    def action_pause(self) -> None:
        row = None if self.unrouted else self._highlighted_row()
        destination = self.query_.destination or (row.destination if row is not None else None)
        if not destination:
            return self.notify("Filter a destination (/) or highlight one of its jobs first.", severity="warning")
        self.start_flow(lambda: self.pause_flow(destination))

    def action_evidence(self) -> None:
        row = None if self.unrouted else self._highlighted_row()
        if row is None:
            return self.notify("Highlight a job first: evidence is collected for its study.", severity="warning")
        self.start_flow(lambda: self.evidence_flow(row.study_uid, row.id))

    def action_open_job(self) -> None:
        row = self._highlighted_row()
        if row is None or self.unrouted:
            return
        from .job import JobScreen

        self.app.push_screen(JobScreen(row.id))  # the queue reloads on resume

    def action_toggle_unrouted(self) -> None:
        self.unrouted = not self.unrouted
        self.selected.clear()
        self.all_mode = False
        self.unrouted_page = 0
        self.pager.reset()
        self.rows = []
        self._set_columns()
        self._update_summary()
        self.reload()
