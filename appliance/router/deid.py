"""De-identification: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile, with the
Retain UIDs, Retain Longitudinal Temporal Information (Full Dates) and Clean Descriptors options.

The action table (Table E.1-1, Basic Profile column, 2026c edition) is dicom-anonymizer's copy: a
maintained transcription of the standard, imported as data. Its anonymizing functions are not used:
they keep a process-wide UID dict and write dummy dates where the standard says remove. The option
columns are not in that package; they are the short lists further down, taken from the same table.

How each action is carried out (the standard leaves a choice where it names two or three):
  X remove · Z empty · D dummy value of the VR · K keep · U new UID from the UidMapper, so the same
  UID always gets the same replacement (re-sends match, references between objects stay intact)
  X/Z → Z · X/D → X · Z/D, X/Z/D → a dummy for dates and times (conformant where Type 1), else Z
  X/Z/U* (Referenced/Source Image Sequence) → kept, with the UIDs inside replaced
  D on a sequence → emptied: a dummy item cannot be invented, and its content is identifying (this
  removes an SR's Content Sequence; the Clean Structured Content option is not offered)
  C (Clean Descriptors) → kept, minus this object's own names, IDs, accession, birth date and institution
Attributes the table does not list are kept; every sequence is walked, so the table applies at any
depth. Patient ID and Name become one pseudonym per (namespace, Patient ID). Private attributes are
removed unless retain_private. Pixel data is never read (nor cleaned: see allow_burned_in).
"""

from __future__ import annotations

import functools
import hashlib
import re

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from appliance.router.morph import TEXT_VRS, Change, MorphFailed, UidMapper, text_values, value_sha, vr_of

# dicom-anonymizer's lists, by the Table E.1-1 action each one holds.
_TABLE_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

# What is done to an attribute, once the table's action and the options are resolved.
REMOVE, EMPTY, DUMMY, NEW_UID, KEEP, CLEAN = "remove", "empty", "dummy", "uid", "keep", "clean"

_DATE_VRS = frozenset({"DA", "DT", "TM"})
_DUMMIES = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "IS": "0", "DS": "0", "AS": "000D"}
_DUMMY_TEXT = "ANONYMOUS"


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(keyword_dict[k] for k in keywords)


# Retain UIDs option (rtnUIDsOpt K): every U, plus these sequences that only carry references.
_UID_SEQUENCES = _tags(
    "ReferencedImageSequence",
    "SourceImageSequence",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
)
# Retain Longitudinal Temporal Information, Full Dates (rtnLongFullDatesOpt K): every date and time in
# the table except the birth date and time, plus the time zone offset.
_NOT_RETAINED_DATES = _tags("PatientBirthDate", "PatientBirthTime")
_RETAINED_WITH_DATES = _tags("TimezoneOffsetFromUTC")
# Clean Descriptors option (cleanDescOpt C).
_DESCRIPTORS = _tags(
    "AcquisitionComments", "AcquisitionDeviceProcessingDescription", "AcquisitionFieldOfViewLabel",
    "AcquisitionProtocolDescription", "AdditionalPatientHistory", "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription", "Allergies", "BeamDescription", "BolusDescription",
    "ClinicalTrialSeriesDescription", "ClinicalTrialTimePointDescription", "CommentsOnRadiationDose",
    "CommentsOnThePerformedProcedureStep", "CompensatorDescription", "ConceptualVolumeCombinationDescription",
    "ConceptualVolumeDescription", "ContainerDescription", "ContrastBolusAgent", "ContributionDescription",
    "DecompositionDescription", "DerivationDescription", "DeviceSettingDescription",
    "DischargeDiagnosisDescription", "DoseReferenceDescription", "EntityDescription", "EntityLabel",
    "EntityLongLabel", "EntityName", "EquipmentFrameOfReferenceDescription", "FixationDeviceDescription",
    "FractionationNotes", "FractionGroupDescription", "FrameComments", "IdentifyingComments", "ImageComments",
    "ImagingServiceRequestComments", "Impressions", "InterlockDescription", "InterlockOriginDescription",
    "InterpretationDiagnosisDescription", "InterpretationText", "LabelText", "LongDeviceDescription",
    "MakerNote", "MedicalAlerts", "MultienergyAcquisitionDescription", "Occupation", "PatientComments",
    "PatientState", "PerformedProcedureStepDescription", "PrescriptionDescription", "PrescriptionNotes",
    "PrescriptionNotesSequence", "PriorTreatmentDoseDescription", "ProtocolName",
    "RadiationDoseIdentificationLabel", "RadiationDoseInVivoMeasurementLabel",
    "RadiationGenerationModeDescription", "RadiationGenerationModeLabel", "ReasonForOmissionDescription",
    "ReasonForRequestedProcedureCodeSequence", "ReasonForStudy", "ReasonForSuperseding",
    "ReasonForTheImagingServiceRequest", "ReasonForTheRequestedProcedure", "ReasonForVisit",
    "ReasonForVisitCodeSequence", "RequestAttributesSequence", "RequestedContrastAgent",
    "RequestedProcedureComments", "RequestedProcedureDescription", "RequestedSeriesDescription",
    "RespiratoryMotionCompensationTechniqueDescription", "ResultsComments", "ROIDescription",
    "ROIGenerationDescription", "ROIName", "ROIObservationDescription", "ROIObservationLabel",
    "RTPhysicianIntentNarrative", "RTPlanDescription", "RTPlanLabel", "RTPlanName", "RTPrescriptionLabel",
    "RTToleranceSetLabel", "RTTreatmentApproachLabel", "ScheduledProcedureStepDescription", "SeriesDescription",
    "ServiceEpisodeDescription", "SetupTechniqueDescription", "ShieldingDeviceDescription",
    "SpecimenDetailedDescription", "SpecimenShortDescription", "StructureSetDescription", "StructureSetLabel",
    "StructureSetName", "StudyComments", "StudyDescription", "TreatmentPositionGroupLabel", "TreatmentSite",
    "TreatmentTechniqueNotes", "TreatmentToleranceViolationDescription", "UserContentLabel",
    "UserContentLongLabel", "VisitComments",
)  # fmt: skip
# Instance UIDs that the table does not list but that name this or a related instance: replaced too.
_UNLISTED_INSTANCE_UIDS = _tags(
    "SOPInstanceUIDOfConcatenationSource", "MultiFrameSourceSOPInstanceUID",
    "RadiopharmaceuticalAdministrationEventUID", "EquipmentFrameOfReferenceUID", "TableFrameOfReferenceUID",
    "TargetFrameOfReferenceUID", "VolumeFrameOfReferenceUID", "AssertionUID", "ReferencedAssertionUID",
    "ReferencedFiducialUID", "VolumetricPresentationInputSetUID",
)  # fmt: skip

