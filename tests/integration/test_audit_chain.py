"""The audit trail of a running router: receiver, forwarder and CLI append to one hash chain,
across a logrotate-style rename and compression; a hand edit of audit.jsonl is noticed by the receiver at
its next object (ERROR in the log, audit_chain_broken, a problem in status), `audit verify` names the
edited line, and `audit acknowledge` clears status."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
from pathlib import Path

from appliance.router.audit import chain_problems
from appliance.router.audit_verify import verify
from tests.support.data import make_ct_series
from tests.support.peers import Router, StoreSCP, dest_node, storescu, wait_until


def _forwarded(audit: Path, n: int) -> None:
    """Wait until audit.jsonl (the current file) has n `forward` entries: cheaper than polling the CLI."""

    def count() -> int:
        return audit.read_text().count('"event":"forward"') if audit.exists() else 0

    wait_until(lambda: count() >= n, 60, f"{n} forward entries in {audit.name}")


def test_running_router_keeps_one_chain_and_notices_a_hand_edit(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", scp.port)}).start()
    log_dir = tmp_path / "log"
    audit = log_dir / "audit.jsonl"
    try:
        series = make_ct_series(tmp_path / "ct", 4, rows=16, cols=16, accession="ACC_AUD")
        assert storescu(router.port, series[:2]).returncode == 0
        _forwarded(audit, 2)
        router.cli("queue", "hold", "999999", "--reason", "audit test", "--operator", "alice")

        # logrotate: rename, then (next day) compress; the writers carry on in a fresh file.
        os.rename(audit, log_dir / "audit.jsonl-20261127")
        assert storescu(router.port, series[2:3]).returncode == 0
        _forwarded(audit, 1)
        rotated = log_dir / "audit.jsonl-20261127"
        with open(rotated, "rb") as src, gzip.open(str(rotated) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        rotated.unlink()

        report = verify(audit)
        assert report.ok, report.as_dict()
        assert [f.name for f in report.files] == ["audit.jsonl-20261127.gz", "audit.jsonl"]
        with gzip.open(str(rotated) + ".gz", "rt") as f:
            before = [json.loads(x) for x in f]
        after = router.audit()
        entries = before + after
        assert after[0]["prev"] == before[-1]["hash"]  # the chain continues across the rename
        assert {e["process"] for e in entries} >= {"receiver", "forwarder", "cli"}
        assert sum(e["event"] == "receive" for e in entries) == 3 and sum(e["event"] == "forward" for e in entries) == 3
        hold = next(e for e in entries if e["event"] == "queue_hold")
        assert hold["operator"] == "alice" and hold["reason"] == "audit test" and hold["process"] == "cli"

        # Someone edits the last entry by hand (same length: only the mtime changes). The test holds the
        # writers' lock meanwhile, so no entry lands between its read and its write.
        with open(log_dir / "audit.lock", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lines = audit.read_text().splitlines()
            assert '"outcome":"success"' in lines[-1]
            lines[-1] = lines[-1].replace('"outcome":"success"', '"outcome":"failure"', 1)
            audit.write_text("\n".join(lines) + "\n")
        edited_line = len(lines)

        assert storescu(router.port, series[3:]).returncode == 0
        _forwarded(audit, 2)
        wait_until(lambda: "AUDIT TRAIL TAMPERED" in router.log_text(), 30, "the ERROR about the audit trail")
        broken = [e for e in router.audit() if e["event"] == "audit_chain_broken"]
        assert len(broken) == 1 and broken[0]["process"] != "cli" and broken[0]["kind"] == "edited"
        problems = router.status()["problems"]
        assert any(p.startswith("audit trail broken") and "audit acknowledge" in p for p in problems), problems

        res = router.cli("audit", "verify", "--json", check=False)
        report = json.loads(res.stdout)
        assert res.returncode == 1 and report["first_break"]["file"] == "audit.jsonl"
        assert report["first_break"]["line"] == edited_line and report["first_break"]["kind"] == "edited"

        router.cli("audit", "acknowledge", "--reason", "test edit", "--ticket", "INC-1", "--operator", "bob")
        assert chain_problems(audit) == []
        assert router.audit()[-1]["event"] == "audit_chain_acknowledged"
    finally:
        router.stop()
        scp.stop()
