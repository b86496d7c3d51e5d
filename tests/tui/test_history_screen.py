"""Config history screen in a pilot: the versions table (live marker, FAILED marked), the diff against live
and against the parent (side by side when wide, unified when narrow), roll back with its confirmation (yes
and no) and reason, refusals in words, the drift warning; snapshots at 80×24 and 120×40."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from appliance.tui.screens.history import HistoryScreen
from appliance.tui.widgets import ConfirmScreen, HelpScreen, MessageScreen, ReasonScreen
from tests.tui.fixtures_config import OPERATOR, make_site, run_async, settle, snap_site


def screen(pilot: Pilot[Any]) -> HistoryScreen:
    s = pilot.app.screen
    assert isinstance(s, HistoryScreen), f"expected the history screen, got {s!r}"
    return s


def text_of(pilot: Pilot[Any], selector: str) -> str:
    return str(screen(pilot).query_one(selector, Static).visual)


def dialog_text(pilot: Pilot[Any]) -> str:
    return " ".join(str(w.visual) for w in pilot.app.screen.query("Label, Static"))


async def open_history(pilot: Pilot[Any], version: int | None = None) -> HistoryScreen:
    await pilot.press("c")
    await settle(pilot)
    hs = screen(pilot)
    if version is not None:
        while (cur := hs.current()) is not None and cur.version != version:
            await pilot.press("down" if cur.version > version else "up")
        await settle(pilot)
    return hs


@run_async
async def test_versions_table_marks_live_and_failed_and_diffs_follow_the_cursor(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    app = site.app()
    async with app.run_test(size=(120, 40)) as pilot:
        hs = await open_history(pilot)
        table = hs.query_one(DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [r[:4] for r in rows] == [
            [" ", "4", "2026-11-27 01:52", "FAILED"],
            ["*", "3", "2026-11-27 01:40", "applied"],
            [" ", "2", "2026-11-25 14:10", "applied"],
            [" ", "1", "2026-11-20 09:00", "applied"],
        ]
        assert rows[1][4:] == ["console", OPERATOR, "INC0042", "PACS_MAIN AE title per vendor e-mail"]
        assert text_of(pilot, "#hist-live").startswith("live: version 3 · router not running")
        # The failed attempt says why, and what it would have changed against live.
        assert "FAILED: the new config is invalid" in text_of(pilot, "#hist-detail")
        assert "port 104000 is impossible" in text_of(pilot, "#hist-detail")
        assert text_of(pilot, "#diff-title").startswith("version 4 → live: +1 / -1 lines")

        await pilot.press("down", "down")  # version 2 against live: what the bad change did, seen from v2
        await settle(pilot)
        assert text_of(pilot, "#diff-title").startswith("version 2 → live: +1 / -1 lines")
        assert hs.query_one("#diff-sides").display and not hs.query_one("#diff-unified").display  # wide: two panes
        left, right = text_of(pilot, "#diff-left"), text_of(pilot, "#diff-right")
        assert "13 -   PACS_MAIN: {ae_title: PACS," in left and "13 +   PACS_MAIN: {ae_title: PACS_OLD," in right
        assert left.count("\n") == right.count("\n")  # the panes stay line for line

        await pilot.press("p")  # against its parent: what version 2 itself changed
        await settle(pilot)
        assert text_of(pilot, "#diff-title").startswith("version 1 → version 2: +4 / -0 lines")
        assert "ARCHIVE: {ae_title: ARCHIVE" in text_of(pilot, "#diff-right")
        await pilot.press("down")
        await settle(pilot)
        assert text_of(pilot, "#diff-title").startswith("(no file) → version 1: +18 / -0 lines")
        assert text_of(pilot, "#diff-title").endswith("the first version: no parent")

        await pilot.resize_terminal(80, 24)  # narrow: one unified diff
        await pilot.press("p", "up")
        await settle(pilot)
        assert not hs.query_one("#diff-sides").display and hs.query_one("#diff-unified").display
        unified = text_of(pilot, "#diff-unified")
        assert "--- version 2" in unified and "+++ live" in unified and "+  PACS_MAIN: {ae_title: PACS_OLD" in unified


@run_async
async def test_rollback_asks_shows_the_size_of_the_change_no_means_no_and_refusals_are_explained(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "site")
    live, versions = site.config_path.read_bytes(), len(site.metas())
    app = site.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await open_history(pilot, version=2)
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        body = dialog_text(pilot)
        assert "Roll back to version 2?" in body and "+1 / -1 lines" in body and "source rollback" in body
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, HistoryScreen)

        await pilot.press("r")  # yes, then cancel at the reason: still nothing
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, ReasonScreen)
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, HistoryScreen)

        await open_history(pilot, version=4)  # a version that failed was never live: nothing to go back to
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, MessageScreen) and app.screen.error
        assert "version 4 failed: it was never live" in dialog_text(pilot)
        await pilot.press("enter", "down")
        await settle(pilot)
        await pilot.press("r")  # and the live one is live already
        await settle(pilot)
        assert isinstance(app.screen, MessageScreen) and "version 3 is live already" in dialog_text(pilot)
    assert site.config_path.read_bytes() == live and len(site.metas()) == versions


@run_async
async def test_rollback_yes_makes_the_old_version_live_as_a_new_version(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    good = site.backend().version_text(2)
    app = site.app()
    async with app.run_test(size=(100, 30)) as pilot:
        hs = await open_history(pilot, version=2)
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        reason = app.screen
        assert isinstance(reason, ReasonScreen)
        reason.query_one("#reason", Input).value = "PACS_OLD broke PACS deliveries"
        await pilot.press("enter")
        reason.query_one("#ticket", Input).value = "INC0042"
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, MessageScreen)
        assert "to version 2: version 5 applied; router not running" in dialog_text(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert hs.versions[0].version == 5 and hs.live["version"] == 5
        assert hs.current().version == 5  # type: ignore[union-attr]  # the cursor shows the new version
        assert str(hs.query_one(DataTable).get_row_at(0)[0]) == "*"
    assert site.config_path.read_text() == good
    last = site.metas()[-1]
    assert (last["source"], last["author"], last["rollback_of"], last["ticket"]) == ("rollback", OPERATOR, 2, "INC0042")


@run_async
async def test_a_hand_edit_shows_a_drift_warning(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    site.config_path.write_text(site.config_path.read_text().replace("port: 11112", "port: 11113"))
    app = site.app()
    async with app.run_test(size=(100, 30)) as pilot:
        hs = await open_history(pilot, version=3)
        banner = text_of(pilot, "#hist-live")
        assert banner.startswith("! DRIFT: the live config file was edited outside `config apply`")
        assert hs.query_one("#hist-live").has_class("problem")
        assert all(str(hs.query_one(DataTable).get_row_at(i)[0]) == " " for i in range(4))  # nothing is live
        assert text_of(pilot, "#diff-title").startswith("version 3 → live: +1 / -1 lines")
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen) and "edited outside `config apply`" in dialog_text(pilot)


# -- snapshots -----------------------------------------------------------------------------------------
async def _on_version_3_against_parent(pilot: Pilot[Any]) -> None:
    await open_history(pilot, version=3)
    await pilot.press("p")
    await settle(pilot)


def test_snapshot_history_80x24(snap_compare: Any) -> None:
    assert snap_compare(snap_site("history").app(), terminal_size=(80, 24), run_before=_on_version_3_against_parent)


def test_snapshot_history_120x40(snap_compare: Any) -> None:
    assert snap_compare(snap_site("history").app(), terminal_size=(120, 40), run_before=_on_version_3_against_parent)
