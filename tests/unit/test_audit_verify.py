"""`dicom-router audit verify`: each kind of tampering is named at the first broken entry (file, line, seq,
what), across rotated and compressed files; the command's output and exit codes; acknowledge, patient-hash."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.router.audit import AuditLog, read_entries, seal
from appliance.router.audit_verify import Report, verify
from appliance.router.cli import main

CONFIG = """\
router: {{ae_title: DICOM_ROUTER, port: 11112, state_dir: {root}/state, log_dir: {root}/log}}
nodes:
  PACS: {{ae_title: PACS, host: 10.0.0.2, port: 104, role: destination}}
routes: [{{name: all, to: [PACS]}}]
audit: {{patient_ids: hash}}
"""


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """Ten chained entries in one file."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test")
    for i in range(1, 11):
        audit.record("receive", n=i, sop_instance_uid=f"1.2.3.{i}")
    audit.close()
    return path


def rewrite(path: Path, change: Any) -> None:
    text = path.read_text().splitlines()
    change(text)
    path.write_text("\n".join(text) + "\n")


def first(report: Report) -> tuple[str, int, int | None, str]:
    b = report.first_break
    assert b is not None, report.as_dict()
    return b.file, b.line, b.seq, b.kind


def test_an_intact_trail_verifies(trail: Path) -> None:
    report = verify(trail)
    assert report.ok and report.entries == 10 and (report.first_seq, report.last_seq) == (1, 10)
    assert report.starts_at == "audit.jsonl line 1 (seq 1)" and not report.notes


def test_an_edited_entry_is_named(trail: Path) -> None:
    rewrite(trail, lambda t: t.__setitem__(3, t[3].replace('"n":4', '"n":40')))
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 4, 4, "edited") and len(report.breaks) == 1
    assert "content was changed" in report.breaks[0].message


def test_a_deleted_entry_is_named(trail: Path) -> None:
    rewrite(trail, lambda t: t.pop(3))
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 4, 5, "deleted") and "(seq 4)" in report.breaks[0].message
    assert len(report.breaks) == 1


def test_a_line_written_by_hand_is_named(trail: Path) -> None:
    rewrite(trail, lambda t: t.insert(3, '{"time":"2026-11-28T09:00:00.000Z","event":"receive","outcome":"success"}'))
    assert first(verify(trail)) == ("audit.jsonl", 4, None, "inserted")


def test_a_forged_entry_with_a_valid_hash_and_link_is_named(trail: Path) -> None:
    """Whoever knows the format can seal an entry that links to its predecessor; the next genuine entry
    still links past it."""
    entries = read_entries(trail)
    forged = {"time": entries[3]["time"], "event": "config.apply", "outcome": "success", "process": "cli",
              "seq": 4, "prev": entries[2]["hash"]}  # fmt: skip
    rewrite(trail, lambda t: t.insert(3, seal(forged).decode().rstrip("\n")))
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 4, 4, "inserted") and len(report.breaks) == 1


def test_an_entry_replaced_with_a_recomputed_hash_is_named(trail: Path) -> None:
    def replace(t: list[str]) -> None:
        e = json.loads(t[3])
        del e["hash"]
        e["n"] = 44
        t[3] = seal(e).decode().rstrip("\n")

    rewrite(trail, replace)
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 4, 4, "replaced") and len(report.breaks) == 1


def test_reordered_entries_are_named(trail: Path) -> None:
    rewrite(trail, lambda t: t.__setitem__(slice(3, 5), [t[4], t[3]]))
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 4, 5, "reordered") and len(report.breaks) == 1
    assert "comes before seq 4 (audit.jsonl line 5)" in report.breaks[0].message


def test_a_duplicated_entry_is_named(trail: Path) -> None:
    rewrite(trail, lambda t: t.insert(4, t[3]))
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 5, 4, "duplicated") and len(report.breaks) == 1


def test_entries_cut_off_the_end_are_named_from_the_lock_file(trail: Path) -> None:
    rewrite(trail, lambda t: t.__delitem__(slice(8, 10)))
    report = verify(trail)
    assert first(report) == ("audit.jsonl", 9, 9, "deleted") and "seq 9–10 are missing" in report.breaks[0].message


def test_a_torn_last_line_is_named(trail: Path) -> None:
    with open(trail, "a") as f:
        f.write('{"time":"2026')
    assert first(verify(trail))[1:] == (11, None, "torn")


