"""appliance.router.dicom_status: what a C-STORE response status means for the job."""

from __future__ import annotations

import pytest

from appliance.router.dicom_status import Outcome, Status, classify_store_status, describe, meaning


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0x0000, Outcome.DELIVERED),
        # Warnings: the object is stored.
        (0xB000, Outcome.DELIVERED),
        (0xB006, Outcome.DELIVERED),
        (0xB007, Outcome.DELIVERED),
        (0xBFFF, Outcome.DELIVERED),
        # Out of resources: the destination may recover.
        (0xA700, Outcome.RETRY),
        (0xA701, Outcome.RETRY),
        (0xA7FF, Outcome.RETRY),
        (0x0110, Outcome.RETRY),
        # Refusals that retrying will not change.
        (0xA900, Outcome.PERMANENT),
        (0xA9FF, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0xC211, Outcome.PERMANENT),
        (0xCFFF, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0x0118, Outcome.PERMANENT),
        (0x0111, Outcome.PERMANENT),
        (0x0115, Outcome.PERMANENT),
        (0x0212, Outcome.PERMANENT),
        # Unknown codes: retry, bounded by the node's retry policy.
        (0x0001, Outcome.RETRY),
        (0xA800, Outcome.RETRY),
        (0xD000, Outcome.RETRY),
        (0xFE00, Outcome.RETRY),
        (0xFFFF, Outcome.RETRY),
    ],
)
def test_classify_store_status(code: int, outcome: Outcome) -> None:
    assert classify_store_status(code) is outcome


def test_named_constants_match_the_standard() -> None:
    assert Status.SUCCESS == 0x0000
    assert Status.OUT_OF_RESOURCES == 0xA700
    assert Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert Status.CANNOT_UNDERSTAND == 0xC000
    assert Status.REFUSED_SOP_CLASS_NOT_SUPPORTED == 0x0122
    assert Status.COERCION_OF_DATA_ELEMENTS == 0xB000
    assert Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING == 0xB007


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x0000, "0x0000 (success)"),
        (0xA700, "0xA700 (refused: destination is out of resources (disk full?))"),
        (0xA7A1, "0xA7A1 (refused: destination is out of resources)"),
        (0xA900, "0xA900 (refused: the data set does not match the SOP class)"),
        (0xA9C0, "0xA9C0 (refused: the data set does not match the SOP class)"),
        (0xC000, "0xC000 (refused: the destination cannot understand the data set)"),
        (0xC123, "0xC123 (refused: the destination cannot understand the data set)"),
        (0x0122, "0x0122 (refused: the destination does not support this SOP class)"),
        (0xB000, "0xB000 (stored, but the destination coerced some data elements)"),
        (0xB007, "0xB007 (stored, but the data set does not match the SOP class)"),
        (0xB123, "0xB123 (stored with a warning)"),
        (0x1234, "0x1234 (unknown status)"),
        (0x0001, "0x0001 (unknown status)"),
    ],
)
def test_describe(code: int, text: str) -> None:
    assert describe(code) == text


def test_every_named_status_has_its_own_meaning() -> None:
    for status in Status:
        assert meaning(status) != "unknown status", status
