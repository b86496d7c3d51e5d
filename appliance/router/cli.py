"""`dicom-router`: the one command surface (daemon, tests of peers, status, queue actions, config check).

Every subcommand takes --config (default /etc/dicom-router/router.yaml) and finds the state through it,
so all of them work while the daemon runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_alerts import add_alerts_commands
from .cli_audit import add_audit_commands
from .cli_backup import add_backup_commands
from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, load_or_exit, print_json
from .cli_config import add_config_commands
from .cli_rules import add_rules_commands
from .cli_system import add_system_commands
from .cli_tls import add_tls_commands
from .config import DEFAULT_CONFIG_PATH, ConfigError, RouterConfig, load_config
from .conformance import add_conformance_command

if TYPE_CHECKING:  # the CLI imports pynetdicom and SQLite code only for the commands that need them
    from .scu import Peer
    from .store import Job, JobFilter, Store


def _load_for_state(args: argparse.Namespace) -> RouterConfig:
    """Like _load, but a config with problems still leads to the queue (with a warning): status and queue
    actions must work while the router runs on its previous config and someone fixes the file."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        from .config import load_state_locations

        try:
            cfg = load_state_locations(args.config)
        except ConfigError:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        print(
            f"warning: {args.config} has {len(exc.problems)} problem(s) (run `dicom-router config check` on it); "
            f"showing the queue in {cfg.router.state_dir} without node and route details",
            file=sys.stderr,
        )
        return cfg


def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 90s, 30m, 2h or 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# -- serve / internal --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    return Supervisor(Path(args.config)).run()


def cmd_run_child(args: argparse.Namespace) -> int:
    from .supervisor import run_child

    return run_child(args.process, Path(args.config))


# -- echo / send -------------------------------------------------------------------------------------
def _peer(cfg: RouterConfig | None, target: str) -> Peer:
    from .scu import Peer

    if cfg is not None and target in cfg.nodes:
        return Peer.from_node(target, cfg.nodes[target], cfg)
    return Peer.parse(target)


def _optional_config(args: argparse.Namespace) -> RouterConfig | None:
    path = Path(args.config)
    if not path.exists() and args.config == str(DEFAULT_CONFIG_PATH):
        return None
    return load_or_exit(args)


def _peer_and_own_ae(args: argparse.Namespace, target: str) -> tuple[Peer, str]:
    """The peer to talk to (a node name or AE@HOST:PORT) and the AE title we call it with."""
    cfg = _optional_config(args)
    try:
        peer = _peer(cfg, target)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return peer, args.calling_ae or (cfg.router.ae_title if cfg else "DICOM_ROUTER")


def cmd_echo(args: argparse.Namespace) -> int:
    from .scu import echo

    peer, own = _peer_and_own_ae(args, args.target)
    result = echo(own, peer)
    if args.json:
        print_json({"ok": result.ok, "seconds": round(result.seconds, 4), "message": result.message})
    else:
        print(("OK: " if result.ok else "FAILED: ") + result.message)
    return EXIT_OK if result.ok else EXIT_FAIL


def cmd_send(args: argparse.Namespace) -> int:
    from .sender import send_paths

    peer, own = _peer_and_own_ae(args, args.to)
    report = send_paths(own, peer, [Path(p) for p in args.paths])
    if args.json:
        print_json(report.as_dict())
    else:
        print(report.summary())
        for line in report.failures[:50]:
            print(f"  {line}")
    return EXIT_OK if report.ok else EXIT_FAIL


# -- status ------------------------------------------------------------------------------------------
def _store(cfg: RouterConfig) -> Store:
    from .store import Store

    if not cfg.db_path.exists():
        print(
            f"error: no queue database at {cfg.db_path} — the router has not run with this config yet",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_FAIL)
    store = Store(cfg.db_path)
    store.init()  # brings a database from an older release up to this schema (idempotent, quick)
    return store


def cmd_status(args: argparse.Namespace) -> int:
    from .status import collect, render

    cfg = _load_for_state(args)
    report = collect(cfg, _store(cfg), config_path=Path(args.config))
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK


