"""What an audit entry costs: the hash-chained writer against the unchained one it replaced, and what an
fdatasync per entry would add. The receiver writes one entry per received object, so this is per object.

    .venv/bin/python -m tests.bench.bench_audit                 # 5000 entries × 5 repetitions
    .venv/bin/python -m tests.bench.bench_audit --count 20000 --reps 7 --dir /var/log/dicom-router-bench

Each mode writes the same receive-like entry into a fresh directory (--dir: on the disk the log lives on);
the median CPU µs (what the writing process spends: on a busy machine steadier than wall time) and wall µs per
entry (what a flush waits for the disk) are printed, with ratios to the unchained baseline. Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.router.audit import AuditLog

FIELDS: dict[str, Any] = {
    "calling_ae": "CT_SCANNER_1",
    "sop_instance_uid": "1.2.826.0.1.3680043.8.498.10468947296349183960283710364985734581",
    "study_uid": "1.2.826.0.1.3680043.8.498.11093747618276354837361928374649587362",
    "accession": "ACC20261128001",
    "destinations": ["PACS_MAIN", "ARCHIVE"],
    "bytes": 524416,
}


class Unchained:
    """The writer before the hash chain (issue 4): one O_APPEND write per entry, nothing read, no lock file."""

    def __init__(self, path: Path, process: str):
        self.path, self.process = path, process
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "event": event,
            "outcome": outcome,
            "process": self.process,
            **{k: v for k, v in fields.items() if v is not None},
        }
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            os.stat(self.path)  # its rotation check
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)


class Flushed(AuditLog):
    """The chained writer with an fdatasync after every entry (the policy not taken)."""

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        super().record(event, outcome, operator="bench", **fields)  # operator entries are flushed


def _run(factory: Callable[[Path, str], Any], directory: Path, count: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per entry."""
    log = factory(directory / "audit.jsonl", "receiver")
    log.record("warm-up")
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(count):
        log.record("receive", **FIELDS)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    log.close()
    return cpu / count * 1e6, wall / count * 1e6


def _contended(directory: str, count: int, out: Any) -> None:
    out.put(_run(AuditLog, Path(directory), count))


def _two_processes(directory: Path, count: int) -> tuple[float, float]:
    """Two writers (receiver and forwarder) appending at once: the flock serialises them."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_contended, args=(str(directory), count, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return statistics.mean(r[0] for r in results), statistics.mean(r[1] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--flushed-count", type=int, default=300, help="entries for the fdatasync mode (slow)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    modes: dict[str, Callable[[Path], tuple[float, float]]] = {
        "unchained (before)": lambda d: _run(Unchained, d, args.count),
        "chained (now)": lambda d: _run(AuditLog, d, args.count),
        "chained, 2 processes at once": lambda d: _two_processes(d, args.count),
        "chained + fdatasync per entry": lambda d: _run(Flushed, d, args.flushed_count),
    }
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for name, fn in modes.items():  # interleaved, so a noisy moment hits every mode alike
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                results[name].append(fn(Path(d)))
    base_cpu = statistics.median(r[0] for r in results["unchained (before)"])
    base_wall = statistics.median(r[1] for r in results["unchained (before)"])
    print(f"audit entry cost per entry, median of {args.reps} (ratio to unchained)")
    print(f"  {'':<32} {'CPU µs':>8}         {'wall µs':>8}")
    for name, values in results.items():
        cpu = statistics.median(r[0] for r in values)
        wall = statistics.median(r[1] for r in values)
        print(f"  {name:<32} {cpu:8.1f} ×{cpu / base_cpu:5.2f}  {wall:8.1f} ×{wall / base_wall:5.2f}")


if __name__ == "__main__":
    main()
