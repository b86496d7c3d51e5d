"""Hot-path counters: what the receiver and the forwarder count while they relay, for Prometheus.

The router is three processes (receiver, forwarder, scheduler). prometheus-client's multiprocess mode
lets each write its counters to small mmap'd files in one directory (`state_dir/metrics`, emptied by
the supervisor at start); the scheduler's endpoint (metrics_export.py) sums them at scrape time. The
mode must be chosen before prometheus_client is first imported, so the supervisor puts
PROMETHEUS_MULTIPROC_DIR in the children's environment — and leaves it out when `metrics.enabled` is
false, which makes every call here a no-op (the lead's with/without cost comparison runs that way).

Cost: one increment is a lock, a dict lookup and an 8-byte write into shared memory (no syscall).
Label children are looked up once per source/destination and cached, so an object costs a few µs.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_LABEL_VALUES = 200  # distinct sources/destinations per metric; beyond, "other" (unknown callers may vary)
OTHER = "other"
# Association lengths: a C-ECHO takes ms, a study minutes, an idle-kept forwarder association seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, float("inf"))
_STARTED_ATTR = "_dicom_router_metrics_t0"


def multiproc_dir(state_dir: Path) -> Path:
    return state_dir / "metrics"


def prepare_multiproc_dir(state_dir: Path) -> Path:
    """Called by the supervisor before it starts the children: an empty directory, so counters start at zero
    with this run of the router (Prometheus reads the drop as a counter reset) and no dead process's files
    from an earlier run are summed in."""
    path = multiproc_dir(state_dir)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o750)
    return path


class NullRecorder:
    """metrics.enabled: false (or no multiprocess directory): every call does nothing."""

    enabled = False

    def received(self, source: str, nbytes: int) -> None:
        pass

    def forwarded(self, destination: str, nbytes: int) -> None:
        pass

    def retried(self, destination: str) -> None:
        pass

    def failed(self, destination: str) -> None:
        pass

    def association_started(self, assoc: Any) -> None:
        pass

    def association_closed(self, assoc: Any, direction: str, node: str) -> None:
        pass

    def watch_outbound(self, assoc: Any, destination: str) -> None:
        pass


class Recorder(NullRecorder):
    """The real counters. One per process (see `recorder()`)."""

    enabled = True

    def __init__(self, registry: Any = None) -> None:
        """`registry`: for tests; the router's processes use prometheus_client's default one."""
        from prometheus_client import REGISTRY, Counter, Histogram

        reg = registry if registry is not None else REGISTRY

        self.received_objects = Counter(
            "dicom_router_received_objects", "Objects received and stored durably, by source", ["source"], registry=reg
        )
        self.received_bytes = Counter(
            "dicom_router_received_bytes",
            "Bytes of the objects received (as spooled), by source",
            ["source"],
            registry=reg,
        )
        self.forwarded_objects = Counter(
            "dicom_router_forwarded_objects",
            "Objects a destination confirmed storing, by destination",
            ["destination"],
            registry=reg,
        )
        self.forwarded_bytes = Counter(
            "dicom_router_forwarded_bytes",
            "Bytes of the spooled objects forwarded, by destination",
            ["destination"],
            registry=reg,
        )
        self.retries = Counter(
            "dicom_router_forward_retries",
            "Send attempts that failed transiently and were scheduled again, by destination",
            ["destination"],
            registry=reg,
        )
        self.failures = Counter(
            "dicom_router_forward_failures",
            "Jobs that failed for good (refused, or out of attempts) and wait for an operator, by destination",
            ["destination"],
            registry=reg,
        )
        self.durations = Histogram(
            "dicom_router_association_duration_seconds",
            "Association lifetimes: in = senders to the router, out = the router to destinations",
            ["direction", "node"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self._children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _child(self, metric: Any, kind: str, label: str) -> Any:
        # The hot path: a plain dict hit after the first object from a source/to a destination.
        child = self._children.get((kind, label))
        if child is None:
            with self._lock:
                seen = sum(1 for k, _ in self._children if k == kind)
                if seen >= MAX_LABEL_VALUES and (kind, label) not in self._children:
                    label = OTHER
                child = self._children.setdefault((kind, label), metric.labels(label))
        return child

    def received(self, source: str, nbytes: int) -> None:
        self._child(self.received_objects, "ro", source).inc()
        self._child(self.received_bytes, "rb", source).inc(nbytes)

    def forwarded(self, destination: str, nbytes: int) -> None:
        self._child(self.forwarded_objects, "fo", destination).inc()
        self._child(self.forwarded_bytes, "fb", destination).inc(nbytes)

    def retried(self, destination: str) -> None:
        self._child(self.retries, "rt", destination).inc()

    def failed(self, destination: str) -> None:
        self._child(self.failures, "fl", destination).inc()

    def association_started(self, assoc: Any) -> None:
        setattr(assoc, _STARTED_ATTR, time.monotonic())

    def association_closed(self, assoc: Any, direction: str, node: str) -> None:
        started = getattr(assoc, _STARTED_ATTR, None)
        if started is None:  # rejected before it was accepted: not an association that ran
            return
        setattr(assoc, _STARTED_ATTR, None)  # EVT_CONN_CLOSE may come twice (release, then socket close)
        self.durations.labels(direction, node).observe(time.monotonic() - started)

    def watch_outbound(self, assoc: Any, destination: str) -> None:
        """Time an association the forwarder opened, until its connection closes (release or abort)."""
        from pynetdicom import evt

        self.association_started(assoc)
        assoc.bind(evt.EVT_CONN_CLOSE, lambda event: self.association_closed(event.assoc, "out", destination))


_RECORDER: NullRecorder | None = None
_RECORDER_LOCK = threading.Lock()


def recorder() -> NullRecorder:
    """This process's recorder: real when the supervisor gave it a multiprocess directory, else a no-op."""
    global _RECORDER
    if _RECORDER is None:
        with _RECORDER_LOCK:
            if _RECORDER is None:
                path = os.environ.get(MULTIPROC_ENV)
                _RECORDER = Recorder() if path and os.path.isdir(path) else NullRecorder()
    return _RECORDER
