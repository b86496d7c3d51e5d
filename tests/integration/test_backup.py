"""`dicom-router backup create|list|verify|restore|keygen` on a real state: a config applied through change
control, a history directory, TLS material and a queue database, driven through the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.router.backup import parse_bundle_name, retention_keep
from appliance.router.store import this_host
from tests.support.backup_box import PASSPHRASE, Box, add_jobs, job_counts, make_box, tree
from tests.support.peers import REPO


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


def test_create_verify_and_full_restore_are_bit_identical(box: Box) -> None:
    config_before = box.config_path.read_bytes()
    history_before, tls_before = tree(box.history), tree(box.tls)
    counts_before = job_counts(box.db)
    assert counts_before == {"queued": 3, "done": 2}

    res = box.cli("create", "--key-file", str(box.key_file), "--json")
    created = json.loads(res.stdout)
    bundle = Path(created["path"])
    assert bundle.parent == box.backups and created["parts"] == ["config", "history", "tls", "queue"]
    assert parse_bundle_name(bundle.name) is not None and parse_bundle_name(bundle.name).host == this_host()  # type: ignore[union-attr]
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert b"PACS_MAIN" not in bundle.read_bytes() and b"handover" not in bundle.read_bytes()  # encrypted
    assert not list(box.state.glob(".backup-stage-*")) and not list(box.backups.glob("*.part"))

    res = box.cli("verify", bundle.name, "--key-file", str(box.key_file))
    assert res.stdout.startswith(f"OK: {bundle.name} is intact and opens with key file {box.key_file}")
    assert "history (4 files" in res.stdout and "tls (3 files" in res.stdout

    # Life goes on: the config changes by hand, history grows, a key is replaced, jobs arrive.
    changed = box.config()
    changed["nodes"]["PACS_MAIN"]["port"] = 11113
    box.config_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    (box.history / "notes" / "later.txt").write_text("after the backup\n")
    (box.tls / "router.key").write_bytes(b"a new key")
    (box.tls / "extra.pem").write_bytes(b"added later")
    add_jobs(box.db, 4)
    changed_history, changed_tls = tree(box.history), tree(box.tls)

    res = box.cli("restore", bundle.name, "--key-file", str(box.key_file), "--yes")
    out = res.stdout
    assert "Restore plan (full):" in out
    assert "-    port: 11113" in out and "+    port: 104" in out  # the config diff live → bundle
    assert "history.before-restore-" in out and "tls.before-restore-" in out
    queued = next(line for line in out.splitlines() if line.strip().startswith("queued"))
    assert queued.split() == ["queued", "7", "3"]  # live vs bundle
    assert "restored from" in out and "history, tls, queue, config" in out

    # Config, TLS and the history's content are exactly what was backed up.
    assert box.config_path.read_bytes() == config_before
    assert tree(box.tls) == tls_before
    restored_history = tree(box.history)
    assert {k: v for k, v in restored_history.items() if k in history_before} == history_before
    # … plus the restore itself as new versions (the hand edit adopted, then the restore).
    metas = [json.loads(p.read_text()) for p in sorted((box.history / "versions").glob("*.json"))]
    assert metas[-1]["source"] == "restore" and metas[-1]["reason"] == f"restore from {bundle.name}"
    assert metas[-1]["outcome"] == "applied" and metas[-1]["author"] == "alice"
    # The queue is the snapshot's; what was live is kept aside, as are the previous history and TLS.
    assert job_counts(box.db) == counts_before
    (aside_db,) = box.state.glob("queue.sqlite3.before-restore-*[0-9]Z")
    assert job_counts(aside_db) == {"queued": 7, "done": 2}
    (aside_history,) = box.state.glob("history.before-restore-*")
    assert tree(aside_history) == changed_history
    (aside_tls,) = box.tls.parent.glob("tls.before-restore-*")
    assert tree(aside_tls) == changed_tls
    assert not list(box.state.glob(".restore-*"))

    events = [(e["event"], e["outcome"], e["operator"]) for e in box.audit()]
    assert events == [
        ("backup.create", "success", "alice"),
        ("backup.verify", "success", "alice"),
        ("backup.restore", "success", "alice"),
    ]
    assert box.audit()[-1]["bundle"] == bundle.name and box.audit()[-1]["restored"] == [
        "history",
        "tls",
        "queue",
        "config",
    ]


def test_wrong_passphrase_tampered_and_truncated_bundles_change_nothing(box: Box) -> None:
    pw = box.root / "passphrase"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)
    bundle = Path(json.loads(box.cli("create", "--passphrase-file", str(pw), "--json").stdout)["path"])
    box.config_path.write_text(box.config_path.read_text().replace("port: 104", "port: 105"))
    before = {"config": box.config_path.read_bytes(), "history": tree(box.history), "tls": tree(box.tls)}
    db_before = box.db.read_bytes()

    def unchanged() -> None:
        assert box.config_path.read_bytes() == before["config"]
        assert tree(box.history) == before["history"] and tree(box.tls) == before["tls"]
        assert box.db.read_bytes() == db_before
        assert not list(box.state.glob("*before-restore*")) and not list(box.state.glob(".restore-*"))

    wrong = box.root / "wrong"
    wrong.write_text("not the passphrase at all\n")
    res = box.cli("restore", bundle.name, "--passphrase-file", str(wrong), "--yes", check=False)
    assert res.returncode == 1
    assert f"passphrase file {wrong} does not open {bundle.name}: wrong passphrase" in res.stderr
    assert "nothing was changed" in res.stderr
    unchanged()

    tampered = box.root / f"tampered-{bundle.name}"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x20
    tampered.write_bytes(bytes(data))
    for cmd in (["verify"], ["restore", "--yes"]):
        res = box.cli(*cmd, str(tampered), "--passphrase-file", str(pw), check=False)
        assert res.returncode == 1
        assert "failed authentication: the bundle was altered or damaged" in res.stderr, res.stderr
    unchanged()

    truncated = box.root / f"truncated-{bundle.name}"
    truncated.write_bytes(bundle.read_bytes()[:-100])
    res = box.cli("verify", str(truncated), "--passphrase-file", str(pw), check=False)
    assert res.returncode == 1 and "cut short" in res.stderr
    unchanged()

    outcomes = [(e["event"], e["outcome"]) for e in box.audit()]
    assert outcomes == [
        ("backup.create", "success"),
        ("backup.restore", "failure"),
        ("backup.verify", "failure"),
        ("backup.restore", "failure"),
        ("backup.verify", "failure"),
    ]


def test_restore_asks_first_and_refuses_without_a_terminal(box: Box) -> None:
    bundle = Path(json.loads(box.cli("create", "--key-file", str(box.key_file), "--json").stdout)["path"])
    (box.tls / "router.key").write_bytes(b"changed")
    res = box.cli("restore", bundle.name, "--key-file", str(box.key_file), check=False)
    assert res.returncode == 1
    assert "Restore plan (full):" in res.stdout
    assert "no terminal to confirm on" in res.stderr and "--yes" in res.stderr
    assert (box.tls / "router.key").read_bytes() == b"changed"
    assert box.audit()[-1]["outcome"] == "refused"


def test_restore_refuses_the_queue_while_the_router_runs(box: Box) -> None:
    bundle = Path(json.loads(box.cli("create", "--key-file", str(box.key_file), "--json").stdout)["path"])
    key_before = (box.tls / "router.key").read_bytes()
    (box.tls / "router.key").write_bytes(b"changed")
    add_jobs(box.db, 2)
    db_before = box.db.read_bytes()
    # A live process stands in for the supervisor (a child that is not the test, so no signal can reach pytest).
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (box.state / "router.pid").write_text(f"{fake.pid}\n")
        res = box.cli("restore", bundle.name, "--key-file", str(box.key_file), "--yes", check=False)
    finally:
        fake.kill()
        fake.wait()
    assert res.returncode == 3, res.stderr
    assert f"queue    NOT restored: the router is running (pid {fake.pid})" in res.stdout
    assert "stop it (systemctl stop dicom-router), run this restore again" in res.stderr
    assert box.db.read_bytes() == db_before and not list(box.state.glob("queue.sqlite3.before-restore-*"))
    assert (box.tls / "router.key").read_bytes() == key_before  # the rest was restored
    entry = box.audit()[-1]
    assert entry["outcome"] == "partial" and "queue" in entry["skipped"]
    assert entry["config_outcome"] == "unchanged"  # the config had not changed: no reload signal was needed


def test_config_only_restore_goes_through_change_control(box: Box) -> None:
    bundle = Path(json.loads(box.cli("create", "--key-file", str(box.key_file), "--json").stdout)["path"])
    good = box.config_path.read_bytes()
    changed = box.config()
    changed["routes"][0]["priority"] = "stat"
    box.apply(changed, "stat for everything")
    (box.tls / "router.key").write_bytes(b"changed")
    res = box.cli("restore", bundle.name, "--key-file", str(box.key_file), "--config-only", "--yes")
    assert "Restore plan (config only):" in res.stdout and "-  priority: stat" in res.stdout
    assert box.config_path.read_bytes() == good
    assert (box.tls / "router.key").read_bytes() == b"changed"  # only the config
    metas = [json.loads(p.read_text()) for p in sorted((box.history / "versions").glob("*.json"))]
    assert [(m["version"], m["source"], m["reason"]) for m in metas] == [
        (1, "cli", "first version"),
        (2, "cli", "stat for everything"),
        (3, "restore", f"restore from {bundle.name}"),
    ]


def test_secret_sources(box: Box) -> None:
    # Nothing configured, no terminal: a clear error, nothing written.
    res = box.cli("create", check=False)
    assert res.returncode == 1
    assert "no passphrase or key: give --passphrase-file FILE or --key-file FILE" in res.stderr
    assert box.bundles() == []
    short = box.root / "short"
    short.write_text("abc\n")
    res = box.cli("create", "--passphrase-file", str(short), check=False)
    assert res.returncode == 1 and "too short" in res.stderr
    # The config names the key file: no flag needed, for create and verify alike.
    cfg = box.config()
    cfg["backup"]["key_file"] = "backup.key"  # relative to the config file
    box.apply(cfg, "backup key")
    name = json.loads(box.cli("create", "--json").stdout)["bundle"]
    assert box.cli("verify", "latest").stdout.startswith(f"OK: {name} is intact and opens with key file")
    # A world-readable key gets a warning.
    box.key_file.chmod(0o644)
    assert "readable by group or others" in box.cli("verify", name).stderr
    assert [(e["event"], e["outcome"]) for e in box.audit()] == [
        ("backup.create", "failure"),
        ("backup.create", "failure"),
        ("backup.create", "success"),
        ("backup.verify", "success"),
        ("backup.verify", "success"),
    ]


def test_list_and_retention(box: Box) -> None:
    me = this_host()
    box.backups.mkdir(parents=True)
    synthetic = ["20200115T020000Z", "20200115T010000Z", "20200114T020000Z", "20200110T020000Z", "20200102T020000Z"]
    for stamp in synthetic:
        (box.backups / f"dicom-router-{me}-{stamp}.drbk").write_bytes(b"x" * 10)
    other = box.backups / "dicom-router-other-box-20190101T000000Z.drbk"
    other.write_bytes(b"not ours")
    unrelated = box.backups / "README.txt"
    unrelated.write_text("kept")

    listed = json.loads(box.cli("list", "--json").stdout)
    assert [b["name"] for b in listed["bundles"]][:2] == [other.name, f"dicom-router-{me}-20200102T020000Z.drbk"]
    assert listed["bundles"][1] | {"size": 10, "host": me, "created": "2020-01-02T02:00:00Z"} == listed["bundles"][1]

    created = json.loads(box.cli("create", "--key-file", str(box.key_file), "--json").stdout)
    # keep_daily 3, keep_weekly 2 (see the fixture). Days with bundles, newest first: today (the new one),
    # 15 Jan (its newest), 14 Jan; weeks: this week, 2020-W03 — both already kept by the daily rule.
    # Another host's bundles and other files are never touched.
    expected = {
        created["bundle"],
        f"dicom-router-{me}-20200115T020000Z.drbk",
        f"dicom-router-{me}-20200114T020000Z.drbk",
    }
    assert {p.name for p in box.bundles()} == expected | {other.name}
    assert unrelated.exists()
    removed = created["retention"][0]["removed"]
    assert sorted(removed) == sorted(
        f"dicom-router-{me}-{s}.drbk" for s in ("20200115T010000Z", "20200110T020000Z", "20200102T020000Z")
    )
    out = box.cli("list").stdout
    assert f"{len(expected) + 1} bundle(s) in {box.backups}" in out and f"host {me}" in out


def test_retention_rule() -> None:
    def refs(*stamps: str) -> list[Any]:
        return [parse_bundle_name(f"dicom-router-h-{s}.drbk") for s in stamps]

    stamps = [
        "20240301T020000Z",  # Fri, W09
        "20240229T230000Z",  # Thu, W09
        "20240229T020000Z",  # Thu, W09
        "20240226T020000Z",  # Mon, W09
        "20240225T020000Z",  # Sun, W08
        "20240220T020000Z",  # Tue, W08
        "20240210T020000Z",  # Sat, W06
        "20231231T020000Z",  # Sun, 2023-W52
    ]
    keep = retention_keep(refs(*stamps), keep_daily=3, keep_weekly=3)
    assert {n[15:31] for n in keep} == {
        "20240301T020000Z",  # daily 1, weekly W09
        "20240229T230000Z",  # daily 2 (newest of the 29th)
        "20240226T020000Z",  # daily 3
        "20240225T020000Z",  # weekly W08
        "20240210T020000Z",  # weekly W06
    }
    assert retention_keep(refs(*stamps), keep_daily=1, keep_weekly=0) == {"dicom-router-h-20240301T020000Z.drbk"}
    # Two bundles in the same second get distinct names, ordered by their sequence number.
    same = [
        parse_bundle_name("dicom-router-h-20240301T020000Z.drbk"),
        parse_bundle_name("dicom-router-h-20240301T020000Z-2.drbk"),
    ]
    assert retention_keep(same, 1, 0) == {"dicom-router-h-20240301T020000Z-2.drbk"}  # type: ignore[arg-type]


def test_keygen_refuses_to_overwrite(box: Box) -> None:
    before = box.key_file.read_bytes()
    res = subprocess.run(
        [sys.executable, "-m", "appliance.router", "backup", "keygen", str(box.key_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "refusing to overwrite a key" in res.stderr
    assert box.key_file.read_bytes() == before and stat.S_IMODE(box.key_file.stat().st_mode) == 0o600


def test_restore_onto_a_fresh_box(box: Box, tmp_path: Path) -> None:
    """A replacement appliance: the first-boot config, no history, no TLS, no queue — the bundle brings all."""
    bundle = Path(json.loads(box.cli("create", "--key-file", str(box.key_file), "--json").stdout)["path"])
    config_before, history_before, tls_before = box.config_path.read_bytes(), tree(box.history), tree(box.tls)
    shutil.rmtree(box.history)
    shutil.rmtree(box.tls)
    moved = tmp_path / "bundle.drbk"
    shutil.move(bundle, moved)
    shutil.rmtree(box.state)
    first_boot = {"router": {"state_dir": str(box.state), "log_dir": str(box.log)}}
    box.config_path.write_text(yaml.safe_dump(first_boot))
    box.cli("restore", str(moved), "--key-file", str(box.key_file), "--yes")
    assert box.config_path.read_bytes() == config_before
    assert tree(box.tls) == tls_before
    assert {k: v for k, v in tree(box.history).items() if k in history_before} == history_before
    assert job_counts(box.db) == {"queued": 3, "done": 2}


def run_on_terminal(box: Box, args: list[str], dialogue: list[tuple[str, str]]) -> tuple[int, str]:
    """Run `dicom-router backup ARGS` on a pseudo-terminal, answering each prompt as it appears."""
    argv = [sys.executable, "-m", "appliance.router", "backup", *args, "--config", str(box.config_path)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session with the pty as its controlling terminal, as at the console
        try:
            os.chdir(REPO)
            os.execve(argv[0], argv, {**os.environ, "SUDO_USER": "alice"})
        finally:
            os._exit(127)  # never run the rest of pytest in the forked child
    seen = b""
    pending = list(dialogue)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        if pending and pending[0][0].encode() in seen.split(b"\n")[-1]:
            os.write(fd, pending.pop(0)[1].encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert not pending, f"never prompted for {pending[0][0]!r}:\n{seen.decode(errors='replace')}"
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_typed_passphrase_and_confirmation_on_a_terminal(box: Box) -> None:
    code, out = run_on_terminal(
        box, ["create"], [("Backup passphrase:", PASSPHRASE), ("Same passphrase again:", PASSPHRASE + "x")]
    )
    assert code == 1 and "the two passphrases differ: nothing was written" in out and box.bundles() == []
    code, out = run_on_terminal(
        box, ["create"], [("Backup passphrase:", PASSPHRASE), ("Same passphrase again:", PASSPHRASE)]
    )
    assert code == 0 and PASSPHRASE not in out, out  # typed without echo
    (bundle,) = box.bundles()
    (box.tls / "router.key").write_bytes(b"changed")
    code, out = run_on_terminal(
        box, ["restore", bundle.name], [("Backup passphrase:", PASSPHRASE), ("Type 'yes' to go on:", "no")]
    )
    assert code == 1 and "not restored: nothing was changed" in out
    assert (box.tls / "router.key").read_bytes() == b"changed"
    code, out = run_on_terminal(
        box, ["restore", bundle.name], [("Backup passphrase:", PASSPHRASE), ("Type 'yes' to go on:", "yes")]
    )
    assert code == 0 and "restored from" in out, out
    assert (box.tls / "router.key").read_bytes() != b"changed"
