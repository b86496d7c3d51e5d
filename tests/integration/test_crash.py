"""kill -9 of the whole router at random moments while a 300-image study arrives and is forwarded.

The promise: every object the sender got Success for reaches every destination. Duplicates are
allowed only where a kill fell between a send and its acknowledgement; they are counted and reported.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import Router, StoreSCP, dest_node, wait_until
from tests.support.sender import RetryingSender

KILLS = 12


@pytest.mark.slow
def test_kill9_during_send_and_forward_loses_nothing(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "in", 300, rows=128, cols=128, seed=9)
    uids = {sop_instance_uid(p) for p in files}
    # -uf: unique file names, so a duplicate delivery shows up as a second file instead of overwriting.
    pacs = StoreSCP(tmp_path, "PACS", extra=["-uf"]).start()
    archive = StoreSCP(tmp_path, "ARCHIVE", extra=["-uf"]).start()
    router = Router(
        tmp_path,
        destinations={
            "PACS_MAIN": dest_node(
                "PACS", pacs.port, max_associations=2, retry={"base_seconds": 0.2, "cap_seconds": 2}
            ),
            "ARCHIVE": dest_node("ARCHIVE", archive.port, retry={"base_seconds": 0.2, "cap_seconds": 2}),
        },
        router_extra={"drain_seconds": 2},
    ).start()
    rng = random.Random(20261127)
    sender = RetryingSender(router.port, files, give_up_after=600).start()
    kills = 0
    try:
        while kills < KILLS:
            # Random moments: early in the send, mid-send, and (once the sender is done) mid-forward.
            time.sleep(rng.uniform(0.1, 1.5))
            router.kill9()
            kills += 1
            router.start()
        assert sender.wait(600), "sender did not finish"
        log = sender.log
        assert log.acked == uids, f"{len(uids - log.acked)} objects never acknowledged"

        def drained() -> bool:
            st = router.status()
            return all(d["backlog"] == 0 for d in st["destinations"])

        wait_until(drained, 300, "both destinations to drain", interval=0.5)
        st = router.status()
        for d in st["destinations"]:
            assert d["counts"]["failed"] == 0, d
        report = {
            "kills": kills,
            "objects": len(files),
            "send_attempts": log.attempts,
            "acked": len(log.acked),
            "no_response": log.no_response,
            "association_failures": log.association_failures,
            "router_instances": st["instances"]["instances"],
        }
        for scp in (pacs, archive):
            got = [sop_instance_uid(p) for p in scp.files()]
            missing = log.acked - set(got)
            assert not missing, f"{scp.ae_title}: {len(missing)} acknowledged objects never delivered"
            report[f"{scp.ae_title}_delivered_files"] = len(got)
            report[f"{scp.ae_title}_duplicates"] = len(got) - len(set(got))
        # Instances received more than once = the sender re-sent after a kill hid its Success.
        report["received_twice"] = st["instances"]["instances"] - len(uids)
        # The spool empties. A re-send that arrived after its original was delivered is skipped at receipt and
        # its file goes at the next spool-retention run (every 30 s), not with a delivery: wait for that run.
        wait_until(lambda: router.status()["instances"]["spooled"] == 0, 90, "the spool to empty", interval=1)
        assert not list((tmp_path / "state" / "spool" / "tmp").iterdir())
        print("\nkill -9 durability:", json.dumps(report))
        (tmp_path / "crash-report.json").write_text(json.dumps(report, indent=2))
    finally:
        sender.stop.set()
        router.stop()
        pacs.stop()
        archive.stop()
