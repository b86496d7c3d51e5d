"""The Ansible side of the appliance: lint, syntax, the inventory check, and the suite's molecule scenarios.

Molecule boots systemd-nspawn containers of build/molecule-rootfs (root, mmdebstrap, systemd-container);
`make test` builds the rootfs, the wheelhouse and .venv-ansible first. Without root these tests skip
locally and fail under CI.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.appliance import molecule_runner

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv-ansible" / "bin"
PLAYBOOKS = sorted((REPO / "ansible").glob("*.yml"))


def _need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"needed under CI: {why}")
        pytest.skip(why)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}


def _run(args: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def toolchain() -> None:
    _need((BIN / "ansible-playbook").exists(), "the Ansible toolchain (make ansible-setup)")


def test_yamllint_is_clean(toolchain: None) -> None:
    res = _run([str(BIN / "yamllint"), "-s", "."])
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_production_profile_is_clean(toolchain: None) -> None:
    res = _run([str(BIN / "ansible-lint"), "--profile", "production"], timeout=900)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_playbook_syntax(toolchain: None, playbook: Path) -> None:
    res = _run([str(BIN / "ansible-playbook"), "--syntax-check", str(playbook)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_missing_required_variable_is_named_with_its_description(toolchain: None, tmp_path: Path) -> None:
    """site.yml checks the inventory in a first play that never connects: the host here does not exist."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "dicom_routers:\n  hosts:\n    nowhere:\n"
        "      ansible_connection: community.general.chroot\n      ansible_host: /nonexistent\n"
        "      nftables_admin_networks: [10.99.0.0/24]\n"
    )
    res = _run([str(BIN / "ansible-playbook"), "-i", str(inventory), "ansible/site.yml"])
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "dicom_router_nodes is not set (role dicom_router): The DICOM nodes" in " ".join(out.split()), out
    assert "Gathering Facts" not in out  # it stopped before touching the host


def test_molecule_scenarios() -> None:
    """destroy, syntax, create, converge, idempotence (default), verify, destroy — for each scenario in
    molecule_runner.SUITE_SCENARIOS, started in the background when the suite was collected."""
    missing = molecule_runner.missing_prerequisite()
    _need(missing is None, str(missing))
    results = molecule_runner.wait_all()
    assert results, "no molecule scenario was started"
    failed = []
    for name, rc, seconds, log in results:
        print(f"molecule {name}: exit {rc} after {seconds:.0f} s (log {log})")
        if rc != 0:
            failed.append(f"--- molecule scenario {name} failed (exit {rc}); last lines:\n{log.read_text()[-8000:]}")
    assert not failed, "\n".join(failed)
