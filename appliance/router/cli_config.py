"""`dicom-router config …`: check, apply, status, history, show, diff, rollback.

The commands are thin: every change goes through `history.apply_config`, the one path the console and
Ansible use too. Exit codes: 0 done (or nothing to do), 1 invalid or failed, 2 usage, 4 refused because
the live config drifted from --expect-parent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .audit import current_operator
from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, print_json
from .config import ConfigError, load_config, load_state_locations
from .history import (
    SOURCES,
    ApplyError,
    ApplyResult,
    ChangeRequest,
    History,
    Version,
    apply_config,
    live_state,
    rollback_target,
    unified_diff,
)

EXIT_DRIFT = 4


def _history(args: argparse.Namespace) -> History:
    try:
        cfg = load_state_locations(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return History(cfg.history_dir)


def cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"{path}: INVALID — {len(exc.problems)} problem(s):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_FAIL
    print(
        f"{path}: OK — router {cfg.router.ae_title} on {cfg.router.bind}:{cfg.router.port}, "
        f"{len(cfg.nodes)} node(s), {len(cfg.routes)} route(s)"
    )
    return EXIT_OK


def _report(result: ApplyResult, args: argparse.Namespace) -> int:
    if args.json:
        print_json(result.as_dict())
        return EXIT_OK
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if result.diff:
        sys.stdout.write(result.diff)
    print(result.message)
    return EXIT_OK


def _refused(exc: ApplyError, args: argparse.Namespace) -> int:
    code = EXIT_DRIFT if exc.drift else EXIT_FAIL
    if getattr(args, "json", False):
        print_json(
            {
                "outcome": "refused" if exc.drift else "failed",
                "changed": False,
                "message": str(exc),
                "problems": exc.problems,
                "drift": exc.drift,
            }
        )
    else:
        print(f"error: {exc}", file=sys.stderr)
    return code


def _request(args: argparse.Namespace, **extra: Any) -> ChangeRequest:
    return ChangeRequest(
        author=args.author or current_operator(),
        reason=args.reason,
        source=extra.pop("source", getattr(args, "source", "cli")),
        ticket=args.ticket,
        expect_parent=getattr(args, "expect_parent", None),
        force=getattr(args, "force", False),
        **extra,
    )


def cmd_apply(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        content = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = apply_config(
            Path(args.config), content, _request(args), check=args.check, label=str(path), confirm_timeout=args.wait
        )
    except ApplyError as exc:
        return _refused(exc, args)
    return _report(result, args)


def cmd_rollback(args: argparse.Namespace) -> int:
    history = _history(args)
    try:
        state = live_state(Path(args.config))
        target = history.get(args.version) if args.version is not None else rollback_target(history, state.sha256)
        if target.outcome != "applied":
            raise ApplyError(f"version {target.version} was never applied ({target.outcome}); pick an applied one")
        content = history.content(target.version)
        req = _request(args, rollback_of=target.version, source="rollback")
        result = apply_config(
            Path(args.config),
            content,
            req,
            check=args.check,
            label=f"version {target.version}",
            confirm_timeout=args.wait,
        )
    except ApplyError as exc:
        return _refused(exc, args)
    if not args.json and result.outcome == "applied":
        result.message = f"rolled back to the content of version {target.version}: {result.message}"
    return _report(result, args)


def _version_row(v: Version, live_sha: str | None) -> dict[str, Any]:
    row = {k: getattr(v, k) for k in Version.__dataclass_fields__}
    row["live"] = v.sha256 == live_sha and v.outcome == "applied"
    return row


def cmd_history(args: argparse.Namespace) -> int:
    history = _history(args)
    state = live_state(Path(args.config))
    versions = history.versions()[-args.limit :] if args.limit else history.versions()
    if args.json:
        print_json([_version_row(v, state.sha256) for v in versions])
        return EXIT_OK
    if not versions:
        print("no versions yet: the first `dicom-router config apply` records the live file and the change")
        return EXIT_OK
    live_v = state.version.version if state.version and not state.drifted else None
    print(f"  {'VER':>4}  {'TIME (UTC)':<20} {'OUTCOME':<8} {'SOURCE':<8} {'AUTHOR':<12} {'TICKET':<10} SHA256  REASON")
    for v in versions:
        mark = "*" if v.version == live_v else " "
        extra = f" (rollback to {v.rollback_of})" if v.rollback_of else ""
        extra += " [FORCED over drift]" if v.forced else ""
        extra += f" — {v.error.splitlines()[0]}" if v.error else ""
        print(
            f"{mark} {v.version:>4}  {v.time:<20} {v.outcome:<8} {v.source:<8} {v.author[:12]:<12} "
            f"{(v.ticket or '-')[:10]:<10} {v.sha256[:7]} {v.reason}{extra}"
        )
    if state.drifted:
        print("! the live file differs from every applied version: it was edited outside `config apply`")
    return EXIT_OK


def _content_of(history: History, ref: str, config_path: Path) -> tuple[bytes, str]:
    if ref == "live":
        try:
            return config_path.read_bytes(), f"live {config_path}"
        except FileNotFoundError:
            raise ApplyError(f"there is no live config at {config_path}") from None
    try:
        n = int(ref)
    except ValueError:
        raise ApplyError(f"'{ref}' is not a version number or 'live'") from None
    return history.content(n), f"version {n}"


def cmd_show(args: argparse.Namespace) -> int:
    try:
        content, _ = _content_of(_history(args), args.version, Path(args.config))
    except ApplyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    sys.stdout.write(content.decode("utf-8", "replace"))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    history = _history(args)
    try:
        a, a_label = _content_of(history, args.v1, Path(args.config))
        b, b_label = _content_of(history, args.v2, Path(args.config))
    except ApplyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    diff = unified_diff(a, b, a_label, b_label)
    sys.stdout.write(diff or f"{a_label} and {b_label} are identical\n")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = live_state(Path(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    v = state.version
    report = {
        "config": str(state.path),
        "live_sha256": state.sha256,
        "version": v.version if v and not state.drifted else None,
        "last_applied": None if v is None else {k: getattr(v, k) for k in Version.__dataclass_fields__},
        "drifted": state.drifted,
        "daemon_pid": state.daemon_pid,
        "running": state.running,
        "daemon_runs_live": state.daemon_runs_live,
    }
    if args.json:
        print_json(report)
        return EXIT_OK
    if state.sha256 is None:
        print(f"no live config at {state.path}")
    elif v is None:
        print(f"live config {state.path} ({state.sha256[:12]}) has no history yet: not applied through `config apply`")
    elif state.drifted:
        print(
            f"DRIFTED: live config {state.path} ({state.sha256[:12]}) was edited outside `config apply`; "
            f"the last applied is {v.describe()} ({v.sha256[:12]}). Record or undo the edit: "
            "`dicom-router config apply` the file you want, or `config rollback`"
        )
    else:
        print(f"live: {v.describe()}, sha256 {v.sha256[:12]}")
    if state.daemon_pid is None:
        print("router: not running")
    elif state.daemon_runs_live:
        print(f"router: running this version (pid {state.daemon_pid})")
    else:
        old = {n: (s or "?")[:12] for n, s in state.running.items()}
        print(f"router: pid {state.daemon_pid} runs another version or is reloading: {old or 'no heartbeats'}")
    return EXIT_OK


def _change_args(p: argparse.ArgumentParser, *, sources: bool = True) -> None:
    p.add_argument("--author", help="who makes the change (default: the login user)")
    p.add_argument("--ticket", help="change ticket / incident number")
    p.add_argument("--reason", required=True, help="why (kept in the history and the audit trail)")
    if sources:
        p.add_argument("--source", choices=[s for s in SOURCES if s in ("cli", "console", "ansible")], default="cli")
    p.add_argument("--check", action="store_true", help="validate and show the diff; change nothing")
    p.add_argument(
        "--wait", type=float, metavar="SECONDS", help="how long the router may take to confirm (default: drain + 30 s)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable result (for Ansible)")


def add_config_commands(sub: Any, add_config: Any) -> None:
    p = sub.add_parser("config", help="check, apply, roll back and inspect the configuration and its history")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate FILE and print every problem")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)

    c = csub.add_parser("apply", help="validate FILE, record it in the history, make it live and reload the router")
    c.add_argument("file")
    _change_args(c)
    c.add_argument("--expect-parent", metavar="SHA256", help="refuse if the live config is not this version")
    c.add_argument("--force", action="store_true", help="apply even though the live config drifted")
    add_config(c)
    c.set_defaults(func=cmd_apply)

    c = csub.add_parser("rollback", help="make an earlier version live again (recorded as a new version)")
    c.add_argument("version", nargs="?", type=int, help="version number (default: the one live before the current one)")
    _change_args(c, sources=False)
    add_config(c)
    c.set_defaults(func=cmd_rollback)

    c = csub.add_parser("status", help="the live version, who applied it, and whether it drifted")
    c.add_argument("--json", action="store_true")
    add_config(c)
    c.set_defaults(func=cmd_status)

    c = csub.add_parser("history", help="every version: who, when, why, outcome")
    c.add_argument("--limit", type=int, default=0, help="only the newest N")
    c.add_argument("--json", action="store_true")
    add_config(c)
    c.set_defaults(func=cmd_history)

    c = csub.add_parser("show", help="print a version's content (or 'live')")
    c.add_argument("version")
    add_config(c)
    c.set_defaults(func=cmd_show)

    c = csub.add_parser("diff", help="unified diff between two versions (a number or 'live')")
    c.add_argument("v1")
    c.add_argument("v2", nargs="?", default="live")
    add_config(c)
    c.set_defaults(func=cmd_diff)
