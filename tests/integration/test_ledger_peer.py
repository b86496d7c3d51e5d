"""The delivery ledger and routing holds against real peers: DCMTK storescu → router → DCMTK storescp.

storescp runs with unique file names (+uf), so an object delivered twice shows up as two files."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import Router, StoreSCP, dest_node, storescu, wait_until


def _start(
    tmp_path: Path, routes: list[dict[str, object]] | None = None, **router_extra: object
) -> tuple[StoreSCP, Router]:
    scp = StoreSCP(tmp_path, "PACS", extra=["+uf"]).start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port)},
        routes=routes,
        router_extra=router_extra or None,
    ).start()
    return scp, router


def _received_uids(scp: StoreSCP) -> list[str]:
    return sorted(sop_instance_uid(p) for p in scp.files())


def _send(router: Router, files: list[Path]) -> None:
    res = storescu(router.port, files)
    assert res.returncode == 0, res.stderr[-2000:]  # Success for every object, duplicates and conflicts too


def test_the_same_series_sent_twice_is_delivered_once(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "series", 5, rows=64, cols=64)
    scp, router = _start(tmp_path)
    try:
        _send(router, series)
        router.wait_delivered(5)
        _send(router, series)
        skipped = wait_until(
            lambda: router.jobs("--state", "skipped"), 30, "the re-sent objects to be skipped", interval=0.2
        )
        assert len(skipped) == 5
        # Every object reached storescp exactly once. Skipped jobs are never claimed, so nothing more can come.
        assert _received_uids(scp) == sorted(sop_instance_uid(p) for p in series)
        assert router.counts()["done"] == 5 and router.counts()["skipped"] == 5
        assert "identical object already sent to PACS_MAIN" in router.log_text()
        receives = [e for e in router.audit() if e["event"] == "receive"]
        assert sum(1 for e in receives if e.get("skipped") == ["PACS_MAIN"]) == 5

        # The operator's "send it anyway".
        out = router.cli("queue", "retry", str(skipped[0]["id"]), "--reason", "PACS lost it")
        assert "1" in out.stdout, out.stdout
        wait_until(lambda: len(scp.files()) == 6, 60, "the retried copy at storescp")
    finally:
        router.stop()
        scp.stop()


def test_a_different_object_reusing_a_sop_instance_uid_is_held(tmp_path: Path) -> None:
    (original,) = make_ct_series(tmp_path / "series", 1, rows=64, cols=64, patient_id="PAT-A")
    ds = pydicom.dcmread(original)
    ds.PatientID = "PAT-B"  # same SOP Instance UID, another patient: the classic mix-up
    impostor = tmp_path / "impostor.dcm"
    ds.save_as(impostor, enforce_file_format=True)
    scp, router = _start(tmp_path)
    try:
        _send(router, [original])
        router.wait_delivered(1)
        _send(router, [impostor])
        (held,) = wait_until(
            lambda: router.jobs("--state", "held"), 30, "the conflicting object to be held", interval=0.2
        )
        assert held["sop_instance_uid"] == sop_instance_uid(original)
        listing = router.cli("queue", "ls", "--state", "held").stdout
        assert f"{held['id']:>7} held" in listing, listing
        history = router.cli("queue", "show", str(held["id"])).stdout
        assert "uid_conflict" in history and "check patient/study identifiers before releasing" in history
        assert len(scp.files()) == 1  # not delivered

        (audit,) = [e for e in router.audit() if e["event"] == "uid_conflict"]
        assert audit["held"] is True and audit["job_id"] == held["id"]
        assert audit["sha256"] != audit["earlier_sha256"] and audit["instance_id"] != audit["earlier_instance_id"]
        assert "PAT-A" not in str(audit) and "PAT-B" not in str(audit)  # no PHI in the audit entry
        assert "SOP Instance UID conflict" in router.log_text()

        # The operator checked and releases it: now it goes.
        router.cli("queue", "release", str(held["id"]), "--reason", "checked with the modality")
        wait_until(lambda: len(scp.files()) == 2, 60, "the released object at storescp")
        assert {pydicom.dcmread(p).PatientID for p in scp.files()} == {"PAT-A", "PAT-B"}
    finally:
        router.stop()
        scp.stop()


def test_a_hold_route_holds_until_released(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "series", 3, rows=64, cols=64)
    routes = [{"name": "review", "to": ["PACS_MAIN"], "action": "hold", "hold_reason": "research: review first"}]
    scp, router = _start(tmp_path, routes)
    try:
        _send(router, series)
        held = wait_until(
            lambda: len(router.jobs("--state", "held")) == 3 and router.jobs("--state", "held"), 30, "held"
        )
        assert "route_hold" in router.cli("queue", "show", str(held[0]["id"])).stdout
        assert scp.files() == []
        router.cli("queue", "release", *(str(j["id"]) for j in held), "--reason", "reviewed")
        router.wait_delivered(3)
        assert _received_uids(scp) == sorted(sop_instance_uid(p) for p in series)
    finally:
        router.stop()
        scp.stop()


def test_a_study_route_forwards_once_the_study_is_quiet(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "series", 3, rows=64, cols=64)
    routes = [{"name": "whole-study", "to": ["PACS_MAIN"], "forward": "study"}]
    scp, router = _start(tmp_path, routes, studies={"quiet_seconds": 3})
    try:
        _send(router, series)
        router.wait_delivered(3, timeout=60)
        assert _received_uids(scp) == sorted(sop_instance_uid(p) for p in series)
        for job in router.jobs():
            shown = json.loads(router.cli("queue", "show", str(job["id"]), "--json").stdout)
            history = [e["event"] for e in shown["events"]]
            # Each job waited for the study, was released by its completion, and only then sent.
            assert history.index("study_complete") < history.index("delivered"), history

        # A late arrival for the completed study is sent on its own, as a delta, and flagged; the study's
        # earlier objects are not sent again.
        study = pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
        late = make_ct_series(tmp_path / "late", 1, rows=64, cols=64, study_uid=study, seed=9)
        _send(router, late)
        router.wait_delivered(4, timeout=60)
        assert _received_uids(scp) == sorted(sop_instance_uid(p) for p in [*series, *late])
        (job,) = router.jobs("--sop", sop_instance_uid(late[0]))
        events = [
            e["event"] for e in json.loads(router.cli("queue", "show", str(job["id"]), "--json").stdout)["events"]
        ]
        assert "late_arrival" in events and "study_complete" not in events, events
        assert all(j["attempts"] == 1 for j in router.jobs())
        assert router.status()["studies"]["late_instances"] == 1
    finally:
        router.stop()
        scp.stop()
