"""appliance.router.metrics and metrics_export: hot-path counters summed over processes (prometheus-client's
multiprocess mode, real child processes), the scrape-time collector over a real queue database, the
endpoint's port clash message, and the supervisor's metrics switch."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.router import metrics, restarts
from appliance.router.config import RouterConfig, parse_config
from appliance.router.metrics_export import MetricsEndpoint, RouterCollector, bind_error_message, build_registry, scrape
from appliance.router.scheduler import job_specs
from appliance.router.store import NewJob, Store
from appliance.router.supervisor import Supervisor
from tests.support.peers import free_port
from tests.unit.test_store import facts

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, extra: str = "") -> RouterConfig:
    return parse_config(
        f"""
router:
  state_dir: {tmp_path / "state"}
  log_dir: {tmp_path / "log"}
  tls_dir: {tmp_path / "tls"}
nodes:
  CT: {{ae_title: CT1, host: 127.0.0.1, port: 104, role: source}}
  PACS_MAIN: {{ae_title: PACS, host: 127.0.0.1, port: 104, role: destination}}
  ARCHIVE: {{ae_title: ARCH, host: 127.0.0.1, port: 105, role: destination}}
routes:
  - {{name: all, to: [PACS_MAIN, ARCHIVE]}}
{extra}
"""
    )


def samples(registry: CollectorRegistry) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


CHILD = """
from appliance.router.metrics import recorder
r = recorder()
assert r.enabled, "multiprocess directory not picked up"
for _ in range({n}):
    r.received("CT", 1000)
