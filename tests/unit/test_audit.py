"""The audit trail's writer: the hash chain across processes and logrotate's renames, the head in the lock
file, a hand-edited/truncated/deleted log noticed and recorded, acknowledgement, Patient IDs per policy.
(test_audit_verify.py covers `audit verify` naming each kind of break.)"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.router.audit import (
    GENESIS,
    AuditLog,
    acknowledge,
    chain_problems,
    check_line,
    open_breaks,
    patient_field,
    patient_hash,
    read_entries,
    read_head,
)
from appliance.router.audit_verify import verify
from appliance.router.config import parse_config_for

CONFIG = """\
router: {{ae_title: DICOM_ROUTER, port: 11112, state_dir: {state}, log_dir: {log}}}
nodes:
  PACS: {{ae_title: PACS, host: 10.0.0.2, port: 104, role: destination}}
routes: [{{name: all, to: [PACS]}}]
audit: {{patient_ids: {policy}}}
"""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def events(path: Path) -> list[str]:
    return [e["event"] for e in read_entries(path)]


def write(path: Path, n: int, process: str = "test", start: int = 0) -> AuditLog:
    audit = AuditLog(path, process)
    for i in range(start, start + n):
        audit.record("receive", n=i)
    return audit


# -- the chain ----------------------------------------------------------------------------------------
def test_each_entry_carries_seq_prev_and_the_hash_of_its_own_text(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3).close()
    raw = lines(path)
    entries = [json.loads(x) for x in raw]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    for line, e in zip(raw, entries, strict=True):
        body = line[: line.index(',"hash":')] + "}"
        assert e["hash"] == hashlib.sha256(body.encode()).hexdigest()
        assert list(e)[:4] == ["time", "event", "outcome", "process"] and list(e)[-3:] == ["seq", "prev", "hash"]
        assert e["time"].endswith("Z") and check_line(line.encode()).problem() is None
    assert entries[1]["prev"] == entries[0]["hash"] and entries[2]["prev"] == entries[1]["hash"]
    head = read_head(path)
    assert head is not None and (head.seq, head.hash) == (3, entries[2]["hash"])
    assert head.size == path.stat().st_size and head.ino == path.stat().st_ino


def test_caller_fields_cannot_overwrite_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test")
    audit.record("odd", seq=99, prev="x", hash="y", time="then")
    audit.close()
    e = read_entries(path)[0]
    assert (e["seq"], e["field_seq"], e["field_prev"], e["field_hash"], e["field_time"]) == (1, 99, "x", "y", "then")
    assert verify(path).ok


def test_two_writer_objects_in_one_process_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a, b = AuditLog(path, "receiver"), AuditLog(path, "forwarder")
    for i in range(5):
        a.record("receive", n=i)
        b.record("forward", n=i)
    assert [e["seq"] for e in read_entries(path)] == list(range(1, 11))
    assert verify(path).ok


def _writer(path: str, worker: int, count: int) -> None:
    audit = AuditLog(Path(path), f"worker{worker}")
    for n in range(count):
        audit.record("receive", worker=worker, n=n)
        if worker == 0 and n in (100, 200):  # logrotate renames the file while the others keep writing
            os.rename(path, f"{path}-2026112{6 + n // 200}")
    audit.close()


def test_concurrent_writers_in_several_processes_with_rotations_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # logrotate's next run compresses the older file (delaycompress); verify reads it as it is.
    older = tmp_path / "audit.jsonl-20261126"
    with open(older, "rb") as src, gzip.open(str(older) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    older.unlink()
    report = verify(path)
    assert report.ok, report.as_dict()
    assert [f.name for f in report.files] == ["audit.jsonl-20261126.gz", "audit.jsonl-20261127", "audit.jsonl"]
    assert report.entries == 1200 and (report.first_seq, report.last_seq) == (1, 1200)
    seen = set()
    for f in [older.with_name(older.name + ".gz"), tmp_path / "audit.jsonl-20261127", path]:
        opener: Any = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt") as fh:
            seen |= {(e["worker"], e["n"]) for e in map(json.loads, fh)}
    assert seen == {(w, n) for w in range(4) for n in range(300)}  # none lost, none doubled


# -- rotation -----------------------------------------------------------------------------------------
def test_the_first_entry_after_a_rotation_chains_to_the_renamed_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = write(path, 2)
    os.rename(path, tmp_path / "audit.jsonl-20261127")
    audit.record("after")
    fresh = AuditLog(path, "cli")  # a process that never saw the old file
    fresh.record("later")
    old, new = read_entries(tmp_path / "audit.jsonl-20261127"), read_entries(path)
    assert [e["event"] for e in new] == ["after", "later"]  # no break recorded
    assert new[0]["prev"] == old[-1]["hash"] and new[0]["seq"] == 3
    assert verify(path).ok and not open_breaks(path)


def test_rotated_and_compressed_at_once_is_still_a_rotation(tmp_path: Path) -> None:
    """Without delaycompress logrotate gzips the renamed file straight away: its inode is gone."""
    path = tmp_path / "audit.jsonl"
    write(path, 2).close()
    with open(path, "rb") as src, gzip.open(tmp_path / "audit.jsonl-20261127.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    AuditLog(path, "test").record("after")
    assert events(path) == ["after"] and verify(path).ok


def test_a_lost_lock_file_chains_to_the_newest_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2).close()
    os.rename(path, tmp_path / "audit.jsonl-20261127")
    (tmp_path / "audit.lock").unlink()
    AuditLog(path, "test").record("after")
    assert read_entries(path)[0]["seq"] == 3 and verify(path).ok


def test_entries_from_before_the_chain_start_it_without_alarm(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"time":"t","event":"old","outcome":"success","process":"cli"}\n')
    AuditLog(path, "test").record("new")
    new = read_entries(path)[1]
    assert new["seq"] == 1 and new["prev"] == hashlib.sha256(lines(path)[0].encode()).hexdigest()
    report = verify(path)
    assert report.ok and report.legacy_entries == 1 and "not protected" in report.notes[-1]
    assert not chain_problems(path)


# -- tampering the writer notices ---------------------------------------------------------------------
def _edit_line(path: Path, index: int, old: str, new: str) -> None:
    text = lines(path)
    assert old in text[index]
    text[index] = text[index].replace(old, new)
    path.write_text("\n".join(text) + "\n")


def test_a_hand_edited_tail_is_recorded_logged_shown_and_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3).close()
    _edit_line(path, 2, '"n":2', '"n":7')
    assert any("does not match its hash" in p and "not yet recorded" in p for p in chain_problems(path))

    with caplog.at_level(logging.ERROR, logger="router.audit"):
        AuditLog(path, "receiver").record("receive", n=4)  # a restarted process opens the file
    assert "AUDIT TRAIL TAMPERED OR DAMAGED" in caplog.text and "audit verify" in caplog.text
    entries = read_entries(path)
    assert [e["event"] for e in entries] == ["receive"] * 3 + ["audit_chain_broken", "receive"]
    brk = entries[3]
    assert brk["kind"] == "edited" and brk["seq"] == 4 and brk["prev"] == entries[2]["hash"]
    assert "does not match its hash" in brk["what"] and brk["outcome"] == "failure"

    problems = chain_problems(path)
    assert len(problems) == 1 and "audit trail broken (seq 4)" in problems[0] and "acknowledge" in problems[0]
    report = verify(path)
    assert not report.ok and report.first_break is not None
    assert (report.first_break.line, report.first_break.seq, report.first_break.kind) == (3, 3, "edited")
    assert len(report.breaks) == 1 and len(report.recorded) == 1  # the chain goes on after the break

    acked = acknowledge(path, "alice", "INC-7: test edit by the vendor, file kept as evidence", "INC-7")
    assert [b["kind"] for b in acked] == ["edited"]
    assert not chain_problems(path) and not open_breaks(path)
    last = read_entries(path)[-1]
    assert last["event"] == "audit_chain_acknowledged" and last["operator"] == "alice" and last["ticket"] == "INC-7"
    report = verify(path)
    assert not report.ok and report.unacknowledged == 0  # still evidence, no longer news


def test_an_edit_under_a_running_writer_is_noticed_too(tmp_path: Path) -> None:
    """Same size, same inode: the head's mtime tells the running writer the file was touched."""
    path = tmp_path / "audit.jsonl"
    audit = write(path, 3)
    _edit_line(path, 2, '"n":2', '"n":9')
    audit.record("next")
    assert events(path)[-2:] == ["audit_chain_broken", "next"]


