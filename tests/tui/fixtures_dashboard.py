"""A realistic 3 a.m. outage, built cheaply and deterministically for dashboard and logs tests.

PACS_MAIN is down (circuit open for 42 min, connection refused, failed attempts, 3 objects refused for good),
ARCHIVE is fine (steady deliveries: the sparkline), AI_CLOUD is paused by an operator. Every time is fixed
(NOW), so ages, sparklines and snapshots do not move between runs.
"""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.router.clock import ClockState
from appliance.router.config import config_sha256
from appliance.router.history import History, Version
from appliance.router.store import InstanceFacts, NewJob, Store

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
PACS_DOWN_SINCE = NOW - 42 * 60
PACS_ERROR = (
    "destination PACS_MAIN (PACS@10.1.2.10:104): connection refused by 10.1.2.10:104 — nothing listens on that "
    "port (DICOM service stopped, or wrong port)"
)
REFUSED_ERROR = (
    "destination PACS_MAIN (PACS@10.1.2.10:104) does not accept SOP class 1.2.840.10008.5.1.4.1.1.481.3 in "
    "transfer syntax 1.2.840.10008.1.2.4.90 (no presentation context accepted) — enable it on the destination, "
    "or route this kind of object elsewhere"
)
SYNCED = ClockState(True, True, 0.000012, "ntp1.hospital.example", 2,
                    "synchronised to ntp1.hospital.example (stratum 2), offset +0.000012 s")  # fmt: skip
GB = 1_000_000_000
DiskUsage = namedtuple("DiskUsage", "total used free")


@dataclass
class State:
    root: Path
    config_path: Path
    db_path: Path
    log_path: Path
    audit_path: Path


def write_config(root: Path, *, extra_nodes: dict[str, Any] | None = None) -> Path:
    cfg = {
        "router": {
            "ae_title": "DICOM_ROUTER",
            "bind": "0.0.0.0",
            "port": 11112,
            "state_dir": str(root / "state"),
            "log_dir": str(root / "log"),
        },
        "nodes": {
            "CT_SCANNER_1": {"ae_title": "CT1", "host": "10.1.2.3", "port": 104, "role": "source"},
            "PACS_MAIN": {"ae_title": "PACS", "host": "10.1.2.10", "port": 104, "role": "destination",
                          "max_associations": 4},
            "ARCHIVE": {"ae_title": "ARCHIVE", "host": "10.1.2.20", "port": 104, "role": "destination"},
            "AI_CLOUD": {"ae_title": "AICLOUD", "host": "10.9.0.5", "port": 11112, "role": "destination"},
            **(extra_nodes or {}),
        },
        "routes": [
            {"name": "everything-to-pacs", "to": ["PACS_MAIN"]},
            {"name": "ct-to-archive-and-ai", "match": {"Modality": "CT"}, "to": ["ARCHIVE", "AI_CLOUD"]},
        ],
    }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    path = root / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def record_version(config_path: Path, state_dir: Path, when: str = "2027-01-14T16:05:00Z") -> None:
    """The live file as version 1 of the history, with a fixed time (so no drift is reported)."""
    content = config_path.read_bytes()
    History(state_dir / "history").record(
        content,
        Version(0, config_sha256(content), when, "jdoe", "initial site config", "ansible", "applied",
                ticket="CHG0100"),
    )  # fmt: skip


_n = iter(range(1, 10_000_000))


def _facts(modality: str, study: int) -> InstanceFacts:
    n = next(_n)
    return InstanceFacts(
        sop_instance_uid=f"1.2.826.0.1.3680043.10.511.{study}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        size_bytes=524_288,
        study_uid=f"1.2.826.0.1.3680043.10.511.{study}",
        series_uid=f"1.2.826.0.1.3680043.10.511.{study}.1",
        patient_id=f"PID{study:05d}",
        accession=f"ACC{study:05d}",
        modality=modality,
        calling_ae="CT1",
        called_ae="DICOM_ROUTER",
        source_node="CT_SCANNER_1",
    )


def build_outage(root: Path, *, fresh: bool = True) -> State:
    """Config + history + queue + scheduler state + logs for the outage described in the module docstring."""
    if fresh and root.exists():
        shutil.rmtree(root)
    config_path = write_config(root)
    state_dir, log_dir = root / "state", root / "log"
    record_version(config_path, state_dir)
    (state_dir / "spool").mkdir(parents=True, exist_ok=True)
    db = state_dir / "queue.sqlite3"
    store = Store(db, durable=False)
    store.init()
    try:
        _fill_queue(store)
        for i, name in enumerate(("receiver", "forwarder", "scheduler")):
            store.heartbeat(name, NOW - 86_400, NOW - 1 - i, config_sha=config_sha256(config_path.read_bytes()))
    finally:
        store.close()
    _write_scheduler_state(state_dir)
    log_path, audit_path = _write_logs(log_dir)
    return State(root, config_path, db, log_path, audit_path)


