"""`dicom-router alerts test|ls`: prove alert delivery works, and list what is active."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .cli_common import EXIT_FAIL, EXIT_OK, load_or_exit, print_json


def cmd_test(args: argparse.Namespace) -> int:
    """One test notification on every configured channel, sent now (not through the rate limit or outbox)."""
    from .alert_delivery import send_test
    from .audit import AuditLog, current_operator

    cfg = load_or_exit(args)
    results = send_test(cfg)
    AuditLog(cfg.audit_path, "cli").record(
        "alerts_test",
        "success" if all(err is None for _, err in results) else "failure",
        operator=current_operator(),
        channels={name: err or "sent" for name, err in results},
    )
    if args.json:
        print_json([{"channel": name, "ok": err is None, "error": err} for name, err in results])
    elif not results:
        print("no alert channel is configured (alerts.syslog.enabled is false and no smtp/webhook)")
    else:
        for name, err in results:
            print(f"{name:<8} {'sent' if err is None else 'FAILED: ' + err}")
    if not results or any(err is not None for _, err in results):
        if not args.json:
            print(
                "a channel that failed here also fails for real alerts: fix it (see docs/monitoring.md)",
                file=sys.stderr,
            )
        return EXIT_FAIL
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    from .alerts import alert_report
    from .status import short_age

    cfg = load_or_exit(args)
    report = alert_report(cfg)
    if args.json:
        print_json(report)
        return EXIT_OK
    if not report["active"]:
        print("no alert active")
    for a in report["active"]:
        print(f"{a['level'].upper():<7} for {short_age(a['age_seconds']):>6}  {a['message']}")
    for name, ch in sorted(report["channels"].items()):
        state = f"FAILING: {ch['last_error']}" if ch["failing_since"] else "ok"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(ch["counts"].items())) or "nothing sent yet"
        print(f"channel {name}: {state}; {ch['waiting']} waiting; {counts}")
    return EXIT_OK


def add_alerts_commands(sub: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("alerts", help="alert delivery: send a test notification, list active alerts")
    asub = p.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    a = asub.add_parser("test", help="send a test notification on every configured channel now (exit 1 if one fails)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    add_config(a)
    a.set_defaults(func=cmd_test)
    a = asub.add_parser("ls", help="active alerts and each channel's delivery state (as the scheduler last wrote)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    add_config(a)
    a.set_defaults(func=cmd_ls)
