"""Boot the built appliance image under qemu for the end-to-end tests.

The image is never changed: qemu writes to a throw-away overlay. User-mode networking forwards loopback ports
to the guest's SSH and DICOM ports; the guest reaches the host's loopback services at the user network's
gateway, 10.0.2.2. KVM only where it really works (as tools/build-image.sh decides), else TCG."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.peers import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
IMAGE = BUILD / "dicom-router-appliance.qcow2"  # the newest build (a link made by tools/build-image.sh)
E2E_KEY = BUILD / "e2e" / "id_ed25519"
GATEWAY = "10.0.2.2"  # the host, as the guest sees it on qemu's user network
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=10",
]  # fmt: skip


def manifest() -> dict[str, object] | None:
    path = IMAGE.resolve().with_suffix(".manifest.json")
    return json.loads(path.read_text()) if path.exists() else None


def accelerator() -> str:
    cpu = Path("/proc/cpuinfo").read_text()
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and (" vmx" in cpu or " svm" in cpu)
    return "kvm" if usable else "tcg"


@dataclass
class Appliance:
    workdir: Path
    firmware: str = "bios"  # or "uefi"
    cpus: int = 2
    dicom_port: int = field(default_factory=free_port)
    ssh_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() when qemu was started
    booted_after: float = 0.0  # seconds from qemu's start to ready

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"serial-{self.firmware}.log"

    def start(self) -> Appliance:
        overlay = self.workdir / f"overlay-{self.firmware}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(IMAGE.resolve()), "-F", "qcow2",
                        str(overlay)], check=True)  # fmt: skip
        accel = accelerator()
        args = [
            "qemu-system-x86_64", "-accel", "kvm" if accel == "kvm" else "tcg,thread=multi",
            "-cpu", "host" if accel == "kvm" else "max", "-m", "2048", "-smp", str(self.cpus),
            "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                       f"hostfwd=tcp:127.0.0.1:{self.dicom_port}-:104",
            "-device", "virtio-net,netdev=n0",
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial_log}",
        ]  # fmt: skip
        if self.firmware == "uefi":
            vars_copy = self.workdir / "OVMF_VARS.fd"
            vars_copy.write_bytes(OVMF_VARS.read_bytes())
            args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]  # fmt: skip
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=open(self.workdir / f"qemu-{self.firmware}.log", "ab"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 600) -> None:
        """Until SSH with the admin key works and systemd has finished starting up."""
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited ({self.proc.returncode}); serial console:\n{self.tail()}")
            r = self.ssh("systemctl is-system-running --wait", timeout=120, check=False)
            last = (r.stdout + r.stderr).strip()
            if r.returncode in (0, 1) and last.splitlines()[-1:] in (["running"], ["degraded"]):
                self.booted_after = time.monotonic() - self.started_at
                return
            time.sleep(3)
        raise TimeoutError(f"the appliance was not ready after {timeout:.0f} s ({last}); serial:\n{self.tail()}")

    def ssh(self, command: str, *, user: str = "e2e", timeout: float = 300, check: bool = True,
            input: str | None = None, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        args = ["ssh", *SSH_OPTS, "-i", str(E2E_KEY), "-o", "BatchMode=yes", "-p", str(self.ssh_port),
                *(extra or []), f"{user}@127.0.0.1", command]  # fmt: skip
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"on the appliance: {command} → {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def sudo(self, command: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return self.ssh(f"sudo sh -c {shlex.quote(command)}", **kw)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.ssh("sudo systemctl poweroff", check=False, timeout=20)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
