"""The bodies of the scheduler's jobs: spool retention and orphan sweep, disk watermark, open circuits,
certificate expiry, nightly backup. Each returns a one-line result for `status`, or raises to fail the run.

They take their inputs as arguments (store, spool, settings, time) so tests can drive them without the
scheduler process; the warnings they raise are `Alert`s the scheduler records for `status`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .audit import AuditLog
from .config import RouterConfig
from .logsetup import log
from .spool import Spool
from .store import Store

LOG = logging.getLogger("router.scheduler")

ORPHAN_MIN_AGE_SECONDS = 600  # a spool file the queue does not know, older than this, is removed
RETENTION_BATCH = 500  # spool keys deleted per transaction; a run repeats until none are due
RETENTION_MAX_SECONDS = 20.0  # and stops before the next 30 s run is due, to continue there
CERT_WARN_DAYS = 30
CERT_MAX_BYTES = 1_000_000  # larger files under tls_dir are not certificates we issue
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class Alert:
    """A condition `status` lists as a problem until the job that raised it stops raising it."""

    source: str  # the job's name
    level: str  # warning | error
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "level": self.level, "message": self.message}


@dataclass
class JobOutput:
    result: str
    alerts: list[Alert] = field(default_factory=list)


# -- spool retention and orphans -------------------------------------------------------------------
def purge_retention(store: Store, spool: Spool, keep_sent_hours: float, now: float) -> JobOutput:
    """Delete spooled objects every destination has had for `keep_sent_hours` (the forwarder deletes at once
    when it is 0; this catches the kept ones). Files first, then the rows: a crash in between only repeats."""
    cutoff = now - keep_sent_hours * 3600
    deadline = time.monotonic() + RETENTION_MAX_SECONDS
    deleted = 0
    while time.monotonic() < deadline:
        keys = store.spool_keys_to_delete(cutoff, RETENTION_BATCH)
        for key in keys:
            spool.delete(key)
        store.mark_spool_deleted(keys)
        deleted += len(keys)
        if len(keys) < RETENTION_BATCH:
            break
    if deleted:
        log(LOG, logging.INFO, f"deleted {deleted} spooled object(s) sent more than {keep_sent_hours:g} h ago")
    return JobOutput(f"deleted {deleted} spooled object(s) past retention (keep_sent_hours {keep_sent_hours:g})")


def sweep_orphans(store: Store, spool: Spool, now: float) -> JobOutput:
    """Remove spool files the queue does not need: a crash between rename and commit, or after a delete
    whose row change was lost. Young files are left alone: the receiver may be about to record them."""
    cutoff = now - ORPHAN_MIN_AGE_SECONDS
    candidates = []
    for key in spool.keys():  # noqa: SIM118 - Spool is not a mapping
        try:
            if spool.path(key).stat().st_mtime < cutoff:
                candidates.append(key)
        except FileNotFoundError:
            continue
    needed = store.known_spool_keys(candidates)
    removed = 0
    for key in candidates:
        if key not in needed:
            spool.delete(key)
            removed += 1
    if removed:
        log(LOG, logging.INFO, f"removed {removed} spool file(s) no job needs")
    return JobOutput(f"removed {removed} spool file(s) no job needs ({len(candidates)} older than 10 min checked)")


# -- disk watermark --------------------------------------------------------------------------------
class DiskLevel(enum.IntEnum):
    OK = 0
    HIGH = 1  # above router.disk_warn_percent
    RESERVE = 2  # below router.min_free_mb: the receiver refuses new objects with 0xA700


@dataclass(frozen=True)
class DiskUsage:
    total: int
    used: int
    free: int

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


def disk_usage(path: Path) -> DiskUsage:
    u = shutil.disk_usage(path)
    return DiskUsage(u.total, u.used, u.free)


def disk_level(usage: DiskUsage, warn_percent: float, min_free_bytes: float) -> DiskLevel:
    if usage.free < min_free_bytes:
        return DiskLevel.RESERVE
    if usage.used_percent > warn_percent:
        return DiskLevel.HIGH
    return DiskLevel.OK


class DiskWatch:
    """Edge-triggered: logs and audits when the level changes, not on every check (every 30 s)."""

    def __init__(self, audit: AuditLog):
        self.audit = audit
        self.level = DiskLevel.OK

    def check(self, path: Path, usage: DiskUsage, warn_percent: float, min_free_mb: float) -> JobOutput:
        level = disk_level(usage, warn_percent, min_free_mb * 1e6)
        facts = (
            f"{usage.used_percent:.0f}% used, {_size(usage.free)} free "
            f"(warn above {warn_percent:g}%, refuse below {min_free_mb:g} MB)"
        )
        if level != self.level:
            self._changed(self.level, level, f"spool disk {path}: {facts}", usage)
            self.level = level
        alert = disk_alert(usage, warn_percent, min_free_mb)
        return JobOutput(facts, [alert] if alert else [])

    def _changed(self, old: DiskLevel, new: DiskLevel, facts: str, usage: DiskUsage) -> None:
        fields: dict[str, Any] = {"used_percent": round(usage.used_percent, 1), "free_mb": round(usage.free / 1e6)}
        if new is DiskLevel.RESERVE:
            log(LOG, logging.ERROR, f"{facts}: below the reserve, senders are refused with 0xA700", **fields)
            self.audit.record("disk_watermark", "failure", level="reserve", **fields)
        elif new is DiskLevel.HIGH:
            word = "back above the reserve but still" if old is DiskLevel.RESERVE else "now"
            log(LOG, logging.WARNING, f"{facts}: {word} above the warning level — free space", **fields)
            self.audit.record("disk_watermark", "failure", level="high", **fields)
        else:
            log(LOG, logging.INFO, f"{facts}: back below the warning level", **fields)
            self.audit.record("disk_watermark", level="ok", **fields)


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def disk_alert(usage: DiskUsage, warn_percent: float, min_free_mb: float) -> Alert | None:
    """The disk's state in words for `status` (shared by the job and by `status`'s live check)."""
    level = disk_level(usage, warn_percent, min_free_mb * 1e6)
    if level is DiskLevel.RESERVE:
        return Alert(
            "disk-watermark",
            "error",
            f"spool disk has {usage.free / 1e6:.0f} MB free, below the {min_free_mb:g} MB reserve: senders are "
            "refused with 0xA700 until forwarding or an operator frees space",
        )
    if level is DiskLevel.HIGH:
        return Alert(
            "disk-watermark",
            "warning",
            f"spool disk {usage.used_percent:.0f}% full (above router.disk_warn_percent {warn_percent:g}%): "
            "free space or fix the destinations holding objects, before senders are refused",
        )
    return None


# -- open circuits ---------------------------------------------------------------------------------
def describe_open_circuits(cfg: RouterConfig, store: Store, now: float) -> JobOutput:
    """The forwarder's pools probe open circuits with C-ECHO themselves (they own the associations and
    resume sending the moment the probe answers); this job only makes that visible."""
    dests = cfg.destinations()
    open_names = [name for name in dests if store.circuit_of(name) == "open"]
    if not open_names:
        return JobOutput(f"all {len(dests)} destination circuit(s) closed")
    stats = store.destination_stats(now)
    parts = []
    for name in open_names:
        s = stats.get(name)
        since = f" for {_span(now - s.circuit_since)}" if s and s.circuit_since else ""
        error = s.last_error if s and s.last_error else "unknown"
        parts.append(
            f"{name} open{since}: the forwarder probes it with C-ECHO every "
            f"{dests[name].circuit.probe_seconds:g} s; last error: {error}"
        )
    return JobOutput("; ".join(parts))


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


# -- certificate expiry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    not_after: float
    fingerprint: str  # sha256 of the DER, identifies the certificate across files and runs

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400


def read_certificates(path: Path) -> list[CertInfo]:
    """Every X.509 certificate in a PEM (any number of CERTIFICATE blocks; keys are ignored) or DER file."""
    from cryptography import x509

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        certs = [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(data)]
    else:
        certs = [x509.load_der_x509_certificate(data)]
    return [
        CertInfo(
            path,
            c.subject.rfc4514_string() or "(empty subject)",
            c.not_valid_after_utc.timestamp(),
            hashlib.sha256(c.public_bytes(_der())).hexdigest(),
        )
        for c in certs
    ]


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def scan_certificates(tls_dir: Path) -> tuple[list[CertInfo], list[str]]:
    """Certificates under tls_dir (*.pem, *.crt, recursively), and the files that could not be read."""
    certs: list[CertInfo] = []
    unreadable: list[str] = []
    files = sorted(p for pattern in ("*.pem", "*.crt") for p in tls_dir.rglob(pattern) if p.is_file())
    for path in files:
        try:
            if path.stat().st_size <= CERT_MAX_BYTES:
                certs += read_certificates(path)
        except (OSError, ValueError) as exc:
            unreadable.append(f"cannot read certificate file {path}: {exc}")
    return certs, unreadable


def _local_date(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


def cert_alert(cert: CertInfo, now: float, warn_days: int = CERT_WARN_DAYS) -> Alert | None:
    days = cert.days_left(now)
    ends = datetime.fromtimestamp(cert.not_after, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if days <= 0:
        return Alert(
            "expiry-check",
            "error",
            f"certificate {cert.subject} in {cert.path} EXPIRED on {ends}: TLS peers will refuse it — renew it",
        )
    if days < warn_days:
        return Alert(
            "expiry-check",
            "warning",
            f"certificate {cert.subject} in {cert.path} expires in {int(days)} day(s), on {ends} — renew it",
        )
    return None


class CertWatch:
    """Warns (log + audit) once per day per certificate, so an hourly check does not flood either."""

    def __init__(self, audit: AuditLog, notified: dict[str, str] | None = None):
        self.audit = audit
        self.notified: dict[str, str] = dict(notified or {})  # fingerprint or path → local date last told

    def check(self, tls_dir: Path, now: float, warn_days: int = CERT_WARN_DAYS) -> JobOutput:
        if not tls_dir.is_dir():
            return JobOutput(f"no certificates ({tls_dir} does not exist)")
        certs, unreadable = scan_certificates(tls_dir)
        alerts = [Alert("expiry-check", "warning", text) for text in unreadable]
        for text in unreadable:
            self._tell_once(text.split(": ", 1)[0], now, logging.WARNING, text, {})
        for cert in certs:
            alert = cert_alert(cert, now, warn_days)
            if alert is None:
                continue
            alerts.append(alert)
            fields = {"certificate": cert.subject, "file": str(cert.path), "not_after": int(cert.not_after)}
            level = logging.ERROR if alert.level == "error" else logging.WARNING
            self._tell_once(cert.fingerprint, now, level, alert.message, fields)
        return JobOutput(_cert_summary(tls_dir, certs, alerts, now), alerts)

    def _tell_once(self, key: str, now: float, level: int, message: str, fields: dict[str, Any]) -> None:
        today = _local_date(now)
        if self.notified.get(key) == today:
            return
        self.notified[key] = today
        log(LOG, level, message, **fields)
        self.audit.record("certificate_expiry", "failure", message=message, **fields)

    def forget_older_than(self, today: str) -> None:
        self.notified = {k: d for k, d in self.notified.items() if d >= today}


def _cert_summary(tls_dir: Path, certs: Iterable[CertInfo], alerts: list[Alert], now: float) -> str:
    certs = list(certs)
    if not certs and not alerts:
        return f"no certificates in {tls_dir}"
    expired = sum(1 for a in alerts if a.level == "error")
    soon = len(alerts) - expired
    text = f"{len(certs)} certificate(s) in {tls_dir}: {expired} expired, {soon} other warning(s)"
    if certs:
        first = min(certs, key=lambda c: c.not_after)
        text += f"; soonest: {first.subject} on {_local_date(first.not_after)} ({int(first.days_left(now))} days)"
    return text


# -- backup ----------------------------------------------------------------------------------------
def run_backup(cfg: RouterConfig, config_path: Path) -> JobOutput:
    # Imported when a backup runs: the bundle/SFTP stack is not needed by the other jobs.
    from .backup import run_scheduled

    return JobOutput(str(run_scheduled(cfg, config_path)))


# -- audit trail -----------------------------------------------------------------------------------
def verify_audit_trail(audit_path: Path) -> JobOutput:
    """The hash chain from the newest rotated file on (so the link across the last rotation is checked too):
    writers notice a broken tail, this notices a break inside the file. Older files: `audit verify`."""
    from .audit_verify import rotated_files, verify

    rotated = rotated_files(audit_path)
    report = verify(audit_path, start=rotated[-1].name if rotated else None)
    checked = f"{report.entries} entr{'y' if report.entries == 1 else 'ies'} in {len(report.files)} file(s)"
    first = report.first_break
    if report.unacknowledged and first is not None:
        message = (
            f"audit trail broken: {first.describe()} — run `dicom-router audit verify` for every break; "
            "see docs/audit.md (what a break means, then `dicom-router audit acknowledge --reason …`)"
        )
        return JobOutput(f"chain BROKEN ({checked} checked)", [Alert("audit-verify", "error", message)])
    if report.unacknowledged:
        # Breaks a writer recorded (audit_chain_broken) and nobody has acknowledged yet; status lists them.
        return JobOutput(f"{report.unacknowledged} recorded break(s) not acknowledged yet ({checked} checked)")
    return JobOutput(f"chain intact ({checked} checked)")
