"""commitment.py / commitment_deadline.py: the N-ACTION and report datasets, applying a report, the deadline
job, who may call in to report, and the forwarder-side Requester against an in-process pynetdicom SCP that
reports on the requesting association *after* its N-ACTION response (the integration tests' peer can only
report before it)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from appliance.router import commitment, commitment_deadline
from appliance.router.audit import AuditLog
from appliance.router.config import RouterConfig
from appliance.router.scu import Peer, _requests_only, make_ae
from appliance.router.spool import Spool
from appliance.router.store import CommitItem, InstanceFacts, NewJob, Store
from tests.support.peers import free_port, wait_until

T0 = 1_800_000_000.0
CT = "1.2.840.10008.5.1.4.1.1.2"


def _cfg(tmp_path: Path, port: int = 104, **commit: Any) -> RouterConfig:
    return RouterConfig.model_validate(
        {
            "router": {"state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "log")},
            "nodes": {
                "PACS": {
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": port,
                    "role": "destination",
                    "commitment": {"enabled": True, **commit},
                },
                "CT": {"ae_title": "CT1", "host": "127.0.0.1", "port": 104, "role": "source"},
            },
        }
    )


def _sent(store: Store, n: int, now: float = T0) -> list[int]:
    for i in range(n):
        facts = InstanceFacts(f"1.2.3.{i}", CT, "1.2.840.10008.1.2.1", 10)
        store.add_instance(f"key{i}", facts, [NewJob("PACS", "r", 1)], now)
    jobs = store.claim("PACS", "w", n, 60, now)
    for job in jobs:
        store.ack(job.id, 0, "ok", now, keep_spool=False, commit=True)
    return [j.id for j in jobs]


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Store, Spool, AuditLog, Path]]:
    store = Store(tmp_path / "queue.sqlite3")
    store.init()
    spool = Spool(tmp_path / "spool")
    spool.init()
    audit_path = tmp_path / "audit.jsonl"
    yield store, spool, AuditLog(audit_path, "test"), audit_path
    store.close()


def test_request_and_report_datasets() -> None:
    ds = commitment.build_request("2.25.1", [CommitItem(1, CT, "1.2.3"), CommitItem(2, CT, "1.2.4")])
    assert ds.TransactionUID == "2.25.1" and [r.ReferencedSOPInstanceUID for r in ds.ReferencedSOPSequence] == [
        "1.2.3",
        "1.2.4",
    ]
    report = Dataset()
    report.TransactionUID = "2.25.1"
    ok, bad = Dataset(), Dataset()
    ok.ReferencedSOPClassUID, ok.ReferencedSOPInstanceUID = CT, "1.2.3"
    bad.ReferencedSOPClassUID, bad.ReferencedSOPInstanceUID, bad.FailureReason = CT, "1.2.4", 0x0112
    report.ReferencedSOPSequence, report.FailedSOPSequence = [ok], [bad]
    parsed = commitment.parse_report(report)
    assert parsed.transaction_uid == "2.25.1" and parsed.committed == ["1.2.3"]
    assert parsed.failed == [("1.2.4", 0x0112, "no such object instance (the destination does not have it) (0x0112)")]
    assert commitment.describe_failure(0x9999) == "unknown failure reason (0x9999)"
    assert commitment.describe_failure(None) == "no failure reason given"


def test_apply_report_records_audits_and_frees_files(tmp_path: Path, parts: Any) -> None:
    store, spool, audit, audit_path = parts
    (job_id,) = _sent(store, 1)
    store.begin_commitment("PACS", "2.25.7", "w", T0, 10)
    spool.path("key0").parent.mkdir(parents=True, exist_ok=True)
    spool.path("key0").write_bytes(b"x")
    ctx = commitment.ReportContext(store, spool, audit, keep_spool=False, node_ae=lambda name: "PACS")
    report = commitment.Report("2.25.7", committed=["1.2.3.0"])
    assert commitment.apply_report(ctx, report, "new association from PACS2@10.0.0.9", "PACS2") == 0
    assert not spool.path("key0").exists()
    (entry,) = [e for e in _audit(audit_path) if e["event"] == "commitment_result"]
    assert (entry["destination"], entry["committed"], entry["failed"], entry["outcome"]) == ("PACS", 1, 0, "success")

    # A Transaction UID the router never issued: answered Success (no retry storm), audited as a failure.
    assert commitment.apply_report(ctx, commitment.Report("2.25.999", ["1.2"]), "r") == commitment.STATUS_SUCCESS
    assert _audit(audit_path)[-1]["reason"] == "unknown transaction"
    assert commitment.apply_report(ctx, commitment.Report(None), "r") == commitment.STATUS_MISSING_ATTRIBUTE


def test_the_deadline_warns_once_per_request_and_a_late_report_clears_it(tmp_path: Path, parts: Any) -> None:
    store, spool, audit, audit_path = parts
    cfg = _cfg(tmp_path, deadline_minutes=60)
    _sent(store, 12)
    store.begin_commitment("PACS", "2.25.8", "w", T0, 100)
    out = commitment_deadline.check_deadlines(cfg, store, audit, T0 + 59 * 60)
    assert out.alerts == [] and "12 object(s) await" in out.result
    out = commitment_deadline.check_deadlines(cfg, store, audit, T0 + 75 * 60)
    (alert,) = out.alerts
    assert alert.level == "warning" and alert.source == "commitment-deadline"
    assert alert.message.startswith(
        "PACS: 12 object(s) sent up to 75 min ago have no storage commitment report (deadline 60 min) — the "
        "destination may not have stored them"
    )
    commitment_deadline.check_deadlines(cfg, store, audit, T0 + 76 * 60)  # still overdue: not audited again
    (overdue,) = [e for e in _audit(audit_path) if e["event"] == "commitment_overdue"]
    assert (overdue["transaction_uid"], overdue["count"], overdue["deadline_minutes"]) == ("2.25.8", 12, 60.0)
    assert commitment_deadline.overdue_problems(cfg, store, T0 + 76 * 60) == [
        a.message for a in commitment_deadline.check_deadlines(cfg, store, audit, T0 + 76 * 60).alerts
    ]
    store.record_commitment_report("2.25.8", [f"1.2.3.{i}" for i in range(12)], [], "r", T0 + 80 * 60, False)
    assert commitment_deadline.check_deadlines(cfg, store, audit, T0 + 81 * 60).alerts == []


def test_only_a_committing_destination_may_call_in(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert commitment.may_report(cfg, "PACS")
    assert not commitment.may_report(cfg, "CT1") and not commitment.may_report(cfg, "OTHER")


class _LateReporter:
    """A commitment SCP that answers the N-ACTION first; the test then reports on that association."""

    def __init__(self) -> None:
        self.port = free_port()
        self.action: tuple[Any, Dataset] | None = None
        ae = AE(ae_title="PACS")
        ae.add_supported_context(commitment.PUSH_MODEL_SOP_CLASS)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_ACTION, self._on_action)]
        )

    def _on_action(self, event: evt.Event) -> tuple[int, None]:
        self.action = (event.assoc, event.action_information)
        return 0x0000, None

    def report(self) -> int:
        assert self.action is not None
        assoc, info = self.action
        _requests_only(assoc)  # its reactor must not take our answer (the race scu.py describes)
        ds = Dataset()
        ds.TransactionUID = info.TransactionUID
        ds.ReferencedSOPSequence = info.ReferencedSOPSequence
        status, _ = assoc.send_n_event_report(
            ds, commitment.EVENT_ALL_COMMITTED, commitment.PUSH_MODEL_SOP_CLASS, commitment.PUSH_MODEL_SOP_INSTANCE
        )
        return int(status.Status)


def test_the_requester_takes_a_report_after_the_n_action_response(tmp_path: Path, parts: Any) -> None:
    store, spool, audit, audit_path = parts
    peer = _LateReporter()
    try:
        cfg = _cfg(tmp_path, port=peer.port, wait_seconds=30)
        node = cfg.nodes["PACS"]
        requester = commitment.Requester("PACS", node, cfg, store, spool, audit, Peer.from_node("PACS", node, cfg))
        ids = _sent(store, 3)
        asking = threading.Thread(
            target=requester.request, args=(make_ae("DICOM_ROUTER", node.timeouts), None, "h:1:PACS:0", None)
        )
        asking.start()  # on an association of its own: it waits there for the report (up to wait_seconds)
        wait_until(lambda: peer.action is not None and store.commitment_due("PACS") == 0, 10, "the N-ACTION")
        wait_until(
            lambda: [e for e in _audit(audit_path) if e["event"] == "commitment_requested"], 10, "N-ACTION answered"
        )
        assert peer.report() == 0  # the router answered Success
        asking.join(10)
        assert not asking.is_alive()  # stopped waiting as soon as the report came, not after 30 s
        assert {store.get_job(i).state for i in ids} == {"committed"}  # type: ignore[union-attr]
    finally:
        peer.server.shutdown()


def test_the_deadline_job_is_scheduled_only_with_a_committing_destination(tmp_path: Path) -> None:
    from appliance.router.scheduler import job_specs

    assert "commitment-deadline" in [s.name for s in job_specs(_cfg(tmp_path))]
    plain = RouterConfig.model_validate({"router": {"state_dir": str(tmp_path / "s"), "log_dir": str(tmp_path / "l")}})
    assert "commitment-deadline" not in [s.name for s in job_specs(plain)]
