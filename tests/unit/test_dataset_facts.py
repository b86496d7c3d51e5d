"""appliance.router.dataset_facts: the few tags routing needs, and the check that a dataset is whole."""

from __future__ import annotations

import random
from pathlib import Path

import pydicom
import pytest

from appliance.router.dataset_facts import INDEX_KEYWORDS, UnreadableDataset, read_facts

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
MR_TRUNCATED = TEST_FILES / "MR_truncated.dcm"


def test_facts_from_ct_small() -> None:
    facts = read_facts(CT_SMALL)
    ds = pydicom.dcmread(CT_SMALL)
    assert facts.transfer_syntax == "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    assert set(facts.values) == set(INDEX_KEYWORDS)
    assert facts.get("SOPInstanceUID") == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert facts.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert facts.get("StudyInstanceUID") == ds.StudyInstanceUID
    assert facts.get("SeriesInstanceUID") == ds.SeriesInstanceUID
    assert facts.get("PatientID") == "1CT1"
    assert facts.get("Modality") == "CT"
    assert facts.get("AccessionNumber") == ""  # present but empty is not absent
    assert facts.get("NotAsked") is None


def test_extra_keywords() -> None:
    facts = read_facts(
        CT_SMALL,
        ["PatientName", "StudyDate", "ImageType", "Rows", "Modality", "StationName", "BodyPartExamined"],
    )
    assert facts.get("PatientName") == "CompressedSamples^CT1"
    assert facts.get("StudyDate") == "20040119"
    assert facts.get("ImageType") == "ORIGINAL\\PRIMARY\\AXIAL"  # multi-valued: joined with backslash
    assert facts.get("Rows") == "128"
    assert facts.get("Modality") == "CT"  # asked twice: still one value
    assert facts.get("StationName") == "CT01_OC0"
    assert "BodyPartExamined" in facts.values and facts.get("BodyPartExamined") is None  # absent
    assert set(INDEX_KEYWORDS) <= set(facts.values)


def test_truncated_file_is_unreadable() -> None:
    with pytest.raises(UnreadableDataset, match="truncated"):
        read_facts(MR_TRUNCATED)


def test_truncated_message_says_where() -> None:
    with pytest.raises(UnreadableDataset) as info:
        read_facts(MR_TRUNCATED)
    text = str(info.value)
    assert "(7FE0,0010)" in text  # the pixel data element runs past the end
    assert f"ends at {MR_TRUNCATED.stat().st_size}" in text


def test_random_garbage_is_unreadable(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(random.Random(7).randbytes(4096))
    with pytest.raises(UnreadableDataset, match="not a DICOM file"):
        read_facts(garbage)


def test_empty_file_is_unreadable(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableDataset):
        read_facts(empty)


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.9, 0.999])
def test_file_cut_short_is_unreadable(tmp_path: Path, fraction: float) -> None:
    data = CT_SMALL.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(UnreadableDataset, match="truncated"):
        read_facts(cut)


def test_file_cut_inside_the_meta_header_is_unreadable(tmp_path: Path) -> None:
    data = CT_SMALL.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:200])  # preamble + DICM + part of the file meta
    with pytest.raises(UnreadableDataset):
        read_facts(cut)


def test_dataset_without_sop_uids_is_unreadable(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    del ds.SOPInstanceUID
    path = tmp_path / "no_sop.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnreadableDataset, match="SOP Instance UID"):
        read_facts(path)


def test_expected_counts_are_read_when_present(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.NumberOfStudyRelatedInstances = 120
    ds.NumberOfSeriesRelatedInstances = "40"
    path = tmp_path / "counts.dcm"
    ds.save_as(path)
    facts = read_facts(path)
    assert facts.count("NumberOfStudyRelatedInstances") == 120
    assert facts.count("NumberOfSeriesRelatedInstances") == 40


def test_expected_counts_absent_or_unusable_are_none(tmp_path: Path) -> None:
    facts = read_facts(CT_SMALL)
    assert facts.get("NumberOfStudyRelatedInstances") is None  # CT_small carries none (most images do not)
    assert facts.count("NumberOfStudyRelatedInstances") is None
    ds = pydicom.dcmread(CT_SMALL)
    ds.NumberOfStudyRelatedInstances = 0
    ds.add_new(0x00201209, "IS", "")  # NumberOfSeriesRelatedInstances, present but empty
    path = tmp_path / "zero.dcm"
    ds.save_as(path)
    facts = read_facts(path)
    assert facts.count("NumberOfStudyRelatedInstances") is None
    assert facts.count("NumberOfSeriesRelatedInstances") is None
    assert facts.count("Modality") is None  # not a number


def test_sequence_paths_collect_every_item(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    items = []
    for rp in ("RP1", "RP77"):
        item = Dataset()
        item.RequestedProcedureID = rp
        code = Dataset()
        code.CodeValue = f"C-{rp}"
        item.ScheduledProtocolCodeSequence = Sequence([code])
        items.append(item)
    ds.RequestAttributesSequence = Sequence(items)
    path = tmp_path / "seq.dcm"
    ds.save_as(path, enforce_file_format=True)
    facts = read_facts(
        path,
        [
            "RequestAttributesSequence.RequestedProcedureID",
            "RequestAttributesSequence.ScheduledProtocolCodeSequence.CodeValue",
            "ReferencedStudySequence.ReferencedSOPInstanceUID",
        ],
    )
    assert facts.values["RequestAttributesSequence.RequestedProcedureID"] == ("RP1", "RP77")
    assert facts.values["RequestAttributesSequence.ScheduledProtocolCodeSequence.CodeValue"] == ("C-RP1", "C-RP77")
    assert facts.values["ReferencedStudySequence.ReferencedSOPInstanceUID"] == ()
    assert facts.get("RequestAttributesSequence.RequestedProcedureID") is None  # get() is for plain keywords
