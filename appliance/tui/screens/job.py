"""One job in full (Enter on the queue): what it is, where it goes, why it is stuck, and its whole history —
every attempt with the DICOM status code and its meaning, every operator action with who and why."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Header, Static

from ..backend import JobDetail
from ..widgets import theme_style
from .keybar import KeyBar
from .queue_actions import JobActionsScreen
from .queue_model import SENT, Target, advice, cause, fmt_duration, shown_state

EVENT_WORDS = {
    "delivered": "delivered",
    "attempt_failed": "failed, will retry",
    "failed": "FAILED: needs operator",
    "returned": "given back unsent",
    "requeued": "requeued",
    "rerouted": "re-routed elsewhere",
    "operator_retry": "retried by operator",
    "operator_hold": "held by operator",
    "operator_release": "released by operator",
    "operator_cancel": "cancelled by operator",
    "operator_reroute": "re-routed here by operator",
    "operator_route": "routed by operator",
    "route_hold": "held by its route",
    "uid_conflict": "UID CONFLICT",
    "duplicate": "skipped: duplicate",
    "study_complete": "study complete",
    "series_complete": "series complete",
    "late_arrival": "late arrival",
    "not_waiting": "sent at once",
    "commitment_requested": "commitment asked",
    "committed": "COMMITTED",
    "commitment_failed": "COMMITMENT FAILED",
}
EVENT_STYLE = {
    "delivered": "success",
    "failed": "error",
    "attempt_failed": "warning",
    "uid_conflict": "error",
    "route_hold": "warning",
    "late_arrival": "warning",
    "committed": "success",
    "commitment_failed": "error",
}
STATE_STYLE = {
    "failed": "error",
    "held": "warning",
    "done": "success",
    "committed": "success",
    "waiting": "primary",
    "sent": "primary",
}

HELP = """\
WHAT YOU SEE
  Top: the object (study, accession, SOP instance, where it came from), where it goes, its state, how many
  attempts, when the next one is due, and the last DICOM status and error in words.
  History: every event, oldest first — each attempt with its status code and what the code means, and
  every operator action with who did it and why.

KEYS
  r retry   h hold   s release   x cancel   o re-route   (this job only; each asks to confirm, then why)
           r on a SKIPPED job sends the duplicate anyway; s on a job held for a UID CONFLICT sends the
           second version: check the patient and study identifiers of both with the sender first
  v        write an evidence file for this job's study (to attach to a ticket)
  Esc      back to the queue

READING THE ERRORS
  "connection refused" / "no answer": the destination is down or unreachable; the router retries by itself.
  "called AE title not recognised": the AE title in our config does not match the destination's; fix it in
    Endpoints, echo the node, then retry (r).
  "does not accept SOP class … / no presentation context": the destination does not take this kind of
    image; enable it there, or re-route (o) to a destination that does.
  0xA7xx "out of resources": the destination's disk is full; it is retried by itself.
  "storage commitment FAILED": the destination reported it does not keep the object (the Failure Reason
    says why); check on the destination, then retry (r) sends it again and asks for commitment again.

