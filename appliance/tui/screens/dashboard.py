"""Dashboard (home, key d): one glance says what is wrong. Services, problems worst first in plain words, one
row per destination, throughput, spool disk, clock, config version and certificates. Enter on a destination
shows its jobs in the queue, p pauses/resumes it, x writes an evidence file for it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Footer, Header, Label, Sparkline, Static

from appliance.router.clock import ClockState

from ..backend import Dashboard, short_age
from ..problems import OFFSET_WARN_SECONDS, age_words
from ..widgets import ConsoleScreen, MessageScreen, ReasonScreen, theme_style

SERVICES = ("receiver", "forwarder", "scheduler")
COLUMNS = ("Destination", "Backlog", "Oldest", "Failed", "Fail/1h", "Circuit", "Paused")
BAR_WIDTH = 20

HELP = """\
WHAT YOU SEE, TOP TO BOTTOM
• Services: receiver (takes images in), forwarder (sends them on), scheduler (cleanup, checks, backups). \
NOT RUNNING = no sign of life for 20 s.
• Problems: everything that needs a person, worst first. Red ✗ = act now, yellow ! = look soon.
• The table, one row per destination. Backlog: objects waiting. Oldest: how long the oldest has waited. \
Failed: refused for good, waiting for you. Fail/1h: failed attempts in the last hour (retried by themselves). \
Circuit OPEN: unreachable; sending is paused, the router keeps probing it and resumes by itself. \
Paused: an operator paused it.
• Below: objects delivered per minute over the last 30 minutes, the spool disk, the clock (NTP), the config \
version, the certificates (with TLS: the router's own certificate and its days left). Only when there is \
something to say: Commit (destinations asked for storage commitment: committed, awaiting a report) and Alerts \
(how many are active, where they are delivered, a channel whose delivery fails).

KEYS
• ↑ ↓ choose a destination.
• Enter: show that destination's jobs in the queue (retry, hold, cancel them there).
• p: pause sending to it, or resume it. Asks for a reason; recorded under your name.
• x: write an evidence file for it (jobs, attempts, status codes, log and audit lines) to attach to a ticket. \
It holds UIDs and accession numbers, no patient names.
• r: refresh now (it also refreshes by itself every few seconds).

COMMON CASES
• A destination is DOWN (circuit OPEN). Nothing is lost: objects wait on disk. Press e and echo it to see why \
(refused = its DICOM service is stopped or the port is wrong; no answer = host down or firewall). Call its \
owner. When it answers, sending resumes by itself: watch Backlog fall.
• A destination REFUSED objects (Failed above 0). Read the reason in Problems, fix the cause (for example the \
destination does not accept that kind of image), then Enter and retry them in the queue.
• The spool disk is filling. A destination that is down keeps objects on disk: fix that destination first. \
At the reserve, senders are refused ("out of resources") until space returns. Do not delete files by hand.
• A service is NOT RUNNING: `systemctl status dicom-router` and `journalctl -u dicom-router -n 100`.
• "no storage commitment report": the destination got the objects but has not confirmed it keeps them. \
Check its storage commitment log and that it can call the router back; then in the queue filter the \
destination and state "sent, awaiting commitment", A, r: they are sent again and confirmation asked again.
• "did not commit": the destination said it does NOT keep some objects. Check there why, then retry them.
• "TLS listener": the router's certificate or key does not load, so TLS senders are refused (never served \
plain instead). The message names the file; see docs/tls.md (`dicom-router tls show`, `tls rotate`).
• "audit trail broken": the audit log was edited or damaged. Nothing stops, but someone must find out why: \
`dicom-router audit verify`, docs/audit.md, then `dicom-router audit acknowledge`.
• "metrics port … in use" or "alert delivery … failing": monitoring or alerting is blind; images still flow.
• To escalate: x on the destination, then attach the file it names to the ticket.
"""


class DashboardScreen(ConsoleScreen):
    TITLE = "Dashboard"
    HELP = HELP
    BINDINGS = [
        Binding("enter", "open_queue", "Jobs", priority=True),  # before the table's own (hidden) Enter
        Binding("p", "pause", "Pause/resume"),
        Binding("x", "evidence", "Evidence"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data: Dashboard | None = None
        self.loaded_at: float | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="dash-body", can_focus=False):
            yield Static("reading the router's state…", id="services")
            with VerticalScroll(id="problems-box"):  # Tab reaches it: scroll a long list with ↑ ↓
                yield Static("", id="problems")
            table: DataTable[Any] = DataTable(id="destinations", cursor_type="row", zebra_stripes=False)
            yield table
            with Horizontal(id="throughput-row"):
                yield Label("Delivered/min", classes="fact-label")
                yield Sparkline([], id="throughput", summary_function=max)
                yield Label("", id="throughput-text")
            yield Static("", id="facts")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#destinations", DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        table.focus()

    # -- refresh ---------------------------------------------------------------------------------------
    def load(self) -> Dashboard:
        return self.backend.dashboard()

    def show(self, data: Dashboard) -> None:
        self.data = data
        self.loaded_at = data.status["time"]
        now = data.status["time"]
        self.query_one("#services", Static).update(self._services(data))
        self.query_one("#problems", Static).update(self._problems(data))
        self._fill_table(data, now)
        self.query_one("#throughput", Sparkline).data = data.throughput
        self.query_one("#throughput-text", Label).update(_throughput_text(data.throughput))
        self.query_one("#facts", Static).update(self._facts(data))

    def show_load_error(self, message: str) -> None:
        stale = ""
        if self.data is not None and self.loaded_at is not None:
            stale = f"\n  (the figures below are from {time.strftime('%H:%M:%S', time.localtime(self.loaded_at))})"
        self.query_one("#problems", Static).update(
            f"[$error b]✗ Cannot read the router's state: {escape(message)}[/]{escape(stale)}"
        )
        if self.data is None:
            self.query_one("#services", Static).update("[$error]services: unknown[/]")

    def action_refresh(self) -> None:
        self.refresh_data()

    # -- rendering -------------------------------------------------------------------------------------
    def _services(self, data: Dashboard) -> str:
        procs = data.status["processes"]
        r = data.status["router"]
        parts = []
        for name in SERVICES:
            p = procs.get(name)
            if p is None:
                parts.append(f"[$error b]✗ {name} NEVER STARTED[/]")
            elif p["running"]:
                parts.append(f"[$success]●[/] {name}")
            else:
                seen = age_words(p["heartbeat_age_seconds"])
                parts.append(f"[$error b]✗ {name} NOT RUNNING[/] (last seen {seen} ago)")
        ok = all((procs.get(n) or {}).get("running") for n in SERVICES)
        state = "[$success]running[/]  " if ok else ""
        n = len(data.problems)
        count = "[$success]no problems[/]" if not n else f"[$error b]{n} problem(s)[/]"
        return "  ".join(parts) + f"  {state}· {count} · [dim]{escape(r['ae_title'])} port {r['port']}[/]"

    def _problems(self, data: Dashboard) -> str:
        if not data.problems:
            return "[$success b]✓ No problems: images are flowing.[/]"
        lines = []
        for text, level in zip(data.problems, data.levels or ["error"] * len(data.problems), strict=False):
            mark, style = ("✗", "$error") if level == "error" else ("!", "$warning")
            lines.append(f"[{style}]{mark} {escape(text)}[/]")
        return "\n".join(lines)

    def _fill_table(self, data: Dashboard, now: float) -> None:
        table = self.query_one("#destinations", DataTable)
        selected = self.selected_destination()
        table.clear()
        err, warn, ok = (
            theme_style(self.app, v, bold=b) for v, b in (("error", True), ("warning", True), ("success", False))
        )
        for d in data.status["destinations"]:
            c = d["counts"]
            oldest = d["oldest_pending_age_seconds"]
            circuit = Text("OPEN", err) if d["circuit"] == "open" else Text(d["circuit"])
            name_style = err if d["circuit"] == "open" or c["failed"] else warn if d["paused"] else ok
            name = Text(d["name"], name_style)
            if d.get("environment") == "test":
                name.append(" TEST", warn)  # test data: never to be mistaken for a production destination
            table.add_row(
                name,
                Text(str(d["backlog"]), justify="right"),
                Text(short_age(oldest), warn if oldest and oldest > 1800 else "", justify="right"),
                Text(str(c["failed"]), err if c["failed"] else "", justify="right"),
                Text(str(d["failures_last_hour"]), warn if d["failures_last_hour"] else "", justify="right"),
                circuit,
                Text("PAUSED", warn) if d["paused"] else Text("no"),
                key=d["name"],
            )
        names = [d["name"] for d in data.status["destinations"]]
        if selected in names:
            table.move_cursor(row=names.index(selected), animate=False)

    def _facts(self, data: Dashboard) -> str:
        s = data.status
        lines = [_disk_line(s, data)]
        lines.append(_clock_line(data.clock))
        lines.append(_config_line(s.get("config")))
        lines.append(_cert_line(s["scheduler"], data))
        lines += _commitment_lines(s["destinations"])
        lines += _alert_lines(s.get("alerts"))
        return "\n".join(lines)

    # -- actions ---------------------------------------------------------------------------------------
    def selected_destination(self) -> str | None:
        table = self.query_one("#destinations", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # cursor outside the rows while the table refills
            return None
        return None if key.value is None else str(key.value)

    def _destination_row(self, name: str) -> dict[str, Any] | None:
        if self.data is None:
            return None
        return next((d for d in self.data.status["destinations"] if d["name"] == name), None)

    def _need_destination(self) -> str | None:
        name = self.selected_destination()
        if name is None:
            self.notify("No destination to act on: the table is empty (is the router's queue readable?).",
                        severity="warning")  # fmt: skip
        return name

    @on(DataTable.RowSelected, "#destinations")
    async def _row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            await self.open_queue(str(event.row_key.value))

    async def action_open_queue(self) -> None:
        name = self._need_destination()
        if name:
            await self.open_queue(name)

    async def open_queue(self, destination: str) -> None:
        await self.app.switch_mode("queue")
        apply_filter = getattr(self.app.screen, "apply_filter", None)
        if callable(apply_filter):
            apply_filter(destination=destination)
        else:
            self.app.notify(f"The queue screen cannot filter yet: look for {destination} by hand.", severity="warning")

    def action_pause(self) -> None:
        name = self._need_destination()
        if name is None:
            return
        row = self._destination_row(name) or {}
        paused = bool(row.get("paused"))
        backlog = row.get("backlog", 0)
        if paused:
            by = f" by {row.get('paused_by')}" if row.get("paused_by") else ""
            title = f"Resume sending to {name}?"
            body = f"It was paused{by}: {row.get('paused_reason') or 'no reason given'}. {backlog} object(s) wait."
        else:
            title = f"Pause sending to {name}?"
            body = (
                f"{backlog} object(s) wait now. New images are still received and queued for it; nothing is lost. "
                "Press p again to resume. Your reason goes into the audit trail."
            )

        def answered(answer: tuple[str, str | None] | None) -> None:
            if answer is None:
                return
            reason, ticket = answer
            full = f"{ticket}: {reason}" if ticket else reason
            self.run_backend(
                "Resume" if paused else "Pause",
                lambda: self.backend.set_paused(name, not paused, full),
                lambda outcome: self._after_pause(name, not paused, outcome.changed),
            )

        self.app.push_screen(ReasonScreen(title, body), answered)

    def _after_pause(self, name: str, paused: bool, changed: int) -> None:
        if not changed:
            self.notify(f"{name} was already {'paused' if paused else 'sending'}.")
        else:
            self.notify(f"{name} {'paused' if paused else 'resumed'}; recorded in the audit trail.")
        self.refresh_data()

    def action_evidence(self) -> None:
        name = self._need_destination()
        if name is None:
            return
        self.notify(f"Collecting evidence for {name}…")
        self.run_backend(
            "Evidence export",
            lambda: self.backend.evidence(destination=name),
            lambda path: self._show_evidence(name, path),
        )

    def _show_evidence(self, name: str, path: Path) -> None:
        self.app.push_screen(
            MessageScreen(
                f"Evidence for {name} saved",
                f"{path}\n\nIt lists every job for {name} with its attempts and status codes, and the matching "
                "service log and audit lines. Attach it to the ticket: it holds UIDs and accession numbers, "
                "no patient names.",
            )
        )


def _throughput_text(series: list[int]) -> str:
    if not series:
        return ""
    return f"{sum(series)} in 30 min · peak {max(series)}/min · last minute {series[-1]}"


def _disk_line(s: dict[str, Any], data: Dashboard) -> str:
    inst = s["instances"]
    held = f"{inst['spooled']} on disk ({inst['spooled_bytes'] / 1e6:.0f} MB), {inst['unrouted']} unrouted"
    sp = s["spool"]
    if not sp or not sp["total_bytes"]:
        return f"Spool     [$warning]spool folder not found[/] · {held}"
    pct = sp["used_bytes"] / sp["total_bytes"] * 100
    level = next(
        (lvl for text, lvl in zip(data.problems, data.levels, strict=False) if text.startswith("spool disk")), None
    )
    style = "$error" if level == "error" else "$warning" if level == "warning" else "$success"
    filled = round(pct / 100 * BAR_WIDTH)
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    return f"Spool     [{style}]{bar} {pct:.0f}%[/] {sp['free_bytes'] / 1e9:.1f} GB free · {held}"


def _clock_line(clock: ClockState) -> str:
    if not clock.available:
        return f"Clock     [dim]{escape(clock.message)}[/]"
    if clock.synced is None:
        return f"Clock     [$warning]{escape(clock.message)}[/]"
    if not clock.synced:
        return "Clock     [$warning b]NOT synchronised[/]: timestamps may be wrong (check NTP, UDP 123)"
    offset = clock.offset_seconds or 0.0
    style = "$success" if abs(offset) <= OFFSET_WARN_SECONDS else "$warning"
    shown = f"{offset * 1000:+.3f} ms" if abs(offset) < 1 else f"{offset:+.3f} s"
    return f"Clock     [{style}]synchronised[/], offset {shown} · {escape(clock.source or '?')} stratum {clock.stratum}"


def _config_line(conf: dict[str, Any] | None) -> str:
    if not conf:
        return "Config    [dim]unknown[/]"
    if conf["drifted"]:
        return "Config    [$warning]the file was edited outside `config apply` (drift): see Config history (c)[/]"
    if conf["version"] is None:
        return "Config    [$warning]not yet recorded in the history (the first change through c records it)[/]"
    runs = "" if conf["router_runs_it"] is not False else " · [$warning]the router runs a different one[/]"
    by = escape(f"{conf['applied_by']}, {conf['applied_at']}")
    return f"Config    version {conf['version']} ({by}){runs}"


def _cert_line(sched: dict[str, Any], data: Dashboard) -> str:
    own = _own_cert(data.status.get("tls"), sched)
    certs = [p for p in data.problems if p.startswith("certificate") or p.startswith("cannot read certificate")]
    if certs:
        style = "$error" if any("EXPIRED" in p for p in certs) else "$warning"
        return f"Certs     {own}[{style}]{len(certs)} certificate problem(s), see Problems above[/]"
    job = next((j for j in sched.get("jobs", []) if j.get("name") == "expiry-check"), None)
    if job is None or not job.get("last_result"):
        return f"Certs     {own}[dim]not checked yet (the scheduler checks them hourly)[/]"
    return f"Certs     {own}[$success]{escape(job['last_result'])}[/]"


CERT_WARN_DAYS = 30  # the expiry check's own horizon (alerts.thresholds.cert_expiry_days by default)


def _own_cert(tls: dict[str, Any] | None, sched: dict[str, Any]) -> str:
    """'TLS port 2762: router certificate ra1, 812 days left · ' (empty when the router serves no TLS)."""
    if not tls:
        return ""
    where = f"TLS port {tls['port']}" + ("" if tls.get("plain", True) else " only")
    if not tls.get("ok"):
        return f"[$error b]{where}: certificate NOT LOADED, see Problems[/] · "
    days = float(tls["days_left"])
    style = "$error b" if days < 7 else "$warning" if days < CERT_WARN_DAYS else "$success"
    subject = escape(str(tls.get("subject") or "router"))
    return f"{where}: [{style}]router certificate {subject}, {int(days)} days left[/] · "


def _commitment_lines(destinations: list[dict[str, Any]]) -> list[str]:
    """Storage commitment per destination that asks for it: committed, awaiting a report, the oldest's age."""
    parts = []
    for d in destinations:
        cm = d.get("commitment")
        if not cm:
            continue
        text = f"{escape(d['name'])} {cm['committed']} committed, {cm['awaiting']} awaiting a report"
        oldest = cm.get("oldest_age_seconds")
        if cm["awaiting"] and oldest is not None:
            deadline = cm.get("deadline_minutes")
            late = deadline is not None and oldest > deadline * 60
            style = "$warning b" if late else "dim"
            text += (
                f" [{style}](oldest {short_age(oldest)}" + (f", deadline {deadline:g} min" if deadline else "") + ")[/]"
            )
        parts.append(text)
    return [f"Commit    {' · '.join(parts)}"] if parts else []


def _alert_lines(alerts: dict[str, Any] | None) -> list[str]:
    """Active alerts and their delivery, only when there is something to say (Problems lists each alert)."""
    if not alerts:
        return []
    active = alerts.get("active") or []
    failing = {n: c for n, c in (alerts.get("channels") or {}).items() if c.get("failing_since")}
    if not active and not failing:
        return []
    errors = sum(1 for a in active if a.get("level") == "error")
    channels = ", ".join(sorted(alerts.get("channels") or {})) or "no channel"
    count = f"{len(active)} active" + (f" ([$error b]{errors} error[/])" if errors else "")
    line = f"Alerts    {count}, delivered by {escape(channels)}"
    for name, ch in sorted(failing.items()):
        why = escape(str(ch.get("last_error")))
        line += f" · [$error b]{escape(name)} delivery FAILING[/] ({ch.get('waiting', 0)} waiting): {why}"
    return [line]
