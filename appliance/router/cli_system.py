"""`dicom-router system apply`: make router.yaml's `appliance:` section (network, NTP, firewall opening) real
on this box. Run as root, by dicom-router-system.service whenever router.yaml changes.

Exit codes: 0 every step done or already right (or no `appliance:` section: nothing to do), 1 a step failed
(the others still ran), 2 the config cannot be used (nothing touched).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import system_apply
from .cli_common import EXIT_FAIL, EXIT_OK, load_or_exit, print_json
from .system_apply import SystemApply, Targets

MARK = {"changed": "changed  ", "removed": "removed  ", "unchanged": "unchanged", "failed": "FAILED   "}


def cmd_system_apply(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args)
    targets = Targets(**{k: Path(v) for k, v in (("network", args.network_file), ("ntp", args.ntp_file),
                                                  ("firewall", args.firewall_file)) if v})  # fmt: skip
    results = SystemApply(cfg, Path(args.config), targets, system_apply.run_command).apply()
    failed = any(r.outcome == "failed" for r in results)
    if args.json:
        print_json({"managed": cfg.appliance is not None, "steps": [r.as_dict() for r in results]})
    elif cfg.appliance is None:
        print(f"{args.config} has no appliance: section: network, NTP and firewall are managed elsewhere; nothing done")
    else:
        for r in results:
            print(
                f"{r.step:<9} {MARK[r.outcome]} {r.path}: {r.message}",
                file=sys.stderr if r.outcome == "failed" else sys.stdout,
            )
    return EXIT_FAIL if failed else EXIT_OK


def add_system_commands(sub: Any, add_config: Any) -> None:
    p = sub.add_parser("system", help="apply router.yaml's appliance: section (network, NTP, firewall) as root")
    ssub = p.add_subparsers(dest="system_command", required=True, metavar="ACTION")
    c = ssub.add_parser("apply", help="write the network, NTP and firewall files and reload what uses them")
    c.add_argument("--json", action="store_true")
    # Other locations, for tests and for trying it out on a workstation.
    c.add_argument("--network-file", help=argparse.SUPPRESS)
    c.add_argument("--ntp-file", help=argparse.SUPPRESS)
    c.add_argument("--firewall-file", help=argparse.SUPPRESS)
    add_config(c)
    c.set_defaults(func=cmd_system_apply)
