"""A full spool disk: the sender gets 0xA700 (out of resources), no partial file remains, and the router
recovers by itself once forwarding frees space."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import Router, StoreSCP, dest_node

TMPFS_SIZE = "8m"


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run as root: this test mounts a small tmpfs for the spool")
        pytest.skip("needs root to mount a small tmpfs for the spool (CI runs it as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("reserve_mb", [2, 0], ids=["reserve", "no-reserve"])
def test_full_spool_disk_refuses_with_a700_and_recovers(tmp_path: Path, small_disk: Path, reserve_mb: int) -> None:
    """With the default kind of reserve (router.min_free_mb) the router refuses before the disk is full, so
    the queue database keeps room to drain. With no reserve the disk really fills: the write fails with
    ENOSPC mid-object and the sender still gets 0xA700 and nothing partial remains."""
    files = make_ct_series(tmp_path / "in", 24, seed=24)  # 24 × 512 KB = 12 MB > 8 MB disk
    scp = StoreSCP(tmp_path, "PACS")  # destination down: nothing drains the spool yet
    router = Router(
        tmp_path,
        destinations={
            "PACS_MAIN": dest_node(
                "PACS",
                scp.port,
                retry={"base_seconds": 0.2, "cap_seconds": 1},
                circuit={"open_after_failures": 2, "probe_seconds": 0.5},
            )
        },
        router_extra={"state_dir": str(small_disk / "state"), "min_free_mb": reserve_mb},
    ).start()
    to = f"DICOM_ROUTER@127.0.0.1:{router.port}"
    try:
        res = router.cli("send", *map(str, files), "--to", to, "--calling-ae", "PYSCU", "--json", check=False)
        report = json.loads(res.stdout)
        assert res.returncode == 1
        refused = [f for f in report["failures"] if "0xA700" in f]
        assert refused, report
        assert report["stored"] > 0 and report["stored"] + len(refused) == len(files)
        assert all("out of resources" in f for f in refused)
        log = router.log_text()
        if reserve_mb:
            assert "the spool disk is nearly full" in log and "below the 2 MB reserve" in log
            assert any("below the 2 MB reserve" in p for p in router.status()["problems"])
        else:
            assert "the spool disk is full" in log or "queue database" in log

        spool = small_disk / "state" / "spool"
        assert not list((spool / "tmp").iterdir()), "a refused object left a partial file"
        on_disk = list((spool / "objects").rglob("*.dcm"))
        assert len(on_disk) == report["stored"], "every accepted object is spooled, and nothing else"
        assert router.status()["instances"]["instances"] == report["stored"]

        if not reserve_mb:
            return  # with no reserve the queue database may itself be out of space: recovery needs an operator
        # Space returns when the destination comes back and the spool drains: the sender's retries get in, with
        # no operator. (The refused objects are more than the room under the reserve: they go in as fast as the
        # spool drains, so on a busy machine a retry can have a few refused again, for the next retry — as a
        # modality retries.)
        scp.start()
        done = report["stored"]
        for _ in range(5):
            router.wait_delivered(done, timeout=60)
            at_pacs = {sop_instance_uid(p) for p in scp.files()}
            retry = [f for f in files if sop_instance_uid(f) not in at_pacs]
            if not retry:
                break
            res = router.cli("send", *map(str, retry), "--to", to, "--calling-ae", "PYSCU", "--json", check=False)
            again = json.loads(res.stdout)
            assert again["stored"] > 0 and all("0xA700" in f for f in again["failures"]), res.stdout
            done += again["stored"]
        assert {sop_instance_uid(p) for p in scp.files()} == {sop_instance_uid(p) for p in files}
    finally:
        router.stop()
        scp.stop()
