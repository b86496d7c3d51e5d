"""Reload on SIGHUP, graceful stop on SIGTERM, and a clear refusal when the port is taken."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import REPO, Router, StoreSCP, dest_node, storescu, wait_until
from tests.support.sender import RetryingSender


def test_sighup_adds_a_destination_and_route(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path, "PACS").start()
    archive = StoreSCP(tmp_path, "ARCHIVE").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", pacs.port)},
    ).start()
    try:
        first = make_ct_series(tmp_path / "one", 2, rows=16, cols=16)
        assert storescu(router.port, first).returncode == 0
        router.wait_delivered(2)
        router.config["nodes"]["ARCHIVE"] = dest_node("ARCHIVE", archive.port)
        router.config["routes"].append({"name": "ct-archive", "match": {"Modality": "CT"}, "to": ["ARCHIVE"]})
        router.write_config()
        router.reload()
        wait_until(lambda: router.log_text().count("config reloaded") >= 3, 15, "all three processes to reload")
        second = make_ct_series(tmp_path / "two", 3, rows=16, cols=16)
        assert storescu(router.port, second).returncode == 0
        router.wait_delivered(2 + 3 + 3)
        assert {sop_instance_uid(p) for p in archive.files()} == {sop_instance_uid(p) for p in second}
    finally:
        router.stop()
        pacs.stop()
        archive.stop()


def test_sigterm_drains_and_loses_nothing(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "in", 60, rows=128, cols=128)
    scp = StoreSCP(tmp_path, "PACS").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port)},
    ).start()
    sender = RetryingSender(router.port, files, give_up_after=120).start()
    wait_until(lambda: len(sender.log.acked) >= 10, 30, "some objects to be acknowledged")
    code = router.stop()  # SIGTERM mid-send
    assert code == 0
    log = router.log_text()
    assert "stopping: draining" in log and "router stopped" in log
    router.start()  # the sender reconnects and finishes
    try:
        assert sender.wait(120)
        assert sender.log.acked == {sop_instance_uid(p) for p in files}
        wait_until(lambda: router.status()["destinations"][0]["backlog"] == 0, 60, "the backlog to drain", interval=0.2)
        assert {sop_instance_uid(p) for p in scp.files()} >= sender.log.acked
    finally:
        sender.stop.set()
        router.stop()
        scp.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        router = Router(
            tmp_path,
            destinations={"PACS_MAIN": dest_node("PACS", 1)},
        )
        router.config["router"]["port"] = blocker.getsockname()[1]
        router.write_config()
        res = subprocess.run(
            [sys.executable, "-m", "appliance.router", "serve", "--config", str(router.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 3
        assert "Address already in use" in res.stderr and "change router.port or stop the other service" in res.stderr
    finally:
        blocker.close()


def test_many_associations_do_not_leak_file_descriptors(tmp_path: Path) -> None:
    """Each inbound association runs on its own thread; its queue connection must close when it ends.
    (It did not: two descriptors per association, so a busy site's receiver would hit the fd limit.)"""
    import os

    import psutil

    one = make_ct_series(tmp_path / "in", 1, rows=16, cols=16)
    scp = StoreSCP(tmp_path, "PACS").start()
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", scp.port)}).start()
    try:
        receiver = next(c for c in psutil.Process(router.proc.pid).children() if "receiver" in c.cmdline())  # type: ignore[union-attr]
        assert storescu(router.port, one).returncode == 0  # warm-up: the first association opens what stays
        before = len(os.listdir(f"/proc/{receiver.pid}/fd"))
        for _ in range(20):
            assert storescu(router.port, one).returncode == 0
        after = wait_until(
            lambda: (n := len(os.listdir(f"/proc/{receiver.pid}/fd"))) <= before + 4 and n or None,
            20,
            "the receiver's open files to settle",
        )
        print(f"receiver open files: {before} before, {after} after 20 more associations")
        # The same object 21 times: delivered once, the re-sends skipped by the delivery ledger.
        wait_until(lambda: router.counts().get("skipped", 0) == 20, 60, "20 re-sends skipped", interval=0.2)
        assert router.counts().get("done") == 1 and len(scp.files()) == 1
    finally:
        router.stop()
        scp.stop()