# Where the Clean Descriptors option looks for the identifiers it strips out of descriptions.
_NAME_SOURCES = _tags(
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "ResponsiblePerson",
)  # fmt: skip
_VALUE_SOURCES = _tags(
    "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "AdmissionID", "PatientBirthDate",
    "InstitutionName", "InstitutionAddress", "PatientAddress", "StationName",
)  # fmt: skip

# Deidentification Method Code Sequence values (PS3.16 CID 7050).
_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
_RETAIN_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
_RETAIN_UIDS = ("113110", "Retain UIDs Option")

_PATIENT_ID = keyword_dict["PatientID"]
_PATIENT_NAME = keyword_dict["PatientName"]
_STUDY_UID = keyword_dict["StudyInstanceUID"]
_MASKED_GROUPS = (0x5000, 0x6000)  # curves and overlays: the table names them as (50xx,xxxx), (60xx,3000)...


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None  # newer than pydicom's dictionary


def _resolve(action: str, vr: str | None) -> str:
    if action == "K":
        return KEEP
    if vr is None:
        return REMOVE  # no VR to write an empty or dummy value with
    if action == "X" or action == "X/D":
        return REMOVE
    if action == "U" or (action == "D" and vr == "UI"):
        return NEW_UID
    if action == "Z" or action == "X/Z":
        return EMPTY
    if action == "D":
        return DUMMY
    if action in ("Z/D", "X/Z/D"):
        return DUMMY if vr in _DATE_VRS else EMPTY
    if action == "X/Z/U*":
        return KEEP  # the sequence is walked and the UIDs in it replaced
    if action == "C":
        return CLEAN
    raise ValueError(f"unknown PS3.15 action {action!r}")


@functools.cache
def _standard_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1 actions by tag, and the masked entries (group/element ranges) separately."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _TABLE_CATEGORIES.items():
        for entry in getattr(table, category):
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                group, element, group_mask, element_mask = entry
                masked.append((group, element, group_mask, element_mask, action))
    return exact, tuple(masked)


@functools.cache
def operations(
    retain_uids: bool, retain_dates: bool, clean_descriptors: bool
) -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """What happens to each listed attribute under these options (see the module docstring)."""
    exact, masked = _standard_table()
    ops: dict[int, str] = {}
    for tag, action in exact.items():
        vr = _dictionary_vr(tag)
        op = _resolve(action, vr)
        if retain_uids and (op == NEW_UID or tag in _UID_SEQUENCES):
            op = KEEP
        if retain_dates and ((vr in _DATE_VRS and tag not in _NOT_RETAINED_DATES) or tag in _RETAINED_WITH_DATES):
            op = KEEP
        if clean_descriptors and tag in _DESCRIPTORS:
            op = CLEAN
        ops[tag] = op
    for tag in _UNLISTED_INSTANCE_UIDS:
        ops.setdefault(tag, KEEP if retain_uids else NEW_UID)
    return ops, tuple((g, e, gm, em, _resolve(a, None)) for g, e, gm, em, a in masked)


