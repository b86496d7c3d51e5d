"""A realistic queue for the queue-screen tests, built with the router's own Store at fixed times.

PACS_MAIN has been unreachable for 2 h: 130 objects wait (connection refused, backing off). Before that its
AE title was changed on the PACS side, so 12 objects failed with "called AE title not recognised" after
3 attempts, and 2 RT objects were refused for good (0x0122, SOP class not supported). ARCHIVE is fine:
40 objects delivered. One study (accession ACC-MIX, patient PID-MIX) went to PACS_MAIN by mistake; its
5 jobs wait. 3 objects matched no route (unrouted). PACS_DR is the disaster-recovery PACS (idle).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual import events, on

from appliance.router.store import InstanceFacts, NewJob, Store
from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
DOWN_SINCE = NOW - 2 * 3600
REFUSED = (
    "destination PACS_MAIN (PACS@10.1.2.10:104): connection refused by 10.1.2.10:104 — nothing listens on that "
    "port (DICOM service stopped, or wrong port) (retry in 600 s)"
)
AE_REJECTED = (
    "destination PACS_MAIN (PACS@10.1.2.10:104) rejected the association permanently: called AE title not "
    "recognised — check the AE title on both ends (retry in 40 s)"
)
SOP_REFUSED = "destination PACS_MAIN (PACS@10.1.2.10:104) answered 0x0122 (refused: the destination does not " \
    "support this SOP class)"  # fmt: skip
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
CT = "1.2.840.10008.5.1.4.1.1.2"
COUNTS = {"waiting": 130, "ae_failed": 12, "sop_failed": 2, "archive_done": 40, "misrouted": 5, "unrouted": 3}


@dataclass
class QueueState:
    root: Path
    config_path: Path
    db_path: Path

    def store(self) -> Store:
        return Store(self.db_path, durable=False)

    def jobs(self, **flt: Any) -> list[Any]:
        from appliance.router.store import JobFilter

        store = self.store()
        try:
            return store.list_jobs(JobFilter(**flt), limit=100_000)
        finally:
            store.close()

    def states(self, **flt: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs(**flt):
            out[j.state] = out.get(j.state, 0) + 1
        return out


def write_config(root: Path) -> Path:
    cfg = {
        "router": {"ae_title": "DICOM_ROUTER", "bind": "0.0.0.0", "port": 11112,
                   "state_dir": str(root / "state"), "log_dir": str(root / "log")},
        "nodes": {
            "CT_SCANNER_1": {"ae_title": "CT1", "host": "10.1.2.3", "port": 104, "role": "source"},
            "MR_SCANNER_2": {"ae_title": "MR2", "host": "10.1.2.4", "port": 104, "role": "source"},
            "PACS_MAIN": {"ae_title": "PACS", "host": "10.1.2.10", "port": 104, "role": "destination"},
            "PACS_DR": {"ae_title": "PACSDR", "host": "10.2.2.10", "port": 104, "role": "destination"},
            "ARCHIVE": {"ae_title": "ARCHIVE", "host": "10.1.2.20", "port": 104, "role": "destination"},
        },
        "routes": [
            {"name": "ct-mr-to-pacs", "match": {"Modality": {"regex": "CT|MR|RTPLAN"}}, "to": ["PACS_MAIN"]},
            {"name": "ct-to-archive", "match": {"Modality": "CT"}, "to": ["ARCHIVE"]},
        ],
    }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    path = root / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class _Facts:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, study: int, modality: str = "MR", *, accession: str | None = None,
                 patient: str | None = None, sop_class: str = CT, calling: str = "MR2") -> InstanceFacts:  # fmt: skip
        self.n += 1
        return InstanceFacts(
            sop_instance_uid=f"1.2.826.0.1.3680043.10.77.{study}.{self.n}",
            sop_class_uid=sop_class,
            transfer_syntax="1.2.840.10008.1.2.1",
            size_bytes=524_288,
            study_uid=f"1.2.826.0.1.3680043.10.77.{study}",
            series_uid=f"1.2.826.0.1.3680043.10.77.{study}.1",
            patient_id=patient or f"PID{study:05d}",
            accession=accession or f"ACC{study:05d}",
            modality=modality,
            calling_ae=calling,
            called_ae="DICOM_ROUTER",
            source_node="MR_SCANNER_2" if calling == "MR2" else "CT_SCANNER_1",
        )


def build_queue(root: Path) -> QueueState:
    """The queue described in the module docstring, in `root` (recreated)."""
    if root.exists():
        shutil.rmtree(root)
    config_path = write_config(root)
    db = root / "state" / "queue.sqlite3"
    store = Store(db, durable=False)
    store.init()
    facts = _Facts()
    pacs = [NewJob("PACS_MAIN", "ct-mr-to-pacs", 1)]
    try:
        # The AE-title change, 5 h ago: 12 MR objects fail after 3 rejected associations each.
        t0 = NOW - 5 * 3600
        for i in range(COUNTS["ae_failed"]):
            store.add_instance(f"ae{i}", facts(10 + i // 4), pacs, t0 + i)
        for attempt in range(3):
            t = t0 + 60 + attempt * 120
            for job in store.claim("PACS_MAIN", "fwd-1", 100, 60, t):
                if attempt < 2:
                    store.retry_later(job.id, None, AE_REJECTED, t + 1, 40, 3)
                else:
                    store.retry_later(job.id, None, AE_REJECTED.replace("40 s", "80 s"), t + 1, 80, 3)
        # Two RT plans refused for good (the PACS does not take that SOP class).
        for i in range(COUNTS["sop_failed"]):
            store.add_instance(f"rt{i}", facts(20, "RTPLAN", sop_class=RT_PLAN, calling="CT1"), pacs, t0 + 900 + i)
        for job in store.claim("PACS_MAIN", "fwd-1", 100, 60, t0 + 960):
            store.fail(job.id, 0x0122, SOP_REFUSED, t0 + 961)
        # ARCHIVE: 40 CT objects delivered over the last 3 h.
        for i in range(COUNTS["archive_done"]):
            t = NOW - 3 * 3600 + i * 240
            store.add_instance(f"ar{i}", facts(30 + i // 10, "CT", calling="CT1"), [NewJob("ARCHIVE", "ct", 1)], t)
            for job in store.claim("ARCHIVE", "fwd-2", 10, 60, t + 2):
                store.ack(job.id, 0x0000, "stored by ARCHIVE (ARCHIVE@10.1.2.20:104) in 41 ms", t + 3, keep_spool=False)
        # PACS_MAIN down for 2 h: 130 MR objects wait, with a few failed attempts each.
        for i in range(COUNTS["waiting"]):
            store.add_instance(f"mr{i}", facts(100 + i // 20), pacs, DOWN_SINCE + i * 50)
        for t in (NOW - 3000, NOW - 1200):
            for job in store.claim("PACS_MAIN", "fwd-1", 200, 60, t):
                store.retry_later(job.id, None, REFUSED, t + 1, 600, None)
            store.record_connect_result("PACS_MAIN", False, REFUSED, t + 1)
        store.set_circuit("PACS_MAIN", "open", DOWN_SINCE + 300, REFUSED)
        # The misrouted study: 5 CT objects of PID-MIX sent to PACS_MAIN 10 minutes ago (still waiting).
        for i in range(COUNTS["misrouted"]):
            store.add_instance(f"mix{i}", facts(900, "MR", accession="ACC-MIX", patient="PID-MIX"), pacs,
                               NOW - 600 + i)  # fmt: skip
        # Objects that matched no route: kept, no jobs.
        for i in range(COUNTS["unrouted"]):
            store.add_instance(f"un{i}", facts(950, "US", calling="US9"), [], NOW - 1800 + i * 60)
    finally:
        store.close()
    return QueueState(root, config_path, db)


class QueueApp(ConsoleApp):
    """The console with only the queue screen mounted: these tests do not depend on the other screens."""

    @on(events.Mount)
    def _queue_only(self, event: events.Mount) -> None:
        from appliance.tui.screens.queue import QueueScreen

        event.prevent_default()  # not ConsoleApp.on_mount: no dashboard, no refresh tick
        self.theme = self._theme_name
        self.add_mode("queue", QueueScreen)
        self.sub_title = f"operator {self.backend.operator} · {self.backend.config_path}"
        self.switch_mode("queue")


def make_app(state: QueueState, operator: str = "night-nurse") -> QueueApp:
    return QueueApp(Backend(state.config_path, operator, clock=lambda: NOW), refresh_seconds=3600,
                    theme="textual-dark")  # fmt: skip


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local times on screen in UTC, whatever the machine's zone (snapshots compare text)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def queue_state(tmp_path: Path, utc: None) -> QueueState:
    return build_queue(tmp_path / "site")
