"""The scheduler's `alerts` job: evaluate, compare with what was active, deliver, persist (see alerts.py)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from typing import Any

from . import alerts
from .alert_delivery import Dispatcher
from .config import RouterConfig
from .logsetup import log
from .scheduled_jobs import Alert, JobOutput
from .store import Store

LOG = logging.getLogger("router.alerts")


class AlertJob:
    def __init__(self, cfg: RouterConfig, store: Store):
        self.state = alerts.AlertStateFile(cfg.router.state_dir)  # state_dir changes only with a restart
        self.store = store
        self.lock = threading.Lock()  # one run at a time (the scheduler already ensures it; tests may not)
        self._write_failed = False

    def run(
        self,
        cfg: RouterConfig,
        job_alerts: dict[str, list[Alert]],
        failed_jobs: dict[str, str],
        now: float,
    ) -> JobOutput:
        with self.lock:
            return self._run(cfg, job_alerts, failed_jobs, now)

    def _run(
        self, cfg: RouterConfig, job_alerts: dict[str, list[Alert]], failed_jobs: dict[str, str], now: float
    ) -> JobOutput:
        doc = self.state.read()
        book = alerts.AlertBook.from_json(doc.get("active", {}))
        dispatcher = Dispatcher(cfg, doc.get("channels", {}))
        unreadable: list[alerts.Condition] = []
        try:
            stats, attempts = alerts.read_inputs(cfg, self.store, now)
        except sqlite3.Error as exc:  # still deliver what the other checks found, and say why these are missing
            stats, attempts = {}, {}
            unreadable.append(
                alerts.Condition(
                    "queue-database",
                    "error",
                    f"the alert job cannot read the queue database {cfg.db_path}: {exc} — backlog and failure-rate "
                    "alerts are not evaluated; check the disk under state_dir and the service log",
                )
            )
        conditions = unreadable + alerts.threshold_conditions(
            cfg, stats, attempts, _disk_used_percent(cfg), alerts.restarts_last_hour(cfg.router.state_dir, now), now
        )
        conditions += alerts.job_conditions(job_alerts, failed_jobs)
        notifications = book.update(conditions, now, cfg.alerts.repeat_minutes * 60)
        for n in notifications:
            level = logging.INFO if n.event == "cleared" else logging.WARNING
            if n.event != "repeated":
                log(LOG, level, f"alert {n.event}: {n.message}", alert=n.key, alert_level=n.level)
        dispatcher.submit(notifications, now)
        dispatcher.summarise(now, lambda: [a.message for a in book.active.values()])
        dispatcher.flush(now)
        self._save({"evaluated_at": now, "active": book.to_json(), "channels": dispatcher.to_json()})
        shown = [Alert(alerts.SOURCE, c.level, c.message) for c in conditions if c.in_status]
        shown += [Alert(alerts.SOURCE, "warning", text) for text in dispatcher.problems(now)]
        channels = ", ".join(ch.name for ch in dispatcher.channels) or "no channel configured"
        waiting = sum(len(st.outbox) for st in dispatcher.states.values())
        result = f"{len(book.active)} alert(s) active; {len(notifications)} notification(s) this run ({channels})"
        if waiting:
            result += f"; {waiting} waiting for delivery"
        return JobOutput(result, shown)

    def _save(self, doc: dict[str, Any]) -> None:
        try:
            self.state.write(doc)
        except OSError as exc:  # e.g. a full state disk: the alerts still go out, their memory is lost
            if not self._write_failed:
                log(LOG, logging.WARNING, f"cannot write the alert state {self.state.path}: {exc}")
            self._write_failed = True
        else:
            self._write_failed = False


def _disk_used_percent(cfg: RouterConfig) -> float | None:
    try:
        u = shutil.disk_usage(cfg.spool_dir)
    except OSError:
        return None
    return 100.0 * u.used / u.total if u.total else None
