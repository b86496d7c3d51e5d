"""logrotate renames router.log and audit.jsonl; the router must write its next line to the new file
and lose none (the appliance's logrotate role relies on this instead of copy-truncate)."""

import json
import logging
import os

from appliance.router.audit import AuditLog, read_entries
from appliance.router.logsetup import setup_logging


def test_audit_log_follows_a_rename(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test")
    audit.record("first")
    os.rename(path, tmp_path / "audit.jsonl-20261128")  # what logrotate does
    audit.record("second")
    audit.record("third")
    audit.close()
    assert [e["event"] for e in read_entries(tmp_path / "audit.jsonl-20261128")] == ["first"]
    assert [e["event"] for e in read_entries(path)] == ["second", "third"]


def test_audit_log_recreated_when_deleted(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, "test")
    audit.record("first")
    path.unlink()
    audit.record("second")
    audit.close()
    # A deleted (not renamed) audit log is a break in the chain: recorded first, then the entry.
    assert [e["event"] for e in read_entries(path)] == ["audit_chain_broken", "second"]


def test_service_log_follows_a_rename(tmp_path):
    setup_logging("test", tmp_path)
    try:
        logging.getLogger("router.test").warning("before rotation")
        os.rename(tmp_path / "router.log", tmp_path / "router.log-20261128")
        logging.getLogger("router.test").warning("after rotation")
    finally:
        for h in list(logging.getLogger().handlers):
            h.close()
            logging.getLogger().removeHandler(h)
    old = [json.loads(x)["message"] for x in (tmp_path / "router.log-20261128").read_text().splitlines()]
    new = [json.loads(x)["message"] for x in (tmp_path / "router.log").read_text().splitlines()]
    assert old == ["before rotation"] and new == ["after rotation"]
