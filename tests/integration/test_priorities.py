"""Priorities with real peers: a stat study overtakes a 300-image bulk backlog to the same destination."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import Router, StoreSCP, dest_node, storescu, wait_until


def _done_times(router: Router) -> dict[str, float]:
    """SOP Instance UID → when its job was acknowledged by the destination (from the queue database)."""
    db = sqlite3.connect(router.workdir / "state" / "queue.sqlite3")
    try:
        rows = db.execute(
            "SELECT i.sop_instance_uid, j.done_at FROM jobs j JOIN instances i ON i.id = j.instance_id "
            "WHERE j.state = 'done'"
        ).fetchall()
    finally:
        db.close()
    return {uid: float(at) for uid, at in rows}


def test_stat_study_overtakes_bulk_backlog(tmp_path: Path) -> None:
    bulk = make_ct_series(tmp_path / "bulk", 300, rows=64, cols=64, accession="BULK", seed=3)
    stat = make_ct_series(tmp_path / "stat", 6, rows=64, cols=64, accession="STAT1", seed=4)
    scp = StoreSCP(tmp_path, "PACS").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port, max_associations=1)},
        sources={"PRIOR_SCANNER": "BULKSRC", "ED_CT": "EDCT"},
        routes=[
            {"name": "prior-migration", "match": {"calling_ae": "BULKSRC"}, "to": ["PACS_MAIN"], "priority": "bulk"},
            {"name": "emergency-ct", "match": {"calling_ae": "EDCT"}, "to": ["PACS_MAIN"], "priority": "stat"},
        ],
    ).start()
    try:
        # The backlog: 300 bulk objects queued while sending to the PACS is paused (as during an outage);
        # then the emergency study arrives behind them.
        router.cli("queue", "pause", "PACS_MAIN", "--reason", "test backlog")
        assert storescu(router.port, bulk, calling="BULKSRC").returncode == 0
        assert storescu(router.port, stat, calling="EDCT").returncode == 0
        router.cli("queue", "resume", "PACS_MAIN", "--reason", "test backlog")

        stat_uids = {sop_instance_uid(p) for p in stat}
        wait_until(lambda: stat_uids <= set(_done_times(router)), 60, "the stat study to be delivered")
        done = _done_times(router)
        last_stat = max(done[u] for u in stat_uids)
        bulk_uids = {sop_instance_uid(p) for p in bulk}
        bulk_before = sum(1 for u in bulk_uids if u in done and done[u] <= last_stat)
        print(f"bulk objects delivered before the last stat object: {bulk_before} of 300")
        # The stat study went first: at most the rest of the first claimed batch (8 jobs) shares its turn.
        assert bulk_before <= 8 - len(stat), f"{bulk_before} bulk objects went before the stat study finished"

        router.wait_delivered(306, timeout=180)
        assert {sop_instance_uid(p) for p in scp.files()} == stat_uids | bulk_uids
        ls = json.loads(router.cli("queue", "ls", "--json", "--accession", "STAT1").stdout)["jobs"]
        assert {j["priority"] for j in ls} == {0}  # stat
    finally:
        router.stop()
        scp.stop()
