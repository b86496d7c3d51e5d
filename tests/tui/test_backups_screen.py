"""Backup & restore screen in a pilot with real bundles: make one (progress while it runs), verify it (wrong
passphrase and tampered bundle in words), restore the config from it through preview and confirmation (yes
and no), a corrupt bundle refused with nothing changed; snapshots at 80×24 and 120×40."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from appliance.tui.screens.backups import BackupsScreen, RestorePreviewScreen
from appliance.tui.widgets import ConfirmScreen, HelpScreen, MessageScreen, PassphraseScreen
from tests.tui.fixtures_config import OPERATOR, Site, fake_bundles, make_site, run_async, settle, snap_site

PACS = {"ae_title": "PACS", "host": "10.1.2.10", "port": "104", "role": "destination", "max_associations": "4"}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


def screen(pilot: Pilot[Any]) -> BackupsScreen:
    s = pilot.app.screen
    assert isinstance(s, BackupsScreen), f"expected the backups screen, got {s!r}"
    return s


def dialog_text(pilot: Pilot[Any]) -> str:
    return " ".join(str(w.visual) for w in pilot.app.screen.query("Label, Static"))


async def open_backups(pilot: Pilot[Any]) -> BackupsScreen:
    await pilot.press("b")
    await settle(pilot)
    return screen(pilot)


async def passphrase(pilot: Pilot[Any], text: str = "") -> None:
    """Answer the passphrase dialog (empty = the key file the config names)."""
    dialog = pilot.app.screen
    assert isinstance(dialog, PassphraseScreen), dialog
    dialog.query_one(Input).value = text
    await pilot.press("enter")
    await settle(pilot)


@run_async
async def test_make_verify_and_restore_the_config_from_a_real_bundle(site: Site) -> None:
    good = site.config_path.read_text()
    app = site.app()
    async with app.run_test(size=(110, 34)) as pilot:
        bs = await open_backups(pilot)
        assert "the key file" in str(bs.query_one("#bk-info", Static).visual)
        await pilot.press("n")
        await settle(pilot)
        await passphrase(pilot)
        assert bs.last_result is not None and bs.last_result.startswith("OK: backup dicom-router-")
        assert bs.view is not None and len(bs.view.bundles) == 1
        name = bs.view.bundles[0].name
        assert bs.current() == name and not bs.query_one("#bk-busy").has_class("running")

        await pilot.press("v")
        await settle(pilot)
        await passphrase(pilot)
        assert bs.last_result.startswith(f"OK: {name} is intact: every chunk authenticated")
        assert "holds config (1 file" in bs.last_result

        site.backend().save_node("PACS_MAIN", {**PACS, "port": "105"}, "vendor says 105", editing="PACS_MAIN")
        await pilot.press("R")
        await settle(pilot)
        await passphrase(pilot)
        assert isinstance(app.screen, RestorePreviewScreen)
        plan = str(app.screen.query_one("#plan", Static).visual)
        assert "Restore plan (config only):" in plan and "verified: every chunk authenticated" in plan
        assert "port: 105" in plan and "through `config apply` (source restore)" in plan
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and f"Restore (config only) from {name} now?" in dialog_text(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, MessageScreen) and not app.screen.error
        text = dialog_text(pilot)
        assert f"restored from {name}: config" in text and "version 6 applied; router not running" in text
    assert site.config_path.read_text() == good
    last = site.metas()[-1]
    assert (last["source"], last["author"], last["reason"]) == ("restore", OPERATOR, f"restore from {name}")
    events = [(e["event"], e["outcome"], e["operator"]) for e in site.audit("backup.")]
    assert events == [
        ("backup.create", "success", OPERATOR),
        ("backup.verify", "success", OPERATOR),
        ("backup.restore", "success", OPERATOR),
    ]


@run_async
async def test_a_restore_declined_at_the_plan_or_at_the_question_changes_nothing(site: Site) -> None:
    site.backend().backup_create()
    site.backend().save_node("PACS_MAIN", PACS, "fix the AE title", editing="PACS_MAIN")
    live, versions = site.config_path.read_bytes(), len(site.metas())
    app = site.app()
    async with app.run_test(size=(110, 34)) as pilot:
        bs = await open_backups(pilot)
        await pilot.press("R")
        await settle(pilot)
        await passphrase(pilot)
        assert isinstance(app.screen, RestorePreviewScreen)
        await pilot.press("escape")  # no, at the plan
        await settle(pilot)
        assert app.screen is bs and (bs.last_result or "").startswith("not restored from")

        await pilot.press("F")  # full restore this time: the plan says what else it would put back
        await settle(pilot)
        assert "restore mode: FULL" in str(bs.query_one("#bk-info", Static).visual)
        await pilot.press("R")
        await settle(pilot)
        await passphrase(pilot)
        assert "Restore plan (full):" in str(app.screen.query_one("#plan", Static).visual)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # no, at the question
        await settle(pilot)
        assert app.screen is bs
    assert site.config_path.read_bytes() == live and len(site.metas()) == versions
    assert not list(site.state.glob(".restore-*"))  # the decrypted copies are gone
    assert [(e["outcome"], e["mode"]) for e in site.audit("backup.restore")] == [
        ("refused", "config-only"),
        ("refused", "full"),
    ]


@run_async
async def test_a_corrupt_bundle_is_refused_in_words_and_nothing_changes(site: Site) -> None:
    bundle = site.backend().backup_create().bundle.path
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle
    bundle.write_bytes(bytes(data))
    site.backend().save_node("PACS_MAIN", PACS, "fix the AE title", editing="PACS_MAIN")
    live, metas = site.config_path.read_bytes(), site.metas()
    app = site.app()
    async with app.run_test(size=(110, 34)) as pilot:
        bs = await open_backups(pilot)
        await pilot.press("R")
        await settle(pilot)
        await passphrase(pilot)
        assert isinstance(app.screen, MessageScreen) and app.screen.error
        text = dialog_text(pilot)
        assert f"Cannot restore from {bundle.name}" in text
        assert "the bundle was not written by dicom-router or was altered" in text or "altered" in text
        assert "Nothing was changed." in text
        await pilot.press("enter")
        await settle(pilot)
        assert not bs.query_one("#bk-busy").has_class("running")

        await pilot.press("v")  # verify says the same, and a key-file bundle opened with a passphrase says which
        await settle(pilot)
        await passphrase(pilot)
        assert isinstance(app.screen, MessageScreen) and "altered" in dialog_text(pilot)
        await pilot.press("enter")
        await pilot.press("v")
        await settle(pilot)
        await passphrase(pilot, "a guessed passphrase")
        text = dialog_text(pilot)
        assert "was encrypted with a key file, but the passphrase typed at the console was given" in text
        assert "leave the passphrase empty to use the key file the config names" in text
    assert site.config_path.read_bytes() == live and site.metas() == metas
    assert not list(site.state.glob(".restore-*"))


@run_async
async def test_a_passphrase_bundle_typed_twice_and_a_wrong_passphrase(site: Site) -> None:
    app = site.app()
    async with app.run_test(size=(110, 34)) as pilot:
        bs = await open_backups(pilot)
        await pilot.press("n")
        await settle(pilot)
        await passphrase(pilot, "correct horse battery")
        await passphrase(pilot, "correct horse batery")
        assert isinstance(app.screen, MessageScreen) and "the two passphrases differ" in dialog_text(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert bs.view is not None and bs.view.bundles == []

        await pilot.press("n")
        await settle(pilot)
        await passphrase(pilot, "correct horse battery")
        await passphrase(pilot, "correct horse battery")
        assert bs.view is not None and len(bs.view.bundles) == 1
        await pilot.press("v")
        await settle(pilot)
        await passphrase(pilot, "wrong horse")
        text = dialog_text(pilot)
        assert "did NOT verify" in text and "wrong passphrase (the bundle itself looks intact)" in text


@run_async
async def test_progress_shows_while_a_backup_runs(site: Site) -> None:
    app = site.app()
    release = threading.Event()
    real = app.backend.backup_create

    def slow(passphrase: str | None = None) -> Any:
        release.wait(10)
        return real(passphrase)

    app.backend.backup_create = slow  # type: ignore[method-assign]
    async with app.run_test(size=(110, 34)) as pilot:
        bs = await open_backups(pilot)
        await pilot.press("n")
        await settle(pilot)
        app.screen.query_one(Input).value = ""
        await pilot.press("enter")
        await pilot.pause()
        assert bs.query_one("#bk-busy").has_class("running")
        assert "Making a backup" in str(bs.query_one("#bk-busy-text", Static).visual)
        await pilot.press("v")  # a second operation waits its turn
        await pilot.pause()
        assert isinstance(app.screen, BackupsScreen)
        release.set()
        await settle(pilot)
        assert not bs.query_one("#bk-busy").has_class("running") and (bs.last_result or "").startswith("OK")
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen) and "only be replaced while the router is STOPPED" in dialog_text(
            pilot
        )


# -- snapshots -----------------------------------------------------------------------------------------
async def _list(pilot: Pilot[Any]) -> None:
    await open_backups(pilot)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_backups(snap_compare: Any, size: tuple[int, int]) -> None:
    site = snap_site("backups")
    fake_bundles(site)
    assert snap_compare(site.app(), terminal_size=size, run_before=_list)
