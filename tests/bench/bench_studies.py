"""Study tracking memory: the router's RSS while it sees many studies (not a pytest test; no pass/fail).

    .venv/bin/python -m tests.bench.bench_studies [--studies 2000] [--per-study 10] [--batch 200]

Sends `studies` × `per-study` small CT objects (16×16 pixels, ~1 KB of pixel data) with DCMTK storescu in
batches of `batch` studies to the router, which forwards every object at once to one storescp (per
instance) and whole studies to a second storescp (`forward: study`, quiet period 3 s), so study tracking,
completion and release all run throughout. After each batch it samples the RSS of the receiver and the
forwarder; at the end it waits until both destinations have every object and prints the RSS per batch.
Study tracking lives in SQLite, so RSS should stay flat whatever the number of studies seen.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from pydicom.uid import generate_uid

from tests.bench.bench_relay import child_pids, count_files, environment, storescu_cmd
from tests.support.data import make_ct_series
from tests.support.peers import PEER_ENV, Router, StoreSCP, dest_node, wait_until


def _mib(n: int) -> str:
    return f"{n / 2**20:7.1f} MiB"


def run(args: argparse.Namespace, base: Path) -> int:
    print(f"generating {args.studies} studies × {args.per_study} objects …", flush=True)
    t0 = time.perf_counter()
    batches: list[list[Path]] = []
    for b in range(0, args.studies, args.batch):
        files: list[Path] = []
        for s in range(b, min(b + args.batch, args.studies)):
            files += make_ct_series(
                base / "input" / f"s{s:05d}",
                args.per_study,
                rows=16,
                cols=16,
                study_uid=generate_uid(),
                accession=f"A{s:06d}",
                patient_id=f"P{s % 500:05d}",
                seed=s,
            )
        batches.append(files)
    total = sum(len(b) for b in batches)
    print(f"  {total} objects in {time.perf_counter() - t0:.0f} s", flush=True)

    pacs = StoreSCP(base, "PACS").start()
    vna = StoreSCP(base, "VNA").start()
    router = Router(
        base,
        destinations={"PACS_MAIN": dest_node("PACS", pacs.port), "VNA": dest_node("VNA", vna.port)},
        sources={"STORESCU": "STORESCU"},
        routes=[
            {"name": "per-instance", "to": ["PACS_MAIN"]},
            {"name": "whole-studies", "to": ["VNA"], "forward": "study", "priority": "bulk"},
        ],
        router_extra={"studies": {"quiet_seconds": 3, "keep_days": 30}},
    ).start()
    try:
        procs = {name: psutil.Process(pid) for name, pid in child_pids(router).items()}
        rows = [(0, 0, {n: p.memory_info().rss for n, p in procs.items()})]
        sent = 0
        for i, files in enumerate(batches, 1):
            res = subprocess.run(
                storescu_cmd(router.port, router.ae_title, files), env=PEER_ENV, capture_output=True, timeout=3600
            )
            if res.returncode != 0:
                print(f"storescu failed: {res.stderr.decode(errors='replace')[-2000:]}")
                return 1
            sent += len(files)
            rows.append((sent, min(i * args.batch, args.studies), {n: p.memory_info().rss for n, p in procs.items()}))
            print(f"  batch {i}/{len(batches)}: {sent} objects sent", flush=True)
        wait_until(
            lambda: count_files(pacs.out_dir) >= total and count_files(vna.out_dir) >= total,
            args.timeout,
            "both destinations to have every object",
            interval=1.0,
        )
        rows.append((sent, args.studies, {n: p.memory_info().rss for n, p in procs.items()}))
        db = base / "state" / "queue.sqlite3"
        print()
        print(f"Router RSS while tracking studies ({total} objects, {args.studies} studies, per instance + per study)")
        print(f"  {'objects':>8} {'studies':>8} {'receiver':>12} {'forwarder':>12}")
        for n, s, rss in rows:
            print(f"  {n:>8} {s:>8} {_mib(rss.get('receiver', 0)):>12} {_mib(rss.get('forwarder', 0)):>12}")
        first, last = rows[1][2], rows[-1][2]
        for name in ("receiver", "forwarder"):
            print(f"  {name} growth from the first batch to the end: {(last[name] - first[name]) / 2**20:+.1f} MiB")
        print(f"  queue database: {db.stat().st_size / 2**20:.1f} MiB (instances, jobs, studies, ledger)")
        st = router.status()
        print(f"  studies: {st.get('studies')}")
    finally:
        router.stop()
        pacs.stop()
        vna.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_studies", description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--per-study", dest="per_study", type=int, default=10)
    ap.add_argument("--batch", type=int, default=200, help="studies per storescu run (RSS sampled after each)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    print(environment())
    base = Path(tempfile.mkdtemp(prefix="bench-studies-"))
    try:
        return run(args, base)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