def _fill_queue(store: Store) -> None:
    # ARCHIVE: fine — a study every minute or so for the last 40 minutes, all delivered.
    for minute in range(40, 0, -1):
        t = NOW - minute * 60
        for _ in range(1 + (minute * 7) % 5):
            store.add_instance(f"k{next(_n)}", _facts("CT", 100 + minute), [NewJob("ARCHIVE", "ct", 1)], t)
        for job in store.claim("ARCHIVE", "fwd-1", 50, 60, t + 5):
            store.ack(job.id, 0x0000, "stored", t + 6, keep_spool=False)
    # PACS_MAIN: down for 42 min. 3 objects refused for good before that; 57 wait; attempts keep failing.
    first = store.add_instance("kref", _facts("RTDOSE", 7), [NewJob("PACS_MAIN", "all", 1)], PACS_DOWN_SINCE - 600)
    for _ in range(2):
        store.add_instance(f"k{next(_n)}", _facts("RTDOSE", 7), [NewJob("PACS_MAIN", "all", 1)], PACS_DOWN_SINCE - 600)
    for job in store.claim("PACS_MAIN", "fwd-1", 3, 60, PACS_DOWN_SINCE - 590):
        store.fail(job.id, None, REFUSED_ERROR, PACS_DOWN_SINCE - 589)
    assert first
    for minute in range(45, 0, -1):
        t = NOW - minute * 60
        store.add_instance(f"k{next(_n)}", _facts("MR", 300 + minute // 3), [NewJob("PACS_MAIN", "all", 1)], t)
    for minute in range(55, 0, -5):
        t = NOW - minute * 60
        for job in store.claim("PACS_MAIN", "fwd-1", 2, 60, t):
            store.retry_later(job.id, None, PACS_ERROR, t + 1, 10, None)
        store.record_connect_result("PACS_MAIN", False, PACS_ERROR, t + 1)
    store.set_circuit("PACS_MAIN", "open", PACS_DOWN_SINCE, PACS_ERROR)
    # AI_CLOUD: paused for maintenance by an operator; its jobs wait.
    for minute in range(20, 5, -1):
        store.add_instance(f"k{next(_n)}", _facts("CT", 500 + minute), [NewJob("AI_CLOUD", "ct", 3)], NOW - minute * 60)
    store.set_paused("AI_CLOUD", True, "alice", "vendor maintenance window (CHG0412)", NOW - 25 * 60)


def _write_scheduler_state(state_dir: Path) -> None:
    def job(name: str, every: float, result: str, last: float) -> dict[str, Any]:
        return {"name": name, "schedule": f"every {every:g} s", "next_run": last + every, "last_run": last,
                "last_duration_seconds": 0.01, "last_outcome": "ok", "last_result": result, "last_error": None,
                "consecutive_failures": 0, "last_success": last, "running_since": None}  # fmt: skip

    tls = "/etc/dicom-router/tls"
    state = {
        "version": 1,
        "written_at": NOW - 4,
        "pid": 4242,
        "config_sha256": "",
        "jobs": [
            job("spool-retention", 30, "deleted 0 spooled object(s) past retention (keep_sent_hours 0)", NOW - 12),
            job("disk-watermark", 30, "41% used, 118.0 GB free (warn above 85%, refuse below 512 MB)", NOW - 12),
            job("circuit-probe", 30, "PACS_MAIN open for 42 min: the forwarder probes it with C-ECHO every 30 s",
                NOW - 12),
            job("expiry-check", 3600, f"3 certificate(s) in {tls}: 0 expired, 0 other warning(s); soonest: "
                "CN=dicom-router.hospital.example on 2027-09-30 (258 days)", NOW - 1260),
        ],
        "warnings": [],
        "cert_notified": {},
    }  # fmt: skip
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "scheduler.json").write_text(json.dumps(state))


def _iso(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"


def _write_logs(log_dir: Path) -> tuple[Path, Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for minute in range(50, 0, -1):
        t = NOW - minute * 60
        if minute % 5 == 0 and minute <= 45:
            lines.append({"time": _iso(t), "level": "warning", "process": "forwarder", "logger": "router.forwarder",
                          "message": f"PACS_MAIN: {PACS_ERROR}", "destination": "PACS_MAIN"})  # fmt: skip
        study = f"1.2.826.0.1.3680043.10.511.{minute}"
        lines.append({"time": _iso(t + 5), "level": "info", "process": "receiver", "logger": "router.receiver",
                      "message": f"accepted 1 object(s) from CT1 (10.1.2.3), study {study}"})  # fmt: skip
        if minute == 42:
            lines.append({"time": _iso(PACS_DOWN_SINCE), "level": "error", "process": "forwarder",
                          "logger": "router.forwarder", "message": "destination PACS_MAIN: 5 connection failures "
                          "in a row, pausing sends and probing with C-ECHO every 30 s"})  # fmt: skip
    log_path = log_dir / "router.log"
    log_path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    audit = [
        {"time": _iso(NOW - 25 * 60), "event": "destination_pause", "outcome": "success", "process": "console",
         "operator": "alice", "reason": "vendor maintenance window (CHG0412)", "destination": "AI_CLOUD",
         "changed": True},
        {"time": _iso(NOW - 20 * 60), "event": "queue_retry", "outcome": "success", "process": "cli",
         "operator": "bob", "reason": "INC0042 PACS restarted?", "filter": {"destination": "PACS_MAIN"},
         "changed": 0, "skipped": 3},
        {"time": _iso(NOW - 35 * 60), "event": "forward_failed", "outcome": "failure", "process": "forwarder",
         "destination": "PACS_MAIN", "job": 41, "reason": REFUSED_ERROR},
    ]  # fmt: skip
    audit.sort(key=lambda e: e["time"])
    audit_path = log_dir / "audit.jsonl"
    audit_path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in audit))
    return log_path, audit_path


def freeze_host(monkeypatch: pytest.MonkeyPatch, *, clock: ClockState = SYNCED, used_fraction: float = 0.41,
                total: int = 200 * GB) -> None:  # fmt: skip
    """Chrony's answer and the spool disk's size are the host's; pin them so renders are repeatable."""
    used = int(total * used_fraction)
    monkeypatch.setattr("appliance.tui.backend.clock_state", lambda: clock)
    monkeypatch.setattr("appliance.router.spool.Spool.disk_usage", lambda self: DiskUsage(total, used, total - used))
