"""`dicom-router audit verify|acknowledge|patient-hash`: check the tamper-evident audit trail, clear a
break from `status` once a person has looked at it, and find a patient's entries under `patient_ids: hash`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, print_json
from .config import ConfigError, RouterConfig, load_config, load_state_locations


def _config(args: argparse.Namespace) -> RouterConfig:
    """The config for its paths; a config with problems still names the log directory (verify must work
    while someone fixes the file)."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        try:
            return load_state_locations(args.config)
        except ConfigError:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None


def cmd_verify(args: argparse.Namespace) -> int:
    from .audit_verify import render, verify

    audit_path = Path(args.dir) / "audit.jsonl" if args.dir else _config(args).audit_path
    if not audit_path.parent.is_dir():
        print(f"error: {audit_path.parent} is not a directory: no audit trail there", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = verify(audit_path, args.start)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot read the audit trail: {exc} — run as the router's user or root", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print_json(report.as_dict())
    else:
        print(render(report))
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_acknowledge(args: argparse.Namespace) -> int:
    from .audit import acknowledge, current_operator

    cfg = _config(args)
    if not args.reason.strip():
        print("error: --reason must say what was found (it goes into the audit trail)", file=sys.stderr)
        return EXIT_USAGE
    breaks = acknowledge(cfg.audit_path, args.operator or current_operator(), args.reason, args.ticket)
    if not breaks:
        print("no open audit chain breaks: nothing to acknowledge")
        return EXIT_OK
    print(f"acknowledged {len(breaks)} audit chain break(s); recorded as audit_chain_acknowledged:")
    for b in breaks:
        print(f"  seq {b.get('seq', '?')} ({b.get('time', '?')}): {b.get('what')}")
    print("`dicom-router audit verify` still lists them: the trail keeps the evidence")
    return EXIT_OK


def cmd_patient_hash(args: argparse.Namespace) -> int:
    from .audit import AuditLog, current_operator, patient_hash

    cfg = _config(args)
    try:
        digest = patient_hash(cfg.router.tls_dir, args.patient_id)
    except OSError as exc:
        print(f"error: cannot read the Patient ID key in {cfg.router.state_dir}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    # Looking a patient up is itself an access: on record, without the ID.
    AuditLog(cfg.audit_path, "cli").record("audit_patient_lookup", operator=current_operator(), patient_id_hash=digest)
    if cfg.audit.patient_ids != "hash":
        print(
            f"note: audit.patient_ids is '{cfg.audit.patient_ids}': new entries carry "
            + ("no Patient ID" if cfg.audit.patient_ids == "omit" else "the Patient ID in clear"),
            file=sys.stderr,
        )
    print(digest)
    return EXIT_OK


def add_audit_commands(sub: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("audit", help="verify the tamper-evident audit trail; acknowledge a break")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    a = asub.add_parser(
        "verify",
        help="check every entry's hash and link across the rotated files and audit.jsonl; name the first broken "
        "entry (exit 0 intact, 1 broken)",
    )
    a.add_argument("--from", dest="start", metavar="FILE", help="start at this rotated file (older ones not read)")
    a.add_argument("--dir", help="verify a copy of the trail in DIR instead of the router's log directory")
    a.add_argument("--json", action="store_true", help="machine-readable report")
    add_config(a)
    a.set_defaults(func=cmd_verify)

    a = asub.add_parser(
        "acknowledge", help="after investigating a break: record who looked and why, and clear it from status"
    )
    a.add_argument("--reason", required=True, help="what was found (goes into the audit trail)")
    a.add_argument("--ticket", help="incident / change ticket")
    a.add_argument("--operator", help="who (default: the login user)")
    add_config(a)
    a.set_defaults(func=cmd_acknowledge)

    a = asub.add_parser(
        "patient-hash", help="the keyed hash a Patient ID has in the trail under audit.patient_ids: hash (to grep)"
    )
    a.add_argument("patient_id")
    add_config(a)
    a.set_defaults(func=cmd_patient_hash)
