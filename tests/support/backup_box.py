"""A small appliance's files for backup tests: a config applied through change control, a history directory
with extra files, TLS material and a queue database, plus a runner for `dicom-router backup …`."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.router.bundle_crypto import write_key_file
from appliance.router.history import ChangeRequest, apply_config
from appliance.router.store import InstanceFacts, NewJob, Store
from tests.support.peers import REPO

PASSPHRASE = "a long test passphrase, not a real one"


@dataclass
class Box:
    """One appliance's files in a temporary directory."""

    root: Path
    config_path: Path
    state: Path
    tls: Path
    log: Path
    key_file: Path

    @property
    def history(self) -> Path:
        return self.state / "history"

    @property
    def db(self) -> Path:
        return self.state / "queue.sqlite3"

    @property
    def backups(self) -> Path:
        return self.state / "backups"

    def cli(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "appliance.router", "backup", *args, "--config", str(self.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,  # never a terminal: nothing may wait for a prompt
            env={**os.environ, "SUDO_USER": "alice", **(env or {})},
            timeout=120,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"backup {' '.join(args)} exited {res.returncode}:\n{res.stderr}{res.stdout}")
        return res

    def audit(self, prefix: str = "backup.") -> list[dict[str, Any]]:
        path = self.log / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["event"].startswith(prefix)]

    def bundles(self) -> list[Path]:
        return sorted(self.backups.glob("*.drbk"))

    def apply(self, config: dict[str, Any], reason: str) -> None:
        apply_config(
            self.config_path,
            yaml.safe_dump(config, sort_keys=False).encode(),
            ChangeRequest(author="setup", reason=reason, source="cli"),
        )

    def config(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.config_path.read_text()))


def tree(root: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    """Every entry below root: (type, mode, content or link target)."""
    out: dict[str, tuple[str, int, bytes | str | None]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def job_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    finally:
        conn.close()


def add_jobs(db: Path, n: int, done: int = 0) -> None:
    store = Store(db)
    store.init()
    now = time.time()
    for i in range(n):
        facts = InstanceFacts(
            sop_instance_uid=f"1.2.3.{time.time_ns()}.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax="1.2.840.10008.1.2.1",
            size_bytes=1000,
            study_uid="1.2.3",
            accession="ACC1",
            modality="CT",
        )
        store.add_instance(f"key{time.time_ns()}{i}", facts, [NewJob("PACS_MAIN", "all", 1)], now)
    for job in store.claim("PACS_MAIN", "test", done, 60, now) if done else []:
        store.ack(job.id, 0, "stored", now, keep_spool=False)
    store.close()


def make_box(tmp_path: Path, backup: dict[str, Any] | None = None) -> Box:
    etc = tmp_path / "etc"
    etc.mkdir()
    b = Box(tmp_path, etc / "router.yaml", tmp_path / "state", etc / "tls", tmp_path / "log", etc / "backup.key")
    # A config made live through change control, so the history is the real thing.
    b.apply(
        {
            "router": {"state_dir": str(b.state), "log_dir": str(b.log), "port": 11112, "drain_seconds": 0},
            "nodes": {"PACS_MAIN": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "role": "destination"}},
            "routes": [{"name": "all", "to": ["PACS_MAIN"]}],
            "backup": backup or {"keep_daily": 3, "keep_weekly": 2},
        },
        "first version",
    )
    # Whatever else is in the history directory is backed up as-is.
    (b.history / "notes").mkdir()
    (b.history / "notes" / "handover.txt").write_text("PACS migration planned for March\n")
    (b.history / "notes" / "handover.txt").chmod(0o600)
    (b.history / "latest").symlink_to("versions/000001.yaml")
    b.tls.mkdir(mode=0o750)
    (b.tls / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    (b.tls / "router.key").write_bytes(os.urandom(300))
    (b.tls / "router.key").chmod(0o600)
    (b.tls / "router.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nRTR\n-----END CERTIFICATE-----\n")
    add_jobs(b.db, 5, done=2)
    write_key_file(b.key_file)
    return b
