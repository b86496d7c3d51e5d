"""The rules-test screen (key w) and `Backend.rules_test`: pydicom's bundled CT and MR files under a config with a
test-environment node, a review hold, a whole-study route, a morph profile and a night-only route; the source
and time fields; a missing path, a bad time and a proposed config with a problem, in words; stopping a long run;
a snapshot at 80×24."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from appliance.tui import backend as backend_mod
from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend, BackendError
from appliance.tui.screens.report_view import ReportView, wrap_lines
from appliance.tui.screens.rules_test import RulesTestScreen, classify, parse_when, summary
from tests.tui.fixtures_config import run_async, settle

NOW = 1_795_748_400.0  # Fri 2026-11-27 03:00 UTC
SNAP_ROOT = Path("/tmp/dicom-router-snap-rules")

CONFIG = """\
router:
  ae_title: DICOM_ROUTER
  state_dir: {root}/state
  log_dir: {root}/log
nodes:
  CT_NORTH: {{ae_title: CTN, host: 10.1.2.3, port: 104, role: source}}
  CT_PHANTOM: {{ae_title: CTQA, host: 10.1.2.4, port: 104, role: source, environment: test}}
  PACS_MAIN: {{ae_title: PACS, host: 10.1.2.10, port: 104, role: destination}}
  PACS_TEST: {{ae_title: PACST, host: 10.1.2.11, port: 104, role: destination, environment: test}}
  VNA: {{ae_title: VNA, host: 10.1.2.12, port: 104, role: destination, morph: [site-prefix]}}
  TELERAD: {{ae_title: TELERAD, host: 203.0.113.20, port: 11112, role: destination}}
morph_profiles:
  site-prefix:
    description: "the VNA wants the site prefix on Patient ID"
    steps:
      - prefix: {{tag: PatientID, value: "N-"}}
routes:
  - name: ct-to-pacs
    match: {{Modality: CT, not: {{source_node: CT_PHANTOM}}}}
    to: [PACS_MAIN]
    priority: stat
  - name: everything-to-vna
    match: {{not: {{source_node: CT_PHANTOM}}}}
    to: [VNA]
    priority: bulk
    forward: study
  - name: mr-review
    match: {{Modality: MR, not: {{source_node: CT_PHANTOM}}}}
    to: [PACS_MAIN]
    action: hold
    hold_reason: "MR protocol under review: check with the MR lead before releasing"
  - name: night-telerad
    match: {{Modality: CT, not: {{source_node: CT_PHANTOM}}}}
    when: {{between: "19:00-07:00"}}
    to: [TELERAD]
  - name: qa-to-test-pacs
    match: {{source_node: CT_PHANTOM}}
    to: [PACS_TEST]
