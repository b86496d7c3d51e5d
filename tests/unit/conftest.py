"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.router.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh, initialised queue database (test_store.py and test_scheduler.py define their own)."""
    s = Store(tmp_path / "queue.sqlite3")
    s.init()
    yield s
    s.close()
