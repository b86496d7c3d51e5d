"""The Prometheus endpoint, served by the scheduler process on `metrics.bind:metrics.port`.

A scrape returns (1) the hot-path counters every router process wrote to the multiprocess directory
(metrics.py), summed over processes, and (2) values read at scrape time: queue depth and oldest age per
destination, circuit and pause state, spool disk, certificate days left, process heartbeats and
restarts, active alerts and alert deliveries. Those come from the queue database and the state files,
cached for a few seconds so a scraper hammering the endpoint cannot load the database.

A port that cannot be bound (in use, address not on this host) is an ERROR in the log and a problem in
`status`, and the scheduler's metrics-endpoint job tries again every 30 s; DICOM routing is not affected.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .config import RouterConfig
from .logsetup import log
from .metrics import MULTIPROC_ENV
from .store import JobState, Store

LOG = logging.getLogger("router.metrics")
DB_CACHE_SECONDS = 5.0
CERT_CACHE_SECONDS = 300.0
HEARTBEAT_STALE_SECONDS = 20


class _Cached:
    """A value recomputed at most every `ttl` seconds (thread-safe: the HTTP server runs a thread per scrape)."""

    def __init__(self, ttl: float, compute: Callable[[], Any]):
        self.ttl, self.compute = ttl, compute
        self.at = -1e18
        self.value: Any = None
        self.lock = threading.Lock()

    def get(self) -> Any:
        with self.lock:
            if time.monotonic() - self.at >= self.ttl:
                self.value = self.compute()
                self.at = time.monotonic()
            return self.value


class RouterCollector:
    """Scrape-time values. `cfg_ref` returns the current config (it changes on reload)."""

    def __init__(self, cfg_ref: Callable[[], RouterConfig], store: Store):
        self.cfg_ref = cfg_ref
        self.store = store
        self.db_lock = threading.Lock()  # one Store connection per thread; keep reads serial anyway
        self.queue = _Cached(DB_CACHE_SECONDS, self._read_queue)
        self.certs = _Cached(CERT_CACHE_SECONDS, self._read_certs)
        self._db_error_logged = False

    def describe(self) -> list[Any]:
        return []  # no fixed description: avoids a DB read when the collector is registered

    # -- reads ----------------------------------------------------------------------------------
    def _read_queue(self) -> dict[str, Any] | None:
        now = time.time()
        try:
            with self.db_lock:
                stats = self.store.destination_stats(now)
                procs = self.store.processes()
                inst = self.store.instance_counts()
        except sqlite3.Error as exc:
            if not self._db_error_logged:
                log(LOG, logging.WARNING, f"metrics: cannot read the queue database for a scrape: {exc}")
                self._db_error_logged = True
            return None
        self._db_error_logged = False
        return {"now": now, "stats": stats, "processes": procs, "instances": inst}

    def _read_certs(self) -> list[Any]:
        from .scheduled_jobs import scan_certificates

        tls_dir = self.cfg_ref().router.tls_dir
        if not tls_dir.is_dir():
            return []
        certs, _ = scan_certificates(tls_dir)
        return certs

    # -- collect --------------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cfg = self.cfg_ref()
        q = self.queue.get()
        up = GaugeMetricFamily("dicom_router_queue_database_up", "1 if the last scrape could read the queue database")
        up.add_metric([], 0 if q is None else 1)
        yield up
        if q is not None:
            yield from self._queue_metrics(cfg, q, GaugeMetricFamily)
        yield from self._disk_metrics(cfg, GaugeMetricFamily)
        days = GaugeMetricFamily(
            "dicom_router_certificate_days_left",
            "Days until a certificate under router.tls_dir expires (negative: expired)",
            labels=["file", "subject"],
        )
        now = time.time()
        for c in self.certs.get():
            days.add_metric([str(c.path), c.subject], round(c.days_left(now), 2))
        yield days
        yield from self._restart_metrics(cfg, CounterMetricFamily)
        yield from self._alert_metrics(cfg, GaugeMetricFamily, CounterMetricFamily)

    def _queue_metrics(self, cfg: RouterConfig, q: dict[str, Any], gauge: Any) -> Iterator[Any]:
        now, stats = q["now"], q["stats"]
        jobs = gauge("dicom_router_queue_jobs", "Jobs per destination and state", labels=["destination", "state"])
        depth = gauge("dicom_router_queue_depth", "Jobs waiting to be sent (queued + sending)", labels=["destination"])
        oldest = gauge(
            "dicom_router_queue_oldest_age_seconds",
            "Age of the oldest job waiting to be sent (0 when none waits)",
            labels=["destination"],
        )
        circuit = gauge(
            "dicom_router_circuit_open",
            "1 while the destination's circuit is open (sends paused)",
            labels=["destination"],
        )
        paused = gauge(
            "dicom_router_destination_paused", "1 while an operator paused the destination", labels=["destination"]
        )
        names = list(cfg.destinations()) + sorted(set(stats) - set(cfg.destinations()))
        for name in names:
            s = stats.get(name)
            for state in JobState:
                jobs.add_metric([name, state.value], s.counts.get(state.value, 0) if s else 0)
            depth.add_metric([name], s.backlog if s else 0)
            age = now - s.oldest_pending_at if s and s.oldest_pending_at else 0.0
            oldest.add_metric([name], round(max(0.0, age), 3))
            circuit.add_metric([name], 1 if s and s.circuit == "open" else 0)
            paused.add_metric([name], 1 if s and s.paused else 0)
        yield from (jobs, depth, oldest, circuit, paused)
        inst = q["instances"]
        spooled = gauge("dicom_router_spooled_objects", "Objects kept in the spool")
        spooled.add_metric([], inst["spooled"])
        spooled_bytes = gauge("dicom_router_spooled_bytes", "Bytes of the objects kept in the spool")
        spooled_bytes.add_metric([], inst["spooled_bytes"])
        unrouted = gauge("dicom_router_unrouted_objects", "Objects that matched no route (kept)")
        unrouted.add_metric([], inst["unrouted"])
        yield from (spooled, spooled_bytes, unrouted)
        proc_up = gauge("dicom_router_process_up", "1 if the process's heartbeat is recent", labels=["process"])
        beats = {p["name"]: p["heartbeat_at"] for p in q["processes"]}
        for name in ("receiver", "forwarder", "scheduler"):
            proc_up.add_metric([name], 1 if name in beats and now - beats[name] < HEARTBEAT_STALE_SECONDS else 0)
        yield proc_up

    def _disk_metrics(self, cfg: RouterConfig, gauge: Any) -> Iterator[Any]:
        try:
            usage = shutil.disk_usage(cfg.spool_dir)
        except OSError:
            return
        for what, value in (("total", usage.total), ("used", usage.used), ("free", usage.free)):
            g = gauge(f"dicom_router_spool_disk_{what}_bytes", f"Spool filesystem: {what} bytes")
            g.add_metric([], value)
            yield g

    def _restart_metrics(self, cfg: RouterConfig, counter: Any) -> Iterator[Any]:
        from . import restarts

        record = restarts.load(restarts.record_path(cfg.router.state_dir))
        c = counter(
            "dicom_router_process_restarts",
            "Unexpected exits of a router process that the supervisor restarted",
            labels=["process"],
        )
        for name in ("receiver", "forwarder", "scheduler"):
            c.add_metric([name], record[name].total if name in record else 0)
        yield c

    def _alert_metrics(self, cfg: RouterConfig, gauge: Any, counter: Any) -> Iterator[Any]:
        from .alerts import AlertStateFile

        state = AlertStateFile(cfg.router.state_dir).read()
        active = gauge("dicom_router_alerts_active", "Alerts active now, by level", labels=["level"])
        levels = {"warning": 0, "error": 0}
        for a in state.get("active", {}).values():
            levels[a.get("level", "warning")] = levels.get(a.get("level", "warning"), 0) + 1
        for level, n in sorted(levels.items()):
            active.add_metric([level], n)
        yield active
        deliveries = counter(
            "dicom_router_alert_notifications",
            "Alert notifications per channel and outcome (sent, failed attempt, suppressed by the rate limit, "
            "given up)",
            labels=["channel", "outcome"],
        )
        for channel, ch in sorted(state.get("channels", {}).items()):
            for outcome, n in sorted(ch.get("counts", {}).items()):
                deliveries.add_metric([channel, outcome], n)
        yield deliveries


def build_registry(cfg_ref: Callable[[], RouterConfig], store: Store) -> Any:
    """Multiprocess counters (when the supervisor set a directory) + the scrape-time collector."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        MultiProcessCollector(registry, path)
    registry.register(RouterCollector(cfg_ref, store))
    return registry


