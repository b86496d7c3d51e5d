"""Re-create the dashboard and logs screenshots in docs/img from the same fixed outage the tests use:

    .venv/bin/python -m tests.tui.docs_dashboard_screens

Real renders of the console (pilot runs); only the header's config path is shown as the appliance's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import Input

from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend
from tests.tui.conftest import _settle
from tests.tui.fixtures_dashboard import NOW, build_outage, freeze_host

REPO = Path(__file__).resolve().parents[2]
IMG = REPO / "docs" / "img"
ROOT = Path("/tmp/dicom-router-docs-dashboard")


async def shoot(name: str, size: tuple[int, int], keys: tuple[str, ...] = (), log_filter: str | None = None) -> None:
    app = ConsoleApp(Backend(ROOT / "router.yaml", "alice", clock=lambda: NOW), refresh_seconds=3600)
    async with app.run_test(size=size) as pilot:
        await _settle(pilot)
        app.sub_title = "operator alice · /etc/dicom-router/router.yaml"
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await _settle(pilot)
        if log_filter is not None:
            await pilot.press("slash")
            app.screen.query_one("#logs-filter", Input).value = log_filter
            await pilot.press("enter")
            await _settle(pilot)
        app.save_screenshot(str(IMG / f"console-{name}.svg"))


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        freeze_host(mp)
        build_outage(ROOT)
        asyncio.run(shoot("dashboard-outage-80x24", (80, 24)))
        asyncio.run(shoot("dashboard-outage", (120, 36)))
        asyncio.run(shoot("dashboard-help", (100, 40), ("question_mark",)))
        asyncio.run(shoot("dashboard-pause", (100, 30), ("down", "down", "p")))
        asyncio.run(shoot("logs-pacs", (120, 30), ("l",), log_filter="pacs_main"))
        asyncio.run(shoot("logs-audit", (120, 20), ("l", "t")))
    with pytest.MonkeyPatch.context() as mp:
        freeze_host(mp, used_fraction=0.93)
        build_outage(ROOT)
        asyncio.run(shoot("dashboard-disk-filling", (120, 36)))
    with pytest.MonkeyPatch.context() as mp:
        freeze_host(mp, used_fraction=0.9975)
        build_outage(ROOT)
        asyncio.run(shoot("dashboard-disk-full", (120, 36)))


if __name__ == "__main__":
    main()
