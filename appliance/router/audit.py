"""The audit trail: `audit.jsonl`, one JSON object per line, appended by every router process.

Each line is written with a single O_APPEND write, so lines from the receiver, the forwarder and the
CLI never interleave. (Hash-chaining for tamper evidence is issue 4; the record shape already fits it.)
"""

from __future__ import annotations

import getpass
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def current_operator() -> str:
    """The login user, so every operator action names a person, never a shared identity."""
    for var in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:
        return f"uid:{os.getuid()}"


class AuditLog:
    def __init__(self, path: Path, process: str):
        self.path = Path(path)
        self.process = process
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is not None and self._rotated():
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return self._fd

    def _rotated(self) -> bool:
        """True when logrotate has renamed the file away: the next line goes to a new audit.jsonl."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        held = os.fstat(self._fd)  # type: ignore[arg-type]
        return (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino)

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "event": event,
            "outcome": outcome,
            "process": self.process,
            **{k: v for k, v in fields.items() if v is not None},
        }
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                os.write(self._open(), line)
            except OSError:
                # A full log disk must not stop DICOM traffic; the service log says so once per failure.
                import logging

                logging.getLogger("router.audit").exception("could not append to the audit log %s", self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                entries.append(json.loads(line))
    return entries
