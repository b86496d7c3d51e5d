"""The scheduler process: the router's periodic jobs, run by APScheduler inside the daemon.

    backup           daily at backup.schedule (HH:MM, local time) when set; a run missed by less than an
                     hour (router restarted at 02:31 for 02:30) still runs, a longer miss is shown as failed
    spool-retention  every 30 s: delete spooled objects sent longer than retention.keep_sent_hours ago
    orphan-sweep     at start and hourly: delete spool files no instance needs
    disk-watermark   every 30 s: warn above router.disk_warn_percent, error below router.min_free_mb
    circuit-probe    every 30 s: report open circuits (the forwarder's pools send the C-ECHO probes)
    expiry-check     at start and hourly: X.509 certificates under router.tls_dir
    commitment-deadline  every 30 s (with storage commitment): reports overdue past deadline_minutes → warning
    alerts           every 30 s: alert thresholds and the other jobs' warnings → syslog/SMTP/webhook (alerts.py)
    metrics-endpoint at start and every 30 s: the Prometheus endpoint listens (retried after a port clash)
    audit-verify     at start and daily at 03:15: the audit trail's hash chain, from the newest rotated file on
                     (a break mid-file that no writer met: an edit by hand, a restored old copy) → an error

After every run the outcome goes to `scheduler.json` in the state directory, which `status` reads. A job
that raises is logged at ERROR, audited, and shown until it next succeeds; it never stops this process.
SIGHUP reschedules from the reloaded config and heartbeats at once (`config apply` waits for that);
SIGTERM lets a running job finish for up to drain_seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from tzlocal import get_localzone

from . import commitment_deadline
from . import scheduled_jobs as jobs
from .alert_job import AlertJob
from .audit import AuditLog
from .config import ConfigError, RouterConfig, load_config
from .fsutil import atomic_write_bytes
from .logsetup import log
from .spool import Spool
from .store import Store

LOG = logging.getLogger("router.scheduler")

HEARTBEAT_SECONDS = 5.0
BACKUP_GRACE_SECONDS = 3600  # a nightly backup this late still runs (restart, suspend, a long previous run)
DEFAULT_GRACE_SECONDS = 60
RESULT_MAX_CHARS = 300
STATE_VERSION = 1
# Their settings may have changed: refresh status now (alerts: a reload also lets tests evaluate at once).
RERUN_ON_RELOAD = ("disk-watermark", "expiry-check", "alerts", "metrics-endpoint")


@dataclass(frozen=True)
class JobSpec:
    name: str
    schedule: str  # for people: "every 30 s", "daily at 02:30 (local time)"
    trigger: Any
    at_start: bool = True
    grace_seconds: int = DEFAULT_GRACE_SECONDS


def job_specs(cfg: RouterConfig) -> list[JobSpec]:
    specs = []
    if cfg.backup.schedule:
        hour, minute = (int(part) for part in cfg.backup.schedule.split(":"))
        specs.append(
            JobSpec(
                "backup",
                f"daily at {cfg.backup.schedule} (local time)",
                CronTrigger(hour=hour, minute=minute, timezone=get_localzone()),
                at_start=False,
                grace_seconds=BACKUP_GRACE_SECONDS,
            )
        )
    return specs + [
        JobSpec("spool-retention", "every 30 s", IntervalTrigger(seconds=30)),
        JobSpec("orphan-sweep", "at start and hourly", IntervalTrigger(hours=1)),
        JobSpec("disk-watermark", "every 30 s", IntervalTrigger(seconds=30)),
        JobSpec("circuit-probe", "every 30 s (the forwarder sends the C-ECHOs)", IntervalTrigger(seconds=30)),
        JobSpec("expiry-check", "at start and hourly", IntervalTrigger(hours=1)),
        *(  # storage commitment reports not in by a destination's deadline → a warning (commitment_deadline.py)
            [JobSpec("commitment-deadline", "every 30 s", IntervalTrigger(seconds=30))]
            if any(n.commitment.enabled for n in cfg.destinations().values())
            else []
        ),
        JobSpec("alerts", "every 30 s", IntervalTrigger(seconds=30)),
        JobSpec(
            "audit-verify",
            "at start and daily at 03:15 (local time)",
            CronTrigger(hour=3, minute=15, timezone=get_localzone()),
        ),
        *(
            [JobSpec("metrics-endpoint", "at start and every 30 s", IntervalTrigger(seconds=30))]
            if cfg.metrics.enabled
            else []
        ),
    ]


def backup_catch_up(schedule: str, last_run: float | None, now: datetime, grace_seconds: float) -> str | None:
    """At start: 'run' if the last scheduled backup time passed less than `grace_seconds` ago without a run;
    'missed' if it passed longer ago and backups ran before (a new install has missed nothing); else None.

    Needed because APScheduler's misfire grace only covers runs it knew of: its jobs live in memory."""
    hour, minute = (int(part) for part in schedule.split(":"))
    due = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due > now:
        due -= timedelta(days=1)
    if last_run is not None and last_run >= due.timestamp():
        return None
    if (now - due).total_seconds() <= grace_seconds:
        return "run"
    return "missed" if last_run is not None else None


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= RESULT_MAX_CHARS else text[: RESULT_MAX_CHARS - 1] + "…"


