"""Shared setup for the console tests, kept small and generic: each area's state builders live in its own
`fixtures_<area>.py`. Pilot tests are plain test functions that run their coroutine with `asyncio.run`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot


async def _settle(pilot: Pilot[Any]) -> None:
    """Let the screen start its refresh, wait for every worker to finish, then let it repaint (no sleeps)."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.fixture
def settle() -> Callable[[Pilot[Any]], Awaitable[None]]:
    return _settle
