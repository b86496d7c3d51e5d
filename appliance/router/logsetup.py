"""The service log: one JSON object per line, to stderr (journald on the appliance) and `router.log`."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": getattr(record, "router_process", record.processName),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _ProcessName(logging.Filter):
    def __init__(self, name: str):
        super().__init__()
        self.name_ = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.router_process = self.name_
        return True


def setup_logging(process: str, log_dir: Path | None, level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        # Watched: logrotate renames the file (never copy-truncate) and the next record reopens it.
        handlers.append(logging.handlers.WatchedFileHandler(log_dir / "router.log", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(_ProcessName(process))
        root.addHandler(h)
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and each association at INFO; keep its warnings and errors only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Its connect/association failures are reported by our own messages, which say what to do.
    logging.getLogger("pynetdicom.transport").setLevel(logging.CRITICAL)
    logging.getLogger("pynetdicom.assoc").setLevel(logging.CRITICAL)


def log(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    """Log a message with structured fields that land as JSON keys."""
    logger.log(level, message, extra={"fields": fields})
