"""The routing guide's worked examples (examples/routing-rules.yaml) are a valid config and route as the
guide says, on pydicom's real CT and MR files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydicom.data import get_testdata_file

from appliance.router.config import load_config
from appliance.router.rules_dryrun import dry_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-rules.yaml"


def targets(source: str, name: str, at: datetime) -> dict[str, tuple[int, str | None, tuple[str, ...], str | None]]:
    cfg = load_config(EXAMPLE)
    (obj,) = dry_run(cfg, [Path(get_testdata_file(name))], source_node=source, at=at).objects
    return {t.destination: (t.priority, t.wait_for, t.morph, t.hold_reason) for t in obj.targets}


def test_daytime_ct_from_production() -> None:
    got = targets("CT_NORTH", "CT_small.dcm", datetime(2026, 11, 27, 10, 0))
    assert got == {
        "PACS_OLD": (1, None, (), None),
        "VNA": (2, "study", (), None),
        "PACS_NEW": (2, None, ("new-pacs-ids",), None),
    }


def test_night_mr_also_goes_to_telerad_deidentified() -> None:
    got = targets("MR_NORTH", "MR_small.dcm", datetime(2026, 11, 27, 23, 0))
    assert got["TELERAD"] == (0, "study", ("telerad-deid",), None)


def test_phantom_goes_only_to_the_test_pacs() -> None:
    assert set(targets("CT_PHANTOM", "CT_small.dcm", datetime(2026, 11, 27, 23, 0))) == {"PACS_TEST"}
