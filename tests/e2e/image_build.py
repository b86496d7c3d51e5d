"""The boot test's image, built in the background while the rest of the suite runs (like the molecule
scenarios): `make e2e-image` takes minutes of emulated-VM time that would otherwise add to the suite's.

`start()` runs in the pytest controller at collection when the e2e tests are collected and the image is
missing or older than its inputs; the e2e fixture calls `wait()`, which reads the build's exit code from a
file (so it works from any xdist worker). Without root the build cannot run: the tests then skip (fail
under CI)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

from tests.e2e import vm

LOG = vm.BUILD / "e2e" / "image-build.log"
RC = vm.BUILD / "e2e" / "image-build.rc"
# What the image is made from: a change to any of these makes the next run build it again.
INPUTS = [
    "appliance", "roles", "ansible", "packer", "tools/mkrootfs.sh", "tools/mkdisk.sh", "tools/build-image.sh",
    "tools/image_manifest.py", "tests/e2e/site-vars.yml", "pyproject.toml", "requirements-appliance.lock",
    "molecule/shared/nspawn-up.sh", "molecule/shared/nspawn-down.sh",
]  # fmt: skip


def inputs_digest() -> str:
    digest = hashlib.sha256()
    for top in INPUTS:
        path = vm.REPO / top
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(str(f.relative_to(vm.REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


DIGEST_FILE = vm.BUILD / "e2e" / "image-inputs.sha256"


def current() -> bool:
    """The image exists, was built for the boot test, and from the inputs as they are now."""
    manifest = vm.manifest()
    return (
        manifest is not None
        and manifest.get("site_vars") == "site-vars.yml"
        and DIGEST_FILE.exists()
        and DIGEST_FILE.read_text().strip() == inputs_digest()
    )


STARTED = vm.BUILD / "e2e" / "image-build.started"


def start() -> None:
    """Start `make e2e-image` in the background unless the image is current (or we cannot build: not root)."""
    RC.unlink(missing_ok=True)
    STARTED.unlink(missing_ok=True)
    if current() or os.geteuid() != 0:
        return
    LOG.parent.mkdir(parents=True, exist_ok=True)
    script = f"make --no-print-directory e2e-image > {LOG} 2>&1; echo $? > {RC}"  # it records the digest
    proc = subprocess.Popen(["sh", "-c", script], cwd=vm.REPO, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    STARTED.write_text(f"{proc.pid}\n")


def stop() -> None:
    """At the session's end: a build still running (the session was interrupted) is stopped with it."""
    if STARTED.exists() and not RC.exists():
        try:
            os.killpg(int(STARTED.read_text()), signal.SIGTERM)  # packer stops its VM on SIGTERM
        except (ProcessLookupError, ValueError):
            pass


def wait(timeout: float = 3600) -> str | None:
    """None once the build `start()` began has succeeded (or none was begun); else what went wrong."""
    if not STARTED.exists():
        return None
    deadline = time.monotonic() + timeout
    while not RC.exists():
        if time.monotonic() > deadline:
            return f"`make e2e-image` still running after {timeout:.0f} s (log: {LOG})"
        time.sleep(5)
    rc = RC.read_text().strip()
    if rc != "0":
        tail = "\n".join(LOG.read_text(errors="replace").splitlines()[-40:]) if LOG.exists() else ""
        return f"`make e2e-image` failed (exit {rc}); the end of {LOG}:\n{tail}"
    return None
