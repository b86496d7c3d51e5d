"""appliance.router.morph: every step type, every config mistake with its fix, runtime failures without PHI."""

from __future__ import annotations

import io
import textwrap
from typing import Any

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from ruamel.yaml import YAML

from appliance.router.morph import (
    Change,
    CopyStep,
    DeidentifyStep,
    MemoryUidMapper,
    MorphFailed,
    MorphProfile,
    PrefixStep,
    RegexStep,
    RemoveStep,
    SetStep,
    SuffixStep,
    apply_profiles,
    value_sha,
)

PIXEL_DATA = 0x7FE00010


def profile(*steps: dict[str, Any]) -> MorphProfile:
    return MorphProfile.model_validate({"steps": list(steps)})


def ct(defer: bool = False) -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"), defer_size=256 if defer else None)


def run(ds: Dataset, *steps: dict[str, Any], name: str = "site") -> list[Change]:
    return apply_profiles(ds, [(name, profile(*steps))], MemoryUidMapper())


def only_error(steps: list[Any]) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as info:
        MorphProfile.model_validate({"steps": steps})
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], str(errors[0]["msg"]).removeprefix("Value error, ")


def roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


# -- the YAML shape -----------------------------------------------------------------------------------


def test_every_step_type_parses_from_yaml() -> None:
    text = textwrap.dedent(
        r"""
        description: prefix IDs for the partner site, then tidy
        steps:
          - set: {tag: InstitutionName, value: "PARTNER"}
          - copy: {from: AccessionNumber, to: StudyID}
          - remove: {tag: OtherPatientIDs}
          - remove: {private: true}
          - regex: {tag: StudyDescription, pattern: '\s+', replace: ' '}
          - prefix: {tag: PatientID, value: "N-"}
          - suffix: {tag: AccessionNumber, value: "-N"}
          - deidentify: {retain_dates: true, patient_id_prefix: "TF-"}
        """
    )
    parsed = MorphProfile.model_validate(YAML(typ="safe").load(text))
    assert [type(s) for s in parsed.steps] == [
        SetStep, CopyStep, RemoveStep, RemoveStep, RegexStep, PrefixStep, SuffixStep, DeidentifyStep
    ]  # fmt: skip
    deid = parsed.steps[-1]
    assert isinstance(deid, DeidentifyStep)
    assert (deid.retain_dates, deid.retain_uids, deid.clean_descriptors, deid.retain_private) == (
        True, False, True, False
    )  # fmt: skip
    assert deid.patient_id_prefix == "TF-"


def test_deidentify_without_settings_uses_the_defaults() -> None:
    (step,) = MorphProfile.model_validate(YAML(typ="safe").load("steps:\n  - deidentify:\n")).steps
    assert isinstance(step, DeidentifyStep)
    assert (step.retain_uids, step.retain_dates, step.clean_descriptors, step.retain_private) == (
        False, False, True, False
    )  # fmt: skip


# -- every config mistake, with where it is and what to do ---------------------------------------------


