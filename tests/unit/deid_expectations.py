"""What the default de-identification (Basic Profile + Clean Descriptors) must do to pydicom's bundled
files, attribute by attribute, written from PS3.15 Table E.1-1 rather than from the code's output.

Every top-level public attribute of the original is either listed here or must come out unchanged.
PatientID and PatientName always become the pseudonym; private attributes are always gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Expected:
    file: str
    removed: frozenset[str]  # X (and X/D)
    emptied: frozenset[str]  # Z, X/Z, and Z/D or X/Z/D for non-dates
    new_uids: frozenset[str]  # U
    dummies: dict[str, str] = field(default_factory=dict)  # D, and Z/D or X/Z/D for dates and times
    cleaned: dict[str, str] = field(default_factory=dict)  # C: descriptors minus the object's own identifiers
    sequences_changed: frozenset[str] = frozenset()  # kept, with attributes inside de-identified


ADDED = frozenset(
    {"PatientIdentityRemoved", "LongitudinalTemporalInformationModified", "DeidentificationMethod",
     "DeidentificationMethodCodeSequence"}
)  # fmt: skip

CT_SMALL = Expected(
    file="CT_small.dcm",
    removed=frozenset(
        {"InstanceCreationDate", "SeriesDate", "SeriesTime", "TimezoneOffsetFromUTC", "OtherPatientIDsSequence",
         "PatientAge", "PatientWeight", "DataSetTrailingPadding"}
    ),
    emptied=frozenset(
        {"StudyDate", "StudyTime", "AcquisitionDate", "AcquisitionTime", "InstitutionName", "StationName",
         "PatientSex", "StudyID"}
    ),
    new_uids=frozenset({"InstanceCreatorUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "FrameOfReferenceUID"}),
    dummies={"InstanceCreationTime": "000000", "ContentDate": "19000101", "ContentTime": "000000"},
)  # fmt: skip

MR_SMALL = Expected(
    file="MR_small.dcm",
    removed=frozenset(
        {"InstanceCreationDate", "SeriesDate", "SeriesTime", "TimezoneOffsetFromUTC", "NameOfPhysiciansReadingStudy",
         "PatientSize", "PatientWeight", "DataSetTrailingPadding"}
    ),
    emptied=frozenset(
        {"StudyDate", "StudyTime", "InstitutionName", "StationName", "OperatorsName", "PatientSex",
         "DeviceSerialNumber", "StudyID"}
    ),
    new_uids=frozenset({"InstanceCreatorUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "FrameOfReferenceUID"}),
    dummies={"InstanceCreationTime": "000000"},
)  # fmt: skip

RTPLAN = Expected(
    file="rtplan.dcm",
    removed=frozenset({"InstanceCreationDate", "InstitutionalDepartmentName", "RTPlanDate", "RTPlanTime"}),
    emptied=frozenset({"StudyDate", "StudyTime", "InstitutionName", "StationName", "OperatorsName", "PatientSex",
                       "StudyID"}),
    new_uids=frozenset({"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"}),
    dummies={"InstanceCreationTime": "000000"},
    # Beam Sequence: Institution Name, Department, Device Serial Number, Treatment Machine Name inside;
    # the other two: Referenced SOP Instance UID inside.
    sequences_changed=frozenset({"BeamSequence", "ReferencedRTPlanSequence", "ReferencedStructureSetSequence"}),
)  # fmt: skip

RTSTRUCT = Expected(
    file="rtstruct.dcm",
    removed=frozenset({"InstanceCreationDate"}),
    # Structure Set Label/Name are descriptors: kept, but this file's Study ID 'sep30' is cleaned out of them.
    emptied=frozenset({"StudyDate", "StudyTime", "AccessionNumber", "StationName", "OperatorsName",
                       "PatientBirthDate", "PatientSex", "StudyID", "StructureSetDate", "StructureSetTime",
                       "StructureSetLabel", "StructureSetName"}),
    new_uids=frozenset({"InstanceCreatorUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"}),
    dummies={"InstanceCreationTime": "000000"},
    sequences_changed=frozenset({"ReferencedFrameOfReferenceSequence", "StructureSetROISequence"}),
)  # fmt: skip

TEST_SR = Expected(
    file="test-SR.dcm",
    removed=frozenset({"InstanceCreationDate", "ObservationDateTime"}),
    emptied=frozenset(),
    new_uids=frozenset({"InstanceCreatorUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"}),
    # The patient's name is Test^S R: "Test" is cleaned out of the study description.
    dummies={"InstanceCreationTime": "000000", "ContentDate": "19000101", "ContentTime": "000000"},
    cleaned={"StudyDescription": "OFFIS Structured Reporting Document"},
    # Content and Verifying Observer Sequence are D: emptied. Predecessor Documents: UIDs inside replaced.
    sequences_changed=frozenset({"ContentSequence", "VerifyingObserverSequence", "PredecessorDocumentsSequence"}),
)  # fmt: skip

ALL = (CT_SMALL, MR_SMALL, RTPLAN, RTSTRUCT, TEST_SR)
