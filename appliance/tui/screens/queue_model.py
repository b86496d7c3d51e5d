"""What the queue screen shows and does, without Textual: filters typed by a person, paging, row texts, and the
words for each action. Kept apart so it is tested directly and the screen module stays about layout and keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.tui.backend import AWAITING_COMMITMENT, JobQuery

STATES = ("queued", "waiting", "sending", "failed", "held", "skipped", "done", "committed", "cancelled")
NOT_DONE = ("queued", "waiting", "failed", "held")  # what still needs to go somewhere (or someone)
SENT = "sent"  # how the queue shows a DONE job still awaiting its storage commitment report (not a state)
_UNITS = {"": 60, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class FilterError(ValueError):
    """A filter field a person typed cannot be understood; the message says how to write it."""


def parse_age(text: str) -> float | None:
    """'30m', '2h', '7d', '90s', '1.5h' → seconds; empty → None. A bare number means minutes."""
    text = text.strip().lower().removeprefix("older than").strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?", text)
    if not m:
        raise FilterError(f"'{text}' is not an age: write 30m, 2h or 7d (s, m, h, d, w)")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def fmt_duration(seconds: float) -> str:
    """A short age: 42s, 12m, 3h05m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_DEST_PREFIX = re.compile(r"^destination \S+ \([^)]*\):? ")


def short_error(error: str | None) -> str:
    """The last error without the 'destination NAME (AE@host:port)' the Destination column already shows."""
    return _DEST_PREFIX.sub("", (error or "").replace("\n", " "), count=1)


def shown_state(state: str, awaiting_commit: bool) -> str:
    """The State column: 'sent' for a job delivered but not yet confirmed by storage commitment."""
    return SENT if state == "done" and awaiting_commit else state


def describe_query(q: JobQuery) -> str:
    """'destination PACS_MAIN, state failed' — the filter in words (for dialogs and the summary line)."""
    parts: list[str] = []
    if q.destination:
        parts.append(f"destination {q.destination}")
    if q.states:
        words = ["sent, awaiting commitment" if s == AWAITING_COMMITMENT else s for s in q.states]
        parts.append(f"state {' or '.join(words)}")
    if q.accession:
        parts.append(f"accession {q.accession}")
    if q.patient_id:
        parts.append(f"patient ID {q.patient_id}")
    if q.study_uid:
        parts.append(f"study {q.study_uid}")
    if q.older_than_seconds is not None:
        parts.append(f"older than {fmt_duration(q.older_than_seconds)}")
    return ", ".join(parts) or "no filter: every job in the queue"


def jobs_word(n: int) -> str:
    return f"{n:,} job" + ("" if n == 1 else "s")


@dataclass
class Pager:
    """Keyset paging: the `after_id` each page starts after, as a stack, so PageUp goes back exactly."""

    starts: list[int | None] = field(default_factory=lambda: [None])
    next_after: int | None = None  # from the last loaded page; None = it was the last page

    @property
    def page(self) -> int:
        return len(self.starts)

    @property
    def current(self) -> int | None:
        return self.starts[-1]

    def forward(self) -> bool:
        if self.next_after is None:
            return False
        self.starts.append(self.next_after)
        return True

    def back(self) -> bool:
        if len(self.starts) == 1:
            return False
        self.starts.pop()
        return True

    def reset(self) -> None:
        self.starts, self.next_after = [None], None


@dataclass(frozen=True)
class Action:
    key: str
    verb: str  # "Retry"
    does: str  # what it does, for the confirmation dialog
    applies_to: str  # the states it changes; others matching are skipped
    danger: bool = False


ACTIONS = {
    "retry": Action(
        "r",
        "Retry",
        "send again now, with a fresh attempt budget (a skipped duplicate is sent anyway; a sent one awaiting "
        "its storage commitment report is sent again and commitment asked again)",
        "failed, queued, skipped or sent-awaiting-commitment",
    ),
    "hold": Action("h", "Hold", "stop sending until released (nothing is deleted)", "queued, waiting or failed"),
    "release": Action("s", "Release", "let held jobs be sent again", "held"),
    "cancel": Action(
        "x",
        "Cancel",
        "NEVER send these jobs to their destination; the object is deleted once no other destination needs it",
        "queued, waiting, held or failed",
        danger=True,
    ),
}


@dataclass(frozen=True)
class Target:
    """What an action applies to: the query sent to the backend, and how to say it to a person."""

    query: JobQuery
    count: int
    words: str  # "3 selected jobs" / "job 17" / "1,204 jobs (all matching: destination PACS_MAIN)"
    allow_all: bool = False

    @classmethod
    def for_ids(cls, ids: list[int]) -> Target:
        ids = sorted(ids)
        words = f"job {ids[0]}" if len(ids) == 1 else f"{len(ids):,} selected jobs"
        return cls(JobQuery(ids=tuple(ids)), len(ids), words)

    @classmethod
    def for_filter(cls, query: JobQuery, count: int) -> Target:
        q = replace(query, ids=())
        return cls(q, count, f"{jobs_word(count)} (all matching: {describe_query(q)})", allow_all=q.is_empty())


