"""Shared setup for the console tests, kept small and generic: each area's state builders live in its own
`fixtures_<area>.py`. Pilot tests are plain test functions that run their coroutine with `asyncio.run`."""

from __future__ import annotations

import fcntl
from collections.abc import Awaitable, Callable, Iterator
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


@pytest.fixture(autouse=True)
def _snapshot_sites_one_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """A snapshot test builds its site at a fixed path, /tmp/dicom-router-snap-NAME (the path shows on the
    screen), recreating it first. Tests of one screen share that path, and under pytest-xdist (or another run
    of the suite on this machine) two could rebuild it under each other: the snapshot tests take turns."""
    if "snap_compare" not in request.fixturenames:
        yield
        return
    with open("/tmp/dicom-router-snap.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
