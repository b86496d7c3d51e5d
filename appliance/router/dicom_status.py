"""DICOM status codes the router sends and interprets, by name, with what each means for a job.

PS3.4 Annex B (Storage) and PS3.7 Annex C. Logic compares against these names, never bare numbers.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    SUCCESS = 0x0000
    # Warnings: the object was stored, possibly altered.
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # Failures.
    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_CLASS = 0x0118
    INVALID_ARGUMENT = 0x0115
    MISTYPED_ARGUMENT = 0x0212
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: try again later
    PERMANENT = "permanent"  # retrying will not help: fail the job at once


_MEANING = {
    Status.SUCCESS: "success",
    Status.COERCION_OF_DATA_ELEMENTS: "stored, but the destination coerced some data elements",
    Status.ELEMENTS_DISCARDED: "stored, but the destination discarded some data elements",
    Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "stored, but the data set does not match the SOP class",
    Status.REFUSED_SOP_CLASS_NOT_SUPPORTED: "refused: the destination does not support this SOP class",
    Status.PROCESSING_FAILURE: "processing failure at the destination",
    Status.DUPLICATE_SOP_INSTANCE: "refused: duplicate SOP instance",
    Status.NO_SUCH_SOP_CLASS: "refused: no such SOP class",
    Status.INVALID_ARGUMENT: "refused: invalid argument value",
    Status.MISTYPED_ARGUMENT: "refused: mistyped argument",
    Status.OUT_OF_RESOURCES: "refused: destination is out of resources (disk full?)",
    Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "refused: the data set does not match the SOP class",
    Status.CANNOT_UNDERSTAND: "refused: the destination cannot understand the data set",
}


def meaning(code: int) -> str:
    """A phrase an operator understands for any status code, known or not."""
    try:
        return _MEANING[Status(code)]
    except ValueError:
        pass
    if 0xA700 <= code <= 0xA7FF:
        return "refused: destination is out of resources"
    if 0xA900 <= code <= 0xA9FF:
        return "refused: the data set does not match the SOP class"
    if 0xC000 <= code <= 0xCFFF:
        return "refused: the destination cannot understand the data set"
    if 0xB000 <= code <= 0xBFFF:
        return "stored with a warning"
    return "unknown status"


def describe(code: int) -> str:
    return f"0x{code:04X} ({meaning(code)})"


def classify_store_status(code: int) -> Outcome:
    """What a C-STORE response status means for the job that sent it."""
    if code == Status.SUCCESS or 0xB000 <= code <= 0xBFFF:
        return Outcome.DELIVERED
    if 0xA700 <= code <= 0xA7FF or code == Status.PROCESSING_FAILURE:
        # The destination may recover (disk freed, service restarted).
        return Outcome.RETRY
    if (
        0xA900 <= code <= 0xA9FF
        or 0xC000 <= code <= 0xCFFF
        or code
        in (
            Status.REFUSED_SOP_CLASS_NOT_SUPPORTED,
            Status.NO_SUCH_SOP_CLASS,
            Status.DUPLICATE_SOP_INSTANCE,
            Status.INVALID_ARGUMENT,
            Status.MISTYPED_ARGUMENT,
        )
    ):
        return Outcome.PERMANENT
    # Unknown failure codes: retry, bounded by the node's retry policy.
    return Outcome.RETRY