def _is_deferred(ds: Dataset, tag: int) -> bool:
    raw = ds.get_item(tag, keep_deferred=True)
    return isinstance(raw, RawDataElement) and raw.value is None and raw.length > 0


def _text(ds: Dataset, tag: int) -> str:
    return "\\".join(text_values(ds[tag]))


def _scrubber(ds: Dataset) -> re.Pattern[str] | None:
    """A pattern matching this object's own identifiers, to strip from the descriptions it keeps."""
    terms: set[str] = set()
    for tag in _NAME_SOURCES | _VALUE_SOURCES:
        if tag not in ds or _is_deferred(ds, tag):
            continue
        text = _text(ds, tag)
        parts = re.split(r"[\^=\\\s,.]+", text) if tag in _NAME_SOURCES else text.split("\\")
        terms.update(p.strip() for p in parts if len(p.strip()) >= 2)
    if not terms:
        return None
    ordered = sorted(terms, key=len, reverse=True)  # longest first, so "SMITH JOHN" beats "SMITH"
    words = [re.escape(t) for t in ordered if t.isascii()]
    # Whole words only for Latin text ("ANN" must not eat "SCANNER"); CJK text has no spaces to bound words.
    alternatives = [rf"(?<!\w)(?:{'|'.join(words)})(?!\w)"] if words else []
    alternatives += [re.escape(t) for t in ordered if not t.isascii()]
    return re.compile("|".join(alternatives), re.IGNORECASE)


class _Deidentifier:
    def __init__(
        self,
        uids: UidMapper,
        namespace: str,
        ops: dict[int, str],
        masked: tuple[tuple[int, int, int, int, str], ...],
        retain_private: bool,
        scrub: re.Pattern[str] | None,
    ) -> None:
        self.uids = uids
        self.uid_namespace = f"{namespace}:UID"
        self.ops = ops
        self.masked = masked
        self.retain_private = retain_private
        self.scrub = scrub
        self.private_removed = 0

    def new_uid(self, uid: str) -> str:
        if not uid or uid in UID_dictionary:  # well-known UIDs (classes, syntaxes) identify no one
            return uid
        return self.uids.map_uid(self.uid_namespace, uid)

    def op_for(self, tag: int) -> str:
        op = self.ops.get(tag)
        if op is not None:
            return op
        group, element = tag >> 16, tag & 0xFFFF
        if group & 0xFF00 in _MASKED_GROUPS:
            for g, e, group_mask, element_mask, masked_op in self.masked:
                if group & group_mask == g and element & element_mask == e:
                    return masked_op
        return KEEP

    def walk(self, ds: Dataset, top: list[Change] | None = None, profile: str = "") -> bool:
        """De-identify `ds` in place; True if anything changed. At the top level, record each change."""
        changed = False
        for tag in list(ds.keys()):
            if tag.is_private:
                if not self.retain_private:
                    del ds[tag]
                    self.private_removed += 1
                    changed = True
                continue
            if top is not None and tag in (_PATIENT_ID, _PATIENT_NAME):
                continue  # pseudonyms, set by deidentify()
            op = self.op_for(tag)
            vr = vr_of(ds, tag)
            if op == KEEP and vr != "SQ":
                continue  # the common case: nothing to read
            old = _text(ds, tag) if top is not None and vr in TEXT_VRS and not _is_deferred(ds, tag) else None
            action = self.apply(ds, tag, op, vr)
            if action is None:
                continue
            changed = True
            if top is not None:
                new = _text(ds, tag) if tag in ds and vr in TEXT_VRS else None
                keyword = keyword_for_tag(tag) or str(tag)
                top.append(Change(profile, keyword, action, None if old is None else value_sha(old), _sha(new)))
        return changed

    def apply(self, ds: Dataset, tag: int, op: str, vr: str) -> str | None:
        """Carry out `op` on one attribute; the action taken, or None when nothing changed."""
        if op == CLEAN and vr not in TEXT_VRS and vr != "SQ":
            op = REMOVE  # binary "descriptions" (e.g. Maker Note) cannot be cleaned
        if op in (EMPTY, DUMMY) and vr not in TEXT_VRS and vr != "SQ":
            op = REMOVE  # no empty or dummy form worth writing for binary and numeric values
        if op == REMOVE:
            del ds[tag]
            return REMOVE
        if op == EMPTY or (op == DUMMY and vr == "SQ"):
            raw = ds.get_item(tag, keep_deferred=True)
            already = raw.length == 0 if isinstance(raw, RawDataElement) else raw.is_empty
            ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else "")
            return None if already else EMPTY
        if op == DUMMY:
            ds[tag] = DataElement(tag, vr, _DUMMIES.get(vr, _DUMMY_TEXT))
            return DUMMY
        if op == NEW_UID:
            return self.replace_uids(ds, tag)
        if vr == "SQ":  # KEEP or CLEAN: the table applies inside
            inside = [self.walk(item) for item in ds[tag].value]
            return "items" if any(inside) else None
        if op == CLEAN:
            return self.clean(ds, tag)
        return None

    def replace_uids(self, ds: Dataset, tag: int) -> str | None:
        elem = ds[tag]
        values = text_values(elem)
        new = [self.new_uid(v) for v in values]
        if new == values:
            return None
        elem.value = new[0] if len(new) == 1 else new
        return NEW_UID

    def clean(self, ds: Dataset, tag: int) -> str | None:
        if self.scrub is None:
            return None
        elem = ds[tag]
        values = text_values(elem)
        new = [re.sub(r" {2,}", " ", self.scrub.sub("", v)).strip() for v in values]
        if new == values:
            return None
        elem.value = "" if not new else new[0] if len(new) == 1 else new
        return CLEAN


