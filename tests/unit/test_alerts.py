"""appliance.router.alerts / alert_job / restarts: thresholds over a real queue database, the active-alert
state machine (raise, repeat, escalate, clear), stable keys for the other jobs' warnings, the supervisor's
restart record, and what `status` shows."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from appliance.router import alerts, restarts, status
from appliance.router.alert_job import AlertJob
from appliance.router.config import RouterConfig, parse_config
from appliance.router.scheduled_jobs import Alert
from appliance.router.store import DestinationStats, NewJob, Store
from tests.unit.test_store import facts

MIN = 60.0


def config(tmp_path: Path, alerts_block: str = "") -> RouterConfig:
    return parse_config(
        f"""
router:
  state_dir: {tmp_path / "state"}
  log_dir: {tmp_path / "log"}
nodes:
  PACS_MAIN: {{ae_title: PACS, host: 127.0.0.1, port: 104, role: destination}}
  ARCHIVE: {{ae_title: ARCH, host: 127.0.0.1, port: 105, role: destination}}
routes:
  - {{name: all, to: [PACS_MAIN, ARCHIVE]}}
alerts:
  syslog: {{enabled: false}}
{alerts_block}
"""
    )


def stats(name: str, oldest_age: float | None, now: float, **kw: object) -> DestinationStats:
    s = DestinationStats(name, counts={"queued": 5}, oldest_pending_at=None if oldest_age is None else now - oldest_age)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_thresholds_backlog_failure_rate_disk_restarts_and_open_circuits(tmp_path: Path) -> None:
    cfg = config(tmp_path, "  thresholds: {disk_use_percent: 80, service_restarts: 3}")
    now = 1_000_000.0
    st = {
        "PACS_MAIN": stats("PACS_MAIN", 45 * MIN, now, circuit="open", last_error="connection refused"),
        "ARCHIVE": stats("ARCHIVE", 10 * MIN, now, last_error="0xA700 out of resources"),
    }
    attempts = {"ARCHIVE": alerts.Attempts(delivered=6, failed=4), "PACS_MAIN": alerts.Attempts(0, 3)}
    got = {c.key: c for c in alerts.threshold_conditions(cfg, st, attempts, 85.0, {"forwarder": 3, "receiver": 1}, now)}
    assert set(got) == {
        "backlog-age:PACS_MAIN",
        "circuit-open:PACS_MAIN",
        "failure-rate:ARCHIVE",  # PACS_MAIN: 3 attempts are fewer than failure_min_attempts (10)
        "disk-use",
        "service-restarts:forwarder",
    }
    backlog = got["backlog-age:PACS_MAIN"]
    assert backlog.level == "warning" and backlog.in_status
    assert backlog.message.startswith("backlog to PACS_MAIN: 5 job(s) waiting, the oldest for 45 min (alert above 30")
    rate = got["failure-rate:ARCHIVE"]
    assert "4 of 10 attempt(s) in the last 15 min failed (40%, alert at 20%)" in rate.message
    assert "last error: 0xA700 out of resources" in rate.message
    assert not got["circuit-open:PACS_MAIN"].in_status  # status shows open circuits itself
    assert "exited unexpectedly 3 time(s) in the last hour" in got["service-restarts:forwarder"].message
    # four times the backlog threshold is an error
    st["PACS_MAIN"] = stats("PACS_MAIN", 121 * MIN, now)
    (c,) = [c for c in alerts.threshold_conditions(cfg, st, {}, None, {}, now) if c.key.startswith("backlog")]
    assert c.level == "error"


def test_a_null_threshold_switches_that_alert_off(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "  thresholds: {backlog_age_minutes: null, failure_rate_percent: null, service_restarts: null}",
    )
    now = 1_000_000.0
    st = {"PACS_MAIN": stats("PACS_MAIN", 600 * MIN, now)}
    conditions = alerts.threshold_conditions(
        cfg, st, {"PACS_MAIN": alerts.Attempts(0, 50)}, 99.0, {"receiver": 10}, now
    )
    assert conditions == []  # and disk_use_percent unset: the disk-watermark job's warning is the disk alert


def test_raise_repeat_escalate_and_clear() -> None:
    book = alerts.AlertBook()
    warn = alerts.Condition("backlog-age:PACS", "warning", "backlog 31 min")
    n = book.update([warn], 0.0, repeat_seconds=3600)
    assert [(x.event, x.key) for x in n] == [("raised", "backlog-age:PACS")]
    assert book.update([alerts.Condition("backlog-age:PACS", "warning", "backlog 35 min")], 60.0, 3600) == []
    (again,) = book.update([warn], 3600.0, 3600)
    assert (again.event, again.since, again.at) == ("repeated", 0.0, 3600.0)
    (worse,) = book.update([alerts.Condition("backlog-age:PACS", "error", "backlog 2 h")], 3700.0, 3600)
    assert (worse.event, worse.level) == ("raised", "error")
    (cleared,) = book.update([], 3800.0, 3600)
    assert (cleared.event, cleared.message) == ("cleared", "cleared: backlog 2 h")
    assert book.active == {}
    restored = alerts.AlertBook.from_json(alerts.AlertBook(dict(book.active)).to_json())
    assert restored.active == {}


def test_other_jobs_warnings_keep_their_identity_while_their_numbers_change() -> None:
    day1 = alerts.job_conditions(
        {"expiry-check": [Alert("expiry-check", "warning", "certificate CN=x in /t/a.crt expires in 29 day(s)")]},
        {"backup": "SFTP host unreachable"},
    )
    day2 = alerts.job_conditions(
        {"expiry-check": [Alert("expiry-check", "warning", "certificate CN=x in /t/a.crt expires in 28 day(s)")]}, {}
    )
    assert day1[0].key == day2[0].key and not day1[0].in_status
    assert day1[1].key == "job-failed:backup" and day1[1].level == "error"
    assert alerts.job_conditions({"alerts": [Alert("alerts", "warning", "x")]}, {}) == []  # not its own output


def test_attempts_are_counted_from_the_job_history(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.db_path)
    store.init()
    now = time.time()
    for _ in range(3):
        store.add_instance(f"k{_}", facts(), [NewJob("PACS_MAIN", "all", 1)], now)
    jobs = store.claim("PACS_MAIN", "h:1:0", 10, 60, now)
    store.ack(jobs[0].id, 0, "stored", now, keep_spool=True)
    store.retry_later(jobs[1].id, 0xA700, "busy", now, 30, None)
    store.fail(jobs[2].id, 0xC000, "refused", now)
    assert alerts.attempts_since(store, now - 60) == {"PACS_MAIN": alerts.Attempts(delivered=1, failed=2)}
    assert alerts.attempts_since(store, now + 1) == {}


def test_the_restart_record_counts_per_process_and_survives_a_damaged_file(tmp_path: Path) -> None:
    path = restarts.record_path(tmp_path)
    now = 1_000_000.0
    restarts.record_exit(path, "forwarder", -9, now - 7200)
    restarts.record_exit(path, "forwarder", 1, now - 60)
    restarts.record_exit(path, "receiver", 1, now - 30)
    got = restarts.load(path)
    assert got["forwarder"].total == 2 and got["forwarder"].within(3600, now) == 1
    assert got["forwarder"].last_exit_code == 1
    assert alerts.restarts_last_hour(tmp_path, now) == {"forwarder": 1, "receiver": 1}
    restarts.record_exit(path, "forwarder", 1, now + 2 * 86400)  # the 24 h window drops the old times
    assert restarts.load(path)["forwarder"].recent == [now + 2 * 86400]
    path.write_text("{not json")
    assert restarts.load(path) == {}


def test_the_alert_job_keeps_state_across_runs_and_status_shows_active_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path, "  thresholds: {backlog_age_minutes: 1}\n  repeat_minutes: 60")
    store = Store(cfg.db_path)
    store.init()
    now = time.time()
    store.add_instance("k1", facts(), [NewJob("PACS_MAIN", "all", 1)], now - 5 * MIN)
    expiring = {"expiry-check": [Alert("expiry-check", "warning", "certificate CN=r expires in 9 day(s)")]}
    out = AlertJob(cfg, store).run(cfg, expiring, {}, now)
    assert out.result.startswith("2 alert(s) active; 2 notification(s) this run (no channel configured)")
    # only the threshold alert is the job's own warning in status (the certificate one is there already)
    assert [a.message.split(":")[0] for a in out.alerts] == ["backlog to PACS_MAIN"]
    # a new scheduler process (restart) reads the state: nothing is announced again
    out = AlertJob(cfg, store).run(cfg, expiring, {}, now + 30)
    assert "0 notification(s) this run" in out.result
    report = alerts.alert_report(cfg, now + 60)
    assert [a["key"] for a in report["active"]][0] == "backlog-age:PACS_MAIN"
    lines = alerts.render_alert_lines(report)
    assert lines[1].startswith("  ALERTS (delivered to no channel)")
    assert any("backlog to PACS_MAIN" in line for line in lines)
    full = status.collect(cfg, store, now + 60)
    assert full["alerts"]["active"] and "ALERTS" in status.render(full)
    store.ack(store.claim("PACS_MAIN", "h:1:0", 10, 60, now)[0].id, 0, "ok", now + 90, keep_spool=True)
    out = AlertJob(cfg, store).run(cfg, {}, {}, now + 120)
    assert out.result.startswith("0 alert(s) active; 2 notification(s)")  # both cleared
    assert alerts.render_alert_lines(alerts.alert_report(cfg)) == []


def test_relative_password_file_and_ca_paths_are_taken_next_to_the_config(tmp_path: Path) -> None:
    from appliance.router.config import load_config

    path = tmp_path / "etc" / "router.yaml"
    path.parent.mkdir()
    path.write_text(
        "alerts:\n"
        "  smtp: {host: mail, sender: r@h.example, to: [o@h.example], password_file: smtp.pass, ca: ca/mail.pem}\n"
        "  webhook: {url: 'https://hooks.example/x', ca: hooks-ca.pem}\n"
    )
    cfg = load_config(path)
    assert cfg.alerts.smtp is not None and cfg.alerts.webhook is not None
    assert cfg.alerts.smtp.password_file == path.parent / "smtp.pass"
    assert cfg.alerts.smtp.ca == path.parent / "ca" / "mail.pem"
    assert cfg.alerts.webhook.ca == path.parent / "hooks-ca.pem"


def test_an_unreadable_queue_database_is_itself_an_alert_and_the_others_still_go_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    store = Store(cfg.db_path)
    store.init()

    def locked(*_: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(alerts, "read_inputs", locked)
    found = {"expiry-check": [Alert("expiry-check", "error", "certificate CN=r EXPIRED")]}
    out = AlertJob(cfg, store).run(cfg, found, {}, time.time())
    (shown,) = out.alerts
    assert shown.level == "error" and "cannot read the queue database" in shown.message
    assert "database is locked" in shown.message
    assert {a["key"] for a in alerts.alert_report(cfg)["active"]} == {
        "queue-database",
        "expiry-check:certificate CN=r EXPIRED",
    }


def test_syslog_addresses() -> None:
    from appliance.router.alert_delivery import _host_port

    assert _host_port("/dev/log") is None
    assert _host_port("siem.example") == ("siem.example", 514)
    assert _host_port("siem.example:1514") == ("siem.example", 1514)
    assert _host_port("[2001:db8::5]:514") == ("2001:db8::5", 514)
    assert _host_port("2001:db8::5") == ("2001:db8::5", 514)


def test_status_names_a_failing_channel_only_while_something_waits() -> None:
    channel = {"waiting": 2, "failing_since": 100.0, "last_error": "webhook … answered HTTP 502", "counts": {}}
    report = {"evaluated_at": 1.0, "active": [], "channels": {"syslog": {**channel, "failing_since": None}}}
    assert alerts.render_alert_lines(report) == []
    report["channels"]["webhook"] = channel
    lines = alerts.render_alert_lines(report)
    assert lines[1:] == [
        "  ALERTS (delivered to syslog, webhook)",
        "  delivery by webhook failing: 2 notification(s) waiting — webhook … answered HTTP 502",
    ]
    report["channels"]["webhook"] = {**channel, "waiting": 0}  # given up: the log said so; nothing to retry
    assert alerts.render_alert_lines(report) == []
