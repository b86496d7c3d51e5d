"""Alerts: which conditions are active now, and what to tell people about them.

Every 30 s the scheduler's `alerts` job
  1. evaluates the thresholds in `alerts.thresholds` (backlog age, failure rate, disk use, service restarts)
     over the queue database and the supervisor's restart record, and takes over the warnings the other
     jobs raise (certificate expiry, disk watermark, commitment overdue, a failed backup, the metrics port)
     and open circuits;
  2. compares them with the alerts active before (state in `alerts.json`, so a scheduler restart does not
     announce everything again): a new one is *raised*, one gone is *cleared*, one still active is
     *repeated* every `repeat_minutes`, one that got worse (warning → error) is raised again;
  3. hands those notifications to the channels (alert_delivery.py: syslog, SMTP, webhook).

Threshold alerts appear in `status` (as the job's warnings); the others are already there from their own
checks, so they are delivered but not listed twice.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import RouterConfig
from .fsutil import atomic_write_bytes
from .store import DestinationStats, Store

LEVELS = ("warning", "error")
SOURCE = "alerts"  # the job's name: status lists its alerts like any job's warnings


@dataclass(frozen=True)
class Condition:
    """Something wrong right now. `key` identifies it across runs (its message may change: ages grow)."""

    key: str
    level: str  # warning | error
    message: str
    in_status: bool = True  # False: `status` already shows it from its own check


@dataclass
class Notification:
    event: str  # raised | cleared | repeated | suppressed (a rate-limit summary) | test
    key: str
    level: str
    message: str
    since: float
    at: float

    def subject(self, router: str) -> str:
        word = {"raised": "ALERT", "repeated": "STILL ACTIVE", "cleared": "CLEARED", "suppressed": "SUMMARY"}
        return f"[{router}] {word.get(self.event, self.event.upper())} {self.level}: {self.message}"[:200]


# -- evaluation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempts:
    delivered: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.delivered + self.failed


def attempts_since(store: Store, since: float) -> dict[str, Attempts]:
    """Send outcomes per destination since `since`, from the jobs' event history (every process's sends)."""
    return {name: Attempts(ok, bad) for name, (ok, bad) in store.send_outcomes_since(since).items()}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def threshold_conditions(
    cfg: RouterConfig,
    stats: dict[str, DestinationStats],
    attempts: dict[str, Attempts],
    disk_used_percent: float | None,
    restarts_last_hour: dict[str, int],
    now: float,
) -> list[Condition]:
    """The configured thresholds over the router's current state (pure: tests call it directly)."""
    t = cfg.alerts.thresholds
    out: list[Condition] = []
    for name in sorted(set(cfg.destinations()) | set(stats)):
        s = stats.get(name)
        if s is None:
            continue
        if t.backlog_age_minutes is not None and s.oldest_pending_at is not None:
            age = now - s.oldest_pending_at
            if age > t.backlog_age_minutes * 60:
                level = "error" if age > 4 * t.backlog_age_minutes * 60 else "warning"
                out.append(
                    Condition(
                        f"backlog-age:{name}",
                        level,
                        f"backlog to {name}: {s.backlog} job(s) waiting, the oldest for {_minutes(age)} "
                        f"(alert above {t.backlog_age_minutes:g} min) — see `dicom-router queue ls --destination "
                        f"{name}` and the destination's last error",
                    )
                )
        a = attempts.get(name)
        if t.failure_rate_percent is not None and a is not None and a.total >= t.failure_min_attempts:
            rate = 100.0 * a.failed / a.total
            if rate >= t.failure_rate_percent:
                out.append(
                    Condition(
                        f"failure-rate:{name}",
                        "error" if rate >= 90 else "warning",
                        f"sends to {name} failing: {a.failed} of {a.total} attempt(s) in the last "
                        f"{t.failure_window_minutes:g} min failed ({rate:.0f}%, alert at "
                        f"{t.failure_rate_percent:g}%) — last error: {s.last_error or 'none recorded'}",
                    )
                )
        if s.circuit == "open":
            out.append(
                Condition(
                    f"circuit-open:{name}",
                    "error",
                    f"destination {name} unreachable, sends paused and probed: {s.last_error or 'no error recorded'}",
                    in_status=False,  # status lists open circuits itself
                )
            )
    disk_limit = t.disk_use_percent
    if disk_limit is not None and disk_used_percent is not None and disk_used_percent > disk_limit:
        # Unset, the disk-watermark job's own warning (router.disk_warn_percent) is the disk alert.
        out.append(
            Condition(
                "disk-use",
                "warning",
                f"spool disk {disk_used_percent:.0f}% used (alert above {disk_limit:g}%) — free space or fix the "
                "destinations holding objects",
            )
        )
    if t.service_restarts is not None:
        for proc, n in sorted(restarts_last_hour.items()):
            if n >= t.service_restarts:
                out.append(
                    Condition(
                        f"service-restarts:{proc}",
                        "error",
                        f"the {proc} process exited unexpectedly {n} time(s) in the last hour and was restarted "
                        f"(alert at {t.service_restarts}) — see the service log (journalctl -u dicom-router) "
                        "for its last messages",
                    )
                )
    return out


