"""Operator actions from the command line while the daemon runs: ls, show, hold, release, cancel, retry,
status --json, echo; a permanent refusal goes to `failed` at once with its reason."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.data import PYDICOM_TEST_FILES, make_ct_series
from tests.support.peers import Router, StoreSCP, dest_node, storescu, wait_until


def test_operator_actions_on_a_stuck_destination(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS")  # down for now
    study_a = make_ct_series(tmp_path / "a", 3, rows=16, cols=16, accession="ACC_A", patient_id="PA")
    study_b = make_ct_series(tmp_path / "b", 2, rows=16, cols=16, accession="ACC_B", patient_id="PB")
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port, retry={"base_seconds": 0.2, "cap_seconds": 0.5})},
    ).start()
    try:
        assert storescu(router.port, study_a + study_b).returncode == 0
        assert len(router.jobs()) == 5

        out = router.cli(
            "queue", "hold", "--accession", "ACC_B", "--reason", "wrong patient?", "--operator", "alice"
        ).stdout
        assert "hold: 2 job(s) changed" in out
        assert len(router.jobs("--state", "held")) == 2

        res = router.cli("queue", "cancel", check=False)
        assert res.returncode == 2 and "name the jobs to cancel" in res.stderr

        job = router.jobs("--accession", "ACC_B")[0]
        shown = json.loads(router.cli("queue", "show", str(job["id"]), "--json").stdout)
        hold_events = [e for e in shown["events"] if e["event"] == "operator_hold"]
        assert hold_events and hold_events[0]["actor"] == "alice" and hold_events[0]["detail"] == "wrong patient?"
        assert "history:" in router.cli("queue", "show", str(job["id"])).stdout

        scp.start()
        router.wait_delivered(3, timeout=60)  # study A flows; B stays held
        assert len(router.jobs("--state", "held")) == 2
        assert router.cli("queue", "release", "--accession", "ACC_B").stdout.startswith("release: 2")
        router.wait_delivered(5, timeout=60)

        audit = [e for e in router.audit() if e["event"].startswith("queue_")]
        assert [e["event"] for e in audit] == ["queue_hold", "queue_release"]
        assert audit[0]["operator"] == "alice" and audit[0]["changed"] == 2
        assert {j["accession"] for j in audit[0]["jobs"]} == {"ACC_B"}
        assert all(
            j["study_uid"] and j["sop_instance_uid"] and j["destination"] == "PACS_MAIN" for j in audit[0]["jobs"]
        )
        # Listing filters and the status report agree.
        assert len(router.jobs("--patient-id", "PA", "--state", "done")) == 3
        st = json.loads(router.cli("status", "--json").stdout)
        assert st["destinations"][0]["counts"]["done"] == 5
        assert "PACS_MAIN" in router.cli("status").stdout
        assert router.cli("echo", "PACS_MAIN").stdout.startswith("OK: ")
    finally:
        router.stop()
        scp.stop()


def test_permanent_refusal_fails_at_once_then_cancel_frees_spool(tmp_path: Path) -> None:
    # A storescp that accepts only uncompressed transfer syntaxes cannot take a JPEG object when the route
    # forbids decompressing it: that is not going to change by retrying, so the job fails immediately with
    # a reason an operator can act on. (With the default `transcode: decompress` it would be delivered
    # decompressed: tests/integration/test_outgoing_peer.py.)
    scp = StoreSCP(tmp_path, "PACS", accept_all=False).start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port)},
        routes=[{"name": "as-is", "to": ["PACS_MAIN"], "transcode": "never"}],
    ).start()
    try:
        jpeg = PYDICOM_TEST_FILES / "JPEG-lossy.dcm"
        res = router.cli("send", str(jpeg), "--to", f"DICOM_ROUTER@127.0.0.1:{router.port}", "--calling-ae", "PYSCU")
        assert "1/1 stored" in res.stdout
        wait_until(lambda: router.jobs("--state", "failed"), 30, "the job to fail", interval=0.2)
        job = router.jobs("--state", "failed")[0]
        assert job["attempts"] == 1
        assert "does not accept SOP class" in job["last_error"] and "1.2.840.10008.1.2.4.51" in job["last_error"]
        st = router.status()
        assert any("1 failed job(s)" in p for p in st["problems"])

        # retry puts it back (and it fails again the same way); cancel ends it and frees the spool file.
        assert "retry: 1 job(s) changed" in router.cli("queue", "retry", str(job["id"])).stdout
        wait_until(lambda: router.jobs("--state", "failed"), 30, "the retried job to fail again", interval=0.2)
        assert (
            "cancel: 1 job(s) changed"
            in router.cli("queue", "cancel", "--destination", "PACS_MAIN", "--state", "failed").stdout
        )
        assert not list((tmp_path / "state" / "spool" / "objects").rglob("*.dcm"))
    finally:
        router.stop()
        scp.stop()


def test_pause_resume_and_reroute_while_running(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path, "PACS").start()
    backup_pacs = StoreSCP(tmp_path, "PACS2").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", pacs.port), "PACS_DR": dest_node("PACS2", backup_pacs.port)},
        routes=[{"name": "all", "to": ["PACS_MAIN"]}],
    ).start()
    try:
        out = router.cli("queue", "pause", "PACS_MAIN", "--reason", "PACS maintenance", "--operator", "carol").stdout
        assert "PACS_MAIN paused" in out
        first = make_ct_series(tmp_path / "a", 3, rows=16, cols=16, accession="ACC_P")
        assert storescu(router.port, first).returncode == 0
        st = router.status()
        main = next(d for d in st["destinations"] if d["name"] == "PACS_MAIN")
        assert main["paused"] and main["paused_by"] == "carol" and main["backlog"] == 3
        assert any("PACS_MAIN PAUSED by carol: PACS maintenance" in p for p in st["problems"])
        assert pacs.files() == []  # nothing sent while paused

        # Re-route one of them to the disaster-recovery PACS; the rest go when PACS_MAIN resumes.
        job = router.jobs("--destination", "PACS_MAIN")[0]
        out = router.cli("queue", "reroute", str(job["id"]), "--to", "PACS_DR", "--reason", "urgent").stdout
        assert "reroute: 1 job(s) changed; 1 new job(s) for PACS_DR" in out
        wait_until(lambda: len(backup_pacs.files()) == 1, 30, "the re-routed object at PACS_DR")
        res = router.cli("queue", "reroute", "--to", "NOPE", "--all", check=False)
        assert res.returncode == 2 and "NOPE is not a destination" in res.stderr

        router.cli("queue", "resume", "PACS_MAIN", "--reason", "maintenance over")
        wait_until(lambda: len(pacs.files()) == 2, 30, "the other two at PACS_MAIN after resume")
        events = [e["event"] for e in router.audit()]
        assert events.count("destination_pause") == 1 and events.count("destination_resume") == 1
        assert "queue_reroute" in events
        shown = json.loads(router.cli("queue", "show", str(job["id"]), "--json").stdout)
        assert shown["job"]["state"] == "cancelled" and shown["events"][-1]["event"] == "rerouted"
    finally:
        router.stop()
        pacs.stop()
        backup_pacs.stop()