@dataclass
class JobRecord:
    name: str
    schedule: str
    next_run: float | None = None
    last_run: float | None = None
    last_duration_seconds: float | None = None
    last_outcome: str | None = None  # ok | failed
    last_result: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    last_success: float | None = None
    running_since: float | None = None  # set while a run is in progress (a hung backup shows here)


class JobBook:
    """Each job's outcomes and the current alerts, kept across restarts in scheduler.json for `status`."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, JobRecord] = {}
        self.alerts: dict[str, list[jobs.Alert]] = {}
        self.cert_notified: dict[str, str] = {}
        self.lock = threading.RLock()
        self._write_failed = False

    def load(self) -> None:
        """What the previous run of the scheduler knew: last runs, failures, which certificates it reported."""
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(JobRecord)}
            for item in state.get("jobs", []):
                rec = JobRecord(**{k: v for k, v in item.items() if k in known})
                rec.running_since = None  # that process is gone, and its run with it
                self.records[rec.name] = rec
            self.cert_notified = dict(state.get("cert_notified", {}))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log(LOG, logging.WARNING, f"ignoring unreadable job state {self.path}: {exc}")

    def ensure(self, name: str, schedule: str) -> JobRecord:
        with self.lock:
            rec = self.records.setdefault(name, JobRecord(name, schedule))
            rec.schedule = schedule
            return rec

    def drop(self, name: str) -> None:
        with self.lock:
            self.records.pop(name, None)
            self.alerts.pop(name, None)

    def _get(self, name: str) -> JobRecord:
        # A job removed by a reload while it ran: its outcome goes nowhere rather than raising.
        return self.records.get(name) or JobRecord(name, "")

    def started(self, name: str, at: float) -> None:
        with self.lock:
            self._get(name).running_since = at

    def succeeded(self, name: str, started: float, out: jobs.JobOutput) -> int:
        """Record a good run; returns how many failures in a row it ends."""
        with self.lock:
            rec = self._get(name)
            failures = rec.consecutive_failures
            rec.last_run, rec.last_duration_seconds = started, round(time.time() - started, 3)
            rec.last_outcome, rec.last_result, rec.last_error = "ok", one_line(out.result), None
            rec.consecutive_failures, rec.last_success, rec.running_since = 0, started, None
            self.alerts[name] = list(out.alerts)
            return failures

    def failed(self, name: str, started: float, error: str) -> JobRecord:
        with self.lock:
            rec = self._get(name)
            rec.last_run, rec.last_duration_seconds = started, round(max(0.0, time.time() - started), 3)
            rec.last_outcome, rec.last_result, rec.last_error = "failed", None, error
            rec.consecutive_failures += 1
            rec.running_since = None
            return rec

    def snapshot(self, next_runs: dict[str, float | None], config_sha: str, order: list[str]) -> dict[str, Any]:
        with self.lock:
            for name, rec in self.records.items():
                rec.next_run = next_runs.get(name)
            names = [n for n in order if n in self.records] + sorted(set(self.records) - set(order))
            return {
                "version": STATE_VERSION,
                "written_at": time.time(),
                "pid": os.getpid(),
                "config_sha256": config_sha,
                "jobs": [asdict(self.records[n]) for n in names],
                "warnings": [a.as_dict() for n in names for a in self.alerts.get(n, [])],
                "cert_notified": self.cert_notified,
            }

    def write(self, state: dict[str, Any]) -> None:
        with self.lock:
            try:
                atomic_write_bytes(self.path, json.dumps(state, indent=1).encode(), mode=0o640)
            except OSError as exc:
                if not self._write_failed:  # e.g. a full state disk: say it once, not every 30 s
                    log(LOG, logging.WARNING, f"cannot write the job state {self.path} for `status`: {exc}")
                self._write_failed = True
            else:
                self._write_failed = False


class SchedulerProcess:
    def __init__(self, config_path: Path, cfg: RouterConfig):
        self.config_path = config_path
        self.cfg = cfg
        self.store = Store(cfg.db_path, durable=False)
        self.spool = Spool(cfg.spool_dir)
        self.audit = AuditLog(cfg.audit_path, "scheduler")
        self.book = JobBook(cfg.scheduler_state_path)
        self.disk = jobs.DiskWatch(self.audit)
        self.certs = jobs.CertWatch(self.audit, self.book.cert_notified)
        self.alert_job = AlertJob(cfg, self.store)
        self.metrics_endpoint: Any = None  # metrics_export.MetricsEndpoint, made on the first run of its job
        self.sched = BackgroundScheduler(timezone=get_localzone(), job_defaults={"coalesce": True, "max_instances": 1})
        self.started_at = time.time()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.running: set[str] = set()
        self.order: list[str] = []

    # -- the jobs ---------------------------------------------------------------------------------
    def _bodies(self) -> dict[str, Callable[[], jobs.JobOutput]]:
        r = self.cfg.router
        return {
            "backup": lambda: jobs.run_backup(self.cfg, self.config_path),
            "spool-retention": lambda: jobs.purge_retention(
                self.store, self.spool, r.retention.keep_sent_hours, time.time()
            ),
            "orphan-sweep": lambda: jobs.sweep_orphans(self.store, self.spool, time.time()),
            "disk-watermark": lambda: self.disk.check(
                self.spool.root, jobs.disk_usage(self.spool.root), r.disk_warn_percent, r.min_free_mb
            ),
            "circuit-probe": lambda: jobs.describe_open_circuits(self.cfg, self.store, time.time()),
            "expiry-check": self._expiry_check,
            "commitment-deadline": lambda: commitment_deadline.check_deadlines(
                self.cfg, self.store, self.audit, time.time()
            ),
            "alerts": self._alerts,
            "audit-verify": lambda: jobs.verify_audit_trail(self.cfg.audit_path),
            "metrics-endpoint": self._serve_metrics,
        }

    def _alerts(self) -> jobs.JobOutput:
        with self.book.lock:
            job_alerts = {name: list(found) for name, found in self.book.alerts.items()}
            failed = {
                name: rec.last_error or "no error recorded"
                for name, rec in self.book.records.items()
                if rec.last_outcome == "failed" and name != "alerts"
            }
        return self.alert_job.run(self.cfg, job_alerts, failed, time.time())

    def _serve_metrics(self) -> jobs.JobOutput:
        if self.metrics_endpoint is None:
            from .metrics_export import MetricsEndpoint, build_registry

            self.metrics_endpoint = MetricsEndpoint(build_registry(lambda: self.cfg, self.store))
        m = self.cfg.metrics
        serving, text = self.metrics_endpoint.ensure(m.bind, m.port)
        return jobs.JobOutput(text, [] if serving else [jobs.Alert("metrics-endpoint", "error", text)])

    def _expiry_check(self) -> jobs.JobOutput:
        warn_days = self.cfg.alerts.thresholds.cert_expiry_days or jobs.CERT_WARN_DAYS
        out = self.certs.check(self.cfg.router.tls_dir, time.time(), warn_days)
        with self.book.lock:
            self.certs.forget_older_than(datetime.now().strftime("%Y-%m-%d"))
            self.book.cert_notified = dict(self.certs.notified)  # a copy: `save` may serialise it meanwhile
        return out

    def run_job(self, name: str) -> None:
        """One run of one job. Never raises: a failing job must not take the scheduler down."""
        started = time.time()
        self.running.add(name)
        self.book.started(name, started)
        try:
            out = self._bodies()[name]()
        except Exception as exc:
            self._record_failure(name, started, one_line(f"{type(exc).__name__}: {exc}"))
        else:
            failures = self.book.succeeded(name, started, out)
            if failures:
                log(LOG, logging.INFO, f"scheduled job {name} succeeded again after {failures} failure(s)", job=name)
                self.audit.record("scheduled_job", job=name, recovered_after_failures=failures)
        finally:
            self.running.discard(name)
            self.save()

    def _record_failure(self, name: str, started: float, error: str) -> None:
        rec = self.book.failed(name, started, error)
        log(
            LOG,
            logging.ERROR,
            f"scheduled job {name} failed: {error}",
            job=name,
            consecutive_failures=rec.consecutive_failures,
        )
        self.audit.record("scheduled_job", "failure", job=name, error=error)

    def _on_missed(self, event: Any) -> None:
        # Only the nightly backup matters when late: the 30 s and hourly checks simply run at their next time.
        if event.job_id == "backup":
            when = event.scheduled_run_time.strftime("%Y-%m-%d %H:%M")
            self._record_failure("backup", time.time(), f"missed its {when} run by more than an hour")
            self.save()

    # -- scheduling -------------------------------------------------------------------------------
    def _add(self, spec: JobSpec) -> None:
        first = datetime.now(get_localzone()) if spec.at_start else None
        kwargs: dict[str, Any] = {"next_run_time": first} if first is not None else {}
        self.sched.add_job(
            self.run_job,
            spec.trigger,
            args=[spec.name],
            id=spec.name,
            name=spec.name,
            misfire_grace_time=spec.grace_seconds,
            **kwargs,
        )

    def schedule(self, specs: list[JobSpec]) -> None:
        """Make the scheduler's jobs match `specs`: add, remove, or re-time only what changed."""
        wanted = {s.name: s for s in specs}
        for job in self.sched.get_jobs():
            if job.id not in wanted:
                self.sched.remove_job(job.id)
        for name in list(self.book.records):  # incl. ones loaded from a run with another config
            if name not in wanted:
                self.book.drop(name)
        for spec in specs:
            rec = self.book.records.get(spec.name)
            if self.sched.get_job(spec.name) is None:
                self._add(spec)
            elif rec is None or rec.schedule != spec.schedule:
                self.sched.reschedule_job(spec.name, trigger=spec.trigger)
            self.book.ensure(spec.name, spec.schedule)
        self.order = [s.name for s in specs]

    def catch_up_backup(self, now: datetime) -> None:
        if not self.cfg.backup.schedule or "backup" not in self.book.records:
            return
        rec = self.book.records["backup"]
        verdict = backup_catch_up(self.cfg.backup.schedule, rec.last_run, now, BACKUP_GRACE_SECONDS)
        if verdict == "run":
            log(LOG, logging.INFO, f"the {self.cfg.backup.schedule} backup has not run yet today: running it now")
            self.sched.modify_job("backup", next_run_time=now)
        elif verdict == "missed":
            self._record_failure(
                "backup",
                time.time(),
                f"missed its {self.cfg.backup.schedule} run: the router was not running then; the next is at "
                f"{self.cfg.backup.schedule} — run `dicom-router backup create` if a backup is needed sooner",
            )

    def save(self) -> None:
        next_runs = {}
        for job in self.sched.get_jobs():
            when = getattr(job, "next_run_time", None)  # unset until the scheduler has started
            next_runs[job.id] = when.timestamp() if when else None
        with self.book.lock:  # one snapshot-and-write: a slower thread must not overwrite a newer state
            self.book.write(self.book.snapshot(next_runs, self.cfg.source_sha256, self.order))

    # -- lifecycle --------------------------------------------------------------------------------
    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log(LOG, logging.ERROR, f"config reload refused, the running config stays: {exc}")
            return
        self.cfg = new
        self.schedule(job_specs(new))
        now = datetime.now(get_localzone())
        for name in RERUN_ON_RELOAD:
            if self.sched.get_job(name) is not None:
                self.sched.modify_job(name, next_run_time=now)
        log(LOG, logging.INFO, "config reloaded, jobs rescheduled", jobs=self.order)
        self._heartbeat()  # `config apply` waits for this to confirm the new version runs
        self.save()

    def _heartbeat(self) -> None:
        try:
            self.store.heartbeat(
                "scheduler", self.started_at, time.time(), ",".join(self.order), self.cfg.source_sha256
            )
        except sqlite3.Error as exc:
            log(LOG, logging.WARNING, f"heartbeat not recorded: {exc}")

    def serve(self) -> int:
        # Handlers first: a SIGHUP from the supervisor during start-up must not kill the process.
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run at INFO
        self.spool.init()
        self.store.init()
        self.book.load()
        self.certs.notified = dict(self.book.cert_notified)
        self.schedule(job_specs(self.cfg))
        self.sched.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.sched.start()
        self.catch_up_backup(datetime.now(get_localzone()))
        self.save()
        self._heartbeat()
        log(LOG, logging.INFO, f"scheduler started: {', '.join(self.order)}")
        last_beat = time.monotonic()
        while not self.stop.wait(0.5):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                self._heartbeat()
        return self._shutdown()

    def _shutdown(self) -> int:
        self.sched.shutdown(wait=False)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        deadline = time.monotonic() + self.cfg.router.drain_seconds
        while self.running and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running:
            log(LOG, logging.WARNING, f"stopping while {', '.join(sorted(self.running))} still runs: abandoned")
            logging.shutdown()
            # The executor's threads are not daemons: a normal exit would wait for the abandoned job.
            os._exit(0)
        self.save()
        self.store.close()
        log(LOG, logging.INFO, "scheduler stopped")
        return 0
