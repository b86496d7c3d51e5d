"""Tag morphing: per-destination edits of an outgoing object (set, copy, remove, regex, prefix, suffix,
de-identify), described in `morph_profiles` and applied on the way out, never to the spooled original.

Profiles are checked when the config loads (keywords exist, values fit their VR, regexes compile), so
at send time a step can only fail because of the object's own values, e.g. a prefix that makes a
16-character SH too long. That raises MorphFailed with a message naming the profile, step and keyword,
but never the value: values are patient data, and the message ends up in the queue and the logs.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pydicom.valuerep import VALIDATORS


# Same rules as config.Strict; defined here because config.py imports this module.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MorphFailed(Exception):
    """A step would produce an invalid object. The message names profile, step and keyword, never a value."""


class UidMapper(Protocol):
    def map_uid(self, namespace: str, original: str) -> str:
        """The replacement for `original` in `namespace`: the same answer for the same pair, forever."""
        ...


class MemoryUidMapper:
    """UidMapper kept in a dict (tests, one-off tools); the router's own is the Store's uid_map table."""

    def __init__(self) -> None:
        self._map: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def map_uid(self, namespace: str, original: str) -> str:
        with self._lock:
            key = (namespace, original)
            if key not in self._map:
                self._map[key] = generate_uid(prefix=None)  # 2.25.<uuid as integer>
            return self._map[key]


@dataclass(frozen=True)
class Change:
    """One attribute a step changed, for the audit log: hashes of the values, never the values."""

    profile: str
    keyword: str
    action: str
    old_sha: str | None
    new_sha: str | None


def value_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# VR rules, phrased for the person writing the profile

# Values a step can produce: text VRs only (binary and numeric attributes are not edited by morphing).
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# Single-valued by definition: a backslash is part of the text, not a value separator.
_UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_MAX_CHARS = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "LT": 10240, "SH": 16, "ST": 1024, "UI": 64}
_TEXT_CONTROLS_OK = frozenset("\t\n\f\r\x1b")  # LT/ST/UT may hold line breaks; ESC starts ISO 2022 escapes
_ESCAPE_ONLY = frozenset("\x1b")

VR_RULES = {
    "AE": "1-16 printable ASCII characters",
    "AS": "an age like 045Y (three digits, then D, W, M or Y)",
    "CS": "at most 16 characters of A-Z, 0-9, space and underscore",
    "DA": "a date written YYYYMMDD, e.g. 20240131",
    "DS": "a decimal number of at most 16 characters, e.g. 2.5",
    "DT": "a date-time written YYYYMMDDHHMMSS[.FFFFFF][+HHMM], e.g. 20240131143000",
    "IS": "a whole number of at most 12 characters",
    "LO": "at most 64 characters, no backslash or control characters",
    "LT": "at most 10240 characters",
    "PN": "a person name like FAMILY^GIVEN, at most 3 '='-separated groups of at most 64 characters",
    "SH": "at most 16 characters, no backslash or control characters",
    "ST": "at most 1024 characters",
    "TM": "a time written HHMMSS[.FFFFFF], e.g. 143000",
    "UC": "text without backslash or control characters",
    "UI": "digits and dots, at most 64 characters, e.g. 1.2.840.10008.1.2",
    "UR": "a URI without spaces",
    "UT": "text",
}


def vr_problem(vr: str, value: str) -> str | None:
    """What is wrong with one value of VR `vr`, without quoting it (it may be patient data).

    Returns None when it fits, else a phrase like "70 characters; LO allows at most 64".
    """
    if not value:
        return None
    limit = _MAX_CHARS.get(vr)
    if limit is not None and len(value) > limit:
        return f"{len(value)} characters; {vr} allows at most {limit}"
    if vr in _UNSPLIT_VRS:
        allowed = _TEXT_CONTROLS_OK
    elif "\\" in value:
        return f"a backslash, which separates values in {vr}"
    else:
        allowed = _ESCAPE_ONLY
    if any(ord(c) < 0x20 and c not in allowed for c in value):
        return f"a control character, which {vr} does not allow"
    if vr == "PN":
        groups = value.split("=")
        return f"PN must be {VR_RULES['PN']}" if len(groups) > 3 or any(len(g) > 64 for g in groups) else None
    validator = VALIDATORS.get(vr)
    if validator is not None and not validator(vr, value)[0]:
        return f"{vr} must be {VR_RULES[vr]}"
    return None


def split_values(vr: str, text: str) -> list[str]:
    """`A\\B` as the values it writes: two for most VRs, one for the VRs whose text may hold a backslash."""
    return [text] if vr in _UNSPLIT_VRS else text.split("\\")


def _unencodable(ds: Dataset, text: str) -> str | None:
    """The character set's name when the object's Specific Character Set cannot hold `text`."""
    if text.isascii():
        return None
    charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    encodings = convert_encodings(charset)
    # encode_string falls back to replacement characters, so a lossy encoding shows as a changed round trip.
    if decode_bytes(encode_string(text, encodings), encodings, set()) == text:
        return None
    return "\\".join(charset) if isinstance(charset, (list, MultiValue)) else str(charset)


def text_values(elem: DataElement) -> list[str]:
    """An element's values as text (a PN as FAMILY^GIVEN=..., as DICOM writes it); [] when empty."""
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def vr_of(ds: Dataset, tag: int) -> str:
    """An attribute's VR without reading its value (implicit-VR files leave it to the dictionary)."""
    raw = ds.get_item(tag, keep_deferred=True)
    vr = raw.VR if raw is not None else None
    if vr is None or vr == "UN":
        try:
            return dictionary_VR(tag)
        except KeyError:
            return vr or "UN"  # private, or newer than pydicom's dictionary
    return vr