def test_an_edit_before_the_tail_is_flagged_as_a_modification(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = write(path, 3)
    _edit_line(path, 0, '"n":0', '"n":5')
    audit.record("next")
    brk = read_entries(path)[3]
    assert brk["event"] == "audit_chain_broken" and brk["kind"] == "modified"
    assert verify(path).first_break.line == 1  # type: ignore[union-attr]


def test_entries_cut_off_the_end_are_noticed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 5).close()
    path.write_text("\n".join(lines(path)[:3]) + "\n")
    assert any("seq 4–5 are missing" in p for p in chain_problems(path))
    AuditLog(path, "forwarder").record("forward")
    brk = read_entries(path)[3]
    assert brk["kind"] == "deleted" and "seq 4–5 are missing" in brk["what"] and brk["seq"] == 4
    assert not verify(path).ok  # the chain links again, but the recorded break keeps it broken


def test_an_emptied_or_deleted_log_is_not_mistaken_for_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2).close()
    path.write_text("")
    AuditLog(path, "test").record("after")
    assert events(path) == ["audit_chain_broken", "after"] and "emptied" in read_entries(path)[0]["what"]

    path.unlink()
    AuditLog(path, "test").record("again")
    first = read_entries(path)[0]
    assert first["kind"] == "deleted" and "deleted or replaced, not rotated" in first["what"]


def test_a_torn_last_line_gets_its_newline_and_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2).close()
    with open(path, "a") as f:
        f.write('{"time":"2026-11-28T')  # a crash in the middle of a write
    AuditLog(path, "test").record("after")
    text = lines(path)
    assert text[2] == '{"time":"2026-11-28T' and json.loads(text[3])["kind"] == "torn"
    report = verify(path)
    assert report.first_break is not None and (report.first_break.line, report.first_break.kind) == (3, "torn")
    assert len(report.breaks) == 1


