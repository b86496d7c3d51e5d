"""`dicom-router status`: what an on-call person needs first, read straight from the queue database."""

from __future__ import annotations

import time
from typing import Any

from .config import RouterConfig
from .spool import Spool
from .store import JobState, Store

HEARTBEAT_STALE_SECONDS = 20


def _age(seconds: float | None) -> str:
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


def collect(cfg: RouterConfig, store: Store, now: float | None = None) -> dict[str, Any]:
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
        }
    stats = store.destination_stats(now)
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
                "backlog": s.backlog if s else 0,
                "counts": counts,
                "oldest_pending_age_seconds": None if oldest is None else round(oldest, 1),
                "failures_last_hour": s.failures_last_hour if s else 0,
                "circuit": s.circuit if s else "closed",
                "circuit_since": s.circuit_since if s else None,
                "last_error": s.last_error if s else None,
                "last_success_at": s.last_success_at if s else None,
            }
        )
    spool = Spool(cfg.spool_dir)
    usage = spool.disk_usage() if cfg.spool_dir.exists() else None
    inst = store.instance_counts()
    problems = []
    for name in ("receiver", "forwarder"):
        proc = processes.get(name)
        if proc is None or not proc["running"]:
            problems.append(f"{name} is not running (no heartbeat)")
    for d in destinations:
        if d["circuit"] == "open":
            problems.append(f"{d['name']} unreachable, sends paused: {d['last_error']}")
        if d["counts"]["failed"]:
            problems.append(f"{d['name']} has {d['counts']['failed']} failed job(s) waiting for an operator")
        if not d["configured"] and d["backlog"]:
            problems.append(f"{d['name']} has {d['backlog']} queued job(s) but is no longer in the config")
    if inst["unrouted"]:
        problems.append(f"{inst['unrouted']} object(s) matched no route (kept; see `queue ls --state unrouted`)")
    reserve = cfg.router.min_free_mb * 1e6
    if usage and usage.free < reserve:
        problems.append(
            f"spool disk has {usage.free / 1e6:.0f} MB free, below the {reserve / 1e6:.0f} MB reserve: senders are "
            "refused with 0xA700 until forwarding or an operator frees space"
        )
    elif usage and usage.free / usage.total < 0.10:
        problems.append(f"spool disk {100 * usage.used / usage.total:.0f}% full")
    return {
        "time": now,
        "router": {"ae_title": cfg.router.ae_title, "bind": cfg.router.bind, "port": cfg.router.port},
        "processes": processes,
        "destinations": destinations,
        "instances": inst,
        "spool": None
        if usage is None
        else {
            "path": str(cfg.spool_dir),
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "spooled_bytes": inst["spooled_bytes"],
        },
        "problems": problems,
    }


def render(report: dict[str, Any]) -> str:
    lines = []
    r = report["router"]
    procs = report["processes"]

    def proc_line(name: str) -> str:
        p = procs.get(name)
        if p is None:
            return f"{name}: never started"
        state = "running" if p["running"] else "NOT RUNNING"
        return f"{name}: {state} (pid {p['pid']}, heartbeat {_age(p['heartbeat_age_seconds'])} ago)"

    lines.append(f"Router {r['ae_title']} on {r['bind']}:{r['port']}")
    lines.append("  " + "   ".join(proc_line(n) for n in ("receiver", "forwarder")))
    if report["problems"]:
        lines.append("")
        lines.append("PROBLEMS")
        lines += [f"  ! {p}" for p in report["problems"]]
    lines.append("")
    header = f"  {'DESTINATION':<16} {'BACKLOG':>7} {'OLDEST':>7} {'FAILED':>6} {'HELD':>5} {'FAIL/1h':>7}  CIRCUIT"
    lines.append(header)
    for d in report["destinations"]:
        c = d["counts"]
        circuit = d["circuit"].upper() if d["circuit"] != "closed" else "closed"
        lines.append(
            f"  {d['name']:<16} {d['backlog']:>7} {_age(d['oldest_pending_age_seconds']):>7} {c['failed']:>6} "
            f"{c['held']:>5} {d['failures_last_hour']:>7}  {circuit}"
        )
        if d["last_error"] and (d["backlog"] or d["circuit"] != "closed"):
            lines.append(f"      last error: {d['last_error']}")
    inst = report["instances"]
    lines.append("")
    lines.append(
        f"  objects: {inst['instances']} received, {inst['spooled']} on disk "
        f"({inst['spooled_bytes'] / 1e6:.1f} MB), {inst['unrouted']} unrouted"
    )
    sp = report["spool"]
    if sp:
        lines.append(
            f"  spool disk {sp['path']}: {sp['used_bytes'] / sp['total_bytes'] * 100:.0f}% used, "
            f"{sp['free_bytes'] / 1e9:.1f} GB free"
        )
    return "\n".join(lines)