@pytest.mark.parametrize(
    ("steps", "loc", "message"),
    [
        (
            [{"set": {"tag": "PatientNme", "value": "X"}}],
            ("steps", 0, "set", "tag"),
            "'PatientNme' is not a DICOM keyword (did you mean PatientName?)",
        ),
        (
            [{"copy": {"from": "AccessionNumbr", "to": "StudyID"}}],
            ("steps", 0, "copy", "from"),
            "'AccessionNumbr' is not a DICOM keyword (did you mean AccessionNumber?)",
        ),
        (
            [{"remove": {"tag": "NoSuchThingAtAll"}}],
            ("steps", 0, "remove", "tag"),
            "'NoSuchThingAtAll' is not a DICOM keyword",
        ),
        (
            [{"sett": {"tag": "PatientID", "value": "X"}}],
            ("steps", 0),
            "'sett' is not a step (did you mean set?): use one of set, copy, remove, regex, prefix, suffix, deidentify",
        ),
        (
            [{"regex": {"tag": "PatientID", "pattern": "(", "replace": ""}}],
            ("steps", 0, "regex"),
            "pattern '(' does not compile: missing ), unterminated subpattern at position 0",
        ),
        (
            [{"regex": {"tag": "PatientID", "pattern": "(a)", "replace": r"\2"}}],
            ("steps", 0, "regex"),
            "replace refers to group '2', which pattern '(a)' does not have (it has 1 group(s))",
        ),
        (
            [{"regex": {"tag": "PatientID", "pattern": "(?P<x>a)", "replace": r"\g<y>"}}],
            ("steps", 0, "regex"),
            "replace refers to group 'y', which pattern '(?P<x>a)' does not have (it has 1 group(s))",
        ),
        (
            [{"set": {"tag": "StudyDate", "value": "2024-01-31"}}],
            ("steps", 0, "set"),
            "value '2024-01-31' does not fit StudyDate (VR DA): DA must be a date written YYYYMMDD, e.g. 20240131",
        ),
        (
            [{"set": {"tag": "StudyTime", "value": "25:00"}}],
            ("steps", 0, "set"),
            "value '25:00' does not fit StudyTime (VR TM): TM must be a time written HHMMSS[.FFFFFF], e.g. 143000",
        ),
        (
            [{"set": {"tag": "AccessionNumber", "value": "A" * 17}}],
            ("steps", 0, "set"),
            f"value '{'A' * 17}' does not fit AccessionNumber (VR SH): 17 characters; SH allows at most 16",
        ),
        (
            [{"set": {"tag": "Modality", "value": "ct"}}],
            ("steps", 0, "set"),
            "value 'ct' does not fit Modality (VR CS): CS must be at most 16 characters of A-Z, 0-9, space and "
            "underscore",
        ),
        (
            [{"set": {"tag": "StudyInstanceUID", "value": "1.2.abc"}}],
            ("steps", 0, "set"),
            "value '1.2.abc' does not fit StudyInstanceUID (VR UI): UI must be digits and dots, at most 64 "
            "characters, e.g. 1.2.840.10008.1.2",
        ),
        (
            [{"set": {"tag": "PatientID", "value": "A\\B"}}],
            ("steps", 0, "set"),
            "PatientID holds a single value: remove the backslash from the value 'A\\B'",
        ),
        (
            [{"set": {"tag": "PixelData", "value": "x"}}],
            ("steps", 0, "set"),
            "PixelData has VR OB or OW: set works on text values only (AE, AS, CS, DA, DS, DT, IS, LO, LT, PN, SH, "
            "ST, TM, UC, UI, UR, UT); use remove to drop it instead",
        ),
        (
            [{"set": {"tag": "TransferSyntaxUID", "value": "1.2.840.10008.1.2"}}],
            ("steps", 0, "set", "tag"),
            "'TransferSyntaxUID' is file meta information, which the router writes itself: a step cannot change it",
        ),
        (
            [{"remove": {"tag": "SpecificCharacterSet"}}],
            ("steps", 0, "remove", "tag"),
            "'SpecificCharacterSet' cannot be changed by a morph step: it says how every text value is encoded",
        ),
        (
            [{"set": {"tag": "SOPClassUID", "value": "1.2.3"}}],
            ("steps", 0, "set", "tag"),
            "'SOPClassUID' cannot be changed by a morph step: it says what kind of object this is (and was "
            "negotiated with the destination)",
        ),
        (
            [{"remove": {}}],
            ("steps", 0, "remove"),
            "remove needs exactly one of tag: KEYWORD or private: true",
        ),
        (
            [{"remove": {"tag": "PatientID", "private": True}}],
            ("steps", 0, "remove"),
            "remove needs exactly one of tag: KEYWORD or private: true",
        ),
        (
            [{"prefix": {"tag": "StudyDate", "value": "1"}}],
            ("steps", 0, "prefix"),
            "StudyDate has VR DA (a date written YYYYMMDD, e.g. 20240131): a prefix would make it invalid",
        ),
        (
            [{"suffix": {"tag": "AccessionNumber", "value": "\\X"}}],
            ("steps", 0, "suffix"),
            "AccessionNumber holds a single value: remove the backslash from the suffix '\\X'",
        ),
        (
            [{"copy": {"from": "PatientID", "to": "PatientID"}}],
            ("steps", 0, "copy"),
            "copy from PatientID to itself does nothing: name two different keywords",
        ),
        (
            [{"copy": {"from": "Rows", "to": "PatientID"}}],
            ("steps", 0, "copy"),
            "Rows has VR US: copy works on text values only (AE, AS, CS, DA, DS, DT, IS, LO, LT, PN, SH, ST, TM, UC, "
            "UI, UR, UT); use remove to drop it instead",
        ),
        (
            [{"deidentify": {}}, {"deidentify": {"retain_dates": True}}],
            ("steps",),
            "deidentify appears twice: once per profile is enough (its options go in one step)",
        ),
        (
            [{"deidentify": {"patient_id_prefix": "bad prefix!"}}],
            ("steps", 0, "deidentify", "patient_id_prefix"),
            "patient_id_prefix 'bad prefix!' may hold only letters, digits, '.', '_' and '-' (at most 32)",
        ),
        (
            ["set"],
            ("steps", 0),
            "a step is a mapping with one key, the step's name (set, copy, remove, regex, prefix, suffix, "
            "deidentify); got str",
        ),
        (
            [{"set": {"tag": "PatientID", "value": "X"}, "remove": {"tag": "PatientID"}}],
            ("steps", 0),
            "a step is a mapping with one key, the step's name (set, copy, remove, regex, prefix, suffix, "
            "deidentify); got keys set, remove",
        ),
        (
            [{"set": "PatientID"}],
            ("steps", 0),
            "the settings of step 'set' must be a mapping, e.g. - set: {tag: InstitutionName, value: HOSPITAL}",
        ),
    ],
)
def test_config_mistakes_name_the_place_and_the_fix(steps: list[Any], loc: tuple[Any, ...], message: str) -> None:
    assert only_error(steps) == (loc, message)


