"""The supervisor's record of unexpected child exits: `restarts.json` in the state directory.

Written by the supervisor each time it restarts a crashed receiver, forwarder or scheduler; read by the
scheduler's alert job (service-restarts threshold) and its metrics endpoint (a restarts counter). A file,
not the queue database: the supervisor never opens the database, and a crash loop must still be visible
when the database is the thing failing. It survives router restarts, so "3 restarts within an hour"
counts across them; the per-process totals only grow (Prometheus counter semantics).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_bytes

KEEP_SECONDS = 24 * 3600  # exit times older than this are dropped from the record


def record_path(state_dir: Path) -> Path:
    return state_dir / "restarts.json"


@dataclass
class ProcessRestarts:
    total: int = 0  # unexpected exits ever recorded (a Prometheus counter)
    recent: list[float] = field(default_factory=list)  # their times, last 24 h
    last_exit_code: int | None = None

    def within(self, seconds: float, now: float) -> int:
        return sum(1 for t in self.recent if now - t <= seconds)


def load(path: Path) -> dict[str, ProcessRestarts]:
    """The record; empty when missing or unreadable (a damaged file must not stop the supervisor)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for name, item in dict(doc.get("processes", {})).items():
            out[str(name)] = ProcessRestarts(
                int(item.get("total", 0)),
                [float(t) for t in item.get("recent", [])],
                item.get("last_exit_code"),
            )
        return out
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def record_exit(path: Path, process: str, exit_code: int, now: float | None = None) -> ProcessRestarts:
    """Add one unexpected exit of `process` and write the record back (atomically)."""
    now = time.time() if now is None else now
    record = load(path)
    entry = record.setdefault(process, ProcessRestarts())
    entry.total += 1
    entry.recent = [t for t in entry.recent if now - t <= KEEP_SECONDS] + [now]
    entry.last_exit_code = exit_code
    doc: dict[str, Any] = {
        "written_at": now,
        "processes": {
            name: {"total": e.total, "recent": e.recent, "last_exit_code": e.last_exit_code}
            for name, e in sorted(record.items())
        },
    }
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode(), mode=0o640)
    return entry