def remove_private(ds: Dataset) -> int:
    """Remove private attributes at every depth without reading large values; how many were removed."""
    removed = 0
    for tag in list(ds.keys()):
        if tag.is_private:
            del ds[tag]
            removed += 1
        elif vr_of(ds, tag) == "SQ":
            for item in ds[tag].value:
                removed += remove_private(item)
    return removed


def _elem_text(elem: DataElement) -> str:
    return "\\".join(text_values(elem))


def _store(elem: DataElement, values: list[str]) -> None:
    elem.value = "" if not values else values[0] if len(values) == 1 else values


def _put(ds: Dataset, tag: int, vr: str, values: list[str]) -> None:
    elem = ds.get(tag)
    if elem is None:
        ds.add_new(tag, vr, "" if not values else values[0] if len(values) == 1 else values)
    else:
        _store(elem, values)


# ---------------------------------------------------------------------------------------------------
# Keywords

# Never edited by a step: the router writes the file meta itself, and these two change what the object is.
_PROTECTED = {
    "SpecificCharacterSet": "it says how every text value is encoded",
    "SOPClassUID": "it says what kind of object this is (and was negotiated with the destination)",
}


def _check_keyword(value: str) -> str:
    if value not in keyword_dict:
        close = difflib.get_close_matches(value, list(keyword_dict), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"'{value}' is not a DICOM keyword{hint}")
    if keyword_dict[value] >> 16 == 0x0002:
        raise ValueError(f"'{value}' is file meta information, which the router writes itself: a step cannot change it")
    if value in _PROTECTED:
        raise ValueError(f"'{value}' cannot be changed by a morph step: {_PROTECTED[value]}")
    return value


Keyword = Annotated[str, Field(description="DICOM keyword, e.g. PatientID"), AfterValidator(_check_keyword)]


def _text_vr(keyword: str, step: str) -> str:
    vr = dictionary_VR(keyword_dict[keyword])
    if vr not in TEXT_VRS:
        raise ValueError(
            f"{keyword} has VR {vr}: {step} works on text values only "
            f"({', '.join(sorted(TEXT_VRS))}); use remove to drop it instead"
        )
    return vr


