"""Read what routing needs from a received file, once, without decoding pixel data.

Also the router's check that a dataset is whole: pydicom tolerates a value that runs past the end of
the file (it reads what is there), so we compare each element's declared length with the file size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

# Tags every instance is indexed by (queue filters, status, evidence).
INDEX_KEYWORDS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "AccessionNumber",
    "Modality",
    # Study/series completeness: how many instances the sender says there are (seldom sent; absent = None).
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
)


class UnreadableDataset(Exception):
    """The bytes are not a DICOM dataset the router can route (sender gets a 0xC000-range status)."""


@dataclass(frozen=True)
class DatasetFacts:
    transfer_syntax: str
    # keyword → value as text (multi-valued joined with '\\'), None if absent; a Sequence.Keyword path →
    # the values found in the sequence's items (empty tuple when there are none)
    values: dict[str, str | tuple[str, ...] | None]

    def get(self, keyword: str) -> str | None:
        value = self.values.get(keyword)
        return None if isinstance(value, tuple) else value

    def count(self, keyword: str) -> int | None:
        """A positive integer value (an IS such as NumberOfStudyRelatedInstances), or None when absent,
        empty or not a number: a count the router cannot trust is no count."""
        try:
            n = int((self.get(keyword) or "").strip())
        except ValueError:
            return None
        return n if n > 0 else None


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (Sequence, MultiValue)) and not isinstance(value, (str, bytes)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    text = str(value)
    return text


def _path_values(ds: Dataset, parts: list[str]) -> Iterator[str]:
    """Values at Sequence.….Keyword in every item (nested sequences: every item of every item)."""
    head, rest = parts[0], parts[1:]
    if head not in ds:
        return
    if not rest:
        text = _as_text(ds.get(head))
        if text is not None:
            yield text
        return
    for item in ds.get(head) or ():
        yield from _path_values(item, rest)


def read_facts(path: Path, extra_keywords: Iterable[str] = ()) -> DatasetFacts:
    """Parse the file's header and the tags routing needs; raise UnreadableDataset with a plain reason."""
    size = os.path.getsize(path)
    try:
        # defer_size: large values (pixel data) are not read, only their offset and length recorded.
        ds = pydicom.dcmread(path, defer_size=4096, force=False)
    except InvalidDicomError as exc:
        raise UnreadableDataset(f"not a DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many types for damaged input
        raise UnreadableDataset(f"cannot parse the dataset: {type(exc).__name__}: {exc}") from exc

    for elem in ds._dict.values():
        # A raw (not yet decoded) element records where its value starts and how long it claims to be.
        if not isinstance(elem, RawDataElement):
            continue
        if elem.length != 0xFFFFFFFF and elem.value_tell and elem.value_tell + elem.length > size:
            raise UnreadableDataset(
                f"the dataset is truncated: element {elem.tag} declares {elem.length} bytes at offset "
                f"{elem.value_tell}, but the data ends at {size}"
            )

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        raise UnreadableDataset("the file meta has no Transfer Syntax UID")
    values: dict[str, str | tuple[str, ...] | None] = {}
    for kw in (*INDEX_KEYWORDS, *extra_keywords):
        if kw in values:
            continue
        try:
            if "." in kw:
                values[kw] = tuple(_path_values(ds, kw.split(".")))
            else:
                values[kw] = _as_text(ds.get(kw)) if kw in ds else None
        except Exception as exc:
            raise UnreadableDataset(f"cannot read {kw}: {type(exc).__name__}: {exc}") from exc
    if not values.get("SOPInstanceUID") or not values.get("SOPClassUID"):
        raise UnreadableDataset("the dataset has no SOP Class UID or SOP Instance UID")
    return DatasetFacts(transfer_syntax=str(ts), values=values)