def _sha(text: str | None) -> str | None:
    return None if text is None else value_sha(text)


def _code_item(code: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], "DCM", code[1]
    return item


def deidentify(
    ds: Dataset,
    uids: UidMapper,
    *,
    profile: str,
    namespace: str,
    retain_uids: bool = False,
    retain_dates: bool = False,
    clean_descriptors: bool = True,
    retain_private: bool = False,
    patient_id_prefix: str = "",
    allow_burned_in: bool = False,
) -> list[Change]:
    """De-identify `ds` in place (see the module docstring); what changed, for the audit log.

    `namespace` keeps pseudonyms apart: the same (namespace, original) always gives the same new UID
    and patient pseudonym, so re-sends and related objects agree at the destination.
    """
    if not allow_burned_in and str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise MorphFailed(
            f"morph profile '{profile}' (deidentify): the object is marked BurnedInAnnotation YES, so its "
            "pixels may show who the patient is, and the router does not clean pixel data: route such "
            "objects elsewhere, or set allow_burned_in: true in the deidentify step if this destination may "
            "receive them"
        )
    ops, masked = operations(retain_uids, retain_dates, clean_descriptors)
    worker = _Deidentifier(uids, namespace, ops, masked, retain_private, _scrubber(ds) if clean_descriptors else None)
    changes: list[Change] = []

    # One pseudonym per patient: keyed on the Patient ID (the name when there is none, else the study).
    old_id = _text(ds, _PATIENT_ID) if _PATIENT_ID in ds else ""
    old_name = _text(ds, _PATIENT_NAME) if _PATIENT_NAME in ds else ""
    key = old_id or old_name or (_text(ds, _STUDY_UID) if _STUDY_UID in ds else "")
    mapped = uids.map_uid(f"{namespace}:PatientID", key)
    pseudonym = patient_id_prefix + hashlib.sha256(mapped.encode("ascii")).hexdigest()[:16].upper()
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    changes.append(Change(profile, "PatientID", "pseudonym", _sha(old_id or None), value_sha(pseudonym)))
    changes.append(Change(profile, "PatientName", "pseudonym", _sha(old_name or None), value_sha(pseudonym)))

    worker.walk(ds, changes, profile)
    if worker.private_removed:
        changes.append(Change(profile, "private", REMOVE, None, None))

    # Say what was done (PS3.15 E.1.1): receivers and auditors read these.
    codes = [_BASIC_PROFILE]
    codes += [_CLEAN_DESCRIPTORS] if clean_descriptors else []
    codes += [_RETAIN_DATES] if retain_dates else []
    codes += [_RETAIN_UIDS] if retain_uids else []
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if retain_dates else "REMOVED"
    # Appended to, not replaced: an upstream de-identification stays on record.
    methods = text_values(ds["DeidentificationMethod"]) if "DeidentificationMethod" in ds else []
    methods += [meaning for _, meaning in codes]
    methods += ["private attributes retained, not vetted"] if retain_private else []
    ds.DeidentificationMethod = methods
    sequence = list(ds.get("DeidentificationMethodCodeSequence", None) or [])
    ds.DeidentificationMethodCodeSequence = Sequence(sequence + [_code_item(c) for c in codes])
    changes.append(Change(profile, "DeidentificationMethod", "set", None, value_sha("\\".join(methods))))
    return changes
