"""Acting on jobs, shared by the queue screen and the job detail: every change is confirm (with the exact count)
→ reason (+ ticket) → the backend call in a thread worker → a notification with the outcome → reload.
Escape or "no" at any step changes nothing. Errors become a dialog in words, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from textual.worker import WorkerFailed

from ..app import error_words
from ..widgets import ConfirmScreen, ConsoleScreen, MessageScreen, ReasonScreen
from .queue_dialogs import ChooseManyScreen, ChooseScreen
from .queue_model import ACTIONS, Target, confirm_body, confirm_title, jobs_word

T = TypeVar("T")


class JobActionsScreen(ConsoleScreen):
    """Base for screens that act on jobs. Subclasses say what the action applies to (`current_target`) and
    how to show the result (`after_change`)."""

    flow_running = False  # one confirm/reason flow at a time: a second key press while one is open is ignored

    async def current_target(self) -> Target | None:
        """The jobs the next action applies to, or None (the subclass has said why)."""
        raise NotImplementedError

    def after_change(self) -> None:
        """Reload what the screen shows (the queue changed)."""

    # -- plumbing -----------------------------------------------------------------------------------------
    async def in_thread(self, call: Callable[[], T]) -> T:
        """Run a blocking backend call in a thread worker and wait for it without blocking the UI."""
        worker = self.run_worker(call, thread=True, group="backend", exit_on_error=False)
        try:
            return await worker.wait()
        except WorkerFailed as exc:
            raise exc.error from None

    def start_flow(self, flow: Callable[[], Any]) -> None:
        if self.flow_running:
            return

        async def run() -> None:
            self.flow_running = True
            try:
                await flow()
            finally:
                self.flow_running = False

        self.run_worker(run(), group="dialog")

    async def ask_reason(self, what: str) -> str | None:
        """The reason for the audit trail ('INC0042: PACS AE title fixed' with a ticket), or None = cancelled."""
        answer = await self.app.push_screen_wait(
            ReasonScreen(
                f"Why {what}?",
                f"Recorded in the audit trail under your name ({self.backend.operator}).",
            )
        )
        if answer is None:
            return None
        reason, ticket = answer
        return f"{ticket}: {reason}" if ticket else reason

    async def confirmed(self, title: str, body: str, yes: str, danger: bool = False) -> bool:
        answer: bool | None = await self.app.push_screen_wait(ConfirmScreen(title, body, yes=yes, danger=danger))
        return bool(answer)

    def nothing_changed(self, verb: str) -> None:
        self.notify(f"{verb} cancelled: nothing was changed.", timeout=4)

    def failed(self, verb: str, exc: BaseException) -> None:
        self.app.push_screen(MessageScreen(f"{verb} failed", error_words(exc), error=True))

    # -- the flows ----------------------------------------------------------------------------------------
    async def job_action_flow(self, name: str) -> None:
        """retry / hold / release / cancel."""
        action = ACTIONS[name]
        target = await self.current_target()
        if target is None:
            return
        if target.count == 0:
            self.notify(f"Nothing to {action.verb.lower()}: no job matches.", severity="warning")
            return
        if not await self.confirmed(
            confirm_title(action, target), confirm_body(action, target), action.verb, action.danger
        ):
            return self.nothing_changed(action.verb)
        reason = await self.ask_reason(f"{action.verb.lower()} {target.words}")
        if reason is None:
            return self.nothing_changed(action.verb)
        try:
            outcome = await self.in_thread(
                lambda: self.backend.act(name, target.query, reason, allow_all=target.allow_all)
            )
        except Exception as exc:
            return self.failed(action.verb, exc)
        self.notify(outcome.message(), title=action.verb, severity="information" if outcome.changed else "warning")
        self.after_change()

    async def reroute_flow(self) -> None:
        target = await self.current_target()
        if target is None:
            return
        if target.count == 0:
            self.notify("Nothing to re-route: no job matches.", severity="warning")
            return
        names = await self.in_thread(self.backend.destination_names)
        if not names:
            self.app.push_screen(
                MessageScreen(
                    "Re-route",
                    "The config names no destination to re-route to (or it cannot be read: see Config history, key c).",
                    error=True,
                )
            )
            return
        to = await self.app.push_screen_wait(
            ChooseScreen(
                f"Re-route {target.words} to which destination?",
                names,
                "Unsent jobs (queued, failed, held) are cancelled where they are and queued again for "
                "the destination you choose. Jobs already delivered are left alone.",
            )
        )
        if to is None:
            return self.nothing_changed("Re-route")
        body = f"Each unsent job is cancelled for its current destination and a new job is queued for {to}."
        if target.allow_all:
            body += "\n\nThere is NO filter: this acts on EVERY job in the queue."
        if not await self.confirmed(f"Re-route {target.words} to {to}?", body, "Re-route"):
            return self.nothing_changed("Re-route")
        reason = await self.ask_reason(f"re-route {target.words} to {to}")
        if reason is None:
            return self.nothing_changed("Re-route")
        try:
            outcome = await self.in_thread(
                lambda: self.backend.reroute(target.query, to, reason, allow_all=target.allow_all)
            )
        except Exception as exc:
            return self.failed("Re-route", exc)
        new = outcome.detail.get("new_jobs", 0)
        self.notify(
            f"{outcome.message()}; {jobs_word(new)} queued for {to}",
            title="Re-route",
            severity="information" if outcome.changed else "warning",
        )
        self.after_change()

    async def pause_flow(self, destination: str) -> None:
        try:
            state = await self.in_thread(lambda: self.backend.destination_state(destination))
        except Exception as exc:
            return self.failed("Pause", exc)
        paused = state is not None and state.paused
        if state is not None and state.paused:
            verb, title = "Resume", f"Resume sending to {destination}?"
            why = f": {state.paused_reason}" if state.paused_reason else ""
            body = (
                f"{destination} was paused by {state.paused_by or 'someone'}{why}.\n"
                "Its waiting jobs are sent again at once."
            )
        else:
            verb, title = "Pause", f"Pause sending to {destination}?"
            body = (
                f"Nothing is sent to {destination} until someone resumes it (p again). Its jobs keep waiting "
                "and new images still queue for it: nothing is lost."
            )
        if not await self.confirmed(title, body, verb):
            return self.nothing_changed(verb)
        reason = await self.ask_reason(f"{verb.lower()} {destination}")
        if reason is None:
            return self.nothing_changed(verb)
        try:
            outcome = await self.in_thread(lambda: self.backend.set_paused(destination, not paused, reason))
        except Exception as exc:
            return self.failed(verb, exc)
        done = "paused: nothing is sent to it until you resume it" if not paused else "resumed"
        self.notify(f"{destination} {done}" + ("" if outcome.changed else " (it already was)"), title=verb)
        self.after_change()

    async def evidence_flow(self, study_uid: str | None, job_id: int) -> None:
        if not study_uid:
            self.app.push_screen(
                MessageScreen(
                    "Evidence",
                    f"Job {job_id} has no study UID to collect evidence "
                    "for; use x on the dashboard for its destination.",
                    error=True,
                )
            )
            return
        self.notify(f"Collecting evidence for study {study_uid}…", timeout=3)
        try:
            path = await self.in_thread(lambda: self.backend.evidence(study_uid=study_uid))
        except Exception as exc:
            return self.failed("Evidence export", exc)
        self.app.push_screen(
            MessageScreen(
                "Evidence written",
                f"{path}\n\nAttach this file to the incident ticket. It lists every "
                f"job of study {study_uid} with its attempts and status codes, and the matching service "
                "log and audit lines. It holds UIDs and accession numbers, no patient names or IDs.",
            )
        )

    async def route_unrouted_flow(self, instance_ids: list[int] | None, words: str) -> None:
        names = await self.in_thread(self.backend.destination_names)
        if not names:
            self.app.push_screen(MessageScreen("Route", "The config names no destination.", error=True))
            return
        to = await self.app.push_screen_wait(ChooseManyScreen(f"Send {words} to which destination(s)?", names))
        if to is None:
            return self.nothing_changed("Route")
        title = f"Route {words} to {', '.join(to)}?"
        if not await self.confirmed(title, "Each object gets one queued job per destination you chose.", "Route"):
            return self.nothing_changed("Route")
        reason = await self.ask_reason(f"route {words} to {', '.join(to)}")
        if reason is None:
            return self.nothing_changed("Route")
        try:
            outcome = await self.in_thread(lambda: self.backend.route_unrouted(instance_ids, to, reason))
        except Exception as exc:
            return self.failed("Route", exc)
        self.notify(f"{outcome.changed:,} unrouted object(s) queued for {', '.join(to)}", title="Route")
        self.after_change()
