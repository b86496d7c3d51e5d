"""`config apply` / `rollback` against a running router: reload confirmed by heartbeats, a change that cannot
run is put back, and every step is in the history and the audit trail."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml

from tests.support.data import make_ct_series, sop_instance_uid
from tests.support.peers import Router, StoreSCP, dest_node, free_port, port_open, storescu, wait_until


def write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def history(router: Router) -> list[dict[str, object]]:
    return list(json.loads(router.cli("config", "history", "--json").stdout))


def test_apply_reloads_the_router_and_confirms_the_new_version(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path, "PACS").start()
    archive = StoreSCP(tmp_path, "ARCHIVE").start()
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", pacs.port)}).start()
    try:
        new = json.loads(json.dumps(router.config))
        new["nodes"]["ARCHIVE"] = dest_node("ARCHIVE", archive.port)
        new["routes"].append({"name": "ct-archive", "match": {"Modality": "CT"}, "to": ["ARCHIVE"]})
        candidate = write(tmp_path / "candidate.yaml", new)

        res = router.cli("config", "apply", str(candidate), "--check", "--reason", "add archive", "--json")
        checked = json.loads(res.stdout)
        assert checked["outcome"] == "checked" and "+  ARCHIVE:" in checked["diff"]
        assert history(router) == []

        res = router.cli(
            "config", "apply", str(candidate), "--author", "it-ansible", "--ticket", "CHG-100",
            "--reason", "add archive", "--source", "ansible", "--json",
        )  # fmt: skip
        applied = json.loads(res.stdout)
        assert applied["outcome"] == "applied" and applied["version"] == 2
        assert applied["daemon"].startswith("reloaded")
        status = json.loads(router.cli("config", "status", "--json").stdout)
        assert status["daemon_runs_live"] is True and status["version"] == 2
        assert set(status["running"]) >= {"receiver", "forwarder"}

        # The new route is live: a CT series reaches both destinations.
        series = make_ct_series(tmp_path / "ct", 3, rows=16, cols=16)
        assert storescu(router.port, series).returncode == 0
        router.wait_delivered(6)
        assert {sop_instance_uid(p) for p in archive.files()} == {sop_instance_uid(p) for p in series}

        apply_entries = [e for e in router.audit() if e["event"] == "config.apply"]
        assert apply_entries[-1]["author"] == "it-ansible" and apply_entries[-1]["ticket"] == "CHG-100"
        assert apply_entries[-1]["outcome"] == "success" and apply_entries[-1]["source"] == "ansible"

        # Emergency console change, then Ansible's next apply with its expected parent is refused.
        console = json.loads(json.dumps(new))
        console["nodes"]["PACS_MAIN"]["max_associations"] = 1
        res = router.cli(
            "config", "apply", str(write(tmp_path / "console.yaml", console)), "--source", "console",
            "--author", "oncall-bob", "--reason", "PACS overloaded", "--ticket", "INC-42",
        )  # fmt: skip
        ansible_next = json.loads(json.dumps(new))
        ansible_next["routes"][0]["priority"] = "stat"
        res = router.cli(
            "config", "apply", str(write(tmp_path / "next.yaml", ansible_next)), "--source", "ansible",
            "--reason", "stat priority", "--expect-parent", applied["sha256"], check=False,
        )  # fmt: skip
        assert res.returncode == 4
        assert "console by oncall-bob ticket INC-42: PACS overloaded" in res.stderr
        assert "max_associations: 1" in res.stderr

        # Roll back the console change: a new version pointing at 2, confirmed by the router.
        res = router.cli("config", "rollback", "--author", "oncall-bob", "--reason", "PACS recovered")
        assert "rolled back to the content of version 2" in res.stdout
        rows = history(router)
        assert rows[-1]["source"] == "rollback" and rows[-1]["rollback_of"] == 2 and rows[-1]["live"]
        assert json.loads(router.cli("config", "status", "--json").stdout)["daemon_runs_live"] is True
    finally:
        router.stop()
        pacs.stop()
        archive.stop()


def test_port_change_restarts_the_listener(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path, "PACS").start()
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", pacs.port)}).start()
    try:
        new = json.loads(json.dumps(router.config))
        new_port = free_port()
        new["router"]["port"] = new_port
        router.cli("config", "apply", str(write(tmp_path / "c.yaml", new)), "--reason", "move port")
        assert port_open(new_port)
        wait_until(lambda: not port_open(router.port), 10, "the old port to close")
        series = make_ct_series(tmp_path / "ct", 2, rows=16, cols=16)
        assert storescu(new_port, series).returncode == 0
        router.wait_delivered(2)
    finally:
        router.stop()
        pacs.stop()


def test_a_version_the_router_cannot_run_is_put_back_and_recorded_as_failed(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path, "PACS").start()
    router = Router(tmp_path, destinations={"PACS_MAIN": dest_node("PACS", pacs.port)}).start()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    try:
        before = router.config_path.read_bytes()
        new = json.loads(json.dumps(router.config))
        new["router"]["port"] = squatter.getsockname()[1]  # valid config, but the port is taken
        res = router.cli(
            "config", "apply", str(write(tmp_path / "c.yaml", new)), "--reason", "bad port", "--wait", "8",
            check=False,
        )  # fmt: skip
        assert res.returncode == 1
        assert "was NOT applied" in res.stderr and "put back" in res.stderr
        assert router.config_path.read_bytes() == before
        rows = history(router)
        assert rows[-1]["outcome"] == "failed" and "did not confirm" in str(rows[-1]["error"])
        failed = [e for e in router.audit() if e["event"] == "config.apply"]
        assert failed[-1]["outcome"] == "failure"
        # The router serves on its old port with the old version again.
        wait_until(lambda: port_open(router.port), 30, "the router to listen on its old port again")
        status = json.loads(router.cli("config", "status", "--json").stdout)
        assert status["daemon_runs_live"] is True and status["version"] == 1
        series = make_ct_series(tmp_path / "ct", 2, rows=16, cols=16)
        assert storescu(router.port, series).returncode == 0
        router.wait_delivered(2)
    finally:
        squatter.close()
        router.stop()
        pacs.stop()
