"""`dicom-router status`: what an on-call person needs first, read straight from the queue database
and the scheduler's job state file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .alerts import alert_report, render_alert_lines
from .audit import chain_problems
from .clock import clock_state
from .commitment_deadline import JOB_NAME as COMMITMENT_JOB
from .commitment_deadline import overdue_problems
from .config import RouterConfig
from .scheduled_jobs import DiskUsage, disk_alert
from .spool import Spool
from .store import JobState, Store
from .supervisor import CHILDREN

HEARTBEAT_STALE_SECONDS = 20
JOB_STATE_STALE_SECONDS = 300  # the scheduler rewrites it at least every 30 s while it runs


def short_age(seconds: float | None) -> str:
    """'42s', '7m', '3h05m', '2d4h' — an age short enough for a table cell (also used by the console)."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def config_report(config_path: Path, cfg: RouterConfig) -> dict[str, Any]:
    """Which config version is live, whether the file drifted from the history, whether the router runs it."""
    from .history import live_state

    state = live_state(config_path, cfg)
    v = state.version
    report: dict[str, Any] = {
        "path": str(config_path),
        "sha256": state.sha256,
        "version": v.version if v and not state.drifted else None,
        "applied_by": None if v is None else f"{v.source} by {v.author}",
        "applied_at": None if v is None else v.time,
        "drifted": state.drifted and v is not None,
        "recorded": v is not None,
        "router_runs_it": state.daemon_runs_live,
        "problems": [],
    }
    if report["drifted"]:
        report["problems"].append(
            f"config {config_path} was edited outside `config apply` (differs from version {v.version if v else '?'}); "
            "see `dicom-router config status`"
        )
    if state.daemon_runs_live is False and state.running:
        report["problems"].append(
            "the router runs a different config than the live file (a reload failed or is in progress); "
            "see `dicom-router config status` and the service log"
        )
    return report