def _check_value(keyword: str, vr: str, value: str, what: str = "value") -> None:
    if "\\" in value and vr not in _UNSPLIT_VRS and dictionary_VM(keyword_dict[keyword]) == "1":
        raise ValueError(f"{keyword} holds a single value: remove the backslash from the {what} '{value}'")
    for part in split_values(vr, value):
        problem = vr_problem(vr, part)
        if problem is not None:
            raise ValueError(f"{what} '{value}' does not fit {keyword} (VR {vr}): {problem}")


# ---------------------------------------------------------------------------------------------------
# Steps. In YAML each is a one-key mapping, e.g. `- set: {tag: InstitutionName, value: "X"}`; the key
# becomes `kind`, so an error's location reads like the YAML (steps[0].set.value).


class _Step(_Strict):
    kind: str
    _tag: int = PrivateAttr(0)
    _vr: str = PrivateAttr("")

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        raise NotImplementedError

    def _bind(self, keyword: str) -> None:
        self._tag = keyword_dict[keyword]
        self._vr = _text_vr(keyword, self.kind)


@dataclass(frozen=True)
class _Where:
    """Which profile and step is running, for messages and Change records."""

    profile: str
    number: int  # 1-based
    kind: str

    def fail(self, keyword: str, problem: str, fix: str) -> MorphFailed:
        return MorphFailed(
            f"morph profile '{self.profile}' step {self.number} ({self.kind} {keyword}) "
            f"would make {keyword} invalid ({problem}): {fix}"
        )


def _checked(ds: Dataset, where: _Where, keyword: str, vr: str, text: str, fix: str) -> str:
    problem = vr_problem(vr, text)
    if problem is not None:
        raise where.fail(keyword, problem, fix)
    charset = _unencodable(ds, text)
    if charset is not None:
        raise where.fail(
            keyword,
            f"its character set {charset} cannot hold some of the new characters",
            "use characters that set has, or send objects in ISO_IR 192 (UTF-8)",
        )
    return text


class SetStep(_Step):
    kind: Literal["set"]
    tag: Keyword
    value: str

    @model_validator(mode="after")
    def _fits_vr(self) -> SetStep:
        self._bind(self.tag)
        _check_value(self.tag, self._vr, self.value)
        return self

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        fix = "change the value in the profile"
        values = [_checked(ds, where, self.tag, self._vr, v, fix) for v in split_values(self._vr, self.value)]
        elem = ds.get(self._tag)
        old = _elem_text(elem) if elem is not None else None
        _put(ds, self._tag, self._vr, values)
        return [Change(where.profile, self.tag, "set", None if old is None else value_sha(old), value_sha(self.value))]


class CopyStep(_Step):
    kind: Literal["copy"]
    source: Keyword = Field(alias="from")
    to: Keyword

    @model_validator(mode="after")
    def _both_text(self) -> CopyStep:
        _text_vr(self.source, "copy")
        self._bind(self.to)
        if self.source == self.to:
            raise ValueError(f"copy from {self.source} to itself does nothing: name two different keywords")
        return self

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        source = ds.get(keyword_dict[self.source])
        if source is None:
            return []  # nothing to copy: the target is left as it is
        text = _elem_text(source)
        fix = f"copy into an attribute with room for {self.source}, or add a regex step that shortens it first"
        values = [_checked(ds, where, self.to, self._vr, v, fix) for v in text_values(source)]
        elem = ds.get(self._tag)
        old = _elem_text(elem) if elem is not None else None
        _put(ds, self._tag, self._vr, values)
        return [Change(where.profile, self.to, "copy", None if old is None else value_sha(old), value_sha(text))]


