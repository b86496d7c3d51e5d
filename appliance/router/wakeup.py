"""A doorbell from the receiver to the forwarder: one datagram on a UNIX socket after each new object.

Only a hint, never a source of truth: a lost datagram (forwarder restarting, buffer full) costs at most
IDLE_RECHECK_SECONDS of delay, because idle workers also re-check the queue on that timer. This keeps an
idle appliance from polling SQLite hundreds of times a second while new work still starts at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path


def socket_path(state_dir: Path) -> Path:
    return state_dir / "forwarder.wake"


class Doorbell:
    """Sender side (receiver process): non-blocking, never raises."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def ring(self) -> None:
        with contextlib.suppress(OSError):  # no listener, or its buffer is full: it re-checks anyway
            self.sock.sendto(b"!", self.path)

    def close(self) -> None:
        self.sock.close()


class DoorbellListener:
    """Receiver side (forwarder process): calls `on_ring` for every datagram, from its own thread."""

    def __init__(self, path: Path, on_ring: Callable[[], None]):
        self.path = path
        self.on_ring = on_ring
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(1.0)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="doorbell", daemon=True)

    def start(self) -> DoorbellListener:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            self.on_ring()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
