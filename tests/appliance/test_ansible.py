"""The Ansible side of the appliance: lint, syntax, the inventory check, and the suite's molecule scenarios.

Molecule boots systemd-nspawn containers of the image's root filesystem, build/image-rootfs (root, mmdebstrap,
systemd-container), which the scenarios build first if it is missing or stale (`make test` builds the wheelhouse
and .venv-ansible before the suite starts). Without root these tests skip locally and fail under CI.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

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


def _image_tasks(*tag_args: str) -> list[str]:
    res = _run([str(BIN / "ansible-playbook"), "-i", "localhost,", "--list-tasks", *tag_args, "ansible/image.yml"])
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line.strip() for line in res.stdout.splitlines()]
    return [line for line in lines if "\tTAGS: [" in line and not line.startswith("play #")]


def _tasks_gated_on_containers() -> set[str]:
    """'role : task name' of every role task that only runs outside a container (its `when` says so)."""
    names = set()
    for path in sorted((REPO / "roles").glob("*/tasks/*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            if "in_container" in str(task.get("when", "")):
                names.add(f"{path.parts[-3]} : {task['name']}")
    return names


def test_the_image_play_splits_into_a_container_part_and_a_build_vm_part(toolchain: None) -> None:
    """tools/build-image.sh runs ansible/image.yml in a container with --skip-tags image_vm, then Packer runs it
    in the build VM with --tags image_vm: every task must run in exactly one of them (checks tagged `always` in
    both), the lockdown of SSH and the firewall in the VM (the build account logs in before it), and every task
    that a container skips in the VM — or the image would never get it."""
    whole = _image_tasks()
    in_vm = _image_tasks("--tags", "image_vm")
    in_container = _image_tasks("--skip-tags", "image_vm")
    always = {task for task in whole if "always" in task.split("TAGS: [")[1].rstrip("]").split(", ")}
    assert set(in_vm) | set(in_container) == set(whole)
    assert set(in_vm) & set(in_container) == always
    vm_names = {task.split("\t")[0] for task in in_vm}
    assert {"hardening : Write the SSH daemon configuration", "nftables : Write /etc/nftables.conf"} <= vm_names
    gated = _tasks_gated_on_containers()
    assert len(gated) >= 8, gated
    assert gated <= vm_names, f"skipped in the container and not run in the build VM: {sorted(gated - vm_names)}"


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