def confirm_title(action: Action, target: Target) -> str:
    return f"{action.verb} {target.words}?"


def confirm_body(action: Action, target: Target) -> str:
    body = f"{action.verb}: {action.does}.\nOnly {action.applies_to} jobs change; others are left as they are."
    if target.allow_all:
        body += "\n\nThere is NO filter: this acts on EVERY job in the queue."
    return body


_ADVICE = (
    ("storage commitment FAILED", "the destination reported it does NOT keep this object (its error gives the "
     "Failure Reason): check on the destination why (disk, its storage commitment log), then r sends it again "
     "and asks again; or o re-routes it, x cancels it"),
    ("called AE title not recognised", "the AE title in our config does not match the destination's: correct it "
     "(Endpoints) or on the destination, echo it, then r to retry"),
    ("calling AE title not recognised", "the destination does not know this router's AE title: its owner must add "
     "it; then r to retry"),
    ("no presentation context", "the destination does not take this kind of object: enable it there (then r), "
     "re-route it with o, or cancel it with x"),
    ("does not accept SOP class", "the destination does not take this kind of object: enable it there (then r), "
     "re-route it with o, or cancel it with x"),
    ("does not support this SOP class", "the destination does not take this kind of object: enable it there "
     "(then r), re-route it with o, or cancel it with x"),
    ("out of resources", "the destination is out of space: it is retried by itself once space is freed there"),
    ("connection refused", "the destination is down or its DICOM service stopped; when it is back the router "
     "resumes by itself (r skips the wait)"),
    ("timed out", "no answer from the destination (host down or a firewall); when it answers the router resumes "
     "by itself (r skips the wait)"),
    ("spooled file", "the object is missing on disk: it cannot be sent; cancel it with x and ask the sender to "
     "send it again"),
)  # fmt: skip


# Events that say why a job is held or skipped (newest wins), from the job's history.
CAUSE_EVENTS = ("operator_hold", "route_hold", "uid_conflict", "duplicate")
_EARLIER = re.compile(r"already (?P<state>\w+) for \S+ by job (?P<job>\d+)")
_CONFLICT_JOB = re.compile(r"job (?P<job>\d+) took another object")


def cause(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest event that explains a held or skipped job: an operator's hold, a route's, a UID conflict, a
    duplicate (None if the history has none)."""
    return next((e for e in reversed(events) if e.get("event") in CAUSE_EVENTS), None)


def advice(
    state: str,
    error: str | None,
    *,
    why: dict[str, Any] | None = None,
    destination: str | None = None,
    wait_for: str | None = None,
    awaiting_commit: bool = False,
) -> str:
    """What the person at the console can do about this job, in a sentence or two. `why` is the event that
    held or skipped it (`cause(events)`; None when the history was not read: the queue list)."""
    where = destination or "its destination"
    event, detail = (why or {}).get("event"), (why or {}).get("detail") or ""
    if state == "skipped":
        m = _EARLIER.search(detail)
        earlier = f"by an earlier job (job {m['job']})" if m else "by an earlier job"
        done = "sent to" if m is None or m["state"] == "done" else "queued for"
        return f"identical object already {done} {where} {earlier}: not sent twice. r (retry) sends it anyway."
    if state == "waiting":
        what = wait_for or "study"
        return (
            f"nothing: it is sent with the rest of its {what} once the {what} is complete (no new image for a "
            f"quiet while, or all the images the sender announced arrived). h holds it, x cancels it."
        )
    if state == "held":
        if event == "uid_conflict":
            m = _CONFLICT_JOB.search(detail)
            earlier = f" (job {m['job']})" if m else ""
            return (
                f"CONFLICT: a different object with the same SOP Instance UID already went to {where}{earlier}. "
                "Check the patient and study identifiers of both versions with the sender before releasing (s); "
                "if this one is wrong, cancel it (x)."
            )
        if event == "route_hold":
            why_held = detail or "see the route in the config"
            return f"held by its route for review: {why_held}. Check, then s releases it."
        if event == "operator_hold":
            return "an operator is holding it: s releases it"
        return "held: its history (Enter) says who or what holds it and why; s releases it"
    if state == "committed":
        return "nothing: the destination confirmed by storage commitment that it keeps the object"
    if state == "done" and awaiting_commit:
        return (
            f"nothing yet: delivered, waiting for {where}'s storage commitment report. If none comes before the "
            "deadline the dashboard warns; then check the destination, and r sends it again and asks again"
        )
    if state in ("done", "cancelled"):
        return "nothing: it is finished"
    text = (error or "").lower()
    for needle, words in _ADVICE:
        if needle.lower() in text:
            return words
    if state == "failed":
        return "read the last error; fix the cause, then r to retry (or x to cancel)"
    return "nothing: it is waiting its turn" if not error else "it is retried by itself; r retries now"
