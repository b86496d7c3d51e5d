"""Molecule scenarios started in the background as soon as pytest has collected them.

A scenario spends most of its time waiting for Ansible's per-task round trips, so the scenarios run
side by side (each in its own systemd-nspawn container) while the rest of the suite runs; the test at
the end of the session (tests/appliance/test_ansible.py) waits for them and reports each one.
`make molecule` runs every scenario; the suite runs the ones below (the per-role development scenarios
hardening and ops have their checks included in `default`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv-ansible" / "bin"
SUITE_SCENARIOS = ("default", "change_control", "network")


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float


_running: list[Running] = []


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "root, for systemd-nspawn"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn (apt install systemd-container)"
    if not (BIN / "molecule").exists():
        return "the Ansible toolchain (make ansible-setup)"
    if not (REPO / "build/molecule-rootfs/.done").exists():
        return "the test rootfs (make molecule-rootfs)"
    if not (REPO / "build/wheelhouse/RELEASE").exists():
        return "the wheelhouse (make wheelhouse)"
    return None


def start() -> None:
    if _running or missing_prerequisite():
        return
    logs = Path(tempfile.mkdtemp(prefix="molecule-logs-"))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
    }
    for name in SUITE_SCENARIOS:
        log = logs / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "molecule"), "test", "-s", name], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        _running.append(Running(name, proc, log, time.monotonic()))


def wait_all(timeout: float = 1800) -> list[tuple[str, int, float, Path]]:
    """(scenario, exit status, seconds, log) for each scenario started."""
    results = []
    for r in _running:
        try:
            rc = r.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - r.started)))
        except subprocess.TimeoutExpired:
            r.proc.kill()
            rc = -9
        results.append((r.name, rc, time.monotonic() - r.started, r.log))
    return results


def stop_all() -> None:
    for r in _running:
        if r.proc.poll() is None:
            r.proc.terminate()