def test_unknown_and_missing_settings_are_reported_at_the_setting() -> None:
    loc, _ = only_error([{"set": {"tag": "PatientID"}}])
    assert loc == ("steps", 0, "set", "value")
    loc, _ = only_error([{"set": {"tag": "PatientID", "value": "X", "valeu": "Y"}}])
    assert loc == ("steps", 0, "set", "valeu")
    loc, _ = only_error([{"deidentify": {"retain_everything": True}}])
    assert loc == ("steps", 0, "deidentify", "retain_everything")


def test_a_profile_needs_steps() -> None:
    loc, message = only_error([])
    assert loc == ("steps",)
    assert "at least 1 item" in message


# -- each step on a real object -------------------------------------------------------------------------


def test_set_replaces_or_adds_and_records_hashes_not_values() -> None:
    ds = ct()
    old = ds.InstitutionName
    changes = run(
        ds,
        {"set": {"tag": "InstitutionName", "value": "PARTNER"}},
        {"set": {"tag": "ImageType", "value": "DERIVED\\SECONDARY"}},
    )
    assert ds.InstitutionName == "PARTNER"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert changes[0] == Change("site", "InstitutionName", "set", value_sha(old), value_sha("PARTNER"))

    assert "InstitutionalDepartmentName" not in ds
    (added,) = run(ds, {"set": {"tag": "InstitutionalDepartmentName", "value": "RADIOLOGY"}})
    assert ds.InstitutionalDepartmentName == "RADIOLOGY"
    assert added.old_sha is None and added.new_sha == value_sha("RADIOLOGY")


def test_set_to_empty_empties() -> None:
    ds = ct()
    run(ds, {"set": {"tag": "InstitutionName", "value": ""}})
    assert ds.InstitutionName == ""


def test_copy_copies_and_skips_a_missing_source() -> None:
    ds = ct()
    ds.AccessionNumber = "ACC123"
    (change,) = run(ds, {"copy": {"from": "AccessionNumber", "to": "StudyID"}})
    assert ds.StudyID == "ACC123"
    assert change.action == "copy" and change.new_sha == value_sha("ACC123")

    del ds.AccessionNumber
    before = ds.StudyID
    assert run(ds, {"copy": {"from": "AccessionNumber", "to": "StudyID"}}) == []
    assert ds.StudyID == before


def test_copy_between_vrs_converts_the_text() -> None:
    ds = ct()
    run(ds, {"copy": {"from": "PatientName", "to": "OtherPatientIDs"}})
    assert ds.OtherPatientIDs == str(ds.PatientName)


def test_remove_tag_and_remove_private() -> None:
    ds = ct()
    (change,) = run(ds, {"remove": {"tag": "InstitutionName"}})
    assert "InstitutionName" not in ds
    assert change.action == "remove" and change.new_sha is None and change.old_sha is not None
    assert run(ds, {"remove": {"tag": "InstitutionName"}}) == []  # already gone: nothing to do

    assert any(elem.tag.is_private for elem in ds)
    (change,) = run(ds, {"remove": {"private": True}})
    assert change == Change("site", "private", "remove", None, None)
    assert not any(elem.tag.is_private for elem in ds)
    assert run(ds, {"remove": {"private": True}}) == []