def bind_error_message(bind: str, port: int, exc: OSError) -> str:
    """Why the endpoint cannot listen, and what to do — for the log and `status`."""
    tail = "DICOM routing continues without the metrics endpoint; the router retries every 30 s"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"metrics port {port} on {bind} is in use by another process — change metrics.port in router.yaml "
            f"or stop that process (`ss -ltnp 'sport = :{port}'` names it); {tail}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"metrics.bind {bind} is not an address of this machine — correct metrics.bind; {tail}"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (below 1024 needs privileges) — use 9104; {tail}"
    return f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc} — {tail}"


class MetricsEndpoint:
    """The HTTP server thread. `ensure` (re)starts it on the configured address; idempotent and cheap."""

    def __init__(self, registry: Any):
        self.registry = registry
        self.server: Any = None
        self.address: tuple[str, int] | None = None
        self.error: str | None = None

    def ensure(self, bind: str, port: int) -> tuple[bool, str]:
        """(serving, one-line state). Logs only when the state changes, not at every retry."""
        from prometheus_client import start_http_server

        if self.server is not None and self.address == (bind, port):
            return True, f"serving on http://{_host(bind)}:{port}/metrics"
        self.stop()
        try:
            self.server, _ = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as exc:
            message = bind_error_message(bind, port, exc)
            if message != self.error:
                log(LOG, logging.ERROR, message, bind=bind, port=port)
            self.error = message
            return False, message
        self.address = (bind, port)
        was = self.error
        self.error = None
        log(
            LOG,
            logging.INFO,
            f"metrics endpoint listening on http://{_host(bind)}:{port}/metrics" + (" (again)" if was else ""),
        )
        return True, f"serving on http://{_host(bind)}:{port}/metrics"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.server, self.address = None, None


def _host(bind: str) -> str:
    return f"[{bind}]" if ":" in bind else bind


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A scrape parsed to {'name{label="v",…}': value} — for tests and `docs/monitoring.md`'s checks."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
