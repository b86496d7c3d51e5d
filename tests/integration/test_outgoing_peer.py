"""What leaves the router per destination, against real peers: decompression for a destination that only
takes uncompressed (DCMTK storescp), tag morphing, and PS3.15 de-identification (storescp and Orthanc).
The spooled original never changes; every morph and transcode is in the audit trail without PHI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom

from tests.support.data import (
    PYDICOM_CHARSET_FILES,
    PYDICOM_TEST_FILES,
    bundled_files_storescu_can_send,
    make_ct_series,
    sop_instance_uid,
)
from tests.support.peers import Orthanc, Router, StoreSCP, dest_node, storescu, wait_until

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _by_uid(files: list[Path]) -> dict[str, Path]:
    return {sop_instance_uid(p): p for p in files}


def _send(router: Router, files: list[Path]) -> None:
    res = router.cli("send", *map(str, files), "--to", f"DICOM_ROUTER@127.0.0.1:{router.port}", "--calling-ae", "PYSCU")
    assert "stored" in res.stdout, res.stdout + res.stderr


# Compressed files from pydicom, with the reference their pixels must equal after lossless decompression.
COMPRESSED = {
    "JPEG-lossy.dcm": None,  # JPEG baseline (lossy): arrives decompressed and still marked lossy
    "JPEGLSNearLossless_08.dcm": None,  # JPEG-LS near-lossless
    "SC_rgb_jpeg_gdcm.dcm": None,  # JPEG lossless, process 14 SV1
    "MR_small_RLE.dcm": "MR_small.dcm",
    "MR_small_jp2klossless.dcm": "MR_small.dcm",
    "MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm",
    "rtdose_rle.dcm": "rtdose.dcm",
    "SC_rgb_rle.dcm": None,
    "JPEG2000.dcm": None,
    "693_J2KI.dcm": None,
}


def _fresh_copies(out: Path) -> dict[str, Path]:
    """pydicom's files reuse SOP Instance UIDs (one MR in five encodings): give each copy its own, so the
    delivery ledger sees distinct objects. The compressed pixel data is copied as it is."""
    out.mkdir()
    copies = {}
    for name in COMPRESSED:
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        copies[name] = out / name
        ds.save_as(copies[name], enforce_file_format=True)
    return copies


def test_compressed_objects_are_decompressed_for_an_uncompressed_only_destination(tmp_path: Path) -> None:
    files = _fresh_copies(tmp_path / "in")
    pacs = StoreSCP(tmp_path, "PACS", accept_all=False).start()  # uncompressed transfer syntaxes only
    strict = StoreSCP(tmp_path, "STRICT", accept_all=False).start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", pacs.port), "STRICT": dest_node("STRICT", strict.port)},
        routes=[
            {"name": "to-pacs", "to": ["PACS_MAIN"]},
            {"name": "to-strict", "to": ["STRICT"], "transcode": "never"},
        ],
        router_extra={"retention": {"keep_sent_hours": 1}},
    ).start()
    n = len(files)
    try:
        _send(router, list(files.values()))
        wait_until(
            lambda: router.counts().get("done", 0) + router.counts().get("failed", 0) >= 2 * n,
            120,
            "every job to finish",
        )
        received = _by_uid(pacs.files())
        assert len(received) == n, router.jobs("--destination", "PACS_MAIN", "--state", "failed")
        for name, path in files.items():
            got = pydicom.dcmread(received[sop_instance_uid(path)])
            assert str(got.file_meta.TransferSyntaxUID) in UNCOMPRESSED, name
            reference = COMPRESSED[name]
            if reference is not None:
                expected = pydicom.dcmread(PYDICOM_TEST_FILES / reference).pixel_array
                assert np.array_equal(got.pixel_array, expected), name
            else:
                src = pydicom.dcmread(path, stop_before_pixels=True)
                frames = int(src.get("NumberOfFrames", 1) or 1)
                assert got.pixel_array.size == frames * src.Rows * src.Columns * src.SamplesPerPixel, name
            if name == "JPEG-lossy.dcm":
                assert got.LossyImageCompression == "01"  # decompressing does not make it lossless
        # The spooled originals are untouched: still compressed.
        for job in router.jobs("--destination", "PACS_MAIN"):
            spooled = pydicom.filereader.read_file_meta_info(router.spool_path(job["spool_key"]))
            assert str(spooled.TransferSyntaxUID) not in UNCOMPRESSED
        failed = router.jobs("--destination", "STRICT", "--state", "failed")
        assert len(failed) == n
        for job in failed:
            assert "the route says transcode: never" in job["last_error"], job["last_error"]
        assert strict.files() == []
        transcodes = [e for e in router.audit() if e["event"] == "transcode"]
        assert len(transcodes) == n
        assert all(e["to_syntax"] in UNCOMPRESSED for e in transcodes)
    finally:
        router.stop()
        pacs.stop()
        strict.stop()


def test_site_prefix_morph_reaches_the_destination_and_the_audit_has_no_phi(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "in", 4, rows=64, cols=64, patient_id="PAT0042", accession="ACC42")
    pacs = StoreSCP(tmp_path, "PACS").start()
    archive = StoreSCP(tmp_path, "ARCH").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", pacs.port), "ARCHIVE": dest_node("ARCH", archive.port)},
        routes=[
            {"name": "to-pacs", "to": ["PACS_MAIN"], "morph": ["north-prefix"]},
            {"name": "to-archive", "to": ["ARCHIVE"]},
        ],
        router_extra={"retention": {"keep_sent_hours": 1}},
    )
    router.config["morph_profiles"] = {
        "north-prefix": {
            "description": "site prefix for the regional PACS",
            "steps": [
                {"prefix": {"tag": "PatientID", "value": "N-"}},
                {"set": {"tag": "InstitutionName", "value": "North Hospital"}},
            ],
        }
    }
    router.write_config()
    router.start()
    try:
        assert storescu(router.port, series).returncode == 0
        router.wait_delivered(8)
        for p in pacs.files():
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            assert (ds.PatientID, ds.InstitutionName, ds.AccessionNumber) == ("N-PAT0042", "North Hospital", "ACC42")
        for p in archive.files():  # the other destination gets the object as it arrived
            assert pydicom.dcmread(p, stop_before_pixels=True).PatientID == "PAT0042"
        for job in router.jobs():
            assert pydicom.dcmread(router.spool_path(job["spool_key"]), stop_before_pixels=True).PatientID == "PAT0042"
        morphs = [e for e in router.audit() if e["event"] == "morph"]
        assert len(morphs) == 4
        change = {c["tag"]: c for c in morphs[0]["changes"]}
        assert change["PatientID"]["action"] == "prefix"
        assert change["PatientID"]["old"] != change["PatientID"]["new"] and len(change["PatientID"]["old"]) == 16
        assert morphs[0]["profiles"] == ["north-prefix"] and morphs[0]["destination"] == "PACS_MAIN"
        audit_text = (tmp_path / "log" / "audit.jsonl").read_text()
        assert "PAT0042" not in audit_text and "North Hospital" not in audit_text
    finally:
        router.stop()
        pacs.stop()
        archive.stop()


def test_morph_that_would_make_an_invalid_value_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "in", 1, rows=16, cols=16, accession="ACC1234567890123")  # 16: SH max
    pacs = StoreSCP(tmp_path, "PACS").start()
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", pacs.port)},
        routes=[{"name": "to-pacs", "to": ["PACS_MAIN"], "morph": ["acc-prefix"]}],
    )
    router.config["morph_profiles"] = {"acc-prefix": {"steps": [{"prefix": {"tag": "AccessionNumber", "value": "N-"}}]}}
    router.write_config()
    router.start()
    try:
        assert storescu(router.port, series).returncode == 0
        wait_until(lambda: router.counts().get("failed", 0) == 1, 60, "the job to fail", interval=0.2)
        (job,) = router.jobs()
        assert "would make AccessionNumber invalid" in job["last_error"]
        assert "ACC1234567890123" not in job["last_error"]  # the value may be PHI: never in a message
        assert pacs.files() == []
    finally:
        router.stop()
        pacs.stop()


def _charset_files() -> list[Path]:
    return [p for p in bundled_files_storescu_can_send() if p.parent == PYDICOM_CHARSET_FILES]


def test_deidentified_export_is_consistent_across_resends(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    first = make_ct_series(tmp_path / "a", 3, rows=32, cols=32, study_uid=study, patient_id="PAT7", seed=1)
    later = make_ct_series(tmp_path / "b", 2, rows=32, cols=32, study_uid=study, patient_id="PAT7", seed=2)
    charsets = _charset_files()
    assert len(charsets) >= 10
    tele = StoreSCP(tmp_path, "TELE").start()
    orthanc = Orthanc(tmp_path, "ORTHANC").start()
    router = Router(
        tmp_path,
        destinations={
            "TELERAD": dest_node("TELE", tele.port, morph=["telerad-deid"]),
            "PARTNER": dest_node("ORTHANC", orthanc.port, morph=["telerad-deid"]),
        },
    )
    router.config["morph_profiles"] = {"telerad-deid": {"steps": [{"deidentify": {"retain_dates": False}}]}}
    router.write_config()
    router.start()
    try:
        assert storescu(router.port, first + charsets).returncode == 0
        n1 = len(first) + len(charsets)
        router.wait_delivered(2 * n1, timeout=180)
        originals = {sop_instance_uid(p) for p in first + charsets}
        got = [pydicom.dcmread(p) for p in tele.files()]
        assert len(got) == n1
        for ds in got:
            assert ds.SOPInstanceUID not in originals
            assert ds.PatientIdentityRemoved == "YES"
            assert "113100" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
            assert not any(elem.tag.is_private for elem in ds.iterall())
            assert "StudyDate" not in ds or ds.StudyDate in ("", None) or ds.StudyDate != "20261127"
        ct = [ds for ds in got if ds.Modality == "CT"]
        assert len({ds.StudyInstanceUID for ds in ct}) == 1 and ct[0].StudyInstanceUID != study
        assert len({ds.PatientID for ds in ct}) == 1 and ct[0].PatientID != "PAT7"
        # Multi-byte character sets: every text the profile kept decodes cleanly in the declared character set.
        for path in tele.files():
            _assert_text_decodes_cleanly(path)
        # Orthanc (a real PACS) took every de-identified object, none under an original UID.
        wait_until(lambda: orthanc.instance_count() >= n1, 60, "Orthanc to index all")
        assert not (orthanc.sop_instance_uids() & originals)

        # Later objects of the same study map to the same study and patient pseudonyms.
        assert storescu(router.port, later).returncode == 0
        router.wait_delivered(2 * (n1 + len(later)), timeout=120)
        ct_after = [pydicom.dcmread(p) for p in tele.files()]
        ct_after = [ds for ds in ct_after if ds.Modality == "CT"]
        assert len(ct_after) == len(first) + len(later)
        assert {ds.StudyInstanceUID for ds in ct_after} == {ct[0].StudyInstanceUID}
        assert {ds.PatientID for ds in ct_after} == {ct[0].PatientID}

        # A re-sent identical object is skipped by the ledger; sent anyway on request, it keeps its UIDs.
        assert storescu(router.port, first[:1]).returncode == 0
        skipped = wait_until(lambda: router.jobs("--state", "skipped"), 30, "the re-send to be skipped", interval=0.2)
        assert {j["destination"] for j in skipped} == {"TELERAD", "PARTNER"}
        before = {sop_instance_uid(p) for p in tele.files()}
        tele_job = next(j for j in skipped if j["destination"] == "TELERAD")
        router.cli("queue", "retry", str(tele_job["id"]), "--reason", "partner asked for it again")
        wait_until(
            lambda: (
                json.loads(router.cli("queue", "show", str(tele_job["id"]), "--json").stdout)["job"]["state"] == "done"
            ),
            60,
            "the forced re-send to be delivered",
        )
        # storescp names files by SOP Instance UID: the re-send replaced its earlier copy, no new UID appeared.
        assert {sop_instance_uid(p) for p in tele.files()} == before
        morph_events = [e for e in router.audit() if e["event"] == "morph"]
        assert morph_events and all("PAT7" not in json.dumps(e) for e in morph_events)
    finally:
        router.stop()
        tele.stop()
        orthanc.stop()


def _assert_text_decodes_cleanly(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns when bytes do not decode in the declared charset
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.decode()
    for elem in ds.iterall():
        if elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT") and elem.value is not None:
            assert "\ufffd" not in str(elem.value), f"{path.name} {elem.keyword}"


MULTIBYTE = ["chrJapMulti.dcm", "chrKoreanMulti.dcm", "chrH32.dcm", "chrGreek.dcm"]


def test_multibyte_descriptions_survive_clean_descriptors(tmp_path: Path) -> None:
    sources = {n: PYDICOM_CHARSET_FILES / n for n in MULTIBYTE}  # four distinct SOP Instance UIDs
    tele = StoreSCP(tmp_path, "TELE").start()
    router = Router(tmp_path, destinations={"TELERAD": dest_node("TELE", tele.port, morph=["deid"])})
    router.config["morph_profiles"] = {"deid": {"steps": [{"deidentify": {"clean_descriptors": True}}]}}
    router.write_config()
    router.start()
    try:
        _send(router, list(sources.values()))
        router.wait_delivered(len(sources))
        outputs = tele.files()
        assert len(outputs) == len(sources)
        # UIDs are replaced, so match each output to its source by its character set (one per file here).
        by_charset = {str(pydicom.dcmread(p, stop_before_pixels=True).get("SpecificCharacterSet")): p for p in outputs}
        assert len(by_charset) == len(sources)
        for name, src in sources.items():
            original = pydicom.dcmread(src)
            out = by_charset[str(original.get("SpecificCharacterSet"))]
            got = pydicom.dcmread(out)
            assert got.PatientName != original.PatientName, name
            _assert_text_decodes_cleanly(out)
            # Descriptions kept by Clean Descriptors come out as the same characters they went in as.
            for keyword in ("StudyDescription", "SeriesDescription"):
                if keyword in original and keyword in got and got.get(keyword):
                    assert str(got.get(keyword)) == str(original.get(keyword)), f"{name} {keyword}"
    finally:
        router.stop()
        tele.stop()