def test_regex_rewrites_each_value_including_person_names() -> None:
    ds = ct()
    ds.PatientName = "Doe^John"
    ds.OtherPatientIDs = ["A-1", "B-2"]
    changes = run(
        ds,
        {"regex": {"tag": "PatientName", "pattern": r"^(\w+)\^(\w+)$", "replace": r"\2^\1"}},
        {"regex": {"tag": "OtherPatientIDs", "pattern": "-", "replace": ""}},
    )
    assert str(ds.PatientName) == "John^Doe"
    assert list(ds.OtherPatientIDs) == ["A1", "B2"]
    assert [c.action for c in changes] == ["regex", "regex"]
    assert run(ds, {"regex": {"tag": "PatientName", "pattern": "NOMATCH", "replace": "x"}}) == []


def test_prefix_and_suffix_leave_missing_and_empty_values_alone() -> None:
    ds = ct()
    ds.PatientID = "12345"
    ds.AccessionNumber = ""
    changes = run(
        ds,
        {"prefix": {"tag": "PatientID", "value": "N-"}},
        {"suffix": {"tag": "PatientID", "value": "-X"}},
        {"prefix": {"tag": "AccessionNumber", "value": "N-"}},
        {"prefix": {"tag": "OtherPatientIDs", "value": "N-"}},
    )
    assert ds.PatientID == "N-12345-X"
    assert ds.AccessionNumber == ""
    assert "OtherPatientIDs" not in ds
    assert [(c.keyword, c.action) for c in changes] == [("PatientID", "prefix"), ("PatientID", "suffix")]
    assert changes[0].old_sha == value_sha("12345") and changes[0].new_sha == value_sha("N-12345")


def test_profiles_run_in_the_given_order() -> None:
    ds = ct()
    ds.PatientID = "7"
    route = profile({"prefix": {"tag": "PatientID", "value": "R-"}})
    node = profile({"prefix": {"tag": "PatientID", "value": "N-"}})
    changes = apply_profiles(ds, [("route-profile", route), ("node-profile", node)], MemoryUidMapper())
    assert ds.PatientID == "N-R-7"
    assert [c.profile for c in changes] == ["route-profile", "node-profile"]


def test_file_meta_follows_a_new_sop_instance_uid() -> None:
    ds = ct()
    run(ds, {"set": {"tag": "SOPInstanceUID", "value": "1.2.3.4.5"}})
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"


def test_pixel_data_is_never_read() -> None:
    ds = ct(defer=True)
    run(
        ds,
        {"prefix": {"tag": "PatientID", "value": "N-"}},
        {"remove": {"private": True}},
        {"regex": {"tag": "StudyDescription", "pattern": "e", "replace": "E"}},
    )
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    assert isinstance(raw, RawDataElement) and raw.value is None  # still waiting on disk


# -- runtime failures: profile, step, keyword and fix in the message, the value nowhere ------------------


@pytest.mark.parametrize(
    ("value", "steps", "message"),
    [
        (
            "ACC-0123456789",  # SH, 14 characters
            [
                {"set": {"tag": "InstitutionName", "value": "X"}},
                {"prefix": {"tag": "AccessionNumber", "value": "SITE-"}},
            ],
            "morph profile 'site' step 2 (prefix AccessionNumber) would make AccessionNumber invalid (19 characters; "
            "SH allows at most 16): shorten the prefix in the profile, or add a regex step before it that shortens "
            "AccessionNumber",
        ),
        (
            "ACC-0123456789",
            [{"suffix": {"tag": "AccessionNumber", "value": "-NORTH"}}],
            "morph profile 'site' step 1 (suffix AccessionNumber) would make AccessionNumber invalid (20 characters; "
            "SH allows at most 16): shorten the suffix in the profile, or add a regex step before it that shortens "
            "AccessionNumber",
        ),
        (
            "ACC-0123456789",
            [{"regex": {"tag": "AccessionNumber", "pattern": "-", "replace": r"\\"}}],
            "morph profile 'site' step 1 (regex AccessionNumber) would make AccessionNumber invalid (a backslash, "
            "which separates values in SH): change the pattern or replace so the result fits",
        ),
        (
            "ACC-0123456789",
            [{"regex": {"tag": "AccessionNumber", "pattern": "-", "replace": "\n"}}],
            "morph profile 'site' step 1 (regex AccessionNumber) would make AccessionNumber invalid (a control "
            "character, which SH does not allow): change the pattern or replace so the result fits",
        ),
    ],
)
def test_runtime_overflow_fails_without_the_value(value: str, steps: list[dict[str, Any]], message: str) -> None:
    ds = ct()
    ds.AccessionNumber = value
    with pytest.raises(MorphFailed) as info:
        run(ds, *steps)
    assert str(info.value) == message
    assert value not in str(info.value)