# -- queue -------------------------------------------------------------------------------------------
def _filter(args: argparse.Namespace) -> JobFilter:
    from .store import JobFilter

    states = [s.strip() for s in (args.state or "").split(",") if s.strip()]
    return JobFilter(
        ids=list(getattr(args, "ids", None) or []),
        destination=args.destination,
        states=states,
        study_uid=args.study,
        sop_instance_uid=args.sop,
        accession=args.accession,
        patient_id=args.patient_id,
        older_than_seconds=args.older_than,
    )


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_queue_ls(args: argparse.Namespace) -> int:
    from .store import AWAITING_COMMITMENT, UNROUTED, JobState

    cfg = _load_for_state(args)
    store = _store(cfg)
    if args.state == UNROUTED:
        rows = store.list_unrouted(limit=args.limit, offset=args.offset)
        if args.json:
            print_json(rows)
        else:
            print(f"{len(rows)} unrouted object(s) (matched no route; kept on disk):")
            for r in rows:
                print(
                    f"  instance {r['id']}  {r['modality'] or '-':<4} from {r['calling_ae']}  "
                    f"study {r['study_uid']}  received {_fmt_time(r['received_at'])}"
                )
        return EXIT_OK
    valid = {s.value for s in JobState} | {UNROUTED, AWAITING_COMMITMENT}
    flt = _filter(args)
    bad = [s for s in flt.states if s not in valid]
    if bad:
        print(f"error: unknown state {', '.join(bad)}: use {', '.join(sorted(valid))}", file=sys.stderr)
        return EXIT_USAGE
    total = store.count_jobs(flt)
    jobs = store.list_jobs(flt, limit=args.limit, offset=args.offset)
    if args.json:
        print_json({"total": total, "jobs": [j.as_dict() for j in jobs]})
        return EXIT_OK
    print(f"{total} job(s) match; showing {len(jobs)} from {args.offset}")
    print(
        f"  {'JOB':>7} {'STATE':<9} {'DESTINATION':<14} {'TRIES':>5} {'MOD':<4} {'ACCESSION':<14} "
        f"{'RECEIVED':<19}  LAST ERROR / WHY"
    )
    for j in jobs:
        err = (j.last_error or _why(store, j.id, j.state) or _awaiting_commitment(j) or "")[:60]
        print(
            f"  {j.id:>7} {j.state:<9} {j.destination:<14} {j.attempts:>5} {j.modality or '-':<4} "
            f"{(j.accession or '-'):<14} {_fmt_time(j.received_at):<19}  {err}"
        )
    return EXIT_OK


def _awaiting_commitment(job: Job) -> str | None:
    if not job.awaiting_commit:
        return None
    if job.commit_tx:
        return f"awaiting storage commitment report (transaction {job.commit_tx})"
    return "sent; storage commitment not yet requested"


def _why(store: Store, job_id: int, state: str) -> str | None:
    """For a job that is not sending by design (held by a route or a UID conflict, skipped as a duplicate,
    waiting for its study): the reason, from its latest event."""
    if state not in ("held", "skipped", "waiting"):
        return None
    events = store.job_events(job_id)
    return str(events[-1].get("detail") or "") if events else None


def cmd_queue_show(args: argparse.Namespace) -> int:
    cfg = _load_for_state(args)
    store = _store(cfg)
    job = store.get_job(args.id)
    if job is None:
        print(f"error: no job {args.id}", file=sys.stderr)
        return EXIT_FAIL
    events = store.job_events(job.id)
    if args.json:
        print_json({"job": job.as_dict(), "events": events})
        return EXIT_OK
    d = job.as_dict()
    for k in (
        "id",
        "state",
        "destination",
        "route",
        "priority",
        "attempts",
        "last_status",
        "last_error",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax",
        "study_uid",
        "accession",
        "patient_id",
        "modality",
        "calling_ae",
        "size_bytes",
        "spool_key",
    ):
        v = d[k]
        if k == "last_status" and v is not None:
            from .dicom_status import describe

            v = describe(v)
        print(f"  {k:<17} {v if v is not None else '-'}")
    if job.awaiting_commit:
        print(f"  {'commitment':<17} {_awaiting_commitment(job)}")
    for k in ("received_at", "created_at", "next_attempt_at", "updated_at", "done_at"):
        print(f"  {k:<17} {_fmt_time(d[k])}")
    print("  history:")
    for e in events:
        who = f" by {e['actor']}" if e["actor"] else ""
        st = f" status 0x{e['status']:04X}" if e["status"] is not None else ""
        print(f"    {_fmt_time(e['at'])}  {e['event']}{who}{st}  {e['detail'] or ''}")
    return EXIT_OK


