"""A destination that is down for a while, then back: everything arrives, attempts and backoff recorded."""

from __future__ import annotations

from pathlib import Path

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import Router, StoreSCP, dest_node, storescu, wait_until


def test_destination_down_then_back(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "in", 20, rows=64, cols=64)
    scp = StoreSCP(tmp_path, "PACS")  # port reserved, nothing listening yet
    router = Router(
        tmp_path,
        destinations={
            "PACS_MAIN": dest_node(
                "PACS",
                scp.port,
                retry={"base_seconds": 0.2, "cap_seconds": 1.0},
                circuit={"open_after_failures": 3, "probe_seconds": 0.5},
            )
        },
    ).start()
    try:
        assert storescu(router.port, files).returncode == 0  # accepted while the destination is down

        def circuit_open() -> bool:
            d = router.status()["destinations"][0]
            return d["circuit"] == "open"

        wait_until(circuit_open, 30, "the circuit to open")
        st = router.status()
        dest = st["destinations"][0]
        assert dest["backlog"] == 20 and dest["failures_last_hour"] >= 3
        assert "connection refused" in dest["last_error"]
        assert any("PACS_MAIN unreachable" in p for p in st["problems"])

        scp.start()
        router.wait_delivered(20, timeout=60)
        assert {sop_instance_uid(p) for p in scp.files()} == {sop_instance_uid(p) for p in files}

        jobs = router.jobs()
        assert all(j["state"] == "done" for j in jobs)
        retried = [j for j in jobs if j["attempts"] > 1]
        assert retried, "some jobs must show more than one attempt"
        history = router.cli("queue", "show", str(retried[0]["id"]), "--json").stdout
        assert "attempt_failed" in history and "retry in" in history and "delivered" in history
        st = router.status()
        assert st["destinations"][0]["circuit"] == "closed"
        assert st["instances"]["spooled"] == 0  # every destination has everything: spool emptied
        assert "destination_recovered" in {e["event"] for e in router.audit()}
    finally:
        router.stop()
        scp.stop()
