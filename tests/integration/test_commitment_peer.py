"""Storage commitment against real peers: DCMTK storescu → router → a pynetdicom commitment SCP (tests/support/
commitment_peer.py) that reports on the requesting association, on a new association (failing one object the
first time), or never; Debian's Orthanc, which reports on a new association to the router's listener; and a
forwarder killed with kill -9 while its request is pending.

One router serves the module (starting one costs seconds): what storescu sends as STORESCU goes to the four
peers at once; what it sends as HOLDSCU goes to the peer that holds its first N-ACTION (the kill -9 test, last)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.commitment_peer import NEVER, NEW, SAME, CommitmentSCP
from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import RUNNING, Orthanc, Router, dest_node, storescu, wait_until

POLL = 0.1


def _commit(**settings: Any) -> dict[str, Any]:
    return {"enabled": True, **settings}


def _rows(router: Router, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Read the router's queue straight (read-only): through the CLI every poll would start a Python process.
    The CLI's own output is checked where an operator reads it."""
    db = sqlite3.connect(f"file:{router.workdir / 'state' / 'queue.sqlite3'}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, args)]
    finally:
        db.close()


def _jobs(router: Router, destination: str) -> list[dict[str, Any]]:
    return _rows(
        router,
        "SELECT j.*, i.spool_key, i.sop_instance_uid FROM jobs j JOIN instances i ON i.id = j.instance_id "
        "WHERE j.destination = ? ORDER BY j.id",
        destination,
    )


def _states(router: Router, destination: str) -> list[str]:
    return sorted("awaiting-commitment" if j["awaiting_commit"] else j["state"] for j in _jobs(router, destination))


def _audit(router: Router, event: str, destination: str) -> list[dict[str, Any]]:
    return [e for e in router.audit() if e["event"] == event and e.get("destination") == destination]


class Site:
    def __init__(self, router: Router, peers: dict[str, CommitmentSCP], orthanc: Orthanc, files: list[Path]):
        self.router, self.peers, self.orthanc, self.files = router, peers, orthanc, files
        self.uids = sorted(sop_instance_uid(p) for p in files)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("commitment")
    files = make_ct_series(work / "series", 3, rows=32, cols=32)
    first_uid = sorted(sop_instance_uid(p) for p in files)[0]
    peers = {
        "PACS_SAME": CommitmentSCP("PSAME", report=SAME),
        "PACS_NEW": CommitmentSCP("PNEW", report=NEW, fail_once={first_uid}),
        "PACS_SILENT": CommitmentSCP("PSILENT", report=NEVER),
        "PACS_HOLD": CommitmentSCP("PHOLD", report=SAME, hold_first_action=True),
    }
    router = Router(
        work,
        destinations={
            "PACS_SAME": dest_node("PSAME", peers["PACS_SAME"].port, commitment=_commit(wait_seconds=5)),
            "PACS_NEW": dest_node("PNEW", peers["PACS_NEW"].port, commitment=_commit(wait_seconds=0.5)),
            "PACS_SILENT": dest_node(
                "PSILENT", peers["PACS_SILENT"].port, commitment=_commit(wait_seconds=0.5, deadline_minutes=0.02)
            ),
            "PACS_HOLD": dest_node("PHOLD", peers["PACS_HOLD"].port, max_associations=1, commitment=_commit()),
        },
        routes=[
            {"name": "main", "match": {"calling_ae": "STORESCU"}, "to": ["PACS_SAME", "PACS_NEW", "PACS_SILENT"]},
            {"name": "hold", "match": {"calling_ae": "HOLDSCU"}, "to": ["PACS_HOLD"]},
        ],
        sources={"STORESCU": "STORESCU", "HOLDSCU": "HOLDSCU"},
    )
    peers["PACS_NEW"].router = (router.ae_title, router.port)
    # Orthanc reports on a new association to the modality it knows under the requesting AE title.
    orthanc = Orthanc(work, "ORTHANC", modalities={"router": [router.ae_title, "127.0.0.1", router.port]})
    router.config["nodes"]["ORTHANC"] = dest_node("ORTHANC", orthanc.port, commitment=_commit(wait_seconds=0.5))
    router.config["routes"][0]["to"].append("ORTHANC")
    router.write_config()
    for peer in peers.values():
        peer.start()
    router.start(wait=False)  # Orthanc and the router start side by side
    orthanc.start()
    wait_until(router._ready, 60, "router to listen and both processes to report")
    # Shared by the module's tests: not stopped by the per-test cleanup of peers left running.
    for item in (router, orthanc, *peers.values()):
        RUNNING.remove(item)
    try:
        res = storescu(router.port, files)
        assert res.returncode == 0, res.stderr[-2000:]
        yield Site(router, peers, orthanc, files)
    finally:
        router.stop()
        orthanc.stop()
        for peer in peers.values():
            peer.stop()


def test_a_report_on_the_requesting_association_commits_the_jobs(site: Site) -> None:
    router, peer = site.router, site.peers["PACS_SAME"]
    wait_until(lambda: _states(router, "PACS_SAME") == ["committed"] * 3, 60, "3 committed jobs", POLL)
    assert sorted(uid for a in peer.actions for uid in a.uids) == site.uids  # each object asked about once
    # The router answered each report Success (its answer may trail the commit it records first).
    wait_until(lambda: all(a.report_status == 0 for a in peer.actions), 10, "Success answers to the reports")
    assert sorted(peer.stored) == site.uids and set(peer.stored.values()) == {1}
    (result, *more) = _audit(router, "commitment_result", "PACS_SAME")
    assert result["reporter"] == "on the requesting association" and result["outcome"] == "success"
    assert result["committed"] + sum(m["committed"] for m in more) == 3
    # Audited once the N-ACTION response is in, which this peer sends after its report.
    requested = wait_until(
        lambda: (r := _audit(router, "commitment_requested", "PACS_SAME")) and sum(e["count"] for e in r) == 3 and r,
        10,
        "the requests audited",
    )
    assert {r["transaction_uid"] for r in requested} == {a.transaction_uid for a in peer.actions}
    events = [e["event"] for e in _rows(router, "SELECT event FROM job_events WHERE job_id = ? ORDER BY id",
                                         _jobs(router, "PACS_SAME")[0]["id"])]  # fmt: skip
    assert events.index("delivered") < events.index("commitment_requested") < events.index("committed"), events


def test_a_report_on_a_new_association_fails_an_object_until_it_is_sent_again(site: Site) -> None:
    router, peer = site.router, site.peers["PACS_NEW"]
    wait_until(lambda: _states(router, "PACS_NEW") == ["committed", "committed", "failed"], 60, "2+1 jobs", POLL)
    (failed,) = [j for j in _jobs(router, "PACS_NEW") if j["state"] == "failed"]
    assert failed["sop_instance_uid"] == site.uids[0]
    assert "storage commitment FAILED at PACS_NEW: no such object instance" in failed["last_error"]
    results = _audit(router, "commitment_result", "PACS_NEW")
    assert results[0]["reporter"].startswith("new association from PNEW@127.0.0.1")
    assert [o["sop_instance_uid"] for r in results for o in r.get("failed_objects", [])] == [site.uids[0]]
    assert "did NOT commit 1 object(s)" in router.log_text()
    assert site.router.spool_path(failed["spool_key"]).exists()  # kept for the re-send

    router.cli("queue", "retry", str(failed["id"]), "--reason", "PACS re-indexed")
    wait_until(lambda: _states(router, "PACS_NEW") == ["committed"] * 3, 60, "all 3 committed", POLL)
    assert peer.stored[site.uids[0]] == 2  # sent again, and committed this time
    wait_until(lambda: all(a.report_status == 0 for a in peer.actions), 10, "Success answers to the reports")


def test_a_report_that_never_comes_is_a_warning_and_the_files_stay(site: Site) -> None:
    router = site.router
    asked = "SELECT MIN(requested_at) AS t FROM commitments WHERE destination = 'PACS_SILENT' AND state = 'pending'"
    wait_until(lambda: _rows(router, asked)[0]["t"], 60, "the request to PACS_SILENT", POLL)
    # Its deadline (0.02 min = 1.2 s after the request) passes: a condition on the clock, not a sleep.
    wait_until(lambda: time.time() - _rows(router, asked)[0]["t"] > 1.5, 10, "the deadline to pass", POLL)
    status = router.status()
    (dest,) = [d for d in status["destinations"] if d["name"] == "PACS_SILENT"]
    assert dest["commitment"]["awaiting"] == 3 and dest["commitment"]["requested"] == 3
    (problem,) = [p for p in status["problems"] if p.startswith("PACS_SILENT: 3 object(s)")]
    assert "have no storage commitment report (deadline 0.02 min)" in problem
    assert "queue retry --destination PACS_SILENT --state awaiting-commitment" in problem
    for job in _jobs(router, "PACS_SILENT"):
        assert job["state"] == "done" and job["awaiting_commit"]
        assert router.spool_path(job["spool_key"]).exists()  # never deleted while a commitment is pending
    text = router.cli("status").stdout
    assert "storage commitment: 0 committed, 3 awaiting a report" in text, text
    listing = router.cli("queue", "ls", "--destination", "PACS_SILENT").stdout
    assert "awaiting storage commitment report (transaction" in listing, listing


def test_orthanc_commits_on_a_new_association(site: Site) -> None:
    router = site.router
    wait_until(lambda: _states(router, "ORTHANC") == ["committed"] * 3, 60, "Orthanc's commitment", POLL)
    results = _audit(router, "commitment_result", "ORTHANC")
    assert all(r["reporter"].startswith("new association from ORTHANC@127.0.0.1") for r in results), results
    assert sum(r["committed"] for r in results) == 3 and site.orthanc.instance_count() == 3


def test_a_pending_commitment_survives_kill_9_of_the_forwarder(site: Site, tmp_path: Path) -> None:
    router, peer = site.router, site.peers["PACS_HOLD"]
    files = make_ct_series(tmp_path / "series", 2, rows=32, cols=32)
    uids = sorted(sop_instance_uid(p) for p in files)
    assert storescu(router.port, files, calling="HOLDSCU").returncode == 0
    # The forwarder sent both, asked for commitment, and waits for the N-ACTION response the peer holds.
    wait_until(lambda: len(peer.actions) == 1, 60, "the commitment request")
    keys = [j["spool_key"] for j in _jobs(router, "PACS_HOLD")]
    (old,) = [r["pid"] for r in _rows(router, "SELECT pid FROM processes WHERE name = 'forwarder'")]
    os.kill(old, signal.SIGKILL)
    # The restarted forwarder asks again under a new Transaction UID; the peer commits on that association.
    wait_until(lambda: _states(router, "PACS_HOLD") == ["committed"] * 2, 90, "both committed", POLL)
    peer.release()
    # What the held request listed was asked about again, under another Transaction UID (the second object may
    # have been in the held request or not, depending on when storescu's second object arrived).
    held, *later = peer.actions
    assert set(held.uids) <= {u for a in later for u in a.uids} and {u for a in later for u in a.uids} == set(uids)
    assert held.transaction_uid not in {a.transaction_uid for a in later}
    assert sorted(peer.stored) == uids and set(peer.stored.values()) == {1}  # nothing sent twice
    assert not any(router.spool_path(k).exists() for k in keys)  # freed once committed
    assert "storage commitment request(s) were interrupted by a stop: asking again" in router.log_text()
    # The other destinations' pending state survived the kill too.
    assert _states(router, "PACS_SILENT") == ["awaiting-commitment"] * 3
