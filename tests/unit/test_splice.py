"""The morph splice writer gives the same object pydicom's full re-encoding gives, on pydicom's real files."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from appliance.router import outgoing, splice
from appliance.router.morph import MemoryUidMapper, MorphProfile, apply_profiles
from tests.support.data import PYDICOM_CHARSET_FILES, PYDICOM_TEST_FILES

FILES = [
    PYDICOM_TEST_FILES / n
    for n in (
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "rtplan.dcm",
        "test-SR.dcm",
        "JPEG2000.dcm",  # encapsulated pixel data (undefined length)
        "MR_small_RLE.dcm",
        "SC_rgb_rle_2frame.dcm",
    )
] + [p for p in sorted(PYDICOM_CHARSET_FILES.glob("chr*.dcm")) if "SQEncoding" not in p.name]
# (priv_SQ.dcm and chrSQEncoding*.dcm have no SOP Instance UID: the receiver refuses them, never morphed)

PROFILES = {
    "prefix": [{"prefix": {"tag": "PatientID", "value": "N-"}}],
    "set-new": [{"set": {"tag": "InstitutionName", "value": "North Hospital"}}],
    "remove": [{"remove": {"tag": "PatientBirthDate"}}, {"remove": {"private": True}}],
    "copy-regex": [
        {"copy": {"from": "AccessionNumber", "to": "StudyID"}},
        {"regex": {"tag": "StudyDescription", "pattern": "\\s+", "replace": " "}},
    ],
    "nothing-applies": [{"remove": {"tag": "OtherPatientIDs"}}],
}


def _datasets_equal(a: Path, b: Path) -> None:
    x, y = pydicom.dcmread(a), pydicom.dcmread(b)
    assert x.file_meta.TransferSyntaxUID == y.file_meta.TransferSyntaxUID
    assert [e.tag for e in x] == [e.tag for e in y]
    for ex, ey in zip(x, y, strict=True):
        assert ex.value == ey.value, ex.tag


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("source", FILES, ids=lambda p: p.name)
def test_splice_equals_a_full_rewrite(tmp_path: Path, source: Path, profile: str) -> None:
    prof = MorphProfile.model_validate({"steps": PROFILES[profile]})
    ds = pydicom.dcmread(source, defer_size=4096)
    as_read = dict(ds._dict)
    apply_profiles(ds, [(profile, prof)], MemoryUidMapper())
    spliced = tmp_path / "spliced.dcm"
    if not splice.write(ds, as_read, source, spliced):
        # Declined: nothing written, and what the forwarder sends instead (pydicom's rewrite) is compared.
        assert not spliced.exists()
        out = outgoing.OutgoingDir(tmp_path / "out")
        out.init()
        spliced = outgoing.prepare(
            source,
            out,
            send_syntax=str(ds.file_meta.TransferSyntaxUID),
            profile_names=[profile],
            profiles={profile: prof},
            uids=MemoryUidMapper(),
        ).path
    full = pydicom.dcmread(source, defer_size=4096)
    apply_profiles(full, [(profile, prof)], MemoryUidMapper())
    rewritten = tmp_path / "full.dcm"
    full.save_as(rewritten, enforce_file_format=True)
    _datasets_equal(spliced, rewritten)


def test_most_files_are_spliced(tmp_path: Path) -> None:
    prof = MorphProfile.model_validate({"steps": PROFILES["prefix"]})
    spliced = 0
    for n, source in enumerate(FILES):
        ds = pydicom.dcmread(source, defer_size=4096)
        as_read = dict(ds._dict)
        apply_profiles(ds, [("p", prof)], MemoryUidMapper())
        spliced += splice.write(ds, as_read, source, tmp_path / f"{n}.dcm")
    # Declined (written by pydicom instead): no group-length-free meta, group lengths, no SOP Instance UID.
    assert spliced >= len(FILES) - 4, f"only {spliced} of {len(FILES)} spliced"


def test_a_new_sop_instance_uid_is_not_spliced(tmp_path: Path) -> None:
    source = PYDICOM_TEST_FILES / "CT_small.dcm"
    prof = MorphProfile.model_validate({"steps": [{"deidentify": {}}]})
    ds = pydicom.dcmread(source, defer_size=4096)
    as_read = dict(ds._dict)
    apply_profiles(ds, [("d", prof)], MemoryUidMapper())
    assert not splice.write(ds, as_read, source, tmp_path / "x.dcm")  # file meta changes: pydicom writes it
    out = outgoing.OutgoingDir(tmp_path / "out")
    out.init()
    prepared = outgoing.prepare(
        source,
        out,
        send_syntax=str(ds.file_meta.TransferSyntaxUID),
        profile_names=["d"],
        profiles={"d": prof},
        uids=MemoryUidMapper(),
    )
    got = pydicom.dcmread(prepared.path)
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID == prepared.sop_instance_uid