"""


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """'now' is the backend's frozen clock in local time: pin the zone so texts and snapshots are stable."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def make_site(root: Path) -> tuple[Path, Path]:
    """(config, samples folder): pydicom's CT_small and MR_small, and a text file the receiver would refuse."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "router.yaml"
    config.write_text(CONFIG.format(root=root))
    samples = root / "samples"
    samples.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), samples / name)
    (samples / "readme.txt").write_text("not DICOM")
    return config, samples


@pytest.fixture
def site(tmp_path: Path, utc: None) -> tuple[Path, Path]:
    return make_site(tmp_path / "site")


def backend(config: Path) -> Backend:
    return Backend(config, "nightops", clock=lambda: NOW)


def app_for(config: Path) -> ConsoleApp:
    return ConsoleApp(backend(config), refresh_seconds=3600, theme="textual-dark")


def screen(pilot: Pilot[Any]) -> RulesTestScreen:
    s = pilot.app.screen
    assert isinstance(s, RulesTestScreen), type(s)
    return s


def status(pilot: Pilot[Any]) -> str:
    return str(screen(pilot).query_one("#rt-status", Static).visual)


def report(pilot: Pilot[Any]) -> str:
    return screen(pilot).query_one(ReportView).plain()


async def open_rules(pilot: Pilot[Any]) -> RulesTestScreen:
    await settle(pilot)
    await pilot.press("w")
    await settle(pilot)
    return screen(pilot)


async def run_with(pilot: Pilot[Any], path: str, **fields: str) -> None:
    s = screen(pilot)
    for name, value in fields.items():
        s.query_one(f"#rt-{name}", Input).value = value
    box = s.query_one("#rt-path", Input)
    box.value = path
    box.focus()
    await pilot.press("enter")
    await settle(pilot)


# -- the backend -----------------------------------------------------------------------------------------------
def test_backend_says_where_each_file_goes_in_the_clis_words(site: tuple[Path, Path]) -> None:
    config, samples = site
    result = backend(config).rules_test([samples], "CT_NORTH", datetime(2026, 11, 28, 23, 30))
    assert (result.files, result.tested, result.refused, result.unrouted, result.held) == (3, 3, 1, 0, 1)
    assert result.run.per_destination() == {"PACS_MAIN": 2, "TELERAD": 1, "VNA": 2}
    text = result.text
    assert text.startswith(f"under the live config ({config}), files in {samples}\n")
    assert "as if sent by CT_NORTH at Sat 2026-11-28 23:30" in text
    assert "\nCT_small.dcm: CT, study 1.3.6.1.4.1.5962.1.2.1.20040119072730.12322" in text  # relative to the folder
    assert "  → PACS_MAIN  stat  via route ct-to-pacs  per instance" in text
    assert "  → TELERAD  routine  via route night-telerad  per instance" in text
    assert "  → VNA  bulk  via route everything-to-vna  when the study is complete  morph: site-prefix" in text
    assert "HELD: MR protocol under review: check with the MR lead before releasing" in text
    assert "route ct-to-pacs: no — Modality is 'MR', wanted == 'CT'" in text
    assert "readme.txt: REFUSED on arrival (0xC000): not a DICOM file" in text

    by_day = backend(config).rules_test([samples / "CT_small.dcm"], "CT_NORTH", datetime(2026, 11, 28, 12, 0))
    assert "TELERAD" not in by_day.run.per_destination()
    assert "route night-telerad: no — outside its time window (19:00-07:00); it is Sat 12:00" in by_day.text

    phantom = backend(config).rules_test([samples / "CT_small.dcm"], "CT_PHANTOM")
    assert phantom.run.per_destination() == {"PACS_TEST": 1}
    assert "→ PACS_TEST [TEST]" in phantom.text
    assert "at Fri 2026-11-27 03:00" in phantom.text  # no time given: the backend's now


@pytest.mark.parametrize(
    ("paths", "source", "words"),
    [
        (["/nonexistent/samples"], None, "no such file or folder: /nonexistent/samples. Type the full path"),
        ([""], None, "type the path of a DICOM file, or of a folder of sample files"),
        (["{empty}"], None, "no files in {empty} (hidden files are skipped)"),
        (["{samples}"], "CT_SOUTH", "there is no node CT_SOUTH in the live config"),
    ],
)
def test_backend_refusals_in_words(site: tuple[Path, Path], paths: list[str], source: str | None, words: str) -> None:
    config, samples = site
    empty = config.parent / "empty"
    empty.mkdir()
    (empty / ".hidden.dcm").write_bytes(b"")
    fill = {"empty": str(empty), "samples": str(samples)}
    with pytest.raises(BackendError) as err:
        backend(config).rules_test([p.format(**fill) for p in paths], source)
    assert words.format(**fill) in str(err.value)
    if source:
        assert "(sources: CT_NORTH, CT_PHANTOM)" in str(err.value)


def test_a_proposed_config_is_tested_and_its_problems_named(site: tuple[Path, Path]) -> None:
    config, samples = site
    proposed = config.parent / "proposed.yaml"
    proposed.write_text(config.read_text().replace("priority: stat", "priority: urgent"))
    with pytest.raises(BackendError) as err:
        backend(config).rules_test([samples], "CT_NORTH", config_file=proposed)
    message = str(err.value)
    assert message.startswith(f"the proposed config {proposed} has 1 problem(s): line ")
    assert "routes[0].priority" in message and f"`dicom-router config check {proposed}`" in message

    proposed.write_text(
        config.read_text().replace("to: [PACS_MAIN]\n    priority: stat", "to: [VNA]\n    priority: stat")
    )
    result = backend(config).rules_test([samples / "CT_small.dcm"], "CT_NORTH", config_file=proposed)
    assert result.config_label == f"proposed config {proposed}" and result.proposed
    assert summary(result).startswith(f"1 file(s) under proposed config {proposed}: 1 → TELERAD, 1 → VNA")
    assert "→ VNA  stat  via route ct-to-pacs" in result.text  # the proposed routes, not the live ones


def test_a_long_run_reports_progress_and_can_be_stopped(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, samples = site
    monkeypatch.setattr(backend_mod, "RULES_TEST_BATCH", 1)
    seen: list[tuple[int, int]] = []
    result = backend(config).rules_test([samples], progress=lambda done, total: seen.append((done, total)),
                                        stop=lambda: len(seen) >= 2)  # fmt: skip
    assert seen == [(1, 3), (2, 3)]
    assert result.stopped and result.tested == 2 and result.files == 3
    assert result.text.endswith("STOPPED after 2 of 3 file(s): the counts above cover those only")


# -- pure helpers --------------------------------------------------------------------------------------------------
def test_parse_when() -> None:
    now = datetime(2026, 11, 27, 3, 0, 42)
    assert parse_when("", now) is None and parse_when(" now ", now) is None
    assert parse_when("2026-11-28 23:30", now) == datetime(2026, 11, 28, 23, 30)
    assert parse_when("2026-11-28T23:30", now) == datetime(2026, 11, 28, 23, 30)
    assert parse_when("23:30", now) == datetime(2026, 11, 27, 23, 30)
    with pytest.raises(ValueError, match="'tonight' is not a time: write 2026-11-28 23:30, or 23:30 for today"):
        parse_when("tonight", now)


def test_wrapped_lines_keep_the_style_of_their_line() -> None:
    text = "x.dcm: CT (SOP 1.2)\n  → PACS_MAIN  routine  via route r  per instance  HELD: " + "check " * 12
    lines = wrap_lines(text, 40, classify)
    assert [key for _, key in lines] == ["heading"] + ["held"] * (len(lines) - 1)
    assert all(len(t) <= 40 for t, _ in lines) and lines[2][0].startswith("      ")  # hanging indent
    assert classify("    route a: matched") == "muted" and classify("  → nowhere: matches no route") == "warning"
    assert classify("f: REFUSED on arrival (0xC000): damaged") == "error"


# -- the screen ------------------------------------------------------------------------------------------------
@run_async
async def test_w_opens_the_rules_test_and_enter_shows_where_files_go(site: tuple[Path, Path]) -> None:
    config, samples = site
    app = app_for(config)
    async with app.run_test(size=(120, 40)) as pilot:
        s = await open_rules(pilot)
        assert app.current_mode == "rules" and app.focused is s.query_one(ReportView)  # screen keys still work
        await pilot.press("slash")
        assert app.focused is s.query_one("#rt-path", Input)
        await pilot.press("escape")  # out of the field again
        assert app.focused is s.query_one(ReportView)
        assert s.sources == [("CT_NORTH (CTN)", "CT_NORTH"), ("CT_PHANTOM (CTQA) TEST", "CT_PHANTOM")]

        await run_with(pilot, str(samples), at="2026-11-28 23:30")
        assert "as if sent by no known source (choose a source) at Sat 2026-11-28 23:30" in report(pilot)
        assert "note: routes testing source_node or calling_ae cannot match without a source" in report(pilot)
        assert status(pilot).startswith("3 file(s): ")
        assert pilot.app.focused is s.query_one(ReportView)  # on to the result: arrows scroll it

        s.query_one("#rt-source", Select).value = "CT_NORTH"  # as picked from its list: the test runs again
        await settle(pilot)
        assert "as if sent by CT_NORTH at Sat 2026-11-28 23:30" in report(pilot)
        assert status(pilot) == "3 file(s): 2 → PACS_MAIN, 1 → TELERAD, 2 → VNA · 1 held · 0 unrouted · 1 refused"
        text = report(pilot)
        assert "→ TELERAD  routine  via route night-telerad" in text and "HELD: MR protocol under review" in text

        s.query_one("#rt-source", Select).value = "CT_PHANTOM"
        await settle(pilot)
        assert "→ PACS_TEST [TEST]" in report(pilot) and "PACS_MAIN" not in status(pilot)

        await pilot.press("d")  # reachable from the dashboard too, and the result stays
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        assert "→ PACS_TEST [TEST]" in report(pilot)


@run_async
async def test_a_missing_path_and_a_bad_time_are_said_in_words(site: tuple[Path, Path]) -> None:
    config, samples = site
    app = app_for(config)
    async with app.run_test(size=(80, 24)) as pilot:
        s = await open_rules(pilot)
        await pilot.press("enter")
        assert status(pilot) == "Type the path of a DICOM file or of a folder of samples first."
        await run_with(pilot, "/srv/no-such-samples")
        assert status(pilot).startswith("no such file or folder: /srv/no-such-samples. Type the full path")
        assert s.query_one("#rt-status").has_class("problem") and report(pilot) == ""

        await run_with(pilot, str(samples), at="half past eleven")
        assert status(pilot).startswith("'half past eleven' is not a time")
        assert app.focused is s.query_one("#rt-at", Input)

        s.query_one("#rt-at", Input).value = ""
        await run_with(pilot, str(samples / "CT_small.dcm"), config=str(config.parent / "nope.yaml"))
        assert f"the proposed config {config.parent / 'nope.yaml'} has 1 problem(s): file not found" in status(pilot)


@run_async
async def test_typing_a_path_with_keys_and_the_help(site: tuple[Path, Path]) -> None:
    config, samples = site
    app = app_for(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_rules(pilot)
        await pilot.press("slash", *str(samples / "MR_small.dcm"), "enter")  # in the field, '/' and letters are typed
        await settle(pilot)
        assert "MR_small.dcm: MR" in report(pilot) and status(pilot).startswith("1 file(s): 1 → PACS_MAIN")
        await pilot.press("question_mark")
        await settle(pilot)
        body = app.screen.body  # type: ignore[attr-defined]
        assert "READING THE RESULT" in body and "w rules test" in body


def test_snapshot_rules_test(snap_compare: Any, utc: None) -> None:
    config, samples = make_site(SNAP_ROOT)

    async def before(pilot: Pilot[Any]) -> None:
        await open_rules(pilot)
        screen(pilot).query_one("#rt-source", Select).value = "CT_NORTH"
        await run_with(pilot, str(samples), at="2026-11-28 23:30")

    assert snap_compare(app_for(config), terminal_size=(80, 24), run_before=before)
