"""The storage commitment deadline: sent objects whose commitment report has not come within their
destination's `commitment.deadline_minutes` become a warning — in `status` (read live) and as the
`commitment-deadline` scheduler job's alert, with a `commitment_overdue` audit entry per request, once.

Apart from commitment.py so `status` does not import the DICOM stack to read the queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audit import AuditLog
from .config import RouterConfig
from .logsetup import log
from .store import Store

if TYPE_CHECKING:
    from .scheduled_jobs import JobOutput

LOG = logging.getLogger("router.commitment")

DEFAULT_DEADLINE_MINUTES = 60.0
JOB_NAME = "commitment-deadline"


@dataclass(frozen=True)
class Overdue:
    destination: str
    objects: int
    oldest_at: float
    deadline_minutes: float
    transactions: list[dict[str, Any]]

    def message(self, cfg: RouterConfig, now: float) -> str:
        seconds = now - self.oldest_at
        ago = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        r = cfg.router
        return (
            f"{self.destination}: {self.objects} object(s) sent up to {ago} ago have no storage "
            f"commitment report (deadline {self.deadline_minutes:g} min) — the destination may not have stored "
            f"them; check its storage commitment log and that it can call back {r.ae_title}@{r.bind}:{r.port}, "
            f"then `dicom-router queue retry --destination {self.destination} --state awaiting-commitment` "
            "sends them and asks again"
        )


def find_overdue(cfg: RouterConfig, store: Store, now: float) -> list[Overdue]:
    found = []
    for dest in sorted(store.commitment_overview(now)):
        node = cfg.nodes.get(dest)
        deadline = node.commitment.deadline_minutes if node else DEFAULT_DEADLINE_MINUTES
        rows = store.overdue_commitments(dest, now - deadline * 60)
        if rows:
            oldest = min(r["sent_at"] for r in rows)
            found.append(Overdue(dest, sum(int(r["objects"]) for r in rows), oldest, deadline, rows))
    return found


def overdue_problems(cfg: RouterConfig, store: Store, now: float) -> list[str]:
    """For `status`, read live (the scheduler job's copy may be up to 30 s old)."""
    return [o.message(cfg, now) for o in find_overdue(cfg, store, now)]


def check_deadlines(cfg: RouterConfig, store: Store, audit: AuditLog, now: float) -> JobOutput:
    """The scheduler job: an alert per destination with overdue reports; each overdue request audited once."""
    from .scheduled_jobs import Alert, JobOutput

    alerts = []
    overdue = find_overdue(cfg, store, now)
    for o in overdue:
        text = o.message(cfg, now)
        alerts.append(Alert(JOB_NAME, "warning", text))
        fresh = [t for t in o.transactions if not t["overdue_noted"]]
        if fresh:
            log(LOG, logging.WARNING, text, destination=o.destination)
        for t in fresh:
            audit.record(
                "commitment_overdue",
                "failure",
                destination=o.destination,
                transaction_uid=t["transaction_uid"],
                count=t["objects"],
                sent_minutes_ago=round((now - t["sent_at"]) / 60, 1),
                deadline_minutes=o.deadline_minutes,
            )
        store.note_overdue([t["transaction_uid"] for t in fresh])
    waiting = store.commitment_overview(now)
    total = sum(s.awaiting for s in waiting.values())
    if not total:
        return JobOutput("no object awaits a storage commitment report")
    late = sum(o.objects for o in overdue)
    return JobOutput(f"{total} object(s) await a storage commitment report at {len(waiting)} destination(s); "
                     f"{late} overdue", alerts)  # fmt: skip
