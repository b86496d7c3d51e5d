"""Metrics and alerts on the real wire: DCMTK storescu → router → DCMTK storescp, then a scrape of the
router's Prometheus endpoint; a crashed forwarder raising the service-restarts alert, delivered to an SMTP
sink (aiosmtpd), an HTTP webhook receiver and a UDP syslog collector started here; a metrics port clash
that leaves DICOM routing untouched. One router for the module."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from appliance.router import status
from appliance.router.metrics_export import scrape
from tests.support.data import make_ct_series
from tests.support.peers import RUNNING, Router, StoreSCP, dest_node, free_port, port_open, storescu, wait_until
from tests.unit.test_alerts_delivery import SmtpSink, Webhook

# One router for the module, and its counters add up across the tests (3 objects, then a 4th): under
# pytest-xdist the tests must run in one worker, in file order. Without the group, a worker that ran only the
# last test waited 60 s for "4 jobs done" on a router of its own that had received 1 (seen in two suite runs).
pytestmark = pytest.mark.xdist_group("metrics-alerts-router")


@dataclass
class Site:
    router: Router
    scp: StoreSCP
    files: list[Path]
    metrics_url: str
    webhook: Webhook
    smtp: SmtpSink
    syslog: socket.socket


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("metrics")
    files = make_ct_series(work / "series", 4, rows=32, cols=32)
    scp = StoreSCP(work, "PACS").start()
    webhook = Webhook()
    smtp, smtp_port = SmtpSink(), free_port()
    controller = Controller(smtp, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(10)
    metrics_port = free_port()
    router = Router(work, destinations={"PACS": dest_node("PACS", scp.port)})
    router.config["metrics"] = {"port": metrics_port}
    router.config["alerts"] = {
        "thresholds": {"service_restarts": 1},
        "syslog": {"address": f"127.0.0.1:{syslog.getsockname()[1]}", "facility": "local4"},
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "sender": "router@hospital.example",
            "to": ["oncall@hospital.example"],
        },
        "webhook": {"url": webhook.url},
    }
    router.write_config()
    router.start(wait=False)
    RUNNING.remove(router)  # shared by the module's tests: not stopped by the per-test cleanup
    RUNNING.remove(scp)
    try:
        wait_until(lambda: _running(router), 60, "the router to listen and its processes to report", interval=0.1)
        yield Site(router, scp, files, f"http://127.0.0.1:{metrics_port}/metrics", webhook, smtp, syslog)
    finally:
        router.stop()
        scp.stop()
        controller.stop()
        webhook.close()
        syslog.close()


def _running(router: Router) -> bool:
    if router.proc is not None and router.proc.poll() is not None:
        raise RuntimeError(f"router exited with {router.proc.returncode}:\n{router.log_text()[-3000:]}")
    if not port_open(router.port) or not router.config_path.exists():
        return False
    try:
        procs = router.status()["processes"]
    except Exception:  # the database may not exist yet
        return False
    return all(procs.get(n, {}).get("running") for n in ("receiver", "forwarder", "scheduler"))


def _done(router: Router) -> int:
    return sum(d["counts"]["done"] for d in router.status()["destinations"])


def _scrape(url: str) -> dict[str, float] | None:
    try:
        return scrape(url)
    except OSError:
        return None


def test_a_scrape_after_a_real_relay_counts_what_went_through(site: Site) -> None:
    router = site.router
    res = storescu(router.port, site.files[:3])
    assert res.returncode == 0, res.stderr[-2000:]
    wait_until(lambda: _done(router) == 3, 60, "3 jobs done", interval=0.1)
    m = wait_until(lambda: _scrape(site.metrics_url), 30, "the metrics endpoint")
    spooled = sum(j["size_bytes"] for j in router.jobs())
    assert m['dicom_router_received_objects_total{source="STORESCU"}'] == 3
    assert m['dicom_router_received_bytes_total{source="STORESCU"}'] == spooled
    assert m['dicom_router_forwarded_objects_total{destination="PACS"}'] == 3
    assert m['dicom_router_forwarded_bytes_total{destination="PACS"}'] == spooled
    assert m['dicom_router_association_duration_seconds_count{direction="in",node="STORESCU"}'] == 1
    assert m['dicom_router_queue_jobs{destination="PACS",state="done"}'] == 3
    assert m['dicom_router_queue_depth{destination="PACS"}'] == 0
    assert m['dicom_router_circuit_open{destination="PACS"}'] == 0
    assert m["dicom_router_spool_disk_free_bytes"] > 0
    assert all(m[f'dicom_router_process_up{{process="{p}"}}'] == 1 for p in ("receiver", "forwarder", "scheduler"))


def _log_entries(router: Router) -> list[dict[str, Any]]:
    lines = (router.workdir / "log" / "router.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _events(webhook: Webhook, key: str) -> list[dict[str, Any]]:
    return [b for b in webhook.bodies if b["key"] == key]


def test_a_crashing_forwarder_raises_the_restarts_alert_on_every_channel(site: Site) -> None:
    router = site.router
    old = router.status()["processes"]["forwarder"]["pid"]
    os.kill(old, signal.SIGKILL)

    def forwarder_back() -> bool:
        p = router.status()["processes"].get("forwarder", {})
        return bool(p.get("running") and p["pid"] != old)

    wait_until(forwarder_back, 30, "the supervisor to restart the forwarder", interval=0.2)
    router.reload()  # SIGHUP: the scheduler re-evaluates the alerts at once instead of within 30 s
    key = "service-restarts:forwarder"
    (raised,) = wait_until(lambda: _events(site.webhook, key), 30, "the webhook to get the alert", interval=0.1)
    assert raised["event"] == "raised" and raised["level"] == "error"
    assert "the forwarder process exited unexpectedly 1 time(s) in the last hour" in raised["message"]
    mail = wait_until(lambda: [m for _, m in site.smtp.messages if key in m.get_content()], 10, "the alert mail")
    assert "ALERT error: the forwarder process exited unexpectedly" in mail[0]["Subject"]
    datagrams = []
    while not any(key in d for d in datagrams):
        datagrams.append(site.syslog.recv(8192).decode())  # times out (fails) after 10 s
    line = next(d for d in datagrams if key in d)
    assert line.startswith("<163>1 ")  # local4 (20) * 8 + err (3)

    st = router.status()
    assert any("the forwarder process exited unexpectedly 1 time(s)" in p for p in st["problems"])
    assert key in [a["key"] for a in st["alerts"]["active"]]
    assert "ALERTS (delivered to syslog, smtp, webhook)" in status.render(st)
    m = wait_until(lambda: _scrape(site.metrics_url), 30, "the metrics endpoint")
    assert m['dicom_router_process_restarts_total{process="forwarder"}'] == 1
    assert m['dicom_router_alerts_active{level="error"}'] >= 1
    assert m['dicom_router_alert_notifications_total{channel="webhook",outcome="sent"}'] >= 1
    # counters of the killed forwarder stay in the sum (its file remains); the new one adds to them
    assert m['dicom_router_forwarded_objects_total{destination="PACS"}'] == 3


def test_a_metrics_port_clash_is_a_clear_error_and_dicom_keeps_flowing(site: Site) -> None:
    router = site.router
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        router.config["metrics"]["port"] = taken
        router.write_config()
        router.reload()
        clash = f"metrics port {taken} on 127.0.0.1 is in use by another process — change metrics.port"
        wait_until(lambda: any(clash in p for p in router.status()["problems"]), 30, "the clash in status")
        assert any(e["level"] == "error" and clash in e["message"] for e in _log_entries(router))
        res = storescu(router.port, site.files[3:])
        assert res.returncode == 0, res.stderr[-2000:]
        wait_until(lambda: _done(router) == 4, 60, "4 jobs done", interval=0.1)
        assert len(site.scp.files()) == 4
    finally:
        holder.close()
    router.reload()  # the port is free now: the endpoint binds at the next try (a reload tries at once)
    url = f"http://127.0.0.1:{taken}/metrics"
    m = wait_until(lambda: _scrape(url), 30, "the endpoint on the freed port")
    assert m['dicom_router_received_objects_total{source="STORESCU"}'] == 4
    # the forwarder releases its association after 5 s idle: then the association's lifetime is observed
    out = 'dicom_router_association_duration_seconds_count{direction="out",node="PACS"}'
    wait_until(lambda: (_scrape(url) or {}).get(out), 20, "the outbound association's duration", interval=0.5)
    wait_until(lambda: not any("metrics port" in p for p in router.status()["problems"]), 30, "the problem to clear")
