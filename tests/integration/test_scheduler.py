"""The scheduler process inside the real router: listed in `status` with its jobs, reloaded by SIGHUP (its
heartbeat then reports the new config), and a failing nightly backup shown and audited."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from tests.support.peers import Router, dest_node, free_port, wait_until

JOBS = {
    "spool-retention", "orphan-sweep", "disk-watermark", "circuit-probe", "expiry-check", "alerts", "audit-verify",
    "metrics-endpoint",
}  # fmt: skip


def scheduler_state(router: Router) -> tuple[dict[str, Any], dict[str, Any]]:
    st = router.status()
    return st, st["scheduler"]


def config_sha(router: Router) -> str:
    return hashlib.sha256(router.config_path.read_bytes()).hexdigest()


def scheduler_sha(router: Router) -> str | None:
    proc = router.status()["processes"].get("scheduler")
    return proc["config_sha"] if proc and proc["running"] else None


def test_status_lists_the_scheduler_and_its_jobs_and_sighup_reschedules(tmp_path: Path) -> None:
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", free_port())}).start()
    try:
        first_sha = config_sha(router)
        wait_until(lambda: scheduler_sha(router) == first_sha, 20, "the scheduler's heartbeat")
        wait_until(
            lambda: {j["name"] for j in scheduler_state(router)[1]["jobs"] if j["last_outcome"] == "ok"} == JOBS,
            20,
            "every job's first run",
        )
        st, sched = scheduler_state(router)
        assert sched["running"] and sched["note"] is None
        assert all(j["next_run_in_seconds"] is not None for j in sched["jobs"])
        assert not [p for p in st["problems"] if "schedul" in p], st["problems"]
        text = router.cli("status").stdout
        assert "scheduler: running" in text and "SCHEDULED JOB" in text and "expiry-check" in text

        # A reload reschedules from the new file and the heartbeat says so at once (what `config apply` waits
        # for); the disk check runs again with the new threshold.
        router.config["router"]["disk_warn_percent"] = 0.01
        router.write_config()
        router.reload()
        second_sha = config_sha(router)
        wait_until(lambda: scheduler_sha(router) == second_sha, 15, "the scheduler to report the new config")
        wait_until(
            lambda: any(w["source"] == "disk-watermark" for w in scheduler_state(router)[1]["warnings"]),
            15,
            "the disk warning at the new threshold",
        )
        assert any("above router.disk_warn_percent 0.01%" in p for p in router.status()["problems"])
        assert any(e["event"] == "disk_watermark" and e["level"] == "high" for e in router.audit())
    finally:
        router.stop()
    assert "scheduler stopped" in router.log_text()


def router_with_backup_due(tmp_path: Path, passphrase_file: Path) -> tuple[Router, str]:
    """Scheduled a minute ago: the router starting now catches that run up (the backup's misfire grace)."""
    a_minute_ago = (dt.datetime.now() - dt.timedelta(minutes=1)).strftime("%H:%M")
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", free_port())})
    router.config["backup"] = {"schedule": a_minute_ago, "passphrase_file": str(passphrase_file)}
    router.write_config()
    return router.start(), a_minute_ago


def test_a_nightly_backup_missed_at_start_runs_at_once(tmp_path: Path) -> None:
    passphrase = tmp_path / "backup.pass"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)
    router, _ = router_with_backup_due(tmp_path, passphrase)
    try:
        backup = wait_until(
            lambda: [j for j in router.status()["scheduler"]["jobs"] if j["name"] == "backup" and j["last_outcome"]],
            120,
            "the caught-up backup",
        )[0]
        assert backup["last_outcome"] == "ok", backup
        assert backup["last_result"].startswith("backup ")
        assert list((tmp_path / "state" / "backups").iterdir()), "a bundle was written"
    finally:
        router.stop()


def test_a_failing_nightly_backup_is_shown_and_audited(tmp_path: Path) -> None:
    # It fails because the passphrase file does not exist.
    router, a_minute_ago = router_with_backup_due(tmp_path, tmp_path / "missing-passphrase")
    try:
        problem = wait_until(
            lambda: [p for p in router.status()["problems"] if p.startswith("scheduled job backup failed")],
            60,
            "the backup's failure in status",
        )
        sched = router.status()["scheduler"]
        (backup,) = [j for j in sched["jobs"] if j["name"] == "backup"]
        assert backup["last_outcome"] == "failed" and backup["last_error"] in problem[0]
        assert str(tmp_path / "missing-passphrase") in backup["last_error"]
        assert backup["schedule"] == f"daily at {a_minute_ago} (local time)"
        assert 22 * 3600 < backup["next_run_in_seconds"] <= 24 * 3600  # the next is tomorrow's
        audited = [e for e in router.audit() if e["event"] == "scheduled_job" and e.get("job") == "backup"]
        assert audited and audited[0]["outcome"] == "failure" and audited[0]["process"] == "scheduler"
        assert "scheduled job backup failed" in router.log_text()
    finally:
        router.stop()
