"""appliance.router.scheduler and scheduled_jobs: each job against a real Store and spool, the job state
file `status` reads, failures recorded and audited, the nightly backup's timing."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tzlocal import get_localzone

from appliance.router import scheduled_jobs as jobs
from appliance.router import status
from appliance.router.audit import AuditLog, read_entries
from appliance.router.config import RouterConfig, parse_config
from appliance.router.scheduler import BACKUP_GRACE_SECONDS, SchedulerProcess, backup_catch_up, job_specs
from appliance.router.spool import Spool
from appliance.router.store import NewJob, Store
from tests.unit.test_store import facts

DAY = 86400.0
# Today at noon, local time: "once per day" checks an hour later stay on the same day whenever the test runs.
NOON = dt.datetime.now(get_localzone()).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture
def cfg(tmp_path: Path) -> RouterConfig:
    return config_with(tmp_path)


def config_with(tmp_path: Path, router: str = "", backup: str = "") -> RouterConfig:
    text = f"""
router:
  state_dir: {tmp_path / "state"}
  log_dir: {tmp_path / "log"}
  tls_dir: {tmp_path / "tls"}
{router}
nodes:
  PACS_MAIN: {{ae_title: PACS, host: 127.0.0.1, port: 104, role: destination, circuit: {{probe_seconds: 20}}}}
