"""`dicom-router rules test`: a dry run of the routing rules on files, before a change goes live."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, load_or_exit, print_json


def _at(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%H:%M"):
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if fmt == "%H:%M":  # today at that time
            return datetime.now().replace(hour=parsed.hour, minute=parsed.minute, second=0, microsecond=0)
        return parsed
    raise argparse.ArgumentTypeError(f"'{text}' is not a time like '2026-11-28 22:30' or '22:30'")


def cmd_test(args: argparse.Namespace) -> int:
    from .rules_dryrun import dry_run, render

    cfg = load_or_exit(args)
    if args.source is not None and args.source not in cfg.nodes:
        known = ", ".join(sorted(n for n, node in cfg.nodes.items() if node.is_source)) or "none"
        print(f"error: --source '{args.source}' is not a node in {args.config} (sources: {known})", file=sys.stderr)
        return EXIT_USAGE
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    run = dry_run(cfg, paths, source_node=args.source, calling_ae=args.calling_ae, at=args.at)
    if args.json:
        print_json(
            {
                "source_node": run.source_node,
                "calling_ae": run.calling_ae,
                "at": run.at.isoformat(timespec="minutes"),
                "objects": [o.as_dict() for o in run.objects],
            }
        )
    else:
        print(render(run, cfg, verbose=not args.quiet))
    if not run.objects:
        print("error: no files found", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def add_rules_commands(sub: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("rules", help="dry-run the routing rules on DICOM files")
    rsub = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    r = rsub.add_parser(
        "test",
        help="for each file: which routes match, where it would go (priority, morph profiles, hold) and why "
        "the other routes do not match; nothing is sent",
    )
    r.add_argument("paths", nargs="+", metavar="FILE|DIR")
    r.add_argument("--source", metavar="NODE", help="evaluate as if this source node sent the files")
    r.add_argument("--calling-ae", dest="calling_ae", metavar="AE", help="… or as if this calling AE title sent them")
    r.add_argument("--at", type=_at, metavar="TIME", help="evaluate time windows at 'YYYY-MM-DD HH:MM' (default: now)")
    r.add_argument("--quiet", action="store_true", help="do not list the routes that matched, only the misses")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    add_config(r)
    r.set_defaults(func=cmd_test)
