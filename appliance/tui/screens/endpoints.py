"""Endpoints: every configured DICOM node, C-ECHO one or all of them, add / edit / remove a node.

Changes go through `config apply` (via the backend), so they land in the same history as Ansible's and the
CLI's, under the operator's name. Echo results are kept for this console session only."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Header, Static

from ..backend import DEFAULT_COMMIT_DEADLINE, BackendError
from ..widgets import ConfirmScreen, ConsoleScreen, MessageScreen, ReasonScreen
from .config_common import apply_outcome, plain, styled
from .keybar import KeyBar
from .node_form import NodeDraft, NodeFormScreen

if TYPE_CHECKING:
    from appliance.router.config import Node
    from appliance.router.history import ApplyResult

COLUMNS = (
    ("NAME", "name"),
    ("AE TITLE", "ae"),
    ("ADDRESS", "addr"),
    ("ROLE", "role"),
    ("MAX", "max"),
    ("ECHO", "echo"),
)
ECHO_THREADS = 8  # `T` echoes this many nodes at once: one dead node's timeout must not hold up the rest

HELP = """\
WHAT THIS SHOWS
Every DICOM node in the live config: the name routes use, the AE title it answers to, its address, its role
(source = sends to the router, destination = the router sends to it), how many parallel associations the
router opens to it, and the result of the last C-ECHO you made from this console (OK with the round-trip
time, or FAILED). TEST after a name: a test-environment node (phantoms, test PACS); the router never lets a
route carry objects between test and production nodes. The panel below the table explains the highlighted
node: its routes, its morph profiles (tag edits on everything sent to it) and the last echo in words.