def collect(
    cfg: RouterConfig, store: Store, now: float | None = None, config_path: Path | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    processes: dict[str, dict[str, Any]] = {}
    for p in store.processes():
        age = now - p["heartbeat_at"]
        processes[p["name"]] = {
            "pid": p["pid"],
            "host": p["host"],
            "running": age < HEARTBEAT_STALE_SECONDS,
            "heartbeat_age_seconds": round(age, 1),
            "started_at": p["started_at"],
            "detail": p["detail"],
            "config_sha": p.get("config_sha"),
        }
    stats = store.destination_stats(now)
    committing = store.commitment_overview(now)  # jobs awaiting a storage commitment report, per destination
    destinations: list[dict[str, Any]] = []
    names = list(cfg.destinations()) + sorted(set(stats) - set(cfg.destinations()))
    for name in names:
        s = stats.get(name)
        node = cfg.nodes.get(name)
        counts = {state.value: (s.counts.get(state.value, 0) if s else 0) for state in JobState}
        oldest = (now - s.oldest_pending_at) if s and s.oldest_pending_at else None
        destinations.append(
            {
                "name": name,
                "address": node.address if node else None,
                "configured": node is not None,
                "environment": node.environment if node else None,
                "backlog": s.backlog if s else 0,
                "counts": counts,
                "oldest_pending_age_seconds": None if oldest is None else round(oldest, 1),
                "failures_last_hour": s.failures_last_hour if s else 0,
                "circuit": s.circuit if s else "closed",
                "circuit_since": s.circuit_since if s else None,
                "last_error": s.last_error if s else None,
                "last_success_at": s.last_success_at if s else None,
                "paused": bool(s and s.paused),
                "paused_by": s.paused_by if s else None,
                "paused_reason": s.paused_reason if s else None,
                "paused_at": s.paused_at if s else None,
                "commitment": _commitment_report(node, committing.get(name), counts, now),
            }
        )
    spool = Spool(cfg.spool_dir)
    usage = spool.disk_usage() if cfg.spool_dir.exists() else None
    inst = store.instance_counts()
    studies = store.study_counts()
    problems = []
    for name in CHILDREN:
        proc = processes.get(name)
        if proc is None or not proc["running"]:
            problems.append(f"{name} is not running (no heartbeat)")
    for d in destinations:
        if d["paused"]:
            why = f": {d['paused_reason']}" if d["paused_reason"] else ""
            problems.append(
                f"{d['name']} PAUSED by {d['paused_by']}{why} — {d['backlog']} job(s) wait; `queue resume {d['name']}`"
            )
        if d["circuit"] == "open":
            problems.append(f"{d['name']} unreachable, sends paused: {d['last_error']}")
        if d["counts"]["failed"]:
            problems.append(f"{d['name']} has {d['counts']['failed']} failed job(s) waiting for an operator")
        if not d["configured"] and d["backlog"]:
            problems.append(f"{d['name']} has {d['backlog']} queued job(s) but is no longer in the config")
    if inst["unrouted"]:
        problems.append(f"{inst['unrouted']} object(s) matched no route (kept; see `queue ls --state unrouted`)")
    if studies.get("conflicts_held"):
        problems.append(
            f"{studies['conflicts_held']} job(s) held: a different object arrived under an already-seen SOP Instance "
            "UID — compare patient and study of both versions before releasing (`queue ls --state held`)"
        )
    problems += overdue_problems(cfg, store, now)  # live: the scheduler's copy may be 30 s old
    problems += _disk_problems(cfg, usage)
    scheduler = scheduler_report(cfg, processes.get("scheduler"), now)
    problems += scheduler_problems(scheduler)
    config = config_report(config_path, cfg) if config_path is not None else None
    if config is not None:
        problems += config["problems"]
    problems += chain_problems(cfg.audit_path)  # a tampered or damaged audit trail, until acknowledged
    clock = clock_state()
    if clock.available and clock.synced is False:
        problems.append(f"clock {clock.message}")
    from .tls import listener_status  # (pulls in pynetdicom: only when status runs)

    tls_listener = listener_status(cfg, now)  # the router's own certificate: days left, or why TLS cannot start
    if tls_listener is not None and not tls_listener["ok"]:
        problems.append(f"TLS listener: {tls_listener['problem']}")
    return {
        "time": now,
        "router": {"ae_title": cfg.router.ae_title, "bind": cfg.router.bind, "port": cfg.router.port},
        "tls": tls_listener,
        "test_nodes": sorted(name for name, node in cfg.nodes.items() if node.environment == "test"),
        "processes": processes,
        "destinations": destinations,
        "instances": inst,
        "studies": studies,
        "spool": None
        if usage is None
        else {
            "path": str(cfg.spool_dir),
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "spooled_bytes": inst["spooled_bytes"],
        },
        "scheduler": scheduler,
        "config": config,
        "clock": clock.as_dict(),
        "alerts": alert_report(cfg, now),
        "problems": problems,
    }


def _commitment_report(node: Any, summary: Any, counts: dict[str, int], now: float) -> dict[str, Any] | None:
    """Storage commitment of one destination: None if it is not asked and nothing awaits a report."""
    if not (node is not None and node.commitment.enabled) and summary is None:
        return None
    oldest = summary.oldest_at if summary is not None else None
    return {
        "enabled": bool(node is not None and node.commitment.enabled),
        "committed": counts.get("committed", 0),
        "awaiting": summary.awaiting if summary is not None else 0,
        "requested": summary.requested if summary is not None else 0,
        "not_yet_requested": summary.unasked if summary is not None else 0,
        "oldest_age_seconds": None if oldest is None else round(now - oldest, 1),
        "deadline_minutes": node.commitment.deadline_minutes if node is not None else None,
    }


def _disk_problems(cfg: RouterConfig, usage: Any) -> list[str]:
    if not usage:
        return []
    alert = disk_alert(
        DiskUsage(usage.total, usage.used, usage.free), cfg.router.disk_warn_percent, cfg.router.min_free_mb
    )
    return [alert.message] if alert else []


def scheduler_report(cfg: RouterConfig, proc: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The scheduler's jobs and warnings as it last wrote them (scheduler.json), with ages for people."""
    path = cfg.scheduler_state_path
    report: dict[str, Any] = {
        "state_file": str(path),
        "running": bool(proc and proc["running"]),
        "available": False,
        "note": None,
        "state_age_seconds": None,
        "jobs": [],
        "warnings": [],
    }
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        jobs = list(state["jobs"])
        warnings = list(state.get("warnings", []))
        written_at = float(state["written_at"])
    except FileNotFoundError:
        report["note"] = f"no job state yet ({path} does not exist)"
        return report
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report["note"] = f"job state {path} is unreadable: {exc}"
        return report
    for job in jobs:
        last, nxt = job.get("last_run"), job.get("next_run")
        job["last_run_age_seconds"] = None if last is None else round(now - last, 1)
        job["next_run_in_seconds"] = None if nxt is None else round(nxt - now, 1)
        job["running_for_seconds"] = round(now - job["running_since"], 1) if job.get("running_since") else None
    age = now - written_at
    report.update(available=True, state_age_seconds=round(age, 1), jobs=jobs, warnings=warnings)
    if not report["running"]:
        report["note"] = f"as last written {short_age(age)} ago: the scheduler is not running"
    elif age > JOB_STATE_STALE_SECONDS:
        report["note"] = f"job state not updated for {short_age(age)} although the scheduler runs (see its log)"
    return report


def scheduler_problems(report: dict[str, Any]) -> list[str]:
    problems = []
    if report["running"] and report["note"]:
        problems.append(f"scheduler: {report['note']}")
    for job in report["jobs"]:
        if job.get("last_outcome") == "failed":
            n = job.get("consecutive_failures") or 1
            times = f" {n} times in a row" if n > 1 else ""
            problems.append(
                f"scheduled job {job['name']} failed{times} (last {short_age(job['last_run_age_seconds'])} ago): "
                f"{job.get('last_error')}"
            )
    # The disk and commitment deadlines are checked live above; the scheduler's copies would only repeat them.
    problems += [w["message"] for w in report["warnings"] if w.get("source") not in ("disk-watermark", COMMITMENT_JOB)]
    return problems


def render(report: dict[str, Any]) -> str:
    lines = []
    r = report["router"]
    procs = report["processes"]

    def proc_line(name: str) -> str:
        p = procs.get(name)
        if p is None:
            return f"{name}: never started"
        state = "running" if p["running"] else "NOT RUNNING"
        return f"{name}: {state} (pid {p['pid']}, heartbeat {short_age(p['heartbeat_age_seconds'])} ago)"

    lines.append(f"Router {r['ae_title']} on {r['bind']}:{r['port']}")
    t = report.get("tls")
    if t:
        plain = "" if t["plain"] else " (TLS only: plain port closed)"
        cert = f"certificate {t['subject']}, {int(t['days_left'])} days left" if t["ok"] else "CERTIFICATE PROBLEM"
        lines.append(f"  TLS on port {t['port']}{plain}: {cert}")
    clock = report.get("clock")
    if clock:
        lines.append(f"  clock: {clock['message']}")
    conf = report.get("config")
    if conf:
        if conf["version"] is not None:
            lines.append(f"  config version {conf['version']} ({conf['applied_by']}, {conf['applied_at']})")
        elif not conf["recorded"]:
            lines.append("  config not yet recorded in the history (first `config apply` records it)")
    lines += ["  " + proc_line(n) for n in CHILDREN]
    if report.get("test_nodes"):
        lines.append(f"  TEST nodes (test data, never mixed with production): {', '.join(report['test_nodes'])}")
    if report["problems"]:
        lines.append("")
        lines.append("PROBLEMS")
        lines += [f"  ! {p}" for p in report["problems"]]
    lines.append("")
    header = f"  {'DESTINATION':<22} {'BACKLOG':>7} {'OLDEST':>7} {'FAILED':>6} {'HELD':>5} {'FAIL/1h':>7}  CIRCUIT"
    lines.append(header)
    for d in report["destinations"]:
        c = d["counts"]
        circuit = d["circuit"].upper() if d["circuit"] != "closed" else "closed"
        circuit += "  PAUSED" if d.get("paused") else ""
        label = d["name"] + (" [TEST]" if d.get("environment") == "test" else "")
        lines.append(
            f"  {label:<22} {d['backlog']:>7} {short_age(d['oldest_pending_age_seconds']):>7} {c['failed']:>6} "
            f"{c['held']:>5} {d['failures_last_hour']:>7}  {circuit}"
        )
        if d["last_error"] and (d["backlog"] or d["circuit"] != "closed"):
            lines.append(f"      last error: {d['last_error']}")
        cm = d.get("commitment")
        if cm:
            lines.append(
                f"      storage commitment: {cm['committed']} committed, {cm['awaiting']} awaiting a report"
                + (f" (oldest {short_age(cm['oldest_age_seconds'])})" if cm["oldest_age_seconds"] is not None else "")
            )
    inst = report["instances"]
    lines.append("")
    lines.append(
        f"  objects: {inst['instances']} received, {inst['spooled']} on disk "
        f"({inst['spooled_bytes'] / 1e6:.1f} MB), {inst['unrouted']} unrouted"
    )
    st = report.get("studies")
    if st:
        lines.append(
            f"  studies: {st.get('open', 0)} open, {st.get('complete', 0)} complete; "
            f"{st.get('late_instances', 0)} late arrival(s), {st.get('conflicts', 0)} SOP Instance UID conflict(s)"
        )
    sp = report["spool"]
    if sp:
        lines.append(
            f"  spool disk {sp['path']}: {sp['used_bytes'] / sp['total_bytes'] * 100:.0f}% used, "
            f"{sp['free_bytes'] / 1e9:.1f} GB free"
        )
    lines += render_alert_lines(report.get("alerts"))
    lines += _render_jobs(report["scheduler"])
    return "\n".join(lines)


def _render_jobs(sched: dict[str, Any]) -> list[str]:
    lines = ["", f"  {'SCHEDULED JOB':<16} {'LAST RUN':>9} {'OUTCOME':<8} {'NEXT RUN':>9}  RESULT"]
    for j in sched["jobs"]:
        last = j["last_run_age_seconds"]
        nxt = j["next_run_in_seconds"]
        outcome = "FAILED" if j.get("last_outcome") == "failed" else (j.get("last_outcome") or "-")
        if j.get("running_since"):
            outcome = "running"
        detail = j.get("last_error") if outcome == "FAILED" else j.get("last_result")
        lines.append(
            f"  {j['name']:<16} {'-' if last is None else short_age(last) + ' ago':>9} {outcome:<8} "
            f"{'-' if nxt is None else 'in ' + short_age(max(0.0, nxt)):>9}  {_clip(detail or '', 70)}"
        )
    if sched["note"]:
        lines.append(f"  ({sched['note']})")
    return lines


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
