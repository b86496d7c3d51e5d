"""The durable object store: received files, addressed by key, written tmp → fsync → rename → fsync(dir).

Everything else refers to an object by its key, never by a path, so a shared or replicated store can
replace this local directory later. Layout under the spool root:

    tmp/                 receptions in progress (emptied at start-up: the sender never got Success)
    objects/xx/KEY.dcm   committed objects, fanned out over 256 directories by the key's first byte
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .fsutil import fsync_dir


class SpoolTempFile:
    """A reception in progress. Quacks like the NamedTemporaryFile pynetdicom writes chunked datasets to
    (it calls `.write()`, `.file.flush()`, `.close()` and reads `.name`).

    A write error (ENOSPC, EIO) is remembered instead of raised: raised inside pynetdicom's PDU reader it
    would abort the association, whereas the sender deserves a C-STORE status (0xA700) it can act on.

    Every byte written is hashed on the way (sha256, ~0.35 ms per 512 KB): the delivery ledger tells an
    identical re-send from a different object that reuses a SOP Instance UID without reading the file again.
    """

    def __init__(self, directory: Path, refuse: OSError | None = None):
        self.key = uuid.uuid4().hex
        self.name = str(directory / f"{self.key}.part")
        self.error: OSError | None = refuse
        self.size = 0
        self._hash = hashlib.sha256()
        if refuse is None:
            try:
                self._real: IO[bytes] = open(self.name, "xb")  # noqa: SIM115 - lives across many PDUs
                return
            except OSError as exc:  # no space or inodes even for an empty file
                self.error = exc
        # Refused up front: swallow the incoming bytes, the handler answers 0xA700.
        self._real = open(os.devnull, "wb")  # noqa: SIM115

    @property
    def file(self) -> SpoolTempFile:
        return self

    @property
    def sha256(self) -> str:
        """Hex sha256 of the bytes written so far (the whole file once the reception is complete)."""
        return self._hash.hexdigest()

    def write(self, data: Any) -> int:
        if self.error is None:
            try:
                self.size += self._real.write(data)
            except OSError as exc:
                self.error = exc
            else:
                self._hash.update(data)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._real.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if self._real.closed:
            return
        self.flush()
        try:
            self._real.close()
        except OSError as exc:
            self.error = self.error or exc

    def sync_and_close(self) -> None:
        """Flush and fsync; raise the first error seen since the reception began."""
        if self.error is None and not self._real.closed:
            try:
                self._real.flush()
                os.fsync(self._real.fileno())
            except OSError as exc:
                self.error = exc
        self.close()
        if self.error is not None:
            raise self.error

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


class BelowReserve(OSError):
    """The spool disk is below its free-space reserve: new objects are refused so queued work can drain."""


class Spool:
    def __init__(self, root: Path, min_free_bytes: int = 0):
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.tmp_dir = self.root / "tmp"
        self.objects_dir = self.root / "objects"

    # -- set-up ---------------------------------------------------------------------------------
    def init(self) -> None:
        created = False
        for d in (self.root, self.tmp_dir, self.objects_dir):
            if not d.exists():
                d.mkdir(parents=True, exist_ok=True)
                created = True
        for i in range(256):
            d = self.objects_dir / f"{i:02x}"
            if not d.exists():
                d.mkdir(exist_ok=True)
                created = True
        if created:
            fsync_dir(self.objects_dir)
            fsync_dir(self.root)
            fsync_dir(self.root.parent)

    def clean_tmp(self) -> int:
        """Remove receptions a crash interrupted; their senders were never told Success."""
        removed = 0
        for p in self.tmp_dir.iterdir():
            p.unlink(missing_ok=True)
            removed += 1
        if removed:
            fsync_dir(self.tmp_dir)
        return removed

    # -- writing --------------------------------------------------------------------------------
    def new_temp(self) -> SpoolTempFile:
        free = self.free_bytes()
        if free < self.min_free_bytes:
            return SpoolTempFile(
                self.tmp_dir,
                refuse=BelowReserve(
                    errno.ENOSPC,
                    f"only {free / 1e6:.0f} MB free, below the {self.min_free_bytes / 1e6:.0f} MB reserve "
                    "(router.min_free_mb) kept so queued objects can still be forwarded",
                ),
            )
        return SpoolTempFile(self.tmp_dir)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def commit(self, tmp: SpoolTempFile) -> str:
        """Make a finished reception durable under its key. Raises OSError on any failure."""
        tmp.sync_and_close()
        final = self.path(tmp.key)
        os.rename(tmp.name, final)
        fsync_dir(final.parent)
        return tmp.key

    def put_bytes(self, data: bytes) -> str:
        """Store a complete object from memory (tests, tools)."""
        tmp = self.new_temp()
        tmp.write(data)
        return self.commit(tmp)

    # -- reading and removing -------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.objects_dir / key[:2] / f"{key}.dcm"

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        # No fsync of the directory: if a power cut undoes the unlink, the orphan sweep removes it again.
        self.path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        for sub in self.objects_dir.iterdir():
            if sub.is_dir():
                for p in sub.iterdir():
                    if p.suffix == ".dcm":
                        yield p.stem

    def disk_usage(self) -> shutil._ntuple_diskusage:
        return shutil.disk_usage(self.root)


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
