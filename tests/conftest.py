import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.appliance import molecule_runner  # noqa: E402
from tests.e2e import image_build  # noqa: E402
from tests.support.data import make_ct_series  # noqa: E402
from tests.support.peers import stop_all  # noqa: E402


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the molecule scenarios now if their test was collected: they run beside the suite."""
    if any(item.name == "test_molecule_scenarios" for item in session.items):
        molecule_runner.start()
    # The appliance image the boot test needs, built while the rest of the suite runs (if missing or stale).
    if any(item.nodeid.startswith("tests/e2e/") for item in session.items):
        image_build.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    molecule_runner.stop_all()
    if not hasattr(session.config, "workerinput"):  # an xdist worker finishing early must not stop the build
        image_build.stop()


@pytest.fixture(autouse=True)
def _stop_peers_left_running():  # type: ignore[no-untyped-def]
    """A test that fails before its own `finally` must not leave storescp/Orthanc/the router running."""
    yield
    stop_all()


@pytest.fixture(scope="session")
def ct_series_200(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_ct_series(tmp_path_factory.mktemp("ct200"), 200, accession="ACC200", seed=200)
