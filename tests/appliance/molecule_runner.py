"""Molecule scenarios started in the background as soon as pytest has collected them.

A scenario spends most of its time waiting for Ansible's per-task round trips, so the scenarios run
side by side (each in its own systemd-nspawn container) while the rest of the suite runs; the test at
the end of the session (tests/appliance/test_ansible.py) waits for them and reports each one.
`make molecule` runs every scenario; the suite runs the ones below (the per-role development scenarios
hardening and ops have their checks included in `default`).

Under pytest-xdist the scenarios start exactly once, in the controller (tests/conftest.py), while the test
runs in a worker, another process: so each scenario's result goes to a file, `<scenario>.rc` next to its
log in `logs_dir`, which the controller names before the workers start and hands them. Without xdist the
same process starts them and reads the files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv-ansible" / "bin"
SUITE_SCENARIOS = ("default", "change_control", "network")
# These run under Mitogen's strategy (one Python interpreter in the container instead of one per task: about a
# third of the CPU time). network, the smallest, keeps Ansible's own way, a process per task, as IT's playbook
# runs do, so that way is exercised too.
MITOGEN_SCENARIOS = ("default", "change_control")
TIMEOUT = 1800.0  # a scenario still running after this long is killed (exit -9)


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float


_running: list[Running] = []

# Where the scenarios' logs and result files go: named (not created) by the process that starts them, and
# given to pytest-xdist's workers by tests/conftest.py.
logs_dir = Path(tempfile.gettempdir()) / f"molecule-logs-{uuid.uuid4().hex[:12]}"


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "root, for systemd-nspawn"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn (apt install systemd-container)"
    if not (BIN / "molecule").exists():
        return "the Ansible toolchain (make ansible-setup)"
    if shutil.which("mmdebstrap") is None and not (REPO / "build/image-rootfs/.recipe").exists():
        return "mmdebstrap, for the image's root filesystem (apt install mmdebstrap)"
    if not (REPO / "build/wheelhouse/RELEASE").exists():
        return "the wheelhouse (make wheelhouse)"
    return None


def start() -> None:
    if _running or missing_prerequisite():
        return
    logs_dir.mkdir(mode=0o700)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
    }
    with_mitogen = {**env, **mitogen_env()}
    for name in SUITE_SCENARIOS:
        log = logs_dir / f"{name}.log"
        scenario_env = with_mitogen if name in MITOGEN_SCENARIOS else env
        # Each scenario first makes sure of the image's root filesystem, which its containers boot: the suite
        # starts before it is built (`make test` does not wait for its mmdebstrap), and the first scenario to
        # ask builds it while the others wait on its lock (tools/build-image.sh).
        command = f"tools/build-image.sh --rootfs-only && exec {BIN / 'molecule'} test -s {name}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["sh", "-c", command],
                cwd=REPO,
                env=scenario_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stop_all() ends the scenario and the root filesystem build it waits on
            )
        r = Running(name, proc, log, time.monotonic())
        _running.append(r)
        threading.Thread(target=_record_exit, args=(r,), name=f"molecule-{name}", daemon=True).start()
    # Which scenarios were started, for a waiter in another process: written once all are running.
    _write_atomically(logs_dir / "started", "\n".join(SUITE_SCENARIOS) + "\n")


def mitogen_env() -> dict[str, str]:
    """What turns Mitogen's strategy on (molecule/shared/create.yml then connects with its setns transport)."""
    # Found the way tools/build-image.sh finds it: where the toolchain's Python imports it from.
    where = "import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))"
    r = subprocess.run([str(BIN / "python"), "-c", where], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"Mitogen is missing from {BIN} (requirements-ansible.txt): make ansible-setup")
    return {"ANSIBLE_STRATEGY_PLUGINS": f"{r.stdout.strip()}/plugins/strategy", "ANSIBLE_STRATEGY": "mitogen_linear"}


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _record_exit(r: Running) -> None:
    """In the starting process: wait for one scenario (killing it after TIMEOUT), write "<rc> <seconds>"."""
    try:
        rc = r.proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        r.proc.kill()
        r.proc.wait()
        rc = -9
    _write_atomically(r.log.with_suffix(".rc"), f"{rc} {time.monotonic() - r.started:.1f}\n")


def wait_all(timeout: float = TIMEOUT + 60, poll: float = 1.0) -> list[tuple[str, int, float, Path]]:
    """(scenario, exit status, seconds, log) for each scenario started, in this process or, under
    pytest-xdist, in the controller; read from the result files the starting process writes."""
    started = logs_dir / "started"
    if not started.exists():
        return []
    names = started.read_text().split()
    deadline = time.monotonic() + timeout  # a backstop only: the starting process kills a scenario at TIMEOUT
    results = []
    for name in names:
        log, rc_file = logs_dir / f"{name}.log", logs_dir / f"{name}.rc"
        while not rc_file.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"molecule scenario {name} has no result after {timeout:g} s (log {log})")
            time.sleep(poll)
        rc, seconds = rc_file.read_text().split()
        results.append((name, int(rc), float(seconds), log))
    return results


def stop_all() -> None:
    for r in _running:
        if r.proc.poll() is None:
            try:
                os.killpg(r.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
