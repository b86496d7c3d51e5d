"""Config history and the apply path, without a running daemon (tests/integration/test_change_control.py
covers reload and confirmation against a real router)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.router.config import config_sha256
from appliance.router.history import ApplyError, ChangeRequest, History, apply_config, live_state, rollback_target

REPO = Path(__file__).resolve().parents[2]

BASE = """\
router:
  ae_title: DICOM_ROUTER
  port: {port}
  state_dir: state
  log_dir: log
nodes:
  CT1: {{ae_title: CT1, host: 10.0.0.1, port: 104, role: source}}
  PACS: {{ae_title: PACS, host: 10.0.0.2, port: 104, role: destination}}
routes:
  - name: all
    to: [PACS]
"""


def cfg_text(port: int = 11112) -> bytes:
    return BASE.format(port=port).encode()


@pytest.fixture
def live(tmp_path: Path) -> Path:
    path = tmp_path / "router.yaml"
    path.write_bytes(cfg_text())
    return path


def req(**kw: object) -> ChangeRequest:
    base: dict[str, object] = {"author": "alice", "reason": "test", "ticket": "CHG-1"}
    base.update(kw)
    return ChangeRequest(**base)  # type: ignore[arg-type]


def history_of(live: Path) -> History:
    return History(live.parent / "state" / "history")


def audit_events(live: Path) -> list[dict[str, object]]:
    path = live.parent / "log" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_first_apply_adopts_the_file_on_disk_then_records_the_change(live: Path) -> None:
    result = apply_config(live, cfg_text(11113), req())
    assert result.outcome == "applied" and result.changed and result.version == 2
    assert live.read_bytes() == cfg_text(11113)
    versions = history_of(live).versions()
    assert [(v.version, v.source, v.outcome) for v in versions] == [(1, "adopted", "applied"), (2, "cli", "applied")]
    assert versions[0].sha256 == config_sha256(cfg_text())
    assert history_of(live).content(1) == cfg_text() and history_of(live).content(2) == cfg_text(11113)
    assert versions[1].author == "alice" and versions[1].ticket == "CHG-1" and versions[1].parent_version == 1
    assert "-  port: 11112" in result.diff and "+  port: 11113" in result.diff
    events = [e["event"] for e in audit_events(live)]
    assert events == ["config.adopt", "config.apply"]
    assert audit_events(live)[-1]["sha256"] == config_sha256(cfg_text(11113))


def test_same_content_again_is_unchanged_and_records_nothing(live: Path) -> None:
    apply_config(live, cfg_text(11113), req())
    again = apply_config(live, cfg_text(11113), req())
    assert again.outcome == "unchanged" and not again.changed
    assert len(history_of(live).versions()) == 2


def test_unrecorded_live_content_applied_as_is_is_recorded_once(live: Path) -> None:
    first = apply_config(live, cfg_text(), req(source="ansible"))
    assert first.outcome == "applied" and first.version == 1
    assert history_of(live).versions()[0].source == "ansible"
    assert apply_config(live, cfg_text(), req()).outcome == "unchanged"


def test_check_mode_shows_the_diff_and_changes_nothing(live: Path) -> None:
    result = apply_config(live, cfg_text(11113), req(), check=True)
    assert result.outcome == "checked" and result.changed and "+  port: 11113" in result.diff
    assert live.read_bytes() == cfg_text()
    assert history_of(live).versions() == [] and audit_events(live) == []


def test_invalid_config_is_refused_with_every_problem_and_nothing_changes(live: Path) -> None:
    bad = cfg_text().replace(b"to: [PACS]", b"to: [PACS_MAIN]").replace(b"port: 11112", b"port: 99999")
    with pytest.raises(ApplyError) as err:
        apply_config(live, bad, req())
    assert len(err.value.problems) == 2
    assert "PACS_MAIN" in str(err.value) and "99999" in str(err.value) and "nothing was changed" in str(err.value)
    assert live.read_bytes() == cfg_text()
    # The attempt is in the history (and the audit trail) as failed, with what was wrong.
    (attempt,) = history_of(live).versions()
    assert attempt.outcome == "failed" and "PACS_MAIN" in (attempt.error or "") and attempt.author == "alice"
    assert history_of(live).content(attempt.version) == bad
    assert audit_events(live)[-1]["event"] == "config.apply" and audit_events(live)[-1]["outcome"] == "failure"
    assert live_state(live).version is None  # a failed attempt never counts as live


def test_reason_is_required(live: Path) -> None:
    with pytest.raises(ApplyError, match="reason is required"):
        apply_config(live, cfg_text(11113), req(reason="  "))


def test_state_dir_change_is_refused(live: Path) -> None:
    moved = cfg_text().replace(b"state_dir: state", b"state_dir: elsewhere")
    with pytest.raises(ApplyError, match="state_dir would change"):
        apply_config(live, moved, req())
    assert live.read_bytes() == cfg_text()


def test_drift_from_expected_parent_is_refused_with_who_changed_what(live: Path) -> None:
    ansible = apply_config(live, cfg_text(11113), req(source="ansible", author="ansible-ci"))
    # An emergency change at the console, then Ansible comes back with its own next version.
    apply_config(live, cfg_text(11114), req(source="console", author="bob", reason="PACS moved", ticket="INC-9"))
    with pytest.raises(ApplyError) as err:
        apply_config(live, cfg_text(11115), req(source="ansible", expect_parent=ansible.sha256))
    msg = str(err.value)
    assert err.value.drift
    assert "console by bob ticket INC-9: PACS moved" in msg
    assert "-  port: 11113" in msg and "+  port: 11114" in msg
    assert "--force" in msg
    assert live.read_bytes() == cfg_text(11114)
    assert history_of(live).versions()[-1].outcome == "refused"

    forced = apply_config(
        live, cfg_text(11115), req(source="ansible", expect_parent=ansible.sha256, force=True, reason="override")
    )
    assert forced.outcome == "applied" and forced.warnings
    assert history_of(live).get(forced.version or 0).forced


def test_expected_parent_matching_applies(live: Path) -> None:
    first = apply_config(live, cfg_text(11113), req())
    second = apply_config(live, cfg_text(11114), req(expect_parent=first.sha256[:12]))
    assert second.outcome == "applied"


def test_hand_edit_shows_as_drift_and_is_adopted_by_the_next_apply(live: Path) -> None:
    apply_config(live, cfg_text(11113), req())
    live.write_bytes(cfg_text(11113) + b"# edited by hand\n")
    state = live_state(live)
    assert state.drifted and state.version is not None and state.version.version == 2
    apply_config(live, cfg_text(11114), req())
    versions = history_of(live).versions()
    assert [v.source for v in versions] == ["adopted", "cli", "adopted", "cli"]
    assert history_of(live).content(3).endswith(b"# edited by hand\n")
    assert not live_state(live).drifted


def test_rollback_target_is_the_previous_different_version(live: Path) -> None:
    apply_config(live, cfg_text(11113), req())
    apply_config(live, cfg_text(11114), req())
    h = history_of(live)
    assert rollback_target(h, config_sha256(cfg_text(11114))).version == 2
    # Rolling back to 2 is recorded as version 4 whose parent is 3: a second rollback redoes the change.
    apply_config(live, h.content(2), req(source="rollback", rollback_of=2))
    assert rollback_target(h, config_sha256(cfg_text(11113))).version == 3
    # A hand edit (not in the history) rolls back to the last applied version.
    live.write_bytes(b"# hand edit\n" + live.read_bytes())
    assert rollback_target(h, config_sha256(live.read_bytes())).version == 4


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.router", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_cli_apply_history_diff_show_rollback_status(live: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_bytes(cfg_text(11113))
    c = ["--config", str(live)]
    res = run_cli("config", "apply", str(new), "--author", "carol", "--ticket", "CHG-7", "--reason", "new port", *c)
    assert res.returncode == 0, res.stderr
    assert "version 2 applied" in res.stdout and "+  port: 11113" in res.stdout

    res = run_cli("config", "history", *c)
    assert res.returncode == 0 and "CHG-7" in res.stdout and "new port" in res.stdout and "adopted" in res.stdout
    rows = json.loads(run_cli("config", "history", "--json", *c).stdout)
    assert [r["live"] for r in rows] == [False, True]

    res = run_cli("config", "diff", "1", "2", *c)
    assert "-  port: 11112" in res.stdout and "+  port: 11113" in res.stdout
    assert run_cli("config", "show", "1", *c).stdout.encode() == cfg_text()
    assert "identical" in run_cli("config", "diff", "2", "live", *c).stdout

    res = run_cli("config", "rollback", "--reason", "port broke PACS", "--author", "dave", *c)
    assert res.returncode == 0, res.stderr
    assert "rolled back to the content of version 1" in res.stdout
    assert live.read_bytes() == cfg_text()
    v3 = history_of(live).get(3)
    assert v3.source == "rollback" and v3.rollback_of == 1 and v3.author == "dave"

    status = json.loads(run_cli("config", "status", "--json", *c).stdout)
    assert status["version"] == 3 and not status["drifted"] and status["daemon_pid"] is None
    assert "live: version 3" in run_cli("config", "status", *c).stdout


def test_cli_exit_codes_for_invalid_and_drift(live: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"router: {port: 0}\n")
    res = run_cli("config", "apply", str(bad), "--reason", "x", "--config", str(live))
    assert res.returncode == 1 and "port 0 is impossible" in res.stderr
    good = tmp_path / "good.yaml"
    good.write_bytes(cfg_text(11113))
    res = run_cli(
        "config", "apply", str(good), "--reason", "x", "--expect-parent", "0" * 64, "--json", "--config", str(live)
    )
    assert res.returncode == 4
    out = json.loads(res.stdout)
    assert out["drift"] and out["outcome"] == "refused" and not out["changed"]
    res = run_cli("config", "apply", str(good), "--reason", "x", "--check", "--json", "--config", str(live))
    assert res.returncode == 0 and json.loads(res.stdout)["outcome"] == "checked"
    assert live.read_bytes() == cfg_text()


def test_status_shows_the_config_version_and_a_hand_edit_as_a_problem(live: Path) -> None:
    from appliance.router.config import load_config
    from appliance.router.status import collect, render
    from appliance.router.store import Store

    apply_config(live, cfg_text(11113), req(source="ansible", author="it"))
    cfg = load_config(live)
    store = Store(cfg.db_path)
    store.init()
    report = collect(cfg, store, config_path=live)
    assert report["config"]["version"] == 2 and report["config"]["applied_by"] == "ansible by it"
    assert "config version 2 (ansible by it" in render(report)
    assert not [p for p in report["problems"] if "config" in p]
    live.write_bytes(cfg_text(11113) + b"# hand edit\n")
    report = collect(load_config(live), store, config_path=live)
    assert report["config"]["drifted"]
    assert any("edited outside `config apply`" in p for p in report["problems"])
