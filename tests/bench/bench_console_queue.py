"""Console queue benchmark: how long one page of the queue screen takes with 1,000,000 jobs in the queue.

Run from the repository root (not a pytest test, nothing here passes or fails on time):

    .venv/bin/python -m tests.bench.bench_console_queue [--instances 500000] [--reps 5] [--workdir DIR --keep]

Builds a queue database with the router's own schema (`Store.init()`), N instances × 2 destinations
(default 1,000,000 jobs: mostly done, an outage backlog, failed and held jobs), then times what the
queue screen asks for on open and on every page key: `Backend.jobs(query, after_id)` (one page of 100 rows
+ the total count), for the first page and for a page deep in the table, with and without filters. Each
case is split into its parts (config load, `list_jobs`, `count_jobs`) so the slow part is named, and
compared with the screen's target of 200 ms per page (ratio = measured ÷ 200 ms; below 1 is fast enough).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.router.config import load_config
from appliance.router.store import InstanceFacts, JobFilter, NewJob, Store
from appliance.tui.backend import PAGE_SIZE, Backend, JobQuery

TARGET_MS = 200.0
NOW = time.time()  # the newest object arrives "now", so "older than 2h" selects a realistic share
CT = "1.2.840.10008.5.1.4.1.1.2"
LE = "1.2.840.10008.1.2.1"


@dataclass
class Case:
    name: str
    query: JobQuery
    after_id: int | None


def write_config(workdir: Path) -> Path:
    cfg = {
        "router": {"ae_title": "DICOM_ROUTER", "bind": "127.0.0.1", "port": 11112,
                   "state_dir": str(workdir / "state"), "log_dir": str(workdir / "log")},
        "nodes": {
            "CT1": {"ae_title": "CT1", "host": "127.0.0.1", "port": 104, "role": "source"},
            "PACS_MAIN": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "role": "destination"},
            "ARCHIVE": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 105, "role": "destination"},
        },
        "routes": [{"name": "all", "to": ["PACS_MAIN", "ARCHIVE"]}],
    }  # fmt: skip
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_state(dest: int, i: int, n: int) -> str:
    """PACS_MAIN: done, then an outage backlog (last 5 %) with every 20th job failed; ARCHIVE: done, 1,000 held."""
    if dest == 0:
        if i < n * 0.95:
            return "done"
        return "failed" if i % 20 == 0 else "queued"
    return "held" if i % max(1, n // 1000) == 0 else "done"


def build_db(db: Path, n: int) -> dict[str, float]:
    """N instances with 2 jobs each by executemany in one transaction (the real schema from Store.init())."""
    timings: dict[str, float] = {}
    Store(db).init()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # bench setup only: the router itself runs with FULL
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    chunk = 50_000
    for start in range(0, n, chunk):
        inst: list[tuple[Any, ...]] = []
        jobs: list[tuple[Any, ...]] = []
        for i in range(start, min(n, start + chunk)):
            study = i // 200  # 200 images per study
            received = NOW - (n - i) * 0.5  # one object every 0.5 s, the newest just now
            inst.append((i + 1, f"k{i:09d}", f"1.2.826.0.1.3680043.9.{i}", CT, LE, f"1.2.826.0.1.3680043.8.{study}",
                         f"1.2.826.0.1.3680043.7.{study}", f"PAT{study % 5000:05d}", f"ACC{study:07d}", "CT", "CT1",
                         "DICOM_ROUTER", "CT1", 524_288, received, 1))  # fmt: skip
            for d, dest in enumerate(("PACS_MAIN", "ARCHIVE")):
                state = job_state(d, i, n)
                err = "connection refused by 10.1.2.10:104 (retry in 600 s)" if state in ("queued", "failed") else None
                jobs.append((2 * i + d + 1, i + 1, dest, "all", 1, state, 3 if err else 1, received + 600, None,
                             None, err, received, received, received + 1 if state == "done" else None))  # fmt: skip
        conn.executemany(f"INSERT INTO instances VALUES ({','.join('?' * 16)}, ?, NULL)",
                         [(*r, "kept") for r in inst])  # fmt: skip
        conn.executemany(
            "INSERT INTO jobs(id, instance_id, destination, route, priority, state, attempts, next_attempt_at, "
            "lease_until, claimed_by, last_error, created_at, updated_at, done_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            jobs,
        )
    conn.execute("COMMIT")
    timings["executemany, one transaction"] = time.perf_counter() - t0
    conn.execute("ANALYZE")  # what `PRAGMA optimize` would do on a long-running router
    conn.close()
    return timings


def time_add_instance(workdir: Path, count: int = 2000) -> float:
    """Store.add_instance as the receiver does it (one transaction each, FULL sync): seconds per 1M jobs."""
    store = Store(workdir / "add_instance.sqlite3")
    store.init()
    jobs = [NewJob("PACS_MAIN", "all", 1), NewJob("ARCHIVE", "all", 1)]
    t0 = time.perf_counter()
    for i in range(count):
        facts = InstanceFacts(f"1.2.3.{i}", CT, LE, 1000, study_uid="1.2.3", accession="A", modality="CT")
        store.add_instance(f"key{i}", facts, jobs, NOW)
    spent = time.perf_counter() - t0
    store.close()
    return spent / (count * 2) * 1_000_000


def median_ms(fn: Callable[[], Any], reps: int) -> tuple[float, float, float]:
    fn()  # warm the page cache once; every measured repetition then sees the same state
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), min(samples), max(samples)


def cases(store: Store, n: int) -> list[Case]:
    max_id = 2 * n
    failed_mid = store.list_jobs(JobFilter(states=["failed"]), limit=1, after_id=int(max_id * 0.975))[0].id
    late_study = f"1.2.826.0.1.3680043.8.{(n - 1) // 200}"
    return [
        Case("open: first page, no filter", JobQuery(), None),
        Case("deep page (after_id near the end), no filter", JobQuery(), max_id - 150),
        Case("first page, destination PACS_MAIN", JobQuery(destination="PACS_MAIN"), None),
        Case("deep page, destination PACS_MAIN", JobQuery(destination="PACS_MAIN"), max_id - 150),
        Case("first page, state failed", JobQuery(states=("failed",)), None),
        Case("next page, state failed (mid-way)", JobQuery(states=("failed",)), failed_mid),
        Case("first page, PACS_MAIN + failed", JobQuery(destination="PACS_MAIN", states=("failed",)), None),
        Case("first page, PACS_MAIN + queued", JobQuery(destination="PACS_MAIN", states=("queued",)), None),
        Case("deep page, PACS_MAIN + queued", JobQuery(destination="PACS_MAIN", states=("queued",)), max_id - 400),
        Case("first page, state held", JobQuery(states=("held",)), None),
        Case("first page, accession (one study)", JobQuery(accession=f"ACC{(n - 1) // 200:07d}"), None),
        Case("first page, study UID", JobQuery(study_uid=late_study), None),
        Case("first page, older than 2h", JobQuery(older_than_seconds=7200), None),
        Case(
            "first page, PACS_MAIN + failed + older than 30m",
            JobQuery(destination="PACS_MAIN", states=("failed",), older_than_seconds=1800),
            None,
        ),  # fmt: skip
    ]


# -- the store.py changes this bench argues for (measured here on a copy of the query, not applied to store.py) ----
INSTANCE_FILTERS = ("study_uid", "sop_instance_uid", "accession", "patient_id", "older_than_seconds")
PROPOSED_INDEX_NAME = "jobs_state_id"
PROPOSED_INDEX = f"CREATE INDEX IF NOT EXISTS {PROPOSED_INDEX_NAME} ON jobs(state, id)"
COUNT_CAP = 10_000


def needs_join(flt: JobFilter) -> bool:
    return any(getattr(flt, f) not in (None, "", ()) for f in INSTANCE_FILTERS)


def count_proposed(conn: sqlite3.Connection, flt: JobFilter) -> int:
    """count_jobs as proposed: on `jobs` alone when no instance column is filtered (an index count instead of a
    join with every instance row); with an instance filter, counted up to COUNT_CAP + 1 ("10,000+ match")."""
    where, args = flt.where(time.time())
    if not needs_join(flt):
        return int(conn.execute(f"SELECT COUNT(*) FROM jobs j WHERE {where}", args).fetchone()[0])
    sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE {where} LIMIT ?)"
    return int(conn.execute(sql, [*args, COUNT_CAP + 1]).fetchone()[0])


@dataclass
class Row:
    case: Case
    page: tuple[float, float, float]  # Backend.jobs: median, min, max ms
    list_ms: float
    count_ms: float
    rows: int
    total: int
    count_new_ms: float
    total_new: int


def measure(backend: Backend, store: Store, conn: sqlite3.Connection, todo: list[Case], reps: int) -> list[Row]:
    out = []
    for case in todo:
        flt = case.query.to_filter()
        page = backend.jobs(case.query, case.after_id)
        out.append(Row(
            case,
            median_ms(lambda c=case: backend.jobs(c.query, c.after_id), reps),  # type: ignore[misc]
            median_ms(lambda c=case, f=flt: store.list_jobs(f, limit=PAGE_SIZE + 1, after_id=c.after_id),  # type: ignore[misc]
                      reps)[0],
            median_ms(lambda f=flt: store.count_jobs(f), reps)[0],  # type: ignore[misc]
            len(page.jobs),
            page.total,
            median_ms(lambda f=flt: count_proposed(conn, f), reps)[0],  # type: ignore[misc]
            count_proposed(conn, flt),
        ))  # fmt: skip
    return out


def report(rows: list[Row], cfg_ms: float) -> None:
    print(f"{'case':<48} {'page ms':>8} {'÷200ms':>7} {'min–max':>10} {'list':>6} {'count':>6} {'rows':>4} "
          f"{'total':>9} │ {'count′':>6} {'total′':>7} {'page′':>6} {'÷200′':>6}")  # fmt: skip
    for r in rows:
        med, lo, hi = r.page
        new = cfg_ms + r.list_ms + r.count_new_ms
        capped = needs_join(r.case.query.to_filter()) and r.total_new > COUNT_CAP
        total_new = f"{COUNT_CAP:,}+" if capped else f"{r.total_new:,}"
        print(f"{r.case.name:<48} {med:>8.1f} {med / TARGET_MS:>7.2f} {f'{lo:.0f}–{hi:.0f}':>10} {r.list_ms:>6.1f} "
              f"{r.count_ms:>6.1f} {r.rows:>4} {r.total:>9,} │ {r.count_new_ms:>6.1f} {total_new:>7} {new:>6.1f} "
              f"{new / TARGET_MS:>6.2f}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=500_000, help="instances; 2 jobs each (default 1M jobs)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the workdir (the database can be reused)")
    ap.add_argument("--no-index", action="store_true", help="skip the second pass with the proposed index")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-console-queue-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir)
    db = load_config(config).db_path
    print(f"bench_console_queue on {platform.node()} ({platform.python_implementation()} "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}); workdir {workdir}")  # fmt: skip
    try:
        if db.exists():
            print(f"reusing {db}")
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            for what, secs in build_db(db, args.instances).items():
                print(f"built {2 * args.instances:,} jobs with {what}: {secs:.1f} s")
            print(f"Store.add_instance (receiver path, 2 jobs per call, fsync): "
                  f"{time_add_instance(workdir):.0f} s per 1M jobs (extrapolated from 2,000 calls)")  # fmt: skip
        store = Store(db, durable=False)
        n_jobs = store.count_jobs(JobFilter())
        backend = Backend(config, "bench", clock=lambda: NOW)
        conn = sqlite3.connect(db)
        conn.execute(f"DROP INDEX IF EXISTS {PROPOSED_INDEX_NAME}")  # a reused database starts as shipped
        todo = cases(store, n_jobs // 2)
        cfg_ms = median_ms(backend.config, args.reps)[0]
        print(f"{n_jobs:,} jobs; page size {PAGE_SIZE}; median of {args.reps} after one warm-up; target "
              f"{TARGET_MS:.0f} ms per page; config load inside every Backend call: {cfg_ms:.1f} ms\n")  # fmt: skip
        print("page = Backend.jobs (config + list_jobs + count_jobs, new connection); list/count = the two store "
              "calls alone.\n′ = with count_jobs as proposed (no join unless an instance column is filtered; "
              f"capped at {COUNT_CAP:,} otherwise): page′ = config + list + count′.\n")  # fmt: skip
        print("AS SHIPPED")
        report(measure(backend, store, conn, todo, args.reps), cfg_ms)
        if not args.no_index:
            t0 = time.perf_counter()
            conn.execute(PROPOSED_INDEX)
            conn.execute("ANALYZE")
            print(f"\nWITH THE PROPOSED INDEX ({PROPOSED_INDEX}; built in {time.perf_counter() - t0:.1f} s + ANALYZE)")
            store.close()
            store = Store(db, durable=False)
            report(measure(backend, store, conn, todo, args.reps), cfg_ms)
            conn.execute(f"DROP INDEX {PROPOSED_INDEX_NAME}")
        store.close()
        conn.close()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