class RemoveStep(_Step):
    kind: Literal["remove"]
    tag: Keyword | None = None
    private: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> RemoveStep:
        if (self.tag is None) == (not self.private):
            raise ValueError("remove needs exactly one of tag: KEYWORD or private: true")
        if self.tag is not None:
            self._tag = keyword_dict[self.tag]
            self._vr = dictionary_VR(self._tag)
        return self

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        if self.private:
            return [Change(where.profile, "private", "remove", None, None)] if remove_private(ds) else []
        if self._tag not in ds:
            return []
        # Only text is read for the audit hash: a large binary value (PixelData) stays unread on disk.
        old = _elem_text(ds[self._tag]) if self._vr in TEXT_VRS else None
        del ds[self._tag]
        return [Change(where.profile, str(self.tag), "remove", None if old is None else value_sha(old), None)]


_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")


class RegexStep(_Step):
    kind: Literal["regex"]
    tag: Keyword
    pattern: str
    replace: str = ""
    _compiled: re.Pattern[str] = PrivateAttr()

    @model_validator(mode="after")
    def _compiles(self) -> RegexStep:
        self._bind(self.tag)
        try:
            self._compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern '{self.pattern}' does not compile: {exc}") from exc
        for number, name in _GROUP_REF.findall(self.replace):
            ref = number or name
            known = int(ref) <= self._compiled.groups if ref.isdigit() else ref in self._compiled.groupindex
            if not known:
                raise ValueError(
                    f"replace refers to group '{ref}', which pattern '{self.pattern}' does not have "
                    f"(it has {self._compiled.groups} group(s))"
                )
        return self

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        elem = ds.get(self._tag)
        if elem is None:
            return []
        old = text_values(elem)
        new = [self._compiled.sub(self.replace, v) for v in old]
        if new == old:
            return []
        fix = "change the pattern or replace so the result fits"
        for v in new:
            _checked(ds, where, self.tag, self._vr, v, fix)
        _store(elem, new)
        return [Change(where.profile, self.tag, "regex", value_sha("\\".join(old)), value_sha("\\".join(new)))]


class _AffixStep(_Step):
    tag: Keyword
    value: str = Field(min_length=1)

    @model_validator(mode="after")
    def _fits_vr(self) -> _AffixStep:
        self._bind(self.tag)
        if self._vr in ("DA", "DT", "TM", "AS", "UI"):
            raise ValueError(
                f"{self.tag} has VR {self._vr} ({VR_RULES[self._vr]}): a {self.kind} would make it invalid"
            )
        _check_value(self.tag, self._vr, self.value, self.kind)
        return self

    def _affix(self, text: str) -> str:
        raise NotImplementedError

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        elem = ds.get(self._tag)
        if elem is None:
            return []
        old = text_values(elem)
        if not old:
            return []  # an empty value stays empty rather than becoming just the prefix
        fix = f"shorten the {where.kind} in the profile, or add a regex step before it that shortens {self.tag}"
        new = [_checked(ds, where, self.tag, self._vr, self._affix(v), fix) for v in old]
        _store(elem, new)
        return [Change(where.profile, self.tag, where.kind, value_sha("\\".join(old)), value_sha("\\".join(new)))]


class PrefixStep(_AffixStep):
    kind: Literal["prefix"]

    def _affix(self, text: str) -> str:
        return self.value + text


class SuffixStep(_AffixStep):
    kind: Literal["suffix"]

    def _affix(self, text: str) -> str:
        return text + self.value


