"""The Ansible side of the appliance: lint, syntax, the inventory check, and every molecule scenario.

Molecule boots systemd-nspawn containers of build/molecule-rootfs (root, mmdebstrap, systemd-container);
`make test` builds the rootfs, the wheelhouse and .venv-ansible first. Without root these tests skip
locally and fail under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

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


def test_molecule_scenarios(toolchain: None, tmp_path: Path) -> None:
    """Every scenario: destroy, syntax, create, converge, idempotence (where listed), verify, destroy.

    They run side by side (each in its own container): the time goes to waiting, not to the CPU."""
    _need(os.geteuid() == 0, "root, for systemd-nspawn")
    _need(shutil.which("systemd-nspawn") is not None, "systemd-nspawn (apt install systemd-container)")
    _need((REPO / "build/molecule-rootfs/.done").exists(), "the rootfs (make molecule-rootfs)")
    _need((REPO / "build/wheelhouse/RELEASE").exists(), "the wheelhouse (make wheelhouse)")
    scenarios = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
    started = time.monotonic()
    procs = {}
    for name in scenarios:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed below
        procs[name] = (
            subprocess.Popen(
                [str(BIN / "molecule"), "test", "-s", name],
                cwd=REPO,
                env={**_env(), "ANSIBLE_NOCOLOR": "1", "PY_COLORS": "0", "ANSIBLE_FORCE_COLOR": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    failed = []
    for name, (proc, log) in procs.items():
        rc = proc.wait(timeout=1500)
        log.close()
        text = (tmp_path / f"{name}.log").read_text()
        print(f"molecule {name}: rc={rc} after {time.monotonic() - started:.0f} s")
        if rc != 0:
            failed.append(f"--- molecule scenario {name} failed (rc={rc}); last lines:\n{text[-8000:]}")
    assert not failed, "\n".join(failed)
