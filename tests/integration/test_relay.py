"""The core promise against real peers: DCMTK storescu → router → DCMTK storescp and Orthanc."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.support.data import bundled_files_storescu_can_send, dataset_bytes, sop_instance_uid
from tests.support.peers import Orthanc, Router, StoreSCP, dest_node, storescu, wait_until


def _ts(path: Path) -> str:
    return str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)


def _by_uid(files: list[Path]) -> dict[str, Path]:
    return {sop_instance_uid(p): p for p in files}


def test_relay_to_storescp_and_orthanc_byte_identical(tmp_path: Path, ct_series_200: list[Path]) -> None:
    scp = StoreSCP(tmp_path, "PACS").start()
    orthanc = Orthanc(tmp_path, "ORTHANC").start()
    router = Router(
        tmp_path,
        destinations={
            "PACS_MAIN": dest_node("PACS", scp.port, max_associations=2),
            "ARCHIVE": dest_node("ORTHANC", orthanc.port),
        },
        router_extra={"retention": {"keep_sent_hours": 1}},
    ).start()
    try:
        bundled = bundled_files_storescu_can_send()
        sent = bundled + ct_series_200
        res = storescu(router.port, sent)
        assert res.returncode == 0, res.stderr[-2000:]
        expected = _by_uid(sent)
        router.wait_delivered(2 * len(expected), timeout=300)

        received = _by_uid(scp.files())
        assert set(received) == set(expected)
        # Byte-identical: what storescp got is exactly what the router accepted (kept in the spool by
        # the retention setting), in the same transfer syntax. And what the router accepted is what the
        # same storescu delivers to a storescp directly, wherever both sides negotiated the same transfer
        # syntax (storescu itself re-encodes some of pydicom's files on the way out).
        spooled = {j["sop_instance_uid"]: router.spool_path(j["spool_key"]) for j in router.jobs()}
        direct_scp = StoreSCP(tmp_path, "DIRECT").start()
        try:
            assert storescu(direct_scp.port, sent, called="DIRECT").returncode == 0
            direct = _by_uid(direct_scp.files())
        finally:
            direct_scp.stop()
        same_ts = 0
        for uid, original in expected.items():
            assert dataset_bytes(received[uid]) == dataset_bytes(spooled[uid]), f"{original.name} changed in relay"
            assert _ts(received[uid]) == _ts(spooled[uid])
            if _ts(spooled[uid]) == _ts(direct[uid]):
                assert dataset_bytes(spooled[uid]) == dataset_bytes(direct[uid]), f"{original.name} changed"
                same_ts += 1
        assert same_ts >= len(expected) - 5

        assert wait_until(lambda: orthanc.instance_count() >= len(expected), 60, "Orthanc to index all")
        assert orthanc.sop_instance_uids() == set(expected)

        st = router.status()
        assert st["instances"]["unrouted"] == 0
        assert all(d["backlog"] == 0 for d in st["destinations"])
        events = {e["event"] for e in router.audit()}
        assert {"receive", "forward"} <= events
    finally:
        router.stop()
        scp.stop()
        orthanc.stop()


def test_compressed_files_relay_unchanged(tmp_path: Path) -> None:
    """Compressed transfer syntaxes pass through as-is (no transcoding) when both ends accept them."""
    from tests.support.data import PYDICOM_TEST_FILES

    names = ["JPEG-lossy.dcm", "JPEG-LL.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm"]
    files = [PYDICOM_TEST_FILES / n for n in names if (PYDICOM_TEST_FILES / n).exists()]
    scp = StoreSCP(tmp_path, "PACS").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port)},
    ).start()
    try:
        res = router.cli(
            "send", *map(str, files), "--to", f"DICOM_ROUTER@127.0.0.1:{router.port}", "--calling-ae", "PYSCU"
        )
        assert "stored" in res.stdout
        router.wait_delivered(len(files))
        received = _by_uid(scp.files())
        for f in files:
            uid = sop_instance_uid(f)
            assert dataset_bytes(received[uid]) == dataset_bytes(f), f.name
            ts_in = pydicom.filereader.read_file_meta_info(f).TransferSyntaxUID
            assert pydicom.filereader.read_file_meta_info(received[uid]).TransferSyntaxUID == ts_in
    finally:
        router.stop()
        scp.stop()
