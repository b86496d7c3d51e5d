"""`dicom-router rules test`: the dry run operators use before a change, on pydicom's real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
router: {ae_title: DICOM_ROUTER, state_dir: state, log_dir: log}
nodes:
  CT_NORTH: {ae_title: CTN, host: 10.0.0.1, port: 104, role: source}
  MR_NORTH: {ae_title: MRN, host: 10.0.0.2, port: 104, role: source}
  PACS: {ae_title: PACS, host: 10.0.0.3, port: 104, role: destination}
  VNA: {ae_title: VNA, host: 10.0.0.4, port: 104, role: destination}
  TELERAD: {ae_title: TELE, host: 10.0.0.5, port: 104, role: destination, morph: [telerad-deid]}
morph_profiles:
  site-prefix: {steps: [{prefix: {tag: PatientID, value: "N-"}}]}
  telerad-deid: {steps: [{deidentify: {}}]}
routes:
  - name: ct-to-pacs
    match: {Modality: CT, source_node: CT_NORTH}
    to: [PACS]
    priority: stat
    morph: [site-prefix]
  - name: everything-to-vna
    to: [VNA]
    priority: bulk
    forward: study
  - name: night-ct-telerad
    match: {Modality: CT}
    when: {between: "20:00-07:00"}
    to: [TELERAD]
  - name: mr-review
    match: {Modality: MR}
    to: [PACS]
    action: hold
    hold_reason: "MR protocol under review"
"""


def rules_test(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "router.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "appliance.router", "rules", "test", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_dry_run_explains_each_route(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    out = rules_test(tmp_path, ct, "--source", "CT_NORTH", "--at", "2026-11-27 12:00")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    print(text)
    assert "as if sent by CT_NORTH at Fri 2026-11-27 12:00" in text
    assert "→ PACS  stat  via route ct-to-pacs  per instance  morph: site-prefix" in text
    assert "→ VNA  bulk  via route everything-to-vna  when the study is complete" in text
    assert "route night-ct-telerad: no — outside its time window (20:00-07:00); it is Fri 12:00" in text
    assert "route mr-review: no — Modality is 'CT', wanted == 'MR'" in text
    assert "1 file(s): 1 → PACS, 1 → VNA; 0 unrouted; 0 refused" in text


def test_time_window_and_node_morph_at_night(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    out = rules_test(tmp_path, ct, "--source", "CT_NORTH", "--at", "2026-11-27 23:15", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (obj,) = report["objects"]
    targets = {t["destination"]: t for t in obj["targets"]}
    assert set(targets) == {"PACS", "VNA", "TELERAD"}
    assert targets["TELERAD"]["morph"] == ["telerad-deid"]  # the destination's own profile
    assert targets["PACS"]["priority"] == 0


def test_hold_route_and_missing_source(tmp_path: Path) -> None:
    mr = get_testdata_file("MR_small.dcm")
    out = rules_test(tmp_path, mr, "--at", "12:00")
    assert out.returncode == 0, out.stderr
    note = "note: routes testing source_node or calling_ae cannot match without a source (pass --source NODE)"
    assert note in out.stdout
    assert "→ PACS  routine  via route mr-review  per instance  HELD: MR protocol under review" in out.stdout


def test_directory_with_damaged_and_foreign_files(tmp_path: Path) -> None:
    d = tmp_path / "incoming"
    d.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "a.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), d / "b.dcm")
    (d / "c.txt").write_text("not dicom")
    out = rules_test(tmp_path, str(d), "--source", "CT_NORTH", "--quiet", "--at", "12:00")
    assert out.returncode == 0, out.stderr
    assert "b.dcm: REFUSED on arrival (0xC000): the dataset is truncated" in out.stdout
    assert "c.txt: REFUSED on arrival (0xC000): not a DICOM file" in out.stdout
    assert "3 file(s): 1 → PACS, 1 → VNA; 0 unrouted; 2 refused" in out.stdout
    assert "route ct-to-pacs: matched" not in out.stdout  # --quiet lists only the misses


def test_unrouted_object(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        CONFIG.replace(
            "  - name: everything-to-vna\n    to: [VNA]",
            "  - name: everything-to-vna\n    match: {Modality: XA}\n    to: [VNA]",
        )
    )
    out = rules_test(tmp_path, get_testdata_file("rtplan.dcm"), "--source", "CT_NORTH")
    assert out.returncode == 0, out.stderr
    assert "→ nowhere: matches no route; kept as unrouted" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "CT_SOUTH"], "--source 'CT_SOUTH' is not a node"),
        (["--at", "tomorrow"], "is not a time like"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    out = rules_test(tmp_path, get_testdata_file("CT_small.dcm"), *args)
    assert out.returncode == 2
    assert message in out.stderr


def test_missing_path_and_broken_config(tmp_path: Path) -> None:
    out = rules_test(tmp_path, str(tmp_path / "nope.dcm"))
    assert out.returncode == 2 and "no such file or directory" in out.stderr
    (tmp_path / "router.yaml").write_text(CONFIG + "  - name: typo\n    match: {Modalty: CT}\n    to: [PACS]\n")
    out = rules_test(tmp_path, get_testdata_file("CT_small.dcm"))
    assert out.returncode == 2
    assert "'Modalty' is not a DICOM keyword" in out.stderr and "did you mean Modality?" in out.stderr
