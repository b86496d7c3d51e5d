"""Operator actions on the queue, shared by the CLI and the console: each changes the queue, frees spool files
no job needs any more, wakes the forwarder, and writes one audit entry that names the person and every job."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog, patient_field
from .config import Priority, RouterConfig
from .spool import Spool
from .store import ActionResult, JobFilter, Store
from .wakeup import Doorbell, socket_path

AUDIT_MAX_JOBS = 500  # an operator action names at most this many jobs in its audit entry
JOB_ACTIONS = ("retry", "hold", "release", "cancel")


class OperationError(Exception):
    """The action was not done; the message says why and what to do."""


@dataclass
class Outcome:
    action: str
    changed: int
    skipped: int = 0
    operator: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        msg = f"{self.action}: {self.changed} job(s) changed"
        if self.skipped:
            msg += f", {self.skipped} matched but were in a state where {self.action} does not apply"
        return msg


def _audit(cfg: RouterConfig, process: str) -> AuditLog:
    return AuditLog(cfg.audit_path, process)


def _audit_filter(cfg: RouterConfig, flt: JobFilter) -> dict[str, Any]:
    """The filter the operator gave, with a Patient ID only as `audit.patient_ids` allows."""
    shown = {k: v for k, v in flt.__dict__.items() if v and k != "patient_id"}
    return {**shown, **patient_field(cfg, flt.patient_id)}


def _ring(cfg: RouterConfig) -> None:
    Doorbell(socket_path(cfg.router.state_dir)).ring()


def _named_jobs(store: Store, ids: list[int]) -> list[dict[str, Any]]:
    named = store.list_jobs(JobFilter(ids=ids[:AUDIT_MAX_JOBS]), limit=AUDIT_MAX_JOBS) if ids else []
    return [
        {
            "job": j.id,
            "destination": j.destination,
            "study_uid": j.study_uid,
            "sop_instance_uid": j.sop_instance_uid,
            "accession": j.accession,
        }
        for j in named
    ]


def job_action(
    cfg: RouterConfig,
    store: Store,
    action: str,
    flt: JobFilter,
    operator: str,
    reason: str,
    *,
    allow_all: bool = False,
    process: str = "cli",
) -> Outcome:
    """retry / hold / release / cancel the jobs `flt` selects."""
    if action not in JOB_ACTIONS:
        raise OperationError(f"unknown action '{action}': use one of {', '.join(JOB_ACTIONS)}")
    if flt.is_empty() and not allow_all:
        raise OperationError(
            f"name the jobs to {action}: give job ids or a filter (destination, state, study, accession, "
            "patient ID, age), or confirm acting on every job"
        )
    now = time.time()
    res: ActionResult
    if action == "retry":
        res = store.retry(flt, operator, reason, now)
    elif action == "hold":
        res = store.hold(flt, operator, reason, now)
    elif action == "release":
        res = store.release(flt, operator, reason, now)
    else:
        res = store.cancel(flt, operator, reason, now, keep_spool=cfg.router.retention.keep_sent_hours > 0)
    spool = Spool(cfg.spool_dir)
    for key in res.spool_keys_freed:
        spool.delete(key)
    if action in ("retry", "release") and res.changed:
        _ring(cfg)
    # Name what changed (job, destination, study, SOP instance, accession), not just the filter used.
    named = _named_jobs(store, res.job_ids)
    _audit(cfg, process).record(
        f"queue_{action}",
        operator=operator,
        reason=reason,
        filter=_audit_filter(cfg, flt),
        changed=res.changed,
        skipped=res.skipped,
        jobs=named,
        jobs_not_listed=max(0, res.changed - len(named)) or None,
    )
    return Outcome(action, res.changed, res.skipped, operator)


def _check_destinations(cfg: RouterConfig, names: list[str]) -> None:
    unknown = [d for d in names if d not in cfg.destinations()]
    if unknown:
        known = ", ".join(sorted(cfg.destinations())) or "none"
        raise OperationError(f"{', '.join(unknown)} is not a destination in the config (destinations: {known})")


def reroute(
    cfg: RouterConfig,
    store: Store,
    flt: JobFilter,
    to: str,
    operator: str,
    reason: str,
    *,
    allow_all: bool = False,
    process: str = "cli",
) -> Outcome:
    """Send unsent jobs to another destination instead (misrouted study, destination gone for good)."""
    _check_destinations(cfg, [to])
    if flt.is_empty() and not allow_all:
        raise OperationError("name the jobs to re-route: give job ids or a filter, or confirm acting on every job")
    res = store.reroute(flt, to, operator, reason, time.time())
    if res.job_ids:
        _ring(cfg)
    _audit(cfg, process).record(
        "queue_reroute",
        operator=operator,
        reason=reason,
        to=to,
        filter=_audit_filter(cfg, flt),
        changed=res.changed,
        skipped=res.skipped,
        new_jobs=_named_jobs(store, res.job_ids),
    )
    return Outcome("reroute", res.changed, res.skipped, operator, {"to": to, "new_jobs": len(res.job_ids)})


def route_unrouted(
    cfg: RouterConfig,
    store: Store,
    instance_ids: list[int] | None,
    to: list[str],
    priority: str,
    operator: str,
    reason: str,
    *,
    process: str = "cli",
) -> Outcome:
    """Give objects that matched no route one job per destination (`instance_ids` None = all of them)."""
    _check_destinations(cfg, to)
    n = store.route_unrouted(instance_ids, to, int(Priority[priority]), operator, reason, time.time())
    _ring(cfg)
    _audit(cfg, process).record(
        "queue_route",
        operator=operator,
        reason=reason,
        destinations=to,
        priority=priority,
        instances=n,
        instance_ids=instance_ids[:AUDIT_MAX_JOBS] if instance_ids else "all unrouted",
    )
    return Outcome("route", n, 0, operator, {"destinations": to})


def set_paused(
    cfg: RouterConfig, store: Store, destination: str, paused: bool, operator: str, reason: str, *, process: str = "cli"
) -> Outcome:
    """Pause or resume sending to one destination. Jobs keep their state; new objects still queue for it."""
    _check_destinations(cfg, [destination])
    changed = store.set_paused(destination, paused, operator, reason, time.time())
    if not paused:
        _ring(cfg)
    action = "pause" if paused else "resume"
    _audit(cfg, process).record(
        f"destination_{action}", operator=operator, reason=reason, destination=destination, changed=changed
    )
    return Outcome(action, int(changed), 0, operator, {"destination": destination})
