"""Bad input gets a clear, specific message and the router keeps serving everyone else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.data import PYDICOM_TEST_FILES, make_ct_series
from tests.support.peers import REPO, Router, StoreSCP, dcmtk, dest_node, storescu, wait_until

GOOD = PYDICOM_TEST_FILES / "CT_small.dcm"


def _router(tmp_path: Path, scp: StoreSCP, **kw) -> Router:  # type: ignore[no-untyped-def]
    return Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port)},
        **kw,
    )


def test_unknown_calling_and_wrong_called_ae_are_rejected_with_reasons(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp).start()
    try:
        res = storescu(router.port, [GOOD], calling="STRANGER")
        assert res.returncode != 0
        assert "Calling AE Title Not Recognized" in res.stderr
        res = storescu(router.port, [GOOD], called="NOT_THE_ROUTER")
        assert res.returncode != 0
        assert "Called AE Title Not Recognized" in res.stderr
        log = router.log_text()
        assert "calling AE title 'STRANGER'" in log and "is not a configured source" in log
        assert "called AE title 'NOT_THE_ROUTER' is not this router's ('DICOM_ROUTER')" in log
        rejected = [e for e in router.audit() if e["event"] == "association_rejected"]
        assert len(rejected) == 2
        # Still serving a known sender.
        assert storescu(router.port, [GOOD]).returncode == 0
        router.wait_delivered(1)
        assert router.status()["instances"]["instances"] == 1
    finally:
        router.stop()
        scp.stop()


def test_self_check_echo_from_loopback_is_answered_but_may_not_store(tmp_path: Path) -> None:
    """Ansible's health check and monitoring C-ECHO the router as itself from the appliance."""
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp).start()
    try:
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aet", "DICOM_ROUTER", "-aec", "DICOM_ROUTER", "127.0.0.1", str(router.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stderr
        res = storescu(router.port, [GOOD], calling="DICOM_ROUTER")
        # 0x0124 Refused: Not Authorized (PS3.7 Annex C general status); DCMTK prints it as an unknown status.
        assert "Status: 0x124" in res.stderr
        assert "refused storage from DICOM_ROUTER: not a configured source" in router.log_text()
        assert router.status()["instances"]["instances"] == 0
    finally:
        router.stop()
        scp.stop()


def test_accept_unknown_callers_setting(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp, router_extra={"accept_unknown_callers": True}).start()
    try:
        assert storescu(router.port, [GOOD], calling="STRANGER").returncode == 0
        router.wait_delivered(1)
    finally:
        router.stop()
        scp.stop()


def test_garbage_and_truncated_input(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp).start()
    try:
        # Random bytes on the DICOM port: the connection is dropped, nothing else is affected.
        for payload in (
            os.urandom(4096),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 8,
        ):
            with socket.create_connection(("127.0.0.1", router.port), timeout=5) as s:
                s.sendall(payload)
                s.settimeout(5)
                try:
                    s.recv(1024)
                except (TimeoutError, ConnectionResetError):
                    pass
        # A truncated dataset (declares more pixel bytes than it has): refused with 0xC000, not stored.
        res = router.cli(
            "send",
            str(PYDICOM_TEST_FILES / "MR_truncated.dcm"),
            "--to",
            f"DICOM_ROUTER@127.0.0.1:{router.port}",
            "--calling-ae",
            "PYSCU",
            check=False,
        )
        assert res.returncode == 1
        assert "0xC000" in res.stdout
        assert "truncated" in router.log_text()
        spool = tmp_path / "state" / "spool"
        assert not list((spool / "tmp").iterdir()), "no partial file may remain"
        assert not list((spool / "objects").rglob("*.dcm"))
        # The router keeps serving.
        assert router.cli("echo", f"DICOM_ROUTER@127.0.0.1:{router.port}", "--calling-ae", "PYSCU").returncode == 0
        assert storescu(router.port, [GOOD]).returncode == 0
        router.wait_delivered(1)
        st = router.status()
        assert st["instances"]["instances"] == 1
        assert all(p["running"] for p in st["processes"].values())
    finally:
        router.stop()
        scp.stop()


def test_a_burst_of_bare_connections_does_not_lock_senders_out(tmp_path: Path) -> None:
    """A port scan, a TCP health check or a load balancer's probe connects and closes without an A-ASSOCIATE-RQ.
    Each such connection must give back its association slot at once: 60 in a burst (more than
    router.max_associations) and a modality right after is still accepted, not refused with "local limit
    exceeded" until the probes' ACSE timeout (30 s) runs out."""
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp).start()
    try:
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", router.port), timeout=5):
                pass
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aet", "STORESCU", "-aec", "DICOM_ROUTER", "127.0.0.1", str(router.port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert echo.returncode == 0, echo.stderr
        res = storescu(router.port, [GOOD])
        assert res.returncode == 0, res.stderr
        router.wait_delivered(1)
    finally:
        router.stop()
        scp.stop()


def test_unrouted_objects_are_kept_and_visible(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp, routes=[{"name": "mr-only", "match": {"Modality": "MR"}, "to": ["PACS_MAIN"]}])
    router.start()
    try:
        ct = make_ct_series(tmp_path / "ct", 2, rows=16, cols=16)
        assert storescu(router.port, ct).returncode == 0
        st = router.status()
        assert st["instances"]["unrouted"] == 2
        assert any("matched no route" in p for p in st["problems"])
        listing = router.cli("queue", "ls", "--state", "unrouted").stdout
        assert "2 unrouted object(s)" in listing
        assert len(list((tmp_path / "state" / "spool" / "objects").rglob("*.dcm"))) == 2
        # The operator sends them on once the cause is understood.
        out = router.cli(
            "queue", "route", "--all", "--to", "PACS_MAIN", "--reason", "missing CT route", "--operator", "bob"
        ).stdout
        assert "route: 2 unrouted object(s) queued for PACS_MAIN" in out
        router.wait_delivered(2)
        assert len(scp.files()) == 2
        assert router.status()["instances"]["unrouted"] == 0
        assert any(e["event"] == "queue_route" and e["operator"] == "bob" for e in router.audit())
    finally:
        router.stop()
        scp.stop()


def test_invalid_config_at_start_and_on_reload(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    router = _router(tmp_path, scp)
    good_text = router.config_path.read_text()
    router.config_path.write_text(good_text + "surprise: 1\n")
    res = subprocess.run(
        [sys.executable, "-m", "appliance.router", "serve", "--config", str(router.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2
    assert "surprise" in res.stderr and "not known here" in res.stderr

    router.config_path.write_text(good_text)
    router.start()
    try:
        router.config_path.write_text(good_text.replace("port: " + str(scp.port), "port: 99999"))
        router.reload()
        wait_until(lambda: "SIGHUP: the new config is invalid" in router.log_text(), 10, "reload refusal logged")
        assert "port 99999 is impossible" in router.log_text()
        # status and queue still work on the broken file (they only need to find the state).
        res = router.cli("status", "--json")
        assert "has 1 problem(s)" in res.stderr and "without node and route details" in res.stderr
        assert res.returncode == 0 and "processes" in res.stdout
        router.config_path.write_text(good_text)  # (no SIGHUP) so the CLI below can read it
        # Still running and routing on the old config.
        assert storescu(router.port, [GOOD]).returncode == 0
        router.wait_delivered(1)
    finally:
        router.stop()
        scp.stop()
