"""appliance.router.deid: PS3.15 Basic Profile on pydicom's bundled files, checked attribute by attribute;
UIDs and pseudonyms stable and consistent across objects; options; other character sets intact."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from appliance.router import deid
from appliance.router.morph import MemoryUidMapper, MorphFailed, MorphProfile, apply_profiles, value_sha
from tests.unit import deid_expectations as expect

PIXEL_DATA = 0x7FE00010
CHARSET_FILES = sorted(p.rsplit("/", 1)[-1] for p in get_charset_files("chr*.dcm"))


def read(name: str, **kwargs: Any) -> Dataset:
    path = get_testdata_file(name) or get_charset_files(name)[0]
    return pydicom.dcmread(path, force=True, **kwargs)


def deidentify(ds: Dataset, mapper: MemoryUidMapper | None = None, name: str = "research", **options: Any):
    prof = MorphProfile.model_validate({"steps": [{"deidentify": options}]})
    return apply_profiles(ds, [(name, prof)], mapper or MemoryUidMapper())


def roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def assert_same_values(expected: Dataset, actual: Dataset) -> None:
    """Every attribute of `expected` is in `actual` with an equal value, at every depth."""
    for elem in expected:
        if elem.tag.element == 0:
            continue  # group lengths: pydicom does not write them again
        assert elem.tag in actual, elem.keyword
        if elem.VR == "SQ":
            assert len(actual[elem.tag].value) == len(elem.value), elem.keyword
            for mine, theirs in zip(elem.value, actual[elem.tag].value, strict=True):
                assert_same_values(mine, theirs)
        else:
            assert actual[elem.tag].value == elem.value, elem.keyword


def walk_uids(ds: Dataset) -> list[tuple[str, str]]:
    return [(e.keyword, str(v)) for e in ds.iterall() if e.VR == "UI" for v in (e.value if e.VM > 1 else [e.value])]


# -- the table and the options -----------------------------------------------------------------------------


def op(keyword: str, **options: bool) -> str:
    ops, _ = deid.operations(
        options.get("retain_uids", False), options.get("retain_dates", False), options.get("clean_descriptors", False)
    )
    return ops.get(pydicom.datadict.tag_for_keyword(keyword), deid.KEEP)


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("PatientAge", deid.REMOVE),  # X
        ("OtherPatientIDs", deid.REMOVE),
        ("StudyDescription", deid.REMOVE),  # X, C with Clean Descriptors
        ("PatientBirthDate", deid.EMPTY),  # Z
        ("AccessionNumber", deid.EMPTY),
        ("AcquisitionDate", deid.EMPTY),  # X/Z
        ("SeriesDate", deid.REMOVE),  # X/D
        ("ContentDate", deid.DUMMY),  # Z/D, a date
        ("ContrastBolusAgent", deid.EMPTY),  # Z/D, not a date
        ("InstitutionName", deid.EMPTY),  # X/Z/D, not a date
        ("SOPInstanceUID", deid.NEW_UID),  # U
        ("ReferencedSOPInstanceUID", deid.NEW_UID),
        ("ReferencedImageSequence", deid.KEEP),  # X/Z/U*: kept, the UIDs inside replaced
        ("ContentSequence", deid.DUMMY),  # D on a sequence: emptied
        ("SOPInstanceUIDOfConcatenationSource", deid.NEW_UID),  # an instance UID the table does not list
        ("SOPClassUID", deid.KEEP),
        ("Modality", deid.KEEP),
    ],
)
def test_table_actions_resolve_as_documented(keyword: str, expected: str) -> None:
    assert op(keyword) == expected


def test_options_change_what_they_name_and_nothing_else() -> None:
    assert op("StudyInstanceUID", retain_uids=True) == deid.KEEP
    assert op("ReferencedStudySequence", retain_uids=True) == deid.KEEP
    assert op("ReferencedStudySequence") == deid.EMPTY
    assert op("StudyDate", retain_dates=True) == deid.KEEP
    assert op("SeriesTime", retain_dates=True) == deid.KEEP
    assert op("TimezoneOffsetFromUTC", retain_dates=True) == deid.KEEP
    assert op("PatientBirthDate", retain_dates=True) == deid.EMPTY  # never retained
    assert op("StudyDescription", clean_descriptors=True) == deid.CLEAN
    assert op("ContrastBolusAgent", clean_descriptors=True) == deid.CLEAN
    assert op("PatientAge", retain_uids=True, retain_dates=True, clean_descriptors=True) == deid.REMOVE


# -- tag by tag on bundled files ----------------------------------------------------------------------------


def check_against(expected: expect.Expected, mapper: MemoryUidMapper, namespace: str = "research") -> Dataset:
    original = read(expected.file)
    ds = read(expected.file)
    changes = deidentify(ds, mapper)
    pseudonym = ds.PatientID

    for elem in original:
        keyword = elem.keyword
        if elem.tag.is_private:
            assert elem.tag not in ds, f"private {elem.tag} kept"
        elif keyword in expected.removed:
            assert elem.tag not in ds, f"{keyword} should be removed"
        elif keyword in expected.emptied:
            assert ds[elem.tag].is_empty, f"{keyword} should be empty"
        elif keyword in expected.new_uids:
            assert ds[elem.tag].value == mapper.map_uid(f"{namespace}:UID", elem.value), keyword
            assert ds[elem.tag].value != elem.value
        elif keyword in expected.dummies:
            assert ds[elem.tag].value == expected.dummies[keyword], keyword
        elif keyword in expected.cleaned:
            assert ds[elem.tag].value == expected.cleaned[keyword], keyword
        elif keyword in ("PatientID", "PatientName"):
            assert str(ds[elem.tag].value) == pseudonym != str(elem.value)
        elif keyword in expected.sequences_changed:
            assert ds[elem.tag].value != elem.value, f"{keyword} should have changed inside"
        else:
            assert ds[elem.tag].value == elem.value, f"{keyword} should be kept as it was"
    assert {e.keyword for e in ds if e.tag not in original} == expect.ADDED

    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100", "113105"]
    # The audit trail has hashes only: no original value of a changed attribute appears in it.
    trail = repr(changes)
    for elem in original:
        if elem.VR in ("PN", "LO", "SH", "DA", "UI") and elem.value and len(str(elem.value)) > 3:
            assert str(elem.value) not in trail, elem.keyword
    return ds


@pytest.mark.parametrize("expected", expect.ALL, ids=lambda e: e.file)
def test_bundled_files_tag_by_tag(expected: expect.Expected) -> None:
    check_against(expected, MemoryUidMapper())


def test_uids_inside_sequences_are_replaced_and_well_known_ones_kept() -> None:
    mapper = MemoryUidMapper()
    for name in ("rtplan.dcm", "rtstruct.dcm", "test-SR.dcm"):
        original = dict(walk_uids(read(name)))
        ds = read(name)
        deidentify(ds, mapper)
        for keyword, uid in walk_uids(ds):
            if keyword.endswith("ClassUID") or uid in UID_dictionary:
                assert uid in original.values(), f"{name}: {keyword} should be kept"
            else:
                assert uid.startswith("2.25."), f"{name}: {keyword} should be replaced"


def test_rtplan_nested_attributes() -> None:
    mapper = MemoryUidMapper()
    original = read("rtplan.dcm")
    ds = read("rtplan.dcm")
    deidentify(ds, mapper)
    beam = ds.BeamSequence[0]
    assert beam.InstitutionName == "" and beam.DeviceSerialNumber == "" and beam.TreatmentMachineName == ""
    assert "InstitutionalDepartmentName" not in beam
    assert beam.Manufacturer == original.BeamSequence[0].Manufacturer
    structure_set = ds.ReferencedStructureSetSequence[0]
    assert structure_set.ReferencedSOPInstanceUID == mapper.map_uid(
        "research:UID", original.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    )
    assert structure_set.ReferencedSOPClassUID == original.ReferencedStructureSetSequence[0].ReferencedSOPClassUID
    assert ds.DoseReferenceSequence[0].DoseReferenceDescription == "iso"  # a descriptor, nothing in it to clean


def test_references_between_objects_stay_consistent() -> None:
    """An RT structure set drawn on CT_small still points at the (new) UIDs of CT_small after both go through."""
    image = read("CT_small.dcm")
    structure = read("rtstruct.dcm")
    frame = structure.ReferencedFrameOfReferenceSequence[0]
    frame.FrameOfReferenceUID = image.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    study.ReferencedSOPInstanceUID = image.StudyInstanceUID
    study.RTReferencedSeriesSequence[0].SeriesInstanceUID = image.SeriesInstanceUID
    contour_image = Dataset()
    contour_image.ReferencedSOPClassUID = image.SOPClassUID
    contour_image.ReferencedSOPInstanceUID = image.SOPInstanceUID
    structure.ROIContourSequence[0].ContourSequence[0].ContourImageSequence = [contour_image]
    for roi in structure.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = image.FrameOfReferenceUID
    structure.StudyInstanceUID = image.StudyInstanceUID

    mapper = MemoryUidMapper()
    deidentify(image, mapper)
    deidentify(structure, mapper)

    frame = structure.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    contour_image = structure.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    assert contour_image.ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert contour_image.ReferencedSOPClassUID == image.SOPClassUID
    assert frame.FrameOfReferenceUID == image.FrameOfReferenceUID
    assert structure.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == image.FrameOfReferenceUID
    assert study.ReferencedSOPInstanceUID == image.StudyInstanceUID == structure.StudyInstanceUID
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID


def test_sr_content_and_observers_are_emptied_and_predecessors_remapped() -> None:
    mapper = MemoryUidMapper()
    original = read("test-SR.dcm")
    ds = read("test-SR.dcm")
    deidentify(ds, mapper)
    assert len(ds.ContentSequence) == 0 and len(ds.VerifyingObserverSequence) == 0
    predecessor = ds.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == ds.StudyInstanceUID  # same study, same new UID
    before = original.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    after = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert after.ReferencedSOPInstanceUID == mapper.map_uid("research:UID", before.ReferencedSOPInstanceUID)
    assert ds.ConceptNameCodeSequence == original.ConceptNameCodeSequence
    assert ds.SeriesDescription == original.SeriesDescription


# -- pseudonyms and UIDs: stable, per namespace ----------------------------------------------------------


def test_same_input_same_mapper_gives_identical_output() -> None:
    mapper = MemoryUidMapper()
    first, second = read("CT_small.dcm"), read("CT_small.dcm")
    deidentify(first, mapper)
    deidentify(second, mapper)
    assert walk_uids(first) == walk_uids(second)
    assert first.PatientID == second.PatientID and str(first.PatientName) == first.PatientID


def test_another_namespace_gives_other_uids_and_pseudonyms() -> None:
    mapper = MemoryUidMapper()
    first, second, third = read("MR_small.dcm"), read("MR_small.dcm"), read("MR_small.dcm")
    deidentify(first, mapper, name="research")
    deidentify(second, mapper, name="teaching")
    deidentify(third, mapper, name="renamed-research", namespace="research")
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.PatientID != second.PatientID
    assert (third.SOPInstanceUID, third.PatientID) == (first.SOPInstanceUID, first.PatientID)


def test_one_patient_one_pseudonym_across_studies() -> None:
    mapper = MemoryUidMapper()
    ct, mr = read("CT_small.dcm"), read("MR_small.dcm")
    ct.PatientID = mr.PatientID = "HOSP-123"
    deidentify(ct, mapper, patient_id_prefix="ANON-")
    deidentify(mr, mapper, patient_id_prefix="ANON-")
    assert ct.PatientID == mr.PatientID
    assert ct.PatientID.startswith("ANON-") and len(ct.PatientID) == len("ANON-") + 16
    assert ct.StudyInstanceUID != mr.StudyInstanceUID


def test_pseudonym_change_is_recorded_as_hashes() -> None:
    ds = read("CT_small.dcm")
    changes = deidentify(ds)
    by_keyword = {c.keyword: c for c in changes}
    assert by_keyword["PatientID"].old_sha == value_sha("1CT1")
    assert by_keyword["PatientID"].new_sha == value_sha(ds.PatientID)
    assert by_keyword["private"].action == deid.REMOVE


def test_file_meta_follows_and_class_uids_stay() -> None:
    original = read("CT_small.dcm")
    ds = read("CT_small.dcm")
    deidentify(ds)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == original.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert ds.SOPClassUID == original.SOPClassUID


# -- options ----------------------------------------------------------------------------------------------


def test_retain_dates_keeps_dates_but_not_the_birth_date() -> None:
    original = read("CT_small.dcm")
    ds = read("CT_small.dcm")
    ds.PatientBirthDate = "19700101"
    deidentify(ds, retain_dates=True)
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
                    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "TimezoneOffsetFromUTC"):  # fmt: skip
        assert ds[keyword].value == original[keyword].value, keyword
    assert ds.PatientBirthDate == ""
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "113106" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


def test_retain_uids_keeps_every_uid() -> None:
    for name in ("CT_small.dcm", "rtstruct.dcm", "test-SR.dcm"):
        original = read(name)
        ds = read(name)
        deidentify(ds, retain_uids=True)
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        assert set(walk_uids(ds)) <= set(walk_uids(original)), name  # an SR's content goes, with its UIDs
        assert "113110" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert ds.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID


def test_without_clean_descriptors_descriptions_go() -> None:
    ds = read("CT_small.dcm")
    deidentify(ds, clean_descriptors=False)
    for keyword in ("StudyDescription", "ImageComments", "AdditionalPatientHistory"):
        assert keyword not in ds, keyword
    assert ds.ContrastBolusAgent == ""  # Z/D
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100"]


def test_clean_descriptors_strips_the_objects_own_identifiers() -> None:
    ds = read("CT_small.dcm")
    ds.PatientName = "Smith^Ann"
    ds.PatientID = "MRN778899"
    ds.AccessionNumber = "ACC42"
    ds.StudyDescription = "CT HEAD SMITH ann mrn778899"
    ds.SeriesDescription = "ACC42 axial"
    ds.ImageComments = "SCANNER QA ok"  # "Ann" inside SCANNER stays: whole words only
    deidentify(ds)
    assert ds.StudyDescription == "CT HEAD"
    assert ds.SeriesDescription == "axial"
    assert ds.ImageComments == "SCANNER QA ok"


def test_retain_private_keeps_private_attributes_and_says_so() -> None:
    original = read("CT_small.dcm")
    ds = read("CT_small.dcm")
    deidentify(ds, retain_private=True)
    assert [e.tag for e in original if e.tag.is_private] == [e.tag for e in ds if e.tag.is_private]
    assert "private attributes retained, not vetted" in ds.DeidentificationMethod


def test_an_earlier_deidentification_stays_on_record() -> None:
    ds = read("CT_small.dcm")
    ds.DeidentificationMethod = "UPSTREAM TOOL"
    deidentify(ds)
    assert list(ds.DeidentificationMethod) == [
        "UPSTREAM TOOL", "Basic Application Confidentiality Profile", "Clean Descriptors Option"
    ]  # fmt: skip


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    ds = read("CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(MorphFailed) as info:
        deidentify(ds, name="teaching")
    assert str(info.value).startswith("morph profile 'teaching' (deidentify): the object is marked BurnedInAnnotation")
    assert "allow_burned_in: true" in str(info.value)
    deidentify(ds, allow_burned_in=True)
    assert ds.PatientIdentityRemoved == "YES"


def test_pixel_data_is_never_read() -> None:
    ds = read("CT_small.dcm", defer_size=256)
    deidentify(ds)
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    assert isinstance(raw, RawDataElement) and raw.value is None


# -- other character sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_character_sets_survive(name: str) -> None:
    """Each charset file: what is kept reads back identically after writing, in the same character set."""
    original = read(name)
    ds = read(name)
    changes = deidentify(ds)
    changed = {c.keyword for c in changes}
    again = roundtrip(ds)
    assert again.get("SpecificCharacterSet") == original.get("SpecificCharacterSet")
    assert_same_values(ds, again)
    for elem in original:
        if elem.tag.element != 0 and elem.keyword not in changed and not elem.tag.is_private:
            assert_same_values(Dataset({elem.tag: elem}), Dataset({elem.tag: again[elem.tag]}))
    assert str(again.PatientName) == again.PatientID == ds.PatientID


@pytest.mark.parametrize(("name", "text"), [("chrJapMulti.dcm", "頭部 単純"), ("chrX1.dcm", "胸部 CT"),
                                            ("chrKoreanMulti.dcm", "흉부"), ("chrGreek.dcm", "Θώρακας")])  # fmt: skip
def test_kept_multi_byte_descriptions_round_trip(name: str, text: str) -> None:
    ds = read(name)
    ds.SeriesDescription = text
    deidentify(ds)
    assert roundtrip(ds).SeriesDescription == text


def test_multi_byte_names_are_cleaned_out_of_descriptions() -> None:
    ds = read("chrJapMulti.dcm")  # Patient's Name やまだ^たろう, Additional Patient History たろう
    ds.StudyDescription = "やまだ 頭部"
    deidentify(ds)
    again = roundtrip(ds)
    assert again.AdditionalPatientHistory == ""
    assert again.StudyDescription == "頭部"
    assert "OtherPatientNames" not in again


def test_a_name_nested_in_a_sequence_is_emptied() -> None:
    ds = read("chrSQEncoding1.dcm")
    deidentify(ds)
    item = roundtrip(ds).RequestedProcedureCodeSequence[0]
    assert item.PatientName == "" and item.CodeValue == "CodeValue"
    assert "RequestingPhysician" not in ds
