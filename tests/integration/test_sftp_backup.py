"""Off-box backup copies against a REAL OpenSSH server started by the test on a loopback port: upload via a
temporary name, listing, retention on the server, download for verify, and host keys never accepted blindly."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.router.backup import run_scheduled
from appliance.router.config import load_config
from appliance.router.store import this_host
from tests.support.backup_box import Box, make_box
from tests.support.peers import free_port, port_open, wait_until

SSHD = Path("/usr/sbin/sshd")


@dataclass
class Sshd:
    port: int
    dir: Path
    host_pub: str
    client_key: Path
    remote: Path
    log: Path


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not SSHD.exists():
        if os.environ.get("CI"):
            pytest.fail(
                "openssh-server is missing: CI installs it (.ci/run); the SFTP backup tests need /usr/sbin/sshd"
            )
        pytest.skip("needs /usr/sbin/sshd: apt-get install openssh-server (`make deps` does it)")
    d = tmp_path / "sshd"
    d.mkdir()
    keygen(d / "host_ed25519")
    keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    cfg = d / "sshd_config"
    cfg.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {d / 'host_ed25519'}\n"
        f"PidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = d / "sshd.log"
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(cfg)], stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text()}")
            return port_open(port)

        wait_until(up, 15, f"sshd on port {port}")
        yield Sshd(port, d, (d / "host_ed25519.pub").read_text(), d / "client_key", tmp_path / "remote", log)
    finally:
        proc.terminate()
        proc.wait(10)


def sftp_box(tmp_path: Path, server: Sshd, known_hosts_line: str, **backup: object) -> Box:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line)
    return make_box(
        tmp_path,
        backup={
            "keep_daily": 2,
            "keep_weekly": 0,
            "target": "sftp",
            "sftp": {
                "host": "127.0.0.1",
                "port": server.port,
                "username": getpass.getuser(),
                "key_file": str(server.client_key),
                "known_hosts": str(known_hosts),
                "remote_dir": str(server.remote),
                "timeout_seconds": 10,
            },
            **backup,
        },
    )


def known(server: Sshd, pub: str | None = None) -> str:
    key_type, key = (pub or server.host_pub).split()[:2]
    return f"[127.0.0.1]:{server.port} {key_type} {key}\n"


def test_upload_list_retention_and_download(tmp_path: Path, sshd: Sshd) -> None:
    box = sftp_box(tmp_path, sshd, known(sshd), key_file=None)
    me = this_host()
    sshd.remote.mkdir()
    for stamp in ("20200103T020000Z", "20200102T020000Z", "20200101T020000Z"):
        (sshd.remote / f"dicom-router-{me}-{stamp}.drbk").write_bytes(b"old")
    other = sshd.remote / f"dicom-router-other-{me}-20190101T020000Z.drbk"  # another appliance's: never touched
    other.write_bytes(b"theirs")

    created = json.loads(box.cli("create", "--key-file", str(box.key_file), "--json").stdout)
    name = created["bundle"]
    assert created["target"] == "sftp" and created["remote"].endswith(f"{sshd.remote}/{name}")
    # Uploaded byte for byte, no temporary file left; keep_daily 2 → the new one and 3 Jan stay.
    assert (sshd.remote / name).read_bytes() == (box.backups / name).read_bytes()
    assert sorted(p.name for p in sshd.remote.iterdir()) == sorted(
        [name, f"dicom-router-{me}-20200103T020000Z.drbk", other.name]
    )
    remote_retention = created["retention"][1]
    assert remote_retention["where"].startswith("sftp ") and len(remote_retention["removed"]) == 2

    listed = json.loads(box.cli("list", "--from", "sftp", "--json").stdout)["bundles"]
    assert [b["name"] for b in listed] == [other.name, f"dicom-router-{me}-20200103T020000Z.drbk", name]
    assert listed[-1]["size"] == (sshd.remote / name).stat().st_size and listed[-1]["host"] == me

    # A replacement box has only the server's copy: a bundle not found locally is downloaded, then checked.
    (box.backups / name).unlink()
    res = box.cli("verify", name, "--key-file", str(box.key_file))
    assert res.stdout.startswith(f"OK: {name} is intact") and "downloaded" in res.stderr
    assert (box.backups / name).read_bytes() == (sshd.remote / name).read_bytes()

    # The nightly job: configured key, configured target, a one-line summary.
    cfg_text = box.config_path.read_text().replace("key_file: null", f"key_file: {box.key_file}")
    box.config_path.write_text(cfg_text)
    summary = run_scheduled(load_config(box.config_path), box.config_path)
    assert summary.startswith("backup dicom-router-") and f"copied to sftp {getpass.getuser()}@127.0.0.1" in summary
    assert len(list(sshd.remote.glob(f"dicom-router-{me}-2*.drbk"))) == 2  # keep_daily 2 (same day: the newest)
    entries = box.audit()
    assert [(e["event"], e["outcome"], e["process"]) for e in entries] == [
        ("backup.create", "success", "cli"),
        ("backup.verify", "success", "cli"),
        ("backup.create", "success", "scheduler"),
    ]
    assert entries[0]["remote"].endswith(name)


def test_unknown_or_changed_host_key_is_refused_and_nothing_is_sent(tmp_path: Path, sshd: Sshd) -> None:
    keygen(tmp_path / "impostor")
    impostor = (tmp_path / "impostor.pub").read_text()
    box = sftp_box(tmp_path, sshd, known(sshd, impostor))
    known_hosts = tmp_path / "known_hosts"

    res = box.cli("create", "--key-file", str(box.key_file), check=False)
    assert res.returncode == 1
    assert f"host key of 127.0.0.1:{sshd.port} does NOT match the one in {known_hosts}" in res.stderr
    assert "nothing was sent" in res.stderr
    assert "was written locally" in res.stderr and len(box.bundles()) == 1  # the local copy is still made
    assert not sshd.remote.exists() or not any(sshd.remote.iterdir())

    known_hosts.write_text("")  # never seen: not accepted on first sight either
    res = box.cli("create", "--key-file", str(box.key_file), check=False)
    assert res.returncode == 1
    assert f"host key of 127.0.0.1:{sshd.port} is not in {known_hosts} — add it with `ssh-keyscan" in res.stderr
    assert known_hosts.read_text() == ""  # and nothing was written into it
    assert not sshd.remote.exists() or not any(sshd.remote.iterdir())

    # The right host key but a client key the server does not know: the login is refused, plainly.
    known_hosts.write_text(known(sshd))
    (sshd.dir / "authorized_keys").write_text(impostor)
    res = box.cli("list", "--from", "sftp", check=False)
    assert res.returncode == 1
    assert f"127.0.0.1:{sshd.port} refused the login as {getpass.getuser()} with key {sshd.client_key}" in res.stderr

    assert [(e["event"], e["outcome"]) for e in box.audit()] == [("backup.create", "failure")] * 2