_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def job_conditions(job_alerts: dict[str, list[Any]], failed_jobs: dict[str, str]) -> list[Condition]:
    """The other jobs' warnings (already in status) and failed scheduled jobs, as conditions to deliver.

    Their messages carry changing numbers (days left, minutes overdue, percent): the key leaves the numbers
    out, so "expires in 29 days" tomorrow is the same alert as "expires in 30 days" today."""
    out = []
    for job, alerts in sorted(job_alerts.items()):
        if job == SOURCE:
            continue
        for a in alerts:
            key = f"{job}:{_NUMBERS.sub('#', a.message)}"
            out.append(Condition(key, a.level if a.level in LEVELS else "warning", a.message, in_status=False))
    for job, error in sorted(failed_jobs.items()):
        out.append(Condition(f"job-failed:{job}", "error", f"scheduled job {job} failed: {error}", in_status=False))
    return out


# -- state: active alerts --------------------------------------------------------------------------
@dataclass
class ActiveAlert:
    key: str
    level: str
    message: str
    since: float
    last_announced: float
    in_status: bool = True


@dataclass
class AlertBook:
    """Active alerts; `update` turns the current conditions into notifications."""

    active: dict[str, ActiveAlert] = field(default_factory=dict)

    def update(self, conditions: list[Condition], now: float, repeat_seconds: float) -> list[Notification]:
        out: list[Notification] = []
        current = {c.key: c for c in conditions}
        for key, c in current.items():
            a = self.active.get(key)
            if a is None:
                self.active[key] = ActiveAlert(key, c.level, c.message, now, now, c.in_status)
                out.append(Notification("raised", key, c.level, c.message, now, now))
                continue
            worse = LEVELS.index(c.level) > LEVELS.index(a.level) if a.level in LEVELS else False
            a.level, a.message, a.in_status = c.level, c.message, c.in_status
            if worse or now - a.last_announced >= repeat_seconds:
                a.last_announced = now
                out.append(Notification("raised" if worse else "repeated", key, c.level, c.message, a.since, now))
        for key in [k for k in self.active if k not in current]:
            a = self.active.pop(key)
            out.append(Notification("cleared", key, a.level, f"cleared: {a.message}", a.since, now))
        return out

    def to_json(self) -> dict[str, Any]:
        return {k: asdict(a) for k, a in sorted(self.active.items())}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AlertBook:
        book = cls()
        for key, item in doc.items():
            try:
                book.active[key] = ActiveAlert(**item)
            except TypeError:
                continue  # an entry from another version: it is re-raised if still true
        return book


class AlertStateFile:
    """`alerts.json` in the state directory: active alerts and each channel's outbox and counters."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "alerts.json"

    def read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def write(self, doc: dict[str, Any]) -> None:
        atomic_write_bytes(self.path, json.dumps(doc, indent=1).encode(), mode=0o640)


# -- status ----------------------------------------------------------------------------------------
def alert_report(cfg: RouterConfig, now: float | None = None) -> dict[str, Any]:
    """For `status`: active alerts and each channel's delivery state, as the alerts job last wrote them."""
    now = time.time() if now is None else now
    doc = AlertStateFile(cfg.router.state_dir).read()
    active = [
        {**a, "age_seconds": round(now - a.get("since", now), 1)}
        for a in sorted(doc.get("active", {}).values(), key=lambda a: (a.get("level") != "error", a.get("since", 0)))
    ]
    channels = {}
    for name, ch in doc.get("channels", {}).items():
        channels[name] = {
            "waiting": len(ch.get("outbox", [])),
            "failing_since": ch.get("failing_since"),
            "last_error": ch.get("last_error"),
            "counts": ch.get("counts", {}),
        }
    return {"evaluated_at": doc.get("evaluated_at"), "active": active, "channels": channels}


def render_alert_lines(report: dict[str, Any] | None) -> list[str]:
    """The ALERTS block of `dicom-router status` (empty when nothing is active and delivery is fine)."""
    failing = {n: c for n, c in (report or {}).get("channels", {}).items() if c["failing_since"] and c["waiting"]}
    if not report or (not report["active"] and not failing):
        return []
    from .status import short_age

    names = ", ".join(report["channels"]) or "no channel"  # in the order they are tried: syslog, smtp, webhook
    lines = ["", f"  ALERTS (delivered to {names})"]
    for a in report["active"]:
        lines.append(f"  {a['level'].upper():<7} for {short_age(a['age_seconds']):>6}  {a['message']}")
    for name, ch in failing.items():
        lines.append(f"  delivery by {name} failing: {ch['waiting']} notification(s) waiting — {ch['last_error']}")
    return lines


def restarts_last_hour(state_dir: Path, now: float) -> dict[str, int]:
    from . import restarts

    return {n: r.within(3600, now) for n, r in restarts.load(restarts.record_path(state_dir)).items()}


def read_inputs(cfg: RouterConfig, store: Store, now: float) -> tuple[dict[str, DestinationStats], dict[str, Attempts]]:
    """What the thresholds are evaluated over (a database error fails the run: `status` shows it)."""
    stats = store.destination_stats(now)
    return stats, attempts_since(store, now - cfg.alerts.thresholds.failure_window_minutes * 60)