def test_prefix_overflowing_lo_patient_id_fails_without_the_value() -> None:
    ds = ct()
    ds.PatientID = "ID" * 31  # 62 of LO's 64
    with pytest.raises(MorphFailed) as info:
        run(ds, {"prefix": {"tag": "PatientID", "value": "SITE-"}}, name="partner")
    message = str(info.value)
    assert message.startswith("morph profile 'partner' step 1 (prefix PatientID) would make PatientID invalid")
    assert "67 characters; LO allows at most 64" in message and "shorten the prefix" in message
    assert ds.PatientID not in message


def test_copy_into_a_shorter_vr_fails_without_the_value() -> None:
    ds = ct()
    ds.PatientID = "LONG-PATIENT-IDENTIFIER-42"
    with pytest.raises(MorphFailed) as info:
        run(ds, {"copy": {"from": "PatientID", "to": "StudyID"}})
    message = str(info.value)
    assert "(copy StudyID) would make StudyID invalid (26 characters; SH allows at most 16)" in message
    assert "add a regex step that shortens it first" in message
    assert ds.PatientID not in message


@pytest.mark.filterwarnings("ignore:Failed to encode value")  # pydicom's own note on the failed attempt
def test_a_value_the_character_set_cannot_hold_fails() -> None:
    ds = ct()  # ISO_IR 100 (Latin-1)
    run(ds, {"set": {"tag": "InstitutionName", "value": "Hôpital"}})  # Latin-1 has ô
    with pytest.raises(MorphFailed) as info:
        run(ds, {"set": {"tag": "InstitutionName", "value": "病院"}})
    assert "its character set ISO_IR 100 cannot hold some of the new characters" in str(info.value)
    assert "send objects in ISO_IR 192 (UTF-8)" in str(info.value)


# -- text in other character sets survives a morph ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["chrJapMulti.dcm", "chrH31.dcm", "chrH32.dcm", "chrKoreanMulti.dcm", "chrX1.dcm", "chrX2.dcm",
             "chrGreek.dcm", "chrRuss.dcm", "chrArab.dcm", "chrHbrw.dcm", "chrFrenMulti.dcm", "chrI2.dcm"]
)  # fmt: skip
def test_prefixing_a_multi_byte_name_round_trips(name: str) -> None:
    (path,) = get_charset_files(name)
    ds = pydicom.dcmread(path)
    original = str(ds.PatientName)
    charset = ds.SpecificCharacterSet
    run(ds, {"prefix": {"tag": "PatientName", "value": "N-"}})
    again = roundtrip(ds)
    assert str(again.PatientName) == "N-" + original
    assert again.SpecificCharacterSet == charset
    for elem in pydicom.dcmread(path):
        if elem.keyword != "PatientName" and elem.tag.element != 0:  # group lengths are not written again
            assert again[elem.tag].value == elem.value, elem.keyword


# -- the in-memory UID mapper ------------------------------------------------------------------------------


def test_memory_uid_mapper_is_stable_per_namespace() -> None:
    mapper = MemoryUidMapper()
    first = mapper.map_uid("a", "1.2.3")
    assert mapper.map_uid("a", "1.2.3") == first
    assert first.startswith("2.25.") and len(first) <= 64
    assert mapper.map_uid("b", "1.2.3") != first
    assert mapper.map_uid("a", "1.2.4") != first


@pytest.mark.parametrize(("name", "text"), [("chrJapMulti.dcm", "山田病院"), ("chrKoreanMulti.dcm", "서울병원"),
                                            ("chrX2.dcm", "北京医院"), ("chrRuss.dcm", "Больница")])  # fmt: skip
def test_setting_text_the_character_set_holds_round_trips(name: str, text: str) -> None:
    (path,) = get_charset_files(name)
    ds = pydicom.dcmread(path)
    run(ds, {"set": {"tag": "InstitutionName", "value": text}})
    assert roundtrip(ds).InstitutionName == text