# -- durability policy --------------------------------------------------------------------------------
def test_operator_actions_are_flushed_per_object_entries_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        flushed.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    audit = AuditLog(tmp_path / "audit.jsonl", "test")
    audit.record("receive", sop_instance_uid="1.2.3")
    assert flushed == []
    audit.record("queue_hold", operator="alice", reason="check")
    assert len(flushed) == 1


# -- Patient IDs --------------------------------------------------------------------------------------
def _cfg(tmp_path: Path, policy: str) -> Any:
    text = CONFIG.format(state=tmp_path / "state", log=tmp_path / "log", policy=policy)
    return parse_config_for(text, tmp_path / "router.yaml", "router.yaml")


def test_patient_id_follows_the_policy(tmp_path: Path) -> None:
    assert patient_field(_cfg(tmp_path, "omit"), "PID-1") == {}
    assert patient_field(_cfg(tmp_path, "include"), "PID-1") == {"patient_id": "PID-1"}
    hashed = _cfg(tmp_path, "hash")
    field = patient_field(hashed, "PID-1")
    assert set(field) == {"patient_id_hash"} and "PID-1" not in field["patient_id_hash"]
    assert field == patient_field(hashed, "PID-1") != patient_field(hashed, "PID-2")
    assert field["patient_id_hash"] == patient_hash(hashed.router.tls_dir, "PID-1")
    key = hashed.router.tls_dir / "audit-patient.key"  # beside the TLS keys: in every backup
    assert key.stat().st_mode & 0o777 == 0o640 and len(key.read_bytes()) == 32
    # Keyed: another appliance (another key) gives another hash, so guesses cannot be checked offline.
    assert patient_hash(tmp_path / "other", "PID-1") != field["patient_id_hash"]
    assert patient_field(hashed, None) == {} and patient_field(hashed, "") == {}


def test_threads_of_one_process_share_one_chain(tmp_path: Path) -> None:
    """The receiver records from pynetdicom's association threads through one AuditLog."""
    import threading

    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "receiver")

    def work(t: int) -> None:
        for n in range(100):
            audit.record("receive", t=t, n=n)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(path).ok and len(read_entries(path)) == 400


def test_a_large_last_entry_is_read_back_whole(tmp_path: Path) -> None:
    """An operator action naming 500 jobs is ~100 KB: the tail check reads back over several chunks."""
    path = tmp_path / "audit.jsonl"
    AuditLog(path, "cli").record(
        "queue_hold", operator="alice", jobs=[{"job": i, "study_uid": "1.2" * 40} for i in range(800)]
    )
    AuditLog(path, "receiver").record("receive")  # a fresh writer checks that tail
    assert path.stat().st_size > 100_000 and events(path) == ["queue_hold", "receive"] and verify(path).ok


# -- who, when, why: the callers' fields ---------------------------------------------------------------
def test_queue_actions_record_a_patient_id_filter_only_per_policy(tmp_path: Path) -> None:
    from appliance.router.operations import job_action
    from appliance.router.store import JobFilter, Store

    for policy in ("omit", "hash", "include"):
        cfg = _cfg(tmp_path / policy, policy)
        store = Store(tmp_path / policy / "queue.sqlite3")
        store.init()
        job_action(cfg, store, "hold", JobFilter(patient_id="PID-9", destination="PACS"), "alice", "wrong patient?")
        store.close()
        entry = read_entries(cfg.audit_path)[-1]
        assert entry["event"] == "queue_hold" and entry["operator"] == "alice" and entry["reason"] == "wrong patient?"
        assert entry["filter"]["destination"] == "PACS"
        if policy == "include":
            assert entry["filter"]["patient_id"] == "PID-9"
        else:
            assert "PID-9" not in cfg.audit_path.read_text()
        assert ("patient_id_hash" in entry["filter"]) == (policy == "hash")


def test_config_changes_name_the_operator_as_well_as_the_author(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.router.history import ChangeRequest, apply_config

    monkeypatch.setenv("SUDO_USER", "it-admin")
    live = tmp_path / "router.yaml"
    text = CONFIG.format(state=tmp_path / "state", log=tmp_path / "log", policy="omit")
    live.write_text(text)
    apply_config(live, text.replace("11112", "11113").encode(), ChangeRequest("jdoe", "new port", "ansible", "CHG-1"))
    apply_config(live, text.encode(), ChangeRequest("carol", "back", "console", "CHG-2"))
    entries = read_entries(tmp_path / "log" / "audit.jsonl")
    adopt, ansible, console = entries
    assert adopt["event"] == "config.adopt" and adopt["operator"] == "it-admin" and adopt["ticket"] == "CHG-1"
    assert (ansible["operator"], ansible["author"], ansible["ticket"], ansible["reason"]) == (
        "it-admin",
        "jdoe",
        "CHG-1",
        "new port",
    )
    assert (console["process"], console["operator"], console["author"]) == ("console", "carol", "carol")