STORAGE COMMITMENT
  SENT, AWAITING STORAGE COMMITMENT: delivered; the destination has not yet confirmed it keeps the object.
  COMMITTED: it confirmed. The history shows each request (its transaction) and the report."""


def _ts(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class JobScreen(JobActionsScreen):
    TITLE = "Job"
    HELP = HELP
    DEFAULT_CSS = """
    JobScreen #job-body { height: 1fr; }
    JobScreen #job-facts { height: auto; padding: 0 1; }
    JobScreen #history-title { height: 1; padding: 0 1; margin-top: 1; text-style: bold; }
    JobScreen #events { height: auto; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "act('retry')", "Retry"),
        Binding("h", "act('hold')", "Hold"),
        Binding("s", "act('release')", "Release"),
        Binding("x", "act('cancel')", "Cancel"),
        Binding("o", "reroute", "Re-route"),
        Binding("v", "evidence", "Evidence"),
    ]

    def __init__(self, job_id: int):
        super().__init__()
        self.job_id = job_id
        self.detail: JobDetail | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="job-body"):
            yield Static(f"reading job {self.job_id}…", id="job-facts")
            yield Static("History (oldest first)", id="history-title")
            yield Static("", id="events")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#job-body").focus()  # arrows scroll; the data comes with the screen's resume

    def refresh_data(self) -> None:
        self.run_backend(
            f"Reading job {self.job_id}",
            lambda: self.backend.job(self.job_id),
            self.show,
            on_error=self._error,
            group="refresh",
        )

    def _error(self, message: str) -> None:
        self.query_one("#job-facts", Static).update(Text(message, style=theme_style(self.app, "error", bold=True)))

    def show(self, data: Any) -> None:
        self.detail = detail = data
        j = detail.job
        now = self.backend.clock()
        state = shown_state(j.state, j.awaiting_commit)
        state_style = STATE_STYLE.get(state)
        head = Text()
        head.append(f"Job {j.id}  ", style="bold")
        label = "SENT, AWAITING STORAGE COMMITMENT" if state == SENT else state.upper()
        head.append(label, style=theme_style(self.app, state_style, bold=True) if state_style else "bold")
        head.append(f"  → {j.destination}  (route {j.route or '-'}, priority {j.priority})")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1, overflow="fold")
        attempts = str(j.attempts)
        if j.state == "queued":
            due = j.next_attempt_at - now
            attempts += f"   next attempt {'now' if due <= 0 else 'in ' + fmt_duration(due)}"
        if j.done_at:
            attempts += f"   finished {_ts(j.done_at)}"
        # How the route asked for it to be sent: shown only when it is not the plain default.
        how = [f"when its {j.wait_for} is complete" if j.wait_for else "",
               f"morph: {', '.join(j.morph)}" if j.morph else "",
               "no transcoding" if j.transcode == "never" else ""]  # fmt: skip
        why = advice(
            j.state,
            j.last_error,
            why=cause(detail.events),
            destination=j.destination,
            wait_for=j.wait_for,
            awaiting_commit=j.awaiting_commit,
        )
        for label, value in (
            ("study", f"{j.study_uid or '-'}   accession {j.accession or '-'}   modality {j.modality or '-'}"),
            ("object", f"{j.sop_instance_uid}  ({j.size_bytes:,} bytes)"),
            ("SOP class", f"{j.sop_class_uid}   transfer syntax {j.transfer_syntax}"),
            ("received", f"{_ts(j.received_at)} ({fmt_duration(now - j.received_at)} ago) from {j.calling_ae or '?'}"),
            ("attempts", attempts),
            ("route asks", "  ·  ".join(h for h in how if h)),
            ("last status", detail.last_status_text or "-"),
            ("what to do", why),
        ):
            if value:
                grid.add_row(label, value)
        grid.add_row(
            "last error", Text(j.last_error or "-", style=theme_style(self.app, "error") if j.last_error else "")
        )
        facts = Group(head, grid)
        self.query_one("#job-facts", Static).update(facts)
        self.query_one("#events", Static).update(self._history(detail))

    def _history(self, detail: JobDetail) -> Table:
        """Every event in a table whose Detail column wraps, so no reason is ever cut off."""
        table = Table(box=None, padding=(0, 1), expand=True, header_style="bold")
        table.add_column("Time", no_wrap=True)
        table.add_column("Event", max_width=26)
        table.add_column("By", max_width=14, overflow="fold")
        table.add_column("Status and detail", ratio=1, overflow="fold")
        j = detail.job
        table.add_row(
            _ts(j.created_at), "created", "router", f"received from {j.calling_ae or '?'}, route {j.route or '-'}"
        )
        for e in detail.events:
            style = EVENT_STYLE.get(e["event"])
            words = EVENT_WORDS.get(e["event"], e["event"])
            text = e["detail"] or ""
            if e["status"] is not None:
                code = e["status"]
                status = (
                    self.backend.describe_failure_reason(code)
                    if e["event"] == "commitment_failed"
                    else self.backend.describe_status(code)
                )
                text = f"{status} — {text}" if text else status
            table.add_row(
                _ts(e["at"]),
                Text(words, style=theme_style(self.app, style) if style else ""),
                e["actor"] or "router",
                text,
            )
        return table

    async def current_target(self) -> Target | None:
        return Target.for_ids([self.job_id])

    def after_change(self) -> None:
        self.refresh_data()

    def action_act(self, name: str) -> None:
        self.start_flow(lambda: self.job_action_flow(name))

    def action_reroute(self) -> None:
        self.start_flow(self.reroute_flow)

    def action_evidence(self) -> None:
        if self.detail is None:
            return
        job = self.detail.job
        self.start_flow(lambda: self.evidence_flow(job.study_uid, job.id))

    def action_back(self) -> None:
        self.dismiss()  # the queue reloads when it shows again
