import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.appliance import molecule_runner  # noqa: E402
from tests.e2e import image_build  # noqa: E402
from tests.support.data import make_ct_series  # noqa: E402
from tests.support.peers import stop_all  # noqa: E402

_LOADED_AT = time.time()  # this session's start, near enough (for files written during it)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _is_xdist_worker(config):  # the scenarios' results are where the controller writes them
        molecule_runner.logs_dir = Path(config.workerinput["molecule_logs_dir"])  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: tell each worker where the molecule scenarios' results go."""
    node.workerinput["molecule_logs_dir"] = str(molecule_runner.logs_dir)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without xdist: start the molecule scenarios now if their test was collected; they run beside the suite."""
    if _is_xdist_worker(session.config):
        return
    if any(item.name == "test_molecule_scenarios" for item in session.items):
        molecule_runner.start()
    # The appliance image the boot test needs, built while the rest of the suite runs (if missing or stale).
    if any(item.nodeid.startswith("tests/e2e/") for item in session.items):
        image_build.start()


_collected_by_workers: set[str] = set()
_image_build_started: list[bool] = []  # once per session, though every worker reports its collection


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist, in the controller (the workers collect, the controller does not): start the scenarios
    once, before any test is scheduled, if a worker collected their test. start() is a no-op once started."""
    _collected_by_workers.update(ids)
    if any(nodeid.rsplit("::", 1)[-1] == "test_molecule_scenarios" for nodeid in ids):
        molecule_runner.start()
    if any(nodeid.startswith("tests/e2e/") for nodeid in ids) and not _image_build_started:
        _image_build_started.append(True)
        image_build.start()


SNAPSHOTS = Path(__file__).resolve().parent / "tui" / "__snapshots__"


def unused_snapshots(collected: set[str]) -> list[str]:
    """Snapshot files (__snapshots__/MODULE/TEST.svg) of a module that ran but with no such test: what syrupy
    fails a serial run on. Under pytest-xdist syrupy leaves that check out (each worker sees a part of the run),
    so the controller makes it here."""
    ran = {nodeid.split("::", 1)[0] for nodeid in collected}
    unused = []
    for svg in sorted(SNAPSHOTS.glob("*/*.svg")):
        module = f"tests/tui/{svg.parent.name}.py"
        if module in ran and f"{module}::{svg.stem}" not in collected:
            unused.append(str(svg.relative_to(SNAPSHOTS.parents[2])))
    return unused


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the scenarios still running (only the process that started them has any); in the xdist
    controller, fail the run on snapshot files no test uses."""
    molecule_runner.stop_all()
    if not _is_xdist_worker(session.config):  # a worker finishing early must not stop the image build
        image_build.stop()
    opt = session.config.option
    selected_part = opt.keyword or opt.markexpr or opt.deselect or any("::" in a for a in session.config.args)
    if _collected_by_workers and not _is_xdist_worker(session.config) and not selected_part:
        unused = unused_snapshots(_collected_by_workers)
        if unused:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"\n{len(unused)} snapshot(s) unused (no such test): " + ", ".join(unused))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The boot test's Lynis report (index, warnings, suggestions), written by whichever worker ran it."""
    from tests.e2e.test_appliance_boot import LYNIS_SUMMARY

    if LYNIS_SUMMARY.exists() and LYNIS_SUMMARY.stat().st_mtime >= _LOADED_AT:
        terminalreporter.write_sep("-", "appliance image: Lynis")
        terminalreporter.write(LYNIS_SUMMARY.read_text())


@pytest.fixture(autouse=True)
def _stop_peers_left_running():  # type: ignore[no-untyped-def]
    """A test that fails before its own `finally` must not leave storescp/Orthanc/the router running."""
    yield
    stop_all()


@pytest.fixture(scope="session")
def ct_series_200(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_ct_series(tmp_path_factory.mktemp("ct200"), 200, accession="ACC200", seed=200)
