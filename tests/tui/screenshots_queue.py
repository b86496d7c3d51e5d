"""Render the queue walkthrough's screenshots (docs/img/console-queue-*.svg) from the realistic test queue.

    .venv/bin/python -m tests.tui.screenshots_queue [--out docs/img]

Each is a real render of the console (the queue screen and its dialogs) driven by keys, as in the tests."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from tests.tui.fixtures_queue import build_queue, make_app
from tests.tui.test_queue import press, settle

ROOT = Path("/tmp/dicom-router-docs")
SIZE = (110, 32)


async def down_pending(p: Pilot[Any]) -> None:
    p.app.screen.apply_filter(destination="PACS_MAIN", state="queued")  # type: ignore[attr-defined]
    await settle(p)


async def down_retry(p: Pilot[Any]) -> None:
    await down_pending(p)
    await press(p, "A", "r")


async def ae_failed(p: Pilot[Any]) -> None:
    p.app.screen.apply_filter(destination="PACS_MAIN", state="failed")  # type: ignore[attr-defined]
    await settle(p)


async def ae_job(p: Pilot[Any]) -> None:
    await ae_failed(p)
    await press(p, "enter")


async def ae_retry(p: Pilot[Any]) -> None:
    await ae_failed(p)
    p.app.screen.query_one("#jobs", DataTable).move_cursor(row=0)
    await press(p, "A", "r")


async def misrouted(p: Pilot[Any]) -> None:
    p.app.screen.apply_filter(accession="ACC-MIX")  # type: ignore[attr-defined]
    await settle(p)
    await press(p, "A")


async def misrouted_hold(p: Pilot[Any]) -> None:
    await misrouted(p)
    await press(p, "h")


async def misrouted_reroute(p: Pilot[Any]) -> None:
    await misrouted(p)
    await press(p, "o", "down")


SHOTS: dict[str, Callable[[Pilot[Any]], Awaitable[None]]] = {
    "console-queue-down": down_pending,
    "console-queue-down-retry": down_retry,
    "console-queue-ae-failed": ae_failed,
    "console-queue-ae-job": ae_job,
    "console-queue-ae-retry": ae_retry,
    "console-queue-misrouted-hold": misrouted_hold,
    "console-queue-misrouted-reroute": misrouted_reroute,
}


def shoot(name: str, script: Callable[[Pilot[Any]], Awaitable[None]], out: Path) -> Path:
    app = make_app(build_queue(ROOT))

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await script(pilot)
            app.save_screenshot(filename=f"{name}.svg", path=str(out))

    asyncio.run(main())
    return out / f"{name}.svg"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "img")
    args = ap.parse_args()
    os.environ["TZ"] = "UTC"
    time.tzset()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, script in SHOTS.items():
        print(shoot(name, script, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