def cmd_queue_action(args: argparse.Namespace) -> int:
    from .audit import current_operator
    from .operations import OperationError, job_action, reroute

    cfg = _load_for_state(args) if args.action != "reroute" else load_or_exit(args)
    operator = args.operator or current_operator()
    try:
        if args.action == "reroute":
            out = reroute(cfg, _store(cfg), _filter(args), args.to, operator, args.reason, allow_all=args.all)
        else:
            out = job_action(cfg, _store(cfg), args.action, _filter(args), operator, args.reason, allow_all=args.all)
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json({"action": out.action, "changed": out.changed, "skipped": out.skipped, "operator": operator})
    else:
        print(out.message() + (f"; {out.detail['new_jobs']} new job(s) for {args.to}" if out.detail else ""))
    return EXIT_OK


def cmd_queue_pause(args: argparse.Namespace) -> int:
    from .audit import current_operator
    from .operations import OperationError, set_paused

    cfg = load_or_exit(args)
    paused = args.action == "pause"
    try:
        out = set_paused(cfg, _store(cfg), args.destination, paused, args.operator or current_operator(), args.reason)
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    state = "paused: nothing is sent to it until `queue resume`" if paused else "resumed"
    print(f"{args.destination} {state}" + ("" if out.changed else " (it already was)"))
    return EXIT_OK


def cmd_queue_route(args: argparse.Namespace) -> int:
    from .audit import current_operator
    from .operations import OperationError, route_unrouted

    cfg = load_or_exit(args)
    if not args.instance_ids and not args.all:
        print("error: name unrouted instances by id (see `queue ls --state unrouted`), or give --all", file=sys.stderr)
        return EXIT_USAGE
    operator = args.operator or current_operator()
    try:
        out = route_unrouted(cfg, _store(cfg), args.instance_ids or None, args.to, args.priority, operator, args.reason)
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json({"action": "route", "instances": out.changed, "destinations": args.to, "operator": operator})
    else:
        print(f"route: {out.changed} unrouted object(s) queued for {', '.join(args.to)}")
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    # The console lives in appliance.tui (Textual); the router package itself never imports Textual.
    import importlib

    from .audit import current_operator

    console = importlib.import_module("appliance.tui.app")
    return int(console.run_console(Path(args.config), args.operator or current_operator()))