def _three_files(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test")
    for day in ("20261125", "20261126"):
        for i in range(3):
            audit.record("receive", n=i)
        os.rename(path, tmp_path / f"audit.jsonl-{day}")
    for i in range(3):
        audit.record("receive", n=i)
    audit.close()
    old = tmp_path / "audit.jsonl-20261125"
    with open(old, "rb") as src, gzip.open(str(old) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    old.unlink()
    return path


def test_rotated_and_compressed_files_are_read_in_order(tmp_path: Path) -> None:
    path = _three_files(tmp_path)
    report = verify(path)
    assert report.ok and report.entries == 9
    assert [(f.name, f.first_seq, f.last_seq) for f in report.files] == [
        ("audit.jsonl-20261125.gz", 1, 3),
        ("audit.jsonl-20261126", 4, 6),
        ("audit.jsonl", 7, 9),
    ]
    from_middle = verify(path, "audit.jsonl-20261126")
    assert from_middle.ok and from_middle.entries == 6 and "starts at seq 4" in from_middle.notes[0]
    with pytest.raises(ValueError, match="no such file of the audit trail"):
        verify(path, "audit.jsonl-20261124")


def test_a_deleted_rotated_file_is_a_break_but_retention_is_not(tmp_path: Path) -> None:
    path = _three_files(tmp_path)
    (tmp_path / "audit.jsonl-20261125.gz").unlink()  # the oldest: what retention does
    report = verify(path)
    assert report.ok and "removed by the retention period" in report.notes[0]

    path = _three_files(tmp_path / "again")
    (path.parent / "audit.jsonl-20261126").unlink()  # one in the middle
    report = verify(path)
    assert first(report) == ("audit.jsonl", 1, 7, "deleted")
    assert "a whole rotated file may have been deleted" in report.breaks[0].message


# -- the commands -------------------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path: Path) -> Path:
    config = tmp_path / "router.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    audit = AuditLog(tmp_path / "log" / "audit.jsonl", "test")
    for i in range(4):
        audit.record("receive", n=i)
    audit.close()
    return config


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_command_output_and_exit_codes(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "verify", "--config", str(site))
    assert code == 0 and "INTACT" in out and "seq 1–4" in out

    log = site.parent / "log" / "audit.jsonl"
    rewrite(log, lambda t: t.__setitem__(1, t[1].replace('"n":1', '"n":2')))
    code, out, _ = run(capsys, "audit", "verify", "--config", str(site))
    assert code == 1
    assert "BROKEN: first broken entry at audit.jsonl line 2, seq 2: EDITED" in out and "What to do" in out
    code, out, _ = run(capsys, "audit", "verify", "--json", "--config", str(site))
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["first_break"]["line"] == 2 and doc["unacknowledged_breaks"] == 1

    code, _, err = run(capsys, "audit", "verify", "--from", "nonesuch", "--config", str(site))
    assert code == 2 and "no such file of the audit trail" in err


def test_acknowledge_and_patient_hash_commands(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = site.parent / "log" / "audit.jsonl"
    code, out, _ = run(capsys, "audit", "acknowledge", "--reason", "nothing", "--config", str(site))
    assert code == 0 and "nothing to acknowledge" in out

    rewrite(log, lambda t: t.__setitem__(3, t[3].replace('"n":3', '"n":4')))
    AuditLog(log, "receiver").record("receive", n=5)  # the writer notices the edited tail
    code, out, _ = run(
        capsys, "audit", "acknowledge", "--reason", "INC-9 tested tamper detection", "--ticket", "INC-9",
        "--operator", "bob", "--config", str(site),
    )  # fmt: skip
    assert code == 0 and "acknowledged 1 audit chain break(s)" in out
    last = read_entries(log)[-1]
    assert (last["event"], last["operator"], last["ticket"]) == ("audit_chain_acknowledged", "bob", "INC-9")

    code, out, err = run(capsys, "audit", "patient-hash", "PID-77", "--config", str(site))
    digest = out.strip()
    assert code == 0 and len(digest) == 32 and not err
    lookup = read_entries(log)[-1]
    assert lookup["event"] == "audit_patient_lookup" and lookup["patient_id_hash"] == digest
    assert "PID-77" not in log.read_text()


def test_a_damaged_compressed_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = _three_files(tmp_path)
    gz = tmp_path / "audit.jsonl-20261125.gz"
    gz.write_bytes(gz.read_bytes()[:-30])  # cut short: its end is missing
    report = verify(path)
    b = report.first_break
    assert b is not None and b.file == gz.name and b.kind == "damaged" and "cannot be read on" in b.message