KEYS
  t        C-ECHO the highlighted node (as the router's own AE title, like the forwarder does)
  T        C-ECHO every node at once
  a        add a node
  e/Enter  edit the highlighted node (AE title, address, role, associations, environment production/test,
           DICOM TLS and its peer name, storage commitment and its deadline)
  x        remove the highlighted node (refused while a route still sends to it)
  f5       reload the list from the live config

Adding, editing and removing ask for a reason (and a ticket), then go through `config apply`: the change
is checked, recorded in the config history under your name (source console), written, and the router
reloads. If anything is wrong nothing changes and the message says why. The Config history screen (c)
shows every change and can roll one back.

AT 3 A.M.
* A destination does not receive: highlight it, press t. "connection refused" = nothing listens on that
  port (DICOM service down, or wrong port); "no answer"/"timed out" = host down or a firewall; "called AE
  title not recognised" = the AE title here differs from the one the destination expects: check it with
  its owner, press e, fix AE title (or port/host), Enter, give a reason and the ticket. Press t again: OK.
* "calling AE title not recognised": the destination must list this router's AE title; that is fixed on
  the destination, not here.
* Once the echo is OK, the router resends waiting jobs by itself (Queue screen, u); failed jobs need a retry.
"""


@dataclass
class EchoView:
    ok: bool | None  # None = running now
    seconds: float = 0.0
    message: str = ""
    at: float = 0.0


@dataclass
class NodeRow:
    name: str
    node: Node
    routes: list[str]


class EndpointsScreen(ConsoleScreen):
    TITLE = "Endpoints"
    HELP = HELP
    BINDINGS = [
        Binding("t", "echo", "Echo"),
        Binding("T", "echo_all", "Echo all"),
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("x", "remove", "Remove"),
        Binding("f5", "reload", "Reload", show=False),  # it reloads by itself; f5 is in the help
    ]
    DEFAULT_CSS = """
    EndpointsScreen #ep-banner { height: auto; padding: 0 1; }
    EndpointsScreen #ep-banner.problem { color: $text-error; text-style: bold; }
    EndpointsScreen #nodes { height: 1fr; }
    EndpointsScreen #ep-detail { height: auto; max-height: 9; padding: 0 1; border-top: solid $primary; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[NodeRow] = []
        self.echoes: dict[str, EchoView] = {}  # this session's echo results, by node name
        self._shown: list[NodeRow] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading the nodes from the live config…", id="ep-banner")
        table: DataTable[Text] = DataTable(id="nodes", cursor_type="row")
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static("", id="ep-detail")
        yield KeyBar()  # wraps: every key stays visible at 80 columns (Textual's Footer cuts the last ones)

    # -- loading (ConsoleScreen calls load() in a thread on every tick and return to the screen) --------
    def action_reload(self) -> None:
        """Reload now, even if a tick's refresh is still reading (it may have read before a change)."""
        self._shown = None
        self.run_backend("Reloading the nodes", self.load, self.show, on_error=self.show_load_error, group="reload")

    def load(self) -> list[NodeRow]:
        return [NodeRow(name, node, routes) for name, node, routes in self.backend.nodes_with_routes()]

    def show_load_error(self, message: str) -> None:
        banner = self.query_one("#ep-banner", Static)
        banner.update(f"! {plain(message)}")
        banner.add_class("problem")
        self._shown = None

    def show(self, rows: list[NodeRow]) -> None:
        if rows == self._shown:
            return  # the tick found nothing new: keep the table (and the cursor) as it is
        self._shown = rows
        table = self.query_one(DataTable)
        keep = self.current_name()
        self.rows = rows
        table.clear()
        for row in rows:
            n = row.node
            name = Text(row.name)
            if n.environment == "test":
                name.append(" TEST", "bold reverse")  # test nodes are labelled wherever a node is shown
            table.add_row(
                name,
                Text(n.ae_title),
                Text(f"{n.host}:{n.port}" + (" TLS" if n.tls.enabled else "")),
                Text(n.role),
                Text(str(n.max_associations) if n.is_destination else "-"),  # only outbound associations
                self._echo_cell(row.name),
                key=row.name,
            )
        if keep in {r.name for r in rows}:
            table.move_cursor(row=table.get_row_index(keep))
        banner = self.query_one("#ep-banner", Static)
        banner.remove_class("problem")
        dest = sum(1 for r in rows if r.node.is_destination)
        src = sum(1 for r in rows if r.node.is_source)
        banner.update(f"{len(rows)} node(s): {dest} the router sends to, {src} that send to it")
        self._show_detail()

    # -- the highlighted node --------------------------------------------------------------------------
    def current(self) -> NodeRow | None:
        table = self.query_one(DataTable)
        if not self.rows or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return next((r for r in self.rows if r.name == key), None)

    def current_name(self) -> str | None:
        row = self.current()
        return row.name if row else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def _show_detail(self) -> None:
        detail = self.query_one("#ep-detail", Static)
        row = self.current()
        if row is None:
            detail.update("No nodes in the config yet: press a to add one." if not self.rows else "")
            return
        n = row.node
        text = Text()
        text.append(row.name, style="bold")
        text.append(f"  {n.address}  {n.role}, up to {n.max_associations} association(s)")
        text.append(
            "  TEST environment\n" if n.environment == "test" else "\n", "bold" if n.environment == "test" else ""
        )
        text.append(f"used by route(s): {', '.join(row.routes)}" if row.routes else "used by no route")
        if n.morph:  # edited in the config file (a clinical-data change: reviewed, not typed at 3 a.m.)
            text.append(f"; everything sent to it is morphed by: {', '.join(n.morph)}")
        trust = _trust_words(n)
        if trust:
            text.append(f"\n{trust}")
        echo = self.echoes.get(row.name)
        text.append("\n")
        if echo is None:
            text.append("not echoed from this console yet: press t")
        elif echo.ok is None:
            text.append("echo running…")
        else:
            when = time.strftime("%H:%M:%S", time.localtime(echo.at))
            verdict = styled(self.app, "OK" if echo.ok else "FAILED", "success" if echo.ok else "error", bold=True)
            text.append(f"echo at {when}: ")
            text.append_text(verdict)
            text.append(f" in {echo.seconds * 1000:.0f} ms — {echo.message}")
        detail.update(text)

    def _echo_cell(self, name: str) -> Text:
        echo = self.echoes.get(name)
        if echo is None:
            return Text("-")
        if echo.ok is None:
            return Text("…")
        if echo.ok:
            return styled(self.app, f"OK {echo.seconds * 1000:.0f} ms", "success")
        return styled(self.app, "FAILED", "error", bold=True)

    # -- echo ------------------------------------------------------------------------------------------
    def action_echo(self) -> None:
        row = self.current()
        if row is None:
            self.app.bell()
            return
        self._start_echo([row.name])

    def action_echo_all(self) -> None:
        if not self.rows:
            self.app.bell()
            return
        self._start_echo([r.name for r in self.rows])

    def _start_echo(self, names: list[str]) -> None:
        names = [n for n in names if not (n in self.echoes and self.echoes[n].ok is None)]  # already running
        for name in names:
            self.echoes[name] = EchoView(None)
            self._update_echo_cell(name)
        self._show_detail()
        if names:
            self._echo(names)

    @work(thread=True, group="echo")
    def _echo(self, names: list[str]) -> None:
        backend = self.backend
        with ThreadPoolExecutor(max_workers=min(ECHO_THREADS, len(names))) as pool:
            futures = {pool.submit(backend.echo, name): name for name in names}
            for fut in as_completed(futures):
                name = futures[fut]
                try:
                    res = fut.result()
                    view = EchoView(res.ok, res.seconds, res.message, backend.clock())
                except BackendError as exc:
                    view = EchoView(False, 0.0, str(exc), backend.clock())
                except Exception as exc:  # an echo must never take the console down
                    view = EchoView(False, 0.0, f"the echo itself failed: {exc}", backend.clock())
                self.app.call_from_thread(self._echo_done, name, view)
        if len(names) > 1:
            self.app.call_from_thread(self._echo_all_done, names)

    def _echo_done(self, name: str, view: EchoView) -> None:
        self.echoes[name] = view
        self._update_echo_cell(name)
        if name == self.current_name():
            self._show_detail()

    def _echo_all_done(self, names: list[str]) -> None:
        failed = [n for n in names if not self.echoes[n].ok]
        if failed:
            text = f"{len(names) - len(failed)} OK, {len(failed)} FAILED: {', '.join(failed)} (highlight one for why)"
            self.notify(text, title="Echo all", severity="error", timeout=10)
        else:
            self.notify(f"all {len(names)} node(s) answered", title="Echo all")

    def _update_echo_cell(self, name: str) -> None:
        table = self.query_one(DataTable)
        try:
            table.update_cell(name, "echo", self._echo_cell(name), update_width=True)
        except Exception:  # the row went away with a reload meanwhile
            pass

    # -- add / edit / remove ---------------------------------------------------------------------------
    def action_add(self) -> None:
        self.app.push_screen(NodeFormScreen(NodeDraft()), self._saved)

    def action_edit(self) -> None:
        row = self.current()
        if row is None:
            self.app.bell()
            return
        n = row.node
        deadline = n.commitment.deadline_minutes
        draft = NodeDraft(
            row.name, n.ae_title, n.host, str(n.port), n.role, str(n.max_associations), n.environment,
            tls_enabled=n.tls.enabled, tls_peer_name=n.tls.peer_name or "", commitment_enabled=n.commitment.enabled,
            commitment_deadline="" if deadline == DEFAULT_COMMIT_DEADLINE else f"{deadline:g}",
            editing=row.name, routes=tuple(row.routes),
        )  # fmt: skip
        self.app.push_screen(NodeFormScreen(draft), self._saved)

    def _saved(self, outcome: str | None) -> None:
        if outcome is not None:
            self.app.push_screen(MessageScreen("Saved", outcome))
            self.action_reload()

    def action_remove(self) -> None:
        row = self.current()
        if row is None:
            self.app.bell()
            return
        if row.routes:
            self.app.push_screen(
                MessageScreen(
                    f"{row.name} cannot be removed",
                    f"route(s) {', '.join(row.routes)} still use {row.name}: change or remove those routes first "
                    "(in the config file or through Ansible). Nothing was changed.",
                    error=True,
                )
            )
            return
        body = (
            f"{row.name} ({plain(row.node.address)}, {row.node.role}) leaves the live config through "
            "`config apply`. No route uses it. Jobs already queued for it stay in the queue."
        )

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.app.push_screen(ReasonScreen(f"Why remove {row.name}?"), reasoned)

        def reasoned(answer: tuple[str, str | None] | None) -> None:
            if answer is not None:
                self._remove(row.name, answer[0], answer[1])

        self.app.push_screen(ConfirmScreen(f"Remove node {row.name}?", body, yes="Remove", danger=True), confirmed)

    def _remove(self, name: str, reason: str, ticket: str | None) -> None:
        def removed(result: ApplyResult) -> None:
            self.echoes.pop(name, None)
            self._saved(f"node {name} removed: {apply_outcome(result)}")

        def refused(message: str) -> None:
            self.app.push_screen(
                MessageScreen(f"{name} was not removed", f"{message}\n\nNothing was changed.", error=True)
            )

        self.run_backend(f"Removing {name}", lambda: self.backend.remove_node(name, reason, ticket), removed,
                         on_error=refused)  # fmt: skip


def _trust_words(n: Node) -> str:
    """'DICOM over TLS (certificate must name pacs.example) · storage commitment (warning after 60 min)'."""
    parts = []
    if n.tls.enabled:
        name = n.tls.peer_name or (n.host if n.is_destination else None)
        who = f", its certificate must name {name}" if name else ""
        parts.append(f"DICOM over TLS{who}" + ("" if n.is_destination or n.tls.peer_name else " (TLS port only)"))
    if n.commitment.enabled:
        parts.append(f"storage commitment: a warning when no report after {n.commitment.deadline_minutes:g} min")
    return " · ".join(parts)