# -- parser ------------------------------------------------------------------------------------------
def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="router.yaml (default: %(default)s)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--destination", help="destination node name")
    p.add_argument(
        "--state",
        help="job state(s), comma-separated: queued,sending,waiting,done,committed,failed,held,skipped,cancelled, "
        "awaiting-commitment (done, storage commitment report not yet in) (or unrouted with queue ls)",
    )
    p.add_argument("--study", help="Study Instance UID")
    p.add_argument("--sop", help="SOP Instance UID")
    p.add_argument("--accession", help="Accession Number")
    p.add_argument("--patient-id", dest="patient_id", help="Patient ID")
    p.add_argument("--older-than", dest="older_than", type=_duration, help="received longer ago than 30m, 2h, 7d…")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-router", description="DICOM store-and-forward router")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the router daemon (receiver + forwarder + scheduler)")
    _add_config(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("_run", help=argparse.SUPPRESS)
    p.add_argument("process", choices=["receiver", "forwarder", "scheduler"])
    _add_config(p)
    p.set_defaults(func=cmd_run_child)

    add_config_commands(sub, _add_config)
    add_backup_commands(sub, _add_config)
    add_rules_commands(sub, _add_config)
    add_audit_commands(sub, _add_config)
    add_alerts_commands(sub, _add_config)
    add_conformance_command(sub)
    add_tls_commands(sub, _add_config)
    add_system_commands(sub, _add_config)

    p = sub.add_parser("echo", help="C-ECHO a configured node or AE@HOST:PORT")
    p.add_argument("target")
    p.add_argument("--calling-ae", help="our AE title for this echo (default: the router's)")
    p.add_argument("--json", action="store_true")
    _add_config(p)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="C-STORE files or directories to a node or AE@HOST:PORT")
    p.add_argument("paths", nargs="+")
    p.add_argument("--to", required=True)
    p.add_argument("--calling-ae", help="our AE title for this send (default: the router's)")
    p.add_argument("--json", action="store_true")
    _add_config(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("status", help="health, backlog per destination, failures, disk")
    p.add_argument("--json", action="store_true")
    _add_config(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("console", help="the on-call console (Textual TUI)")
    p.add_argument("--operator", help="your name in the audit trail (default: the login user)")
    _add_config(p)
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("queue", help="inspect and act on jobs")
    qsub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    q = qsub.add_parser("ls", help="list jobs (or --state unrouted for objects that matched no route)")
    _add_filters(q)
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--offset", type=int, default=0)
    _add_config(q)
    q.set_defaults(func=cmd_queue_ls)
    q = qsub.add_parser("show", help="one job with its full history")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    _add_config(q)
    q.set_defaults(func=cmd_queue_show)
    for action, text in (
        ("retry", "send failed (or backing-off) jobs again now; skipped duplicates are sent anyway"),
        ("hold", "stop sending jobs until released"),
        ("release", "let held jobs be sent"),
        ("cancel", "never send these jobs (the object is kept until no job needs it)"),
    ):
        q = qsub.add_parser(action, help=text)
        q.add_argument("ids", nargs="*", type=int, help="job ids")
        _add_filters(q)
        q.add_argument("--all", action="store_true", help="act on every job the filter matches, even with no filter")
        q.add_argument("--reason", default="", help="why (recorded in the audit trail)")
        q.add_argument("--operator", help="who (default: the login user)")
        _add_config(q)
        q.set_defaults(func=cmd_queue_action, action=action, to=None)
    q = qsub.add_parser("reroute", help="send unsent jobs (queued, failed, held) to another destination instead")
    q.add_argument("ids", nargs="*", type=int, help="job ids")
    q.add_argument("--to", required=True, metavar="DEST", help="the destination node to send them to")
    _add_filters(q)
    q.add_argument("--all", action="store_true", help="act on every job the filter matches, even with no filter")
    q.add_argument("--reason", default="", help="why (recorded in the audit trail)")
    q.add_argument("--operator", help="who (default: the login user)")
    _add_config(q)
    q.set_defaults(func=cmd_queue_action, action="reroute")
    for action, text in (
        ("pause", "stop sending to a destination (jobs wait; nothing is lost)"),
        ("resume", "send to a paused destination again"),
    ):
        q = qsub.add_parser(action, help=text)
        q.add_argument("destination")
        q.add_argument("--reason", default="", help="why (recorded in the audit trail)")
        q.add_argument("--operator", help="who (default: the login user)")
        _add_config(q)
        q.set_defaults(func=cmd_queue_pause, action=action)
    q = qsub.add_parser("route", help="send unrouted objects (matched no route) to destinations")
    q.add_argument("instance_ids", nargs="*", type=int, help="instance ids from `queue ls --state unrouted`")
    q.add_argument("--to", nargs="+", required=True, metavar="DEST", help="destination node(s)")
    q.add_argument("--all", action="store_true", help="every unrouted object")
    q.add_argument("--priority", choices=["stat", "routine", "bulk"], default="routine")
    q.add_argument("--reason", default="", help="why (recorded in the audit trail)")
    q.add_argument("--operator", help="who (default: the login user)")
    q.add_argument("--json", action="store_true")
    _add_config(q)
    q.set_defaults(func=cmd_queue_route)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Spooled objects are PHI: nothing the router writes is world-readable. Group access stays, so a
    # console operator in the router's group and the service can share the queue and the history.
    os.umask(0o007)
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
