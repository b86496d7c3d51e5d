"""The dashboard's problem list: `status`'s report turned into sentences a person on call understands at a
glance, worst first. Pure functions over the report dict (no Textual, no I/O except `first_refusals`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance.router.clock import OFFSET_WARN_SECONDS, ClockState
from appliance.router.dicom_status import describe
from appliance.router.store import JobFilter, Store

FALLING_BEHIND_SECONDS = 30 * 60  # a backlog older than this on a reachable destination is worth a look
ERROR_RANK_LIMIT = 50  # ranks below this are errors (act now), the rest warnings

# Problems `status` words that the console re-words from the destination rows are dropped by prefix; the
# others are ranked by what they say (first match wins).
_RANKS: tuple[tuple[str, int], ...] = (
    ("is not running", 0),
    ("MB reserve", 15),
    ("TLS listener:", 20),  # TLS callers are refused until the certificate/key loads: never plain instead
    ("EXPIRED", 25),
    ("exited unexpectedly", 30),  # alerts: a process crash-looping
    ("attempt(s) in the last", 40),  # alerts: failure rate to a destination
    ("audit trail broken", 42),  # tampering or damage: someone must find out why (docs/audit.md)
    ("already-seen SOP Instance UID", 45),  # two objects under one identifier: a patient-safety check
    ("no storage commitment report", 52),  # sent, but the destination has not confirmed it keeps them
    ("% full", 50),
    ("% used (alert above", 50),
    ("backlog to ", 60),  # alerts: backlog age above its threshold
    ("scheduled job", 65),
    ("scheduler:", 65),
    ("expires in", 70),
    ("certificate", 70),
    ("alert delivery by", 72),  # nobody is told: worth fixing, routing is unaffected
    ("metrics", 78),  # the endpoint cannot listen: monitoring is blind, DICOM flows
    ("audit trail", 74),  # cannot be checked (permissions): the trail itself may be fine
    ("config", 75),
    ("matched no route", 80),
)
_OTHER_RANK = 90


@dataclass(frozen=True)
class Problem:
    rank: int
    text: str

    @property
    def level(self) -> str:
        return "error" if self.rank < ERROR_RANK_LIMIT else "warning"


@dataclass(frozen=True)
class Refusal:
    """The oldest job a destination refused for good: since when, and why."""

    since: float
    error: str


def first_refusals(store: Store, destinations: list[dict[str, Any]]) -> dict[str, Refusal]:
    """For each destination with failed jobs, its oldest failed job (one indexed row each, not every job)."""
    out: dict[str, Refusal] = {}
    for d in destinations:
        if not d["counts"].get("failed"):
            continue
        jobs = store.list_jobs(JobFilter(destination=d["name"], states=("failed",)), limit=1)
        if jobs:
            j = jobs[0]
            error = j.last_error or (describe(j.last_status) if j.last_status is not None else "no reason recorded")
            if j.last_status is not None and "0x" not in error:
                error = f"0x{j.last_status:04X} {error}"
            out[d["name"]] = Refusal(j.updated_at, error)
    return out


def age_words(seconds: float | None) -> str:
    """42 s · 42 min · 2 h 05 min · 3 days 4 h — for sentences (tables use the shorter form)."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    return f"{s // 86400} days {(s % 86400) // 3600} h"


def _where_and_why(name: str, error: str | None) -> tuple[str, str]:
    """'destination PACS_MAIN (PACS@10.1.2.10:104): connection refused …' → ('(PACS@10.1.2.10:104)', 'connection …')
    so the sentence names the destination once."""
    if not error:
        return "", "no error recorded"
    m = re.match(rf"destination {re.escape(name)} (\([^)]*\))(?::)? ?(.*)", error, re.DOTALL)
    if m:
        return m.group(1), m.group(2) or error
    return "", error


def destination_problems(d: dict[str, Any], refusal: Refusal | None, now: float) -> list[Problem]:
    name, backlog = d["name"], d["backlog"]
    oldest = d["oldest_pending_age_seconds"]
    waiting = f"{backlog} waiting (oldest {age_words(oldest)})" if backlog else "nothing waiting"
    where, why = _where_and_why(name, d["last_error"])
    out: list[Problem] = []
    if d["circuit"] == "open":
        since = f" for {age_words(now - d['circuit_since'])}" if d["circuit_since"] else ""
        out.append(
            Problem(
                10,
                f"{name} {where + ' ' if where else ''}unreachable{since}: {why}. {waiting}; sending resumes by "
                "itself when it answers.",
            )
        )
    if refusal is not None:
        n = d["counts"]["failed"]
        uncommitted = _commitment_failure(refusal.error)
        if uncommitted is not None:
            out.append(
                Problem(
                    20,
                    f"{name} did not commit {n} object(s) sent to it (storage commitment failed "
                    f"{age_words(now - refusal.since)} ago: {uncommitted}): it may not keep them. Check on {name}, "
                    "then retry them (Enter: its jobs) — they are sent again and commitment is asked again.",
                )
            )
        else:
            out.append(
                Problem(
                    20,
                    f"{name} has refused {n} object(s) for {age_words(now - refusal.since)}: "
                    f"{_where_and_why(name, refusal.error)[1]}. Not retried on their own: fix that, then retry them "
                    "(Enter: its jobs).",
                )
            )
    if d["paused"]:
        by = f" by {d['paused_by']}" if d["paused_by"] else ""
        ago = f" {age_words(now - d['paused_at'])} ago" if d["paused_at"] else ""
        why_paused = f" ({d['paused_reason']})" if d["paused_reason"] else ""
        out.append(Problem(55, f"{name} PAUSED{by}{ago}{why_paused}: {waiting}. Press p on it to resume."))
    if not d["configured"] and backlog:
        out.append(
            Problem(30, f"{name} is no longer in the config but {waiting}: re-route or cancel them in the queue.")
        )
    elif d["circuit"] != "open" and not d["paused"] and oldest is not None and oldest > FALLING_BEHIND_SECONDS:
        failing = ""
        if d["failures_last_hour"]:
            failing = f"; {d['failures_last_hour']} failed attempt(s) in the last hour, the last: {why}"
        out.append(Problem(60, f"{name} is falling behind: {waiting}{failing}."))
    return out


_COMMIT_FAILED = re.compile(
    r"storage commitment FAILED at \S+: (?P<why>.*?)(?: \(transaction [^)]*\))?(?: — .*)?$", re.DOTALL
)


def _commitment_failure(error: str) -> str | None:
    """The Failure Reason of a job the destination reported it did not commit, else None."""
    m = _COMMIT_FAILED.match(error)
    return m["why"] if m else None


def _clock_problem(clock: ClockState) -> Problem | None:
    if not clock.available:
        return None
    if clock.synced is False:
        return Problem(85, f"clock {clock.message}")
    if clock.synced and clock.offset_seconds is not None and abs(clock.offset_seconds) > OFFSET_WARN_SECONDS:
        return Problem(85, f"clock {clock.message}")
    return None


# The status report's CLI hints, as the console's keys.
_CONSOLE_HINTS = (
    (
        "(`queue ls --state held`)",
        "(Queue: u, filter state held; Enter on a job shows which earlier job it conflicts with)",
    ),
)
_RETRY_AWAITING = re.compile(
    r"`dicom-router queue retry --destination (\S+) --state awaiting-commitment` sends them and asks again"
)


def _console_words(text: str) -> str:
    for cli, keys in _CONSOLE_HINTS:
        text = text.replace(cli, keys)
    return _RETRY_AWAITING.sub(
        r"in the Queue (u) filter \1 and state 'sent, awaiting commitment': A and r send them and ask again", text
    )


def _tls_problem(report: dict[str, Any]) -> Problem | None:
    """The router's own TLS certificate/key that does not load, when `status` has not said so itself."""
    t = report.get("tls")
    if not t or t.get("ok", True) or any(p.startswith("TLS listener") for p in report["problems"]):
        return None
    return Problem(20, f"TLS listener: {t.get('problem')}")


def console_problems(
    report: dict[str, Any], clock: ClockState, refusals: dict[str, Refusal], now: float
) -> list[Problem]:
    """Every problem, worst first: stopped processes, unreachable destinations, a full disk, refusals, …"""
    names = [d["name"] for d in report["destinations"]]
    rows = {d["name"]: destination_problems(d, refusals.get(d["name"]), now) for d in report["destinations"]}
    problems: list[Problem] = []
    for text in report["problems"]:
        if any(text.startswith(n + " ") for n in names):
            continue  # re-worded below from the destination's row
        if any(text.startswith(f"backlog to {n}:") and rows[n] for n in names):
            continue  # the backlog alert repeats what the destination's own line says
        rank = next((r for word, r in _RANKS if word in text), _OTHER_RANK)
        problems.append(Problem(rank, _console_words(text)))
    for name in names:
        problems += rows[name]
    tls_problem = _tls_problem(report)
    if tls_problem:
        problems.append(tls_problem)
    clock_problem = _clock_problem(clock)
    if clock_problem:
        problems.append(clock_problem)
    return sorted(problems, key=lambda p: p.rank)  # stable: same rank keeps the report's order
