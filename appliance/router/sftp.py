"""Off-box copies of backup bundles over SFTP (paramiko): upload, list, download, delete.

Security stance: the server's host key must already be in the configured known_hosts file (never accepted
on first sight: `RejectPolicy`), authentication is by the configured private key only (no agent, no keys
picked up from ~/.ssh, no passwords). Uploads go to a temporary name and are renamed once complete, so the
remote directory never shows a half-written bundle under a bundle's name.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko

from .config import SftpTarget

PART_PREFIX = "."
PART_SUFFIX = ".part"


class SftpError(Exception):
    """An SFTP operation failed; the message names the server and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: float


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class SftpStore:
    """One connection to the backup server, used as a context manager."""

    def __init__(self, target: SftpTarget):
        self.target = target
        self.where = f"{target.host}:{target.port}"
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # -- connection --------------------------------------------------------------------------------
    def __enter__(self) -> SftpStore:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _load_key(self) -> paramiko.PKey:
        key_file = self.target.key_file
        try:
            return paramiko.PKey.from_path(key_file)
        except FileNotFoundError:
            raise SftpError(
                f"SFTP key file {key_file} does not exist — make one with `ssh-keygen -t ed25519 -N '' -f {key_file}` "
                f"and put its .pub line into ~{self.target.username}/.ssh/authorized_keys on {self.target.host}"
            ) from None
        except PermissionError:
            raise SftpError(
                f"cannot read SFTP key file {key_file}: permission denied — run as the service user"
            ) from None
        except paramiko.PasswordRequiredException:
            raise SftpError(
                f"SFTP key file {key_file} is protected by a passphrase: unattended backups need a key without one "
                "(readable only by the service user, mode 0600)"
            ) from None
        except (paramiko.SSHException, ValueError, OSError) as exc:
            raise SftpError(f"SFTP key file {key_file} is not a usable private key: {exc}") from None

    def connect(self) -> None:
        t = self.target
        known_hosts = t.known_hosts
        if not known_hosts.is_file():
            raise SftpError(
                f"known_hosts file {known_hosts} does not exist — create it with "
                f"`ssh-keyscan -p {t.port} {t.host} > {known_hosts}` after checking the fingerprint with the "
                "server's administrator"
            )
        pkey = self._load_key()
        ssh = paramiko.SSHClient()
        try:
            ssh.load_system_host_keys(str(known_hosts))  # read only: nothing is ever written back
        except (OSError, paramiko.SSHException) as exc:
            raise SftpError(f"cannot read known_hosts file {known_hosts}: {exc}") from None
        ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            ssh.connect(
                t.host,
                port=t.port,
                username=t.username,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=t.timeout_seconds,
                banner_timeout=t.timeout_seconds,
                auth_timeout=t.timeout_seconds,
            )
            self._sftp = ssh.open_sftp()
        except paramiko.BadHostKeyException as exc:
            ssh.close()
            raise SftpError(
                f"host key of {self.where} does NOT match the one in {known_hosts} (the server offered "
                f"{_fingerprint(exc.key)}): either the server was reinstalled or someone is intercepting the "
                "connection — nothing was sent; confirm the new fingerprint with the server's administrator before "
                "changing known_hosts"
            ) from None
        except paramiko.AuthenticationException:
            ssh.close()
            raise SftpError(
                f"{self.where} refused the login as {t.username} with key {t.key_file}: put the public key "
                f"(`ssh-keygen -y -f {t.key_file}`) into ~{t.username}/.ssh/authorized_keys on {t.host}"
            ) from None
        except paramiko.SSHException as exc:
            ssh.close()
            if "not found in known_hosts" in str(exc):
                raise SftpError(
                    f"host key of {self.where} is not in {known_hosts} — add it with "
                    f"`ssh-keyscan -p {t.port} {t.host} >> {known_hosts}` after checking its fingerprint with the "
                    "server's administrator; nothing was sent"
                ) from None
            raise SftpError(f"SSH to {self.where} failed: {exc}") from None
        except socket.gaierror:
            ssh.close()
            raise SftpError(f"cannot resolve backup server name {t.host} — check backup.sftp.host and DNS") from None
        except TimeoutError:
            ssh.close()
            raise SftpError(
                f"no answer from {self.where} within {t.timeout_seconds:g} s — check the network path and firewall"
            ) from None
        except OSError as exc:  # NoValidConnectionsError (connection refused) is an OSError
            ssh.close()
            reason = "connection refused" if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) else exc
            raise SftpError(
                f"cannot connect to backup server {self.where}: {reason} — is its SSH server running and is "
                "backup.sftp.port right?"
            ) from None
        self._ssh = ssh

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            raise SftpError("not connected")
        return self._sftp

    def _path(self, name: str) -> str:
        return f"{self.target.remote_dir.rstrip('/')}/{name}" if self.target.remote_dir else name

    def _fail(self, what: str, exc: OSError) -> SftpError:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return SftpError(f"{what} on {self.where} failed: {reason}")

    # -- operations --------------------------------------------------------------------------------
    def ensure_dir(self) -> None:
        remote = self.target.remote_dir
        try:
            if stat.S_ISDIR(self.sftp.stat(remote).st_mode or 0):
                return
            raise SftpError(f"{remote} on {self.where} is not a directory — check backup.sftp.remote_dir")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(f"checking directory {remote}", exc) from None
        try:
            self.sftp.mkdir(remote)
        except OSError as exc:
            raise SftpError(
                f"directory {remote} does not exist on {self.where} and could not be created "
                f"({exc.strerror or exc}) — create it and give {self.target.username} write access"
            ) from None

    def upload(self, local: Path, name: str) -> int:
        """Copy `local` to remote_dir/name via a temporary name; returns the remote size."""
        self.ensure_dir()
        tmp = self._path(f"{PART_PREFIX}{name}{PART_SUFFIX}")
        final = self._path(name)
        size = os.path.getsize(local)
        try:
            attrs = self.sftp.put(str(local), tmp, confirm=True)
            if attrs.st_size != size:
                raise SftpError(f"upload of {name} to {self.where} is incomplete ({attrs.st_size} of {size} bytes)")
            try:
                self.sftp.posix_rename(tmp, final)
            except OSError:
                self.sftp.rename(tmp, final)  # servers without the posix-rename extension
        except OSError as exc:
            try:
                self.sftp.remove(tmp)
            except OSError:
                pass
            raise self._fail(f"uploading {name} to {self.target.remote_dir}", exc) from None
        return size

    def list(self) -> list[RemoteFile]:
        try:
            entries = self.sftp.listdir_attr(self.target.remote_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._fail(f"listing {self.target.remote_dir}", exc) from None
        return [
            RemoteFile(e.filename, e.st_size or 0, float(e.st_mtime or 0))
            for e in entries
            if stat.S_ISREG(e.st_mode or 0)
        ]

    def download(self, name: str, local: Path) -> None:
        """Copy remote_dir/name to `local` (written to local.part, then renamed)."""
        part = local.with_name(local.name + PART_SUFFIX)
        try:
            self.sftp.get(self._path(name), str(part))
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, local)
        except FileNotFoundError:
            part.unlink(missing_ok=True)
            raise SftpError(f"there is no bundle {name} in {self.target.remote_dir} on {self.where}") from None
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise self._fail(f"downloading {name}", exc) from None

    def delete(self, name: str) -> None:
        try:
            self.sftp.remove(self._path(name))
        except OSError as exc:
            raise self._fail(f"deleting {name}", exc) from None