class DeidentifyStep(_Step):
    """PS3.15 Basic Application Level Confidentiality Profile with the options named here (deid.py)."""

    kind: Literal["deidentify"]
    retain_uids: bool = Field(False, description="Retain UIDs Option: keep Study/Series/SOP Instance UIDs")
    retain_dates: bool = Field(False, description="Retain Longitudinal Temporal Information, Full Dates Option")
    clean_descriptors: bool = Field(
        True, description="Clean Descriptors Option: keep descriptions, minus the object's own identifiers"
    )
    retain_private: bool = Field(False, description="keep private attributes (they are not vetted)")
    patient_id_prefix: str = Field("", description="put before each pseudonym Patient ID, e.g. TF-")
    namespace: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="pseudonym namespace; default: the profile's name (renaming the profile changes every pseudonym)",
    )
    allow_burned_in: bool = Field(
        False, description="send objects marked BurnedInAnnotation YES anyway (pixels are not cleaned)"
    )

    @field_validator("patient_id_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        # Plain ASCII survives every character set (ISO 2022 IR 13 turns a backslash into a yen sign).
        if not re.fullmatch(r"[A-Za-z0-9._-]{0,32}", value):
            raise ValueError(
                f"patient_id_prefix '{value}' may hold only letters, digits, '.', '_' and '-' (at most 32)"
            )
        return value

    def apply(self, ds: Dataset, where: _Where, uids: UidMapper) -> list[Change]:
        from appliance.router import deid  # imports this module, and loads the PS3.15 table on first use

        return deid.deidentify(
            ds,
            uids,
            profile=where.profile,
            namespace=self.namespace or where.profile,
            retain_uids=self.retain_uids,
            retain_dates=self.retain_dates,
            clean_descriptors=self.clean_descriptors,
            retain_private=self.retain_private,
            patient_id_prefix=self.patient_id_prefix,
            allow_burned_in=self.allow_burned_in,
        )


STEP_KINDS = ("set", "copy", "remove", "regex", "prefix", "suffix", "deidentify")


def _unwrap_step(value: Any) -> Any:
    """`{set: {tag: X, value: Y}}` → `{kind: set, tag: X, value: Y}`, with a useful error for anything else."""
    example = "e.g. - set: {tag: InstitutionName, value: HOSPITAL}"
    if not isinstance(value, dict) or len(value) != 1:
        got = f"keys {', '.join(map(str, value))}" if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"a step is a mapping with one key, the step's name ({', '.join(STEP_KINDS)}); got {got}")
    ((name, args),) = value.items()
    if name not in STEP_KINDS:
        close = difflib.get_close_matches(str(name), STEP_KINDS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"'{name}' is not a step{hint}: use one of {', '.join(STEP_KINDS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError(f"the settings of step '{name}' must be a mapping, {example}")
    return {**args, "kind": name}


Step = Annotated[
    SetStep | CopyStep | RemoveStep | RegexStep | PrefixStep | SuffixStep | DeidentifyStep,
    Field(discriminator="kind"),
    BeforeValidator(_unwrap_step),
]


class MorphProfile(_Strict):
    description: str | None = None
    steps: list[Step] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _one_deidentify(cls, steps: list[Any]) -> list[Any]:
        if sum(isinstance(s, DeidentifyStep) for s in steps) > 1:
            raise ValueError("deidentify appears twice: once per profile is enough (its options go in one step)")
        return steps


# ---------------------------------------------------------------------------------------------------

_SOP_INSTANCE_UID = 0x00080018


def apply_profiles(ds: Dataset, profiles: Sequence[tuple[str, MorphProfile]], uids: UidMapper) -> list[Change]:
    """Apply each (name, profile) in order to `ds` in place; the list of what changed, for the audit log.

    Raises MorphFailed when a step would leave an invalid value; `ds` is then half-changed and must be dropped.
    """
    changes: list[Change] = []
    for name, profile in profiles:
        for number, step in enumerate(profile.steps, start=1):
            changes += step.apply(ds, _Where(name, number, step.kind), uids)
    # The file meta names the instance too: keep it in step with a replaced SOP Instance UID.
    meta = getattr(ds, "file_meta", None)
    if meta is not None and any(c.keyword == "SOPInstanceUID" for c in changes) and _SOP_INSTANCE_UID in ds:
        meta.MediaStorageSOPInstanceUID = ds[_SOP_INSTANCE_UID].value
    return changes