routes:
  - {{name: all, to: [PACS_MAIN]}}
{backup}
"""
    return parse_config(text)


@pytest.fixture
def store(cfg: RouterConfig) -> Iterator[Store]:
    s = Store(cfg.db_path)
    s.init()
    yield s
    s.close()


@pytest.fixture
def spool(cfg: RouterConfig) -> Spool:
    s = Spool(cfg.spool_dir)
    s.init()
    return s


def audit_entries(cfg: RouterConfig) -> list[dict[str, object]]:
    return read_entries(cfg.audit_path) if cfg.audit_path.exists() else []


def spooled(store: Store, spool: Spool, destinations: tuple[str, ...] = ("PACS_MAIN",), now: float = 0.0) -> str:
    key = spool.put_bytes(b"DICM" * 16)
    store.add_instance(key, facts(), [NewJob(d, "all", 1) for d in destinations], now or time.time())
    return key


def deliver(store: Store, destination: str, at: float, keep: bool = True) -> None:
    for job in store.claim(destination, "h:1:0", 100, 60, at):
        store.ack(job.id, 0, "stored", at, keep_spool=keep)


# -- spool retention -------------------------------------------------------------------------------
def test_retention_deletes_only_objects_every_destination_has_had_long_enough(store: Store, spool: Spool) -> None:
    now = time.time()
    old_done = spooled(store, spool, now=now - 10 * 3600)
    deliver(store, "PACS_MAIN", now - 5 * 3600)  # sent 5 h ago: past a 2 h retention
    recent_done = spooled(store, spool, now=now - 3600)
    deliver(store, "PACS_MAIN", now - 600)  # sent 10 min ago: kept
    pending = spooled(store, spool, ("PACS_MAIN", "ARCHIVE"), now=now - 10 * 3600)
    deliver(store, "PACS_MAIN", now - 5 * 3600)  # ARCHIVE still waits: kept
    unrouted = spooled(store, spool, ())  # no route: kept for an operator

    out = jobs.purge_retention(store, spool, keep_sent_hours=2, now=now)

    assert out.result == "deleted 1 spooled object(s) past retention (keep_sent_hours 2)"
    assert not spool.exists(old_done)
    assert all(spool.exists(k) for k in (recent_done, pending, unrouted))
    assert store.spool_keys_to_delete(now) == [recent_done]  # the row of the deleted one is marked
    assert jobs.purge_retention(store, spool, 2, now).result.startswith("deleted 0 ")


def test_retention_works_through_more_than_one_batch(store: Store, spool: Spool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(jobs, "RETENTION_BATCH", 3)
    keys = [spooled(store, spool, now=time.time() - 7200) for _ in range(7)]
    deliver(store, "PACS_MAIN", time.time() - 3600)
    assert jobs.purge_retention(store, spool, 0.5, time.time()).result.startswith("deleted 7 ")
    assert not any(spool.exists(k) for k in keys)


# -- orphan sweep ----------------------------------------------------------------------------------
def test_orphan_sweep_removes_only_old_files_the_queue_does_not_know(store: Store, spool: Spool) -> None:
    known = spooled(store, spool)
    old_orphan = spool.put_bytes(b"orphan")
    young_orphan = spool.put_bytes(b"young")  # the receiver may be about to record it
    an_hour_ago = time.time() - 3600
    for key in (known, old_orphan):
        os.utime(spool.path(key), (an_hour_ago, an_hour_ago))

    out = jobs.sweep_orphans(store, spool, time.time())

    assert out.result.startswith("removed 1 spool file(s)")
    assert spool.exists(known) and spool.exists(young_orphan) and not spool.exists(old_orphan)


# -- disk watermark --------------------------------------------------------------------------------
GB = 1_000_000_000


def usage(used_percent: float, total: int = 100 * GB) -> jobs.DiskUsage:
    used = int(total * used_percent / 100)
    return jobs.DiskUsage(total, used, total - used)


def test_disk_watermark_logs_and_audits_on_crossing_only(cfg: RouterConfig, caplog: pytest.LogCaptureFixture) -> None:
    watch = jobs.DiskWatch(AuditLog(cfg.audit_path, "scheduler"))
    path = Path("/spool")
    caplog.set_level(logging.INFO, logger="router.scheduler")
    levels = []
    for pct in (50, 86, 90, 99.9, 99.9, 95, 40, 40):  # 100 GB disk: 99.9 % leaves 100 MB < 512 MB reserve
        out = watch.check(path, usage(pct), warn_percent=85, min_free_mb=512)
        levels.append([a.level for a in out.alerts])
    assert levels == [[], ["warning"], ["warning"], ["error"], ["error"], ["warning"], [], []]
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in records] == ["WARNING", "ERROR", "WARNING", "INFO"]
    assert "86% used" in records[0][1] and "above the warning level" in records[0][1]
    assert "below the reserve, senders are refused with 0xA700" in records[1][1]
    assert "back above the reserve but still above the warning level" in records[2][1]
    assert "back below the warning level" in records[3][1]
    entries = [e for e in audit_entries(cfg) if e["event"] == "disk_watermark"]
    assert [(e["outcome"], e["level"]) for e in entries] == [
        ("failure", "high"),
        ("failure", "reserve"),
        ("failure", "high"),
        ("success", "ok"),
    ]


def test_disk_watermark_on_a_real_small_filesystem(cfg: RouterConfig, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run as root: this test mounts a small tmpfs")
        pytest.skip("needs root to mount a small tmpfs (CI runs it as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        watch = jobs.DiskWatch(AuditLog(cfg.audit_path, "scheduler"))
        assert watch.check(mnt, jobs.disk_usage(mnt), 50, 1).alerts == []
        (mnt / "fill").write_bytes(b"\0" * 2_500_000)  # 60 % of 4 MiB, 1.6 MB left
        (high,) = watch.check(mnt, jobs.disk_usage(mnt), 50, 1).alerts
        assert high.level == "warning" and "above router.disk_warn_percent 50%" in high.message
        (mnt / "more").write_bytes(b"\0" * 1_000_000)  # 0.6 MB left, below a 1 MB reserve
        (reserve,) = watch.check(mnt, jobs.disk_usage(mnt), 50, 1).alerts
        assert reserve.level == "error" and "below the 1 MB reserve" in reserve.message
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- circuits --------------------------------------------------------------------------------------
def test_circuit_job_lists_open_circuits_and_who_probes_them(cfg: RouterConfig, store: Store) -> None:
    now = time.time()
    assert jobs.describe_open_circuits(cfg, store, now).result == "all 1 destination circuit(s) closed"
    store.set_circuit("PACS_MAIN", "open", now - 300, "connection refused by 127.0.0.1:104")
    out = jobs.describe_open_circuits(cfg, store, now)
    assert out.result == (
        "PACS_MAIN open for 5 min: the forwarder probes it with C-ECHO every 20 s; "
        "last error: connection refused by 127.0.0.1:104"
    )
    assert out.alerts == []  # `status` already lists open circuits as problems


# -- certificate expiry ----------------------------------------------------------------------------
def make_cert(name: str, days_left: float, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    now = NOON
    d = tmp_path / "tls"
    (d / "nodes").mkdir(parents=True)
    good, good_key = make_cert("router.example", 365, now)
    soon, _ = make_cert("pacs.example", 10.5, now)
    gone, _ = make_cert("old-ca.example", -2, now)
    (d / "router.pem").write_bytes(
        pem(good)
        + good_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (d / "router-key.pem").write_bytes(
        good_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (d / "nodes" / "chain.pem").write_bytes(pem(soon) + pem(gone))  # one file, two certificates
    (d / "nodes" / "pacs.crt").write_bytes(soon.public_bytes(serialization.Encoding.DER))
    (d / "README.txt").write_text("not a certificate")
    return d


def test_certificates_are_found_in_pem_der_and_chains_and_keys_are_skipped(tls_dir: Path) -> None:
    certs, unreadable = jobs.scan_certificates(tls_dir)
    assert unreadable == []
    found = sorted((c.path.relative_to(tls_dir).as_posix(), c.subject) for c in certs)
    assert found == [
        ("nodes/chain.pem", "CN=old-ca.example"),
        ("nodes/chain.pem", "CN=pacs.example"),
        ("nodes/pacs.crt", "CN=pacs.example"),
        ("router.pem", "CN=router.example"),
    ]


def test_expiry_check_warns_under_30_days_errors_when_expired_once_per_day(
    cfg: RouterConfig, tls_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watch = jobs.CertWatch(AuditLog(cfg.audit_path, "scheduler"))
    caplog.set_level(logging.WARNING, logger="router.scheduler")
    now = NOON.timestamp()
    out = watch.check(tls_dir, now)

    by_level = sorted((a.level, a.message.split(" in ")[0]) for a in out.alerts)
    assert by_level == [
        ("error", "certificate CN=old-ca.example"),
        ("warning", "certificate CN=pacs.example"),
        ("warning", "certificate CN=pacs.example"),  # in chain.pem and again in pacs.crt
    ]
    assert "expires in 10 day(s)" in next(a.message for a in out.alerts if a.level == "warning")
    assert "EXPIRED on" in next(a.message for a in out.alerts if a.level == "error")
    assert out.result.startswith(f"4 certificate(s) in {tls_dir}: 1 expired, 2 other warning(s); soonest: ")
    # Told once per certificate (the same pacs certificate in two files is one), not on every hourly run.
    assert sorted(r.levelname for r in caplog.records) == ["ERROR", "WARNING"]
    assert len([e for e in audit_entries(cfg) if e["event"] == "certificate_expiry"]) == 2
    watch.check(tls_dir, now + 3600)
    assert len(caplog.records) == 2
    # The alerts stay for `status` as long as the condition holds; the next day it is told again.
    assert len(watch.check(tls_dir, now + 3600).alerts) == 3
    watch.check(tls_dir, now + DAY)
    assert len(caplog.records) == 4


def test_expiry_check_without_certificates(cfg: RouterConfig, tmp_path: Path) -> None:
    watch = jobs.CertWatch(AuditLog(cfg.audit_path, "scheduler"))
    assert watch.check(tmp_path / "none", time.time()).result == f"no certificates ({tmp_path / 'none'} does not exist)"
    (tmp_path / "empty").mkdir()
    assert watch.check(tmp_path / "empty", time.time()).result == f"no certificates in {tmp_path / 'empty'}"


def test_a_damaged_certificate_file_is_a_warning(cfg: RouterConfig, tmp_path: Path) -> None:
    d = tmp_path / "tls"
    d.mkdir()
    (d / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    out = jobs.CertWatch(AuditLog(cfg.audit_path, "scheduler")).check(d, time.time())
    (alert,) = out.alerts
    assert alert.level == "warning" and alert.message.startswith(f"cannot read certificate file {d / 'broken.pem'}")


# -- the nightly backup's timing -------------------------------------------------------------------
ALWAYS = (
    "spool-retention", "orphan-sweep", "disk-watermark", "circuit-probe", "expiry-check", "alerts", "audit-verify",
    "metrics-endpoint",
)  # fmt: skip
BACKUP_BLOCK = "backup:\n  schedule: '02:30'\n  passphrase_file: /nonexistent/passphrase\n"


def test_backup_is_scheduled_daily_at_the_configured_local_time(tmp_path: Path) -> None:
    assert [s.name for s in job_specs(config_with(tmp_path))] == list(ALWAYS)
    specs = {s.name: s for s in job_specs(config_with(tmp_path, backup=BACKUP_BLOCK))}
    backup = specs["backup"]
    assert backup.schedule == "daily at 02:30 (local time)"
    assert backup.at_start is False and backup.grace_seconds == BACKUP_GRACE_SECONDS == 3600
    tz = get_localzone()
    before = dt.datetime(2026, 3, 10, 1, 0, tzinfo=tz)
    after = dt.datetime(2026, 3, 10, 2, 31, tzinfo=tz)
    assert backup.trigger.get_next_fire_time(None, before) == dt.datetime(2026, 3, 10, 2, 30, tzinfo=tz)
    assert backup.trigger.get_next_fire_time(None, after) == dt.datetime(2026, 3, 11, 2, 30, tzinfo=tz)
    assert set(specs) == {"backup", *ALWAYS}


def test_backup_catch_up_after_a_restart() -> None:
    tz = get_localzone()
    at = dt.datetime(2026, 3, 10, 2, 31, tzinfo=tz)
    due = dt.datetime(2026, 3, 10, 2, 30, tzinfo=tz).timestamp()
    yesterday = due - DAY
    assert backup_catch_up("02:30", yesterday, at, 3600) == "run"  # restarted a minute late: still runs
    assert backup_catch_up("02:30", None, at, 3600) == "run"
    assert backup_catch_up("02:30", due + 1, at, 3600) is None  # it already ran
    later = dt.datetime(2026, 3, 10, 9, 0, tzinfo=tz)
    assert backup_catch_up("02:30", yesterday, later, 3600) == "missed"  # down through the night
    assert backup_catch_up("02:30", None, later, 3600) is None  # a new install missed nothing
    assert backup_catch_up("02:30", yesterday, dt.datetime(2026, 3, 10, 2, 0, tzinfo=tz), 3600) is None
    just_after_midnight = dt.datetime(2026, 3, 11, 0, 10, tzinfo=tz)
    assert backup_catch_up("23:50", yesterday, just_after_midnight, 3600) == "run"


# -- running jobs: failures recorded, audited, shown -----------------------------------------------
def test_a_failing_job_is_recorded_audited_and_shown_until_it_succeeds(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_with(tmp_path, backup=BACKUP_BLOCK)
    proc = SchedulerProcess(tmp_path / "router.yaml", cfg)
    proc.schedule(job_specs(cfg))

    def broken(*_: object) -> jobs.JobOutput:
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/passphrase")

    monkeypatch.setattr(jobs, "run_backup", broken)
    proc.run_job("backup")  # must not raise
    proc.run_job("backup")

    state = json.loads(cfg.scheduler_state_path.read_text())
    (rec,) = [j for j in state["jobs"] if j["name"] == "backup"]
    assert rec["last_outcome"] == "failed" and rec["consecutive_failures"] == 2
    assert rec["last_error"] == "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/passphrase'"
    failures = [e for e in audit_entries(cfg) if e["event"] == "scheduled_job"]
    assert [(e["outcome"], e["job"], e["process"]) for e in failures] == [("failure", "backup", "scheduler")] * 2

    report = status.collect(cfg, store)
    (problem,) = [p for p in report["problems"] if "scheduled job" in p]
    assert problem.startswith("scheduled job backup failed 2 times in a row (last ")
    assert "/nonexistent/passphrase" in problem
    assert "backup" in status.render(report) and "FAILED" in status.render(report)

    monkeypatch.setattr(jobs, "run_backup", lambda *_: jobs.JobOutput("bundle written"))
    proc.run_job("backup")
    state = json.loads(cfg.scheduler_state_path.read_text())
    (rec,) = [j for j in state["jobs"] if j["name"] == "backup"]
    assert (rec["last_outcome"], rec["last_result"], rec["consecutive_failures"]) == ("ok", "bundle written", 0)
    assert audit_entries(cfg)[-1]["recovered_after_failures"] == 2
    assert not [p for p in status.collect(cfg, store)["problems"] if "scheduled job" in p]


def test_job_state_survives_a_restart_and_warnings_reach_status(cfg: RouterConfig, store: Store, tls_dir: Path) -> None:
    proc = SchedulerProcess(Path("router.yaml"), cfg)
    proc.schedule(job_specs(cfg))
    proc.run_job("expiry-check")
    proc.run_job("spool-retention")

    again = SchedulerProcess(Path("router.yaml"), cfg)
    again.book.load()
    assert again.book.records["expiry-check"].last_outcome == "ok"
    assert again.book.cert_notified  # so a restart does not repeat today's certificate warnings

    report = status.collect(cfg, store)
    sched = report["scheduler"]
    assert sched["available"] and [j["name"] for j in sched["jobs"]][:2] == ["spool-retention", "orphan-sweep"]
    assert any("CN=old-ca.example" in p and "EXPIRED" in p for p in report["problems"])
    assert "scheduler is not running (no heartbeat)" in report["problems"]
    assert "the scheduler is not running" in sched["note"]


def test_status_without_job_state(cfg: RouterConfig, store: Store) -> None:
    sched = status.collect(cfg, store)["scheduler"]
    assert sched["available"] is False and "does not exist" in sched["note"]
    store.heartbeat("scheduler", time.time(), time.time(), "", "sha")
    report = status.collect(cfg, store)
    assert any(p.startswith("scheduler: no job state yet") for p in report["problems"])


def test_status_warns_from_disk_warn_percent(cfg: RouterConfig) -> None:
    low = config_with(Path(cfg.router.state_dir).parent, router="  disk_warn_percent: 10")
    u = usage(50)
    assert status._disk_problems(cfg, u) == []
    (problem,) = status._disk_problems(low, u)
    assert problem.startswith("spool disk 50% full (above router.disk_warn_percent 10%)")
    (reserve,) = status._disk_problems(cfg, usage(99.9999))
    assert "below the 512 MB reserve" in reserve


def test_a_reload_re_times_the_backup_and_drops_it_when_unscheduled(tmp_path: Path, store: Store) -> None:
    proc = SchedulerProcess(tmp_path / "router.yaml", config_with(tmp_path, backup=BACKUP_BLOCK))
    proc.schedule([s for s in job_specs(proc.cfg) if s.name == "backup"])  # only the backup: nothing runs now
    proc.sched.start(paused=True)
    try:
        tz = get_localzone()

        def next_backup() -> dt.datetime:
            return proc.sched.get_job("backup").next_run_time.astimezone(tz)

        assert (next_backup().hour, next_backup().minute) == (2, 30)
        later = config_with(tmp_path, backup=BACKUP_BLOCK.replace("02:30", "23:15"))
        proc.schedule([s for s in job_specs(later) if s.name == "backup"])
        assert (next_backup().hour, next_backup().minute) == (23, 15)
        assert proc.book.records["backup"].schedule == "daily at 23:15 (local time)"
        proc.schedule([s for s in job_specs(config_with(tmp_path)) if s.name == "disk-watermark"])
        assert proc.sched.get_job("backup") is None and "backup" not in proc.book.records
    finally:
        proc.sched.shutdown(wait=False)


# -- the nightly audit-trail check ------------------------------------------------------------------
def test_audit_verify_job_finds_an_edit_inside_the_file_and_checks_across_the_last_rotation(tmp_path: Path) -> None:
    from appliance.router.audit import AuditLog

    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test")
    for i in range(3):
        audit.record("forward", job=i)
    os.rename(path, tmp_path / "audit.jsonl-20261127")  # logrotate
    for i in range(3, 6):
        audit.record("forward", job=i)
    audit.close()
    out = jobs.verify_audit_trail(path)
    assert out.alerts == [] and out.result == "chain intact (6 entries in 2 file(s) checked)"

    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"job":4', '"job":40')  # an edit no writer will meet (not the last line)
    path.write_text("".join(lines))
    out = jobs.verify_audit_trail(path)
    (alert,) = out.alerts
    assert alert.level == "error" and out.result.startswith("chain BROKEN")
    assert "audit.jsonl line 2" in alert.message and "EDITED" in alert.message, alert.message
    assert "dicom-router audit verify" in alert.message