r.forwarded("PACS_MAIN", 1000)
r.retried("PACS_MAIN")
r.failed("ARCHIVE")
class A: pass
a = A(); r.association_started(a); r.association_closed(a, "in", "CT"); r.association_closed(a, "in", "CT")
"""


def test_counters_from_several_processes_are_summed_at_scrape(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = metrics.prepare_multiproc_dir(cfg.router.state_dir)
    env = {**os.environ, metrics.MULTIPROC_ENV: str(path), "PYTHONPATH": str(REPO)}
    for n in (2, 3):  # like the receiver and the forwarder: two processes writing their own files
        subprocess.run([sys.executable, "-c", CHILD.format(n=n)], env=env, check=True, cwd=REPO, timeout=60)
    store = Store(cfg.db_path)
    store.init()
    os.environ[metrics.MULTIPROC_ENV] = str(path)
    try:
        got = samples(build_registry(lambda: cfg, store))
    finally:
        del os.environ[metrics.MULTIPROC_ENV]
    assert got['dicom_router_received_objects_total{source="CT"}'] == 5
    assert got['dicom_router_received_bytes_total{source="CT"}'] == 5000
    assert got['dicom_router_forwarded_objects_total{destination="PACS_MAIN"}'] == 2
    assert got['dicom_router_forward_retries_total{destination="PACS_MAIN"}'] == 2
    assert got['dicom_router_forward_failures_total{destination="ARCHIVE"}'] == 2
    # closed twice (release, then socket close) but counted once per association
    assert got['dicom_router_association_duration_seconds_count{direction="in",node="CT"}'] == 2
    assert got["dicom_router_queue_database_up"] == 1
    # a new run of the router starts from an empty directory
    metrics.prepare_multiproc_dir(cfg.router.state_dir)
    assert list(path.iterdir()) == []


def test_without_a_multiprocess_directory_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(metrics, "_RECORDER", None)
    r = metrics.recorder()
    assert isinstance(r, metrics.NullRecorder) and not r.enabled
    r.received("CT", 1)
    r.watch_outbound(object(), "PACS")  # does not even touch the association


def test_label_values_are_capped_so_unknown_callers_cannot_explode_the_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "MAX_LABEL_VALUES", 3)
    registry = CollectorRegistry()
    r = metrics.Recorder(registry)
    for ae in ("A", "B", "C", "D", "E", "A"):
        r.received(ae, 10)
    got = samples(registry)
    sources = {k for k in got if k.startswith("dicom_router_received_objects_total")}
    assert sources == {f'dicom_router_received_objects_total{{source="{s}"}}' for s in ("A", "B", "C", "other")}
    assert got['dicom_router_received_objects_total{source="other"}'] == 2  # D and E


def test_scrape_time_values_come_from_the_queue_database_and_state_files(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.db_path)
    store.init()
    now = time.time()
    store.add_instance("k1", facts(), [NewJob("PACS_MAIN", "all", 1), NewJob("ARCHIVE", "all", 1)], now - 120)
    store.add_instance("k2", facts(), [NewJob("PACS_MAIN", "all", 1)], now - 60)
    for job in store.claim("ARCHIVE", "h:1:0", 10, 60, now):
        store.ack(job.id, 0, "stored", now, keep_spool=True)
    store.set_circuit("PACS_MAIN", "open", now, "connection refused")
    store.heartbeat("receiver", now, now, "", "")
    restarts.record_exit(restarts.record_path(cfg.router.state_dir), "forwarder", -9, now)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(lambda: cfg, store))
    got = samples(registry)
    assert got['dicom_router_queue_depth{destination="PACS_MAIN"}'] == 2
    assert got['dicom_router_queue_depth{destination="ARCHIVE"}'] == 0
    assert got['dicom_router_queue_jobs{destination="ARCHIVE",state="done"}'] == 1
    assert 115 < got['dicom_router_queue_oldest_age_seconds{destination="PACS_MAIN"}'] < 200
    assert got['dicom_router_circuit_open{destination="PACS_MAIN"}'] == 1
    assert got['dicom_router_circuit_open{destination="ARCHIVE"}'] == 0
    assert got['dicom_router_process_up{process="receiver"}'] == 1
    assert got['dicom_router_process_up{process="forwarder"}'] == 0
    assert got['dicom_router_process_restarts_total{process="forwarder"}'] == 1
    assert "dicom_router_spool_disk_free_bytes" not in got  # no spool directory yet: no made-up numbers
    cfg.spool_dir.mkdir(parents=True)
    got = samples(registry)
    assert got["dicom_router_spool_disk_used_bytes"] + got["dicom_router_spool_disk_free_bytes"] > 0
    assert got['dicom_router_alerts_active{level="error"}'] == 0


def test_a_port_in_use_is_a_specific_error_and_the_endpoint_binds_once_it_is_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.db_path)
    store.init()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    endpoint = MetricsEndpoint(build_registry(lambda: cfg, store))
    try:
        ok, text = endpoint.ensure("127.0.0.1", port)
        assert not ok
        assert text.startswith(f"metrics port {port} on 127.0.0.1 is in use by another process — change metrics.port")
        assert "DICOM routing continues" in text
        endpoint.ensure("127.0.0.1", port)  # retried every 30 s: logged once, not every time
        assert sum(1 for r in caplog.records if "is in use" in r.getMessage()) == 1
        holder.close()
        ok, text = endpoint.ensure("127.0.0.1", port)
        assert ok and text == f"serving on http://127.0.0.1:{port}/metrics"
        assert scrape(f"http://127.0.0.1:{port}/metrics")["dicom_router_queue_database_up"] == 1
        # a reload to another port moves the endpoint
        other = free_port()
        assert endpoint.ensure("127.0.0.1", other)[0]
        assert scrape(f"http://127.0.0.1:{other}/metrics")["dicom_router_queue_database_up"] == 1
    finally:
        endpoint.stop()
        holder.close()
    not_here = bind_error_message("10.255.255.1", 9104, OSError(errno.EADDRNOTAVAIL, "x"))
    assert not_here.startswith("metrics.bind 10.255.255.1 is not an address of this machine")


def test_the_supervisor_gives_the_children_a_fresh_directory_only_when_metrics_are_on(tmp_path: Path) -> None:
    on = config(tmp_path)
    sup = Supervisor(tmp_path / "router.yaml")
    stale = metrics.multiproc_dir(on.router.state_dir)
    stale.mkdir(parents=True)
    (stale / "counter_123.db").write_bytes(b"x")
    sup._prepare_metrics(on)
    assert sup.child_env[metrics.MULTIPROC_ENV] == str(stale) and list(stale.iterdir()) == []
    off = config(tmp_path, "metrics: {enabled: false}")
    sup._prepare_metrics(off)
    assert metrics.MULTIPROC_ENV not in sup.child_env
    # and the scheduler serves no endpoint
    assert "metrics-endpoint" in [s.name for s in job_specs(on)]
    assert "metrics-endpoint" not in [s.name for s in job_specs(off)]
