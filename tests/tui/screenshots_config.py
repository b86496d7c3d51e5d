"""Renders the config screens' screenshots (docs/operator-runbook.md, section 8) from real runs: a real Orthanc
that checks the called AE title, the router's real config history and real encrypted bundles. Not a test
(nothing asserts what the pictures show; the pilot tests do). Run it after changing these screens:

    .venv/bin/python -m tests.tui.screenshots_config
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend
from appliance.tui.screens.endpoints import EndpointsScreen
from tests.support.peers import Orthanc, stop_all
from tests.tui.fixtures_config import make_site, settle, wait_for

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"
SIZE = (100, 30)


async def shot(pilot: Pilot[Any], name: str) -> None:
    await settle(pilot)
    pilot.app.save_screenshot(f"console-{name}.svg", path=str(OUT))
    print(f"  docs/img/console-{name}.svg")


async def to_node(pilot: Pilot[Any], name: str) -> EndpointsScreen:
    screen = pilot.app.screen
    assert isinstance(screen, EndpointsScreen)
    while screen.current_name() != name:
        await pilot.press("down")
    return screen


async def wrong_ae_title(work: Path) -> None:
    """Walkthrough 1: echo fails on the AE title, fix it at the console, echo OK, see it in the history."""
    pacs = Orthanc(work, ae_title="PACS").start()
    site = make_site(work / "site1", pacs_host="127.0.0.1", pacs_port=pacs.port)
    app = site.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        await settle(pilot)
        ep = await to_node(pilot, "PACS_MAIN")
        await pilot.press("t")
        await wait_for(pilot, lambda: ep.echoes["PACS_MAIN"].ok is not None, "echo")
        await shot(pilot, "endpoints-echo-failed")
        await pilot.press("e")
        await settle(pilot)
        box = app.screen.query_one("#ae_title", Input)
        box.focus()
        await pilot.press("home", "ctrl+k", *"PACS_MAIN_ARCHIVE")
        await shot(pilot, "endpoints-edit-invalid")
        await pilot.press("home", "ctrl+k", *"PACS")
        await shot(pilot, "endpoints-edit")
        await pilot.press("ctrl+s")
        await settle(pilot)
        reason = app.screen
        reason.query_one("#reason", Input).value = "PACS AE title is PACS (checked with the PACS team), not PACS_OLD"
        reason.query_one("#ticket", Input).value = "INC0042"
        await shot(pilot, "endpoints-reason")
        await pilot.press("enter", "enter")
        await shot(pilot, "endpoints-saved")
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: ep.echoes["PACS_MAIN"].ok is not None, "echo")
        await shot(pilot, "endpoints-echo-ok")
        await pilot.press("c")
        await settle(pilot)
        await pilot.press("p")
        await shot(pilot, "history-console-change")
    pacs.stop()


async def roll_back(work: Path) -> None:
    """Walkthrough 2: the change of 01:40 broke deliveries; roll back to the version before it."""
    site = make_site(work / "site2")
    app = site.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await settle(pilot)
        await pilot.press("down", "p")
        await shot(pilot, "history-bad-change")
        await pilot.press("down", "p")
        await settle(pilot)
        await pilot.press("r")
        await shot(pilot, "history-rollback-confirm")
        await pilot.press("y")
        await settle(pilot)
        reason = app.screen
        reason.query_one("#reason", Input).value = "PACS_OLD stopped all deliveries to PACS_MAIN"
        reason.query_one("#ticket", Input).value = "INC0042"
        await pilot.press("enter", "enter")
        await shot(pilot, "history-rolled-back")
        await pilot.press("enter")
        await shot(pilot, "history-after-rollback")
    site.config_path.write_text(site.config_path.read_text().replace("port: 11112", "port: 11113"))
    async with site.app().run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await shot(pilot, "history-drift")


async def restore(work: Path) -> None:
    """Walkthrough 3: put the config back from last night's bundle."""
    site = make_site(work / "site3", story=False)
    site.backend().backup_create()  # last night's backup, before the bad change
    text = site.config_path.read_text().replace("ae_title: PACS,", "ae_title: PACS_OLD,")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    site.apply(text, "PACS_MAIN AE title per vendor e-mail", author="nightops", source="console",
               ticket="INC0042", at=now)  # fmt: skip
    app = ConsoleApp(Backend(site.config_path, "nightops"), refresh_seconds=3600, theme="textual-dark")  # real clock
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("b")
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        await pilot.press("enter")
        await shot(pilot, "backups-verified")
        await pilot.press("R")
        await settle(pilot)
        await pilot.press("enter")
        await shot(pilot, "backups-restore-plan")
        await pilot.press("enter")
        await shot(pilot, "backups-restore-confirm")
        await pilot.press("y")
        await shot(pilot, "backups-restored")


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="console-shots-"))
    try:
        for scenario in (wrong_ae_title, roll_back, restore):
            print(scenario.__doc__)
            await scenario(work)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
