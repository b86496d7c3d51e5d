import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.data import make_ct_series  # noqa: E402


@pytest.fixture(scope="session")
def ct_series_200(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_ct_series(tmp_path_factory.mktemp("ct200"), 200, accession="ACC200", seed=200)
