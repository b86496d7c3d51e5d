"""The Packer template and the image build scripts, checked without building (the build and boot are
tests/e2e): `packer validate` with Debian's packer 1.6.6, its variable validation, and the shell scripts'
syntax. Off CI a missing packer skips; under CI it fails (.ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "packer" / "appliance.pkr.hcl"
ANSIBLE_BIN = REPO / ".venv-ansible" / "bin"


def _packer(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    packer = shutil.which("packer")
    ansible = ANSIBLE_BIN / "ansible-playbook"
    if packer is None or not ansible.exists():
        why = "packer (apt-get install packer) and .venv-ansible (make ansible-setup) are needed"
        if os.environ.get("CI"):
            pytest.fail(f"needed under CI: {why}")
        pytest.skip(why)
    key = tmp_path / "key"
    if not key.exists():  # validate reads the key
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    variables = {
        "base_disk": str(tmp_path / "base.qcow2"),
        "version": "0.1.0-abcdef1234",
        "ssh_private_key_file": str(key),
        "site_vars": str(REPO / "packer" / "site.example.yml"),
        "wheelhouse": str(tmp_path),
        **overrides,
    }
    args = [packer, "validate", f"-var-file={REPO / 'packer' / 'debian12-amd64.pkrvars.hcl'}"]
    args += [f"-var={k}={v}" for k, v in variables.items()]
    env = {**os.environ, "PATH": f"{ANSIBLE_BIN}:{os.environ['PATH']}", "CHECKPOINT_DISABLE": "1"}
    return subprocess.run([*args, str(TEMPLATE)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_template_validates(tmp_path: Path) -> None:
    r = _packer(tmp_path, ansible_tags="image_vm")  # as make image passes it (the play's build-VM part)
    assert r.returncode == 0, r.stdout + r.stderr


def test_template_validates_the_cloud_image_path(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    # validate fetches the checksum file: a local stand-in for Debian's SHA512SUMS (no internet here).
    sums = tmp_path / "SHA512SUMS"
    sums.write_text(f"{'ab' * 64}  debian-12-generic-amd64.qcow2\n")
    r = _packer(
        tmp_path,
        base_disk="https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-generic-amd64.qcow2",
        base_disk_checksum=f"file:{sums.as_uri()}",
        cloud_init_seed_dir=str(seed),
        ansible_strategy_plugins=str(tmp_path),
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("version", "v 1", "The version must look like"),
        ("base_disk_checksum", "md5:0123", "The base_disk_checksum must be"),
        ("accelerator", "hvf", "The accelerator must be kvm or tcg"),
        ("disk_size_gib", "2", "The disk_size_gib must be between 6 and 2048"),
        ("memory", "512", "The build VM needs at least 1024 MiB"),
        ("ansible_tags", "hardening", "The ansible_tags variable must be empty (the whole play) or image_vm"),
    ],
)
def test_a_bad_variable_is_named(tmp_path: Path, variable: str, value: str, message: str) -> None:
    r = _packer(tmp_path, **{variable: value})
    assert r.returncode != 0
    assert message in " ".join((r.stdout + r.stderr).split()), r.stdout + r.stderr


@pytest.mark.parametrize(
    "script", ["tools/mkrootfs.sh", "tools/mkdisk.sh", "tools/build-image.sh", "packer/scripts/seal.sh"]
)
def test_build_scripts_parse(script: str) -> None:
    shell = "bash" if Path(REPO / script).read_text().startswith("#!/usr/bin/env bash") else "sh"
    r = subprocess.run([shell, "-n", str(REPO / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_build_refuses_to_run_without_root_or_with_missing_pieces(tmp_path: Path) -> None:
    """The build fails early with what to do, before any minute is spent."""
    env = {**os.environ, "IMAGE_BUILD_DIR": str(tmp_path / "build")}
    r = subprocess.run(
        ["bash", str(REPO / "tools" / "build-image.sh"), str(tmp_path / "missing.yml")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    if os.geteuid() != 0:
        assert "needs root" in r.stderr
    else:
        # Root on a machine with every package: the first missing piece is the wheelhouse in the empty build dir.
        assert "make image:" in r.stderr and ("wheelhouse" in r.stderr or "missing" in r.stderr), r.stderr
