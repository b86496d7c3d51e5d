"""`dicom-router backup …`: create, list, verify, restore, keygen.

Exit codes: 0 done, 1 failed or refused (wrong passphrase, damaged bundle, unconfirmed restore), 2 usage,
3 restore done except the queue (the router was running).

Where the passphrase or key comes from, first match wins: --passphrase-file / --key-file, then the config's
backup.passphrase_file / backup.key_file, then a prompt when stdin is a terminal (twice on create).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import bundle_crypto as bc
from .audit import AuditLog, current_operator
from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, load_or_exit, print_json
from .config import DEFAULT_CONFIG_PATH, ConfigError, RouterConfig, load_config, load_state_locations

EXIT_PARTIAL = 3
MIN_PASSPHRASE = 8


def _error(message: str, code: int = EXIT_FAIL) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# -- secrets -----------------------------------------------------------------------------------------
def _warn_loose(path: Path) -> None:
    if bc.loosely_readable(path):
        print(
            f"warning: {path} is readable by group or others: chmod 600 {path} "
            "(or root-owned 0640 with the router's group, as the backup role deploys it)",
            file=sys.stderr,
        )


def resolve_secret(args: argparse.Namespace, cfg: RouterConfig | None, *, create: bool) -> bc.Secret:
    """The passphrase or key to use (see the module doc for the order). Raises bc.SecretError."""
    configured = (cfg.backup.key_file or cfg.backup.passphrase_file) if cfg is not None else None
    if args.key_file:
        _warn_loose(Path(args.key_file))
        secret = bc.read_key_file(Path(args.key_file))
    elif args.passphrase_file:
        _warn_loose(Path(args.passphrase_file))
        secret = bc.read_passphrase_file(Path(args.passphrase_file))
    elif cfg is not None and configured is not None:
        _warn_loose(configured)
        secret = bc.read_key_file(configured) if cfg.backup.key_file else bc.read_passphrase_file(configured)
    elif sys.stdin.isatty():
        secret = _prompt(create)
    else:
        raise bc.SecretError(
            "no passphrase or key: give --passphrase-file FILE or --key-file FILE, set backup.passphrase_file "
            "or backup.key_file in the config, or run on a terminal to type the passphrase"
        )
    if create and secret.kind == "passphrase" and len(secret.material.decode("utf-8")) < MIN_PASSPHRASE:
        raise bc.SecretError(
            f"the passphrase from {secret.source} is too short: use at least {MIN_PASSPHRASE} characters "
            "(a sentence is easy to remember and hard to guess)"
        )
    return secret


def _prompt(create: bool) -> bc.Secret:
    text = getpass.getpass("Backup passphrase: ")
    if create and getpass.getpass("Same passphrase again: ") != text:
        raise bc.SecretError("the two passphrases differ: nothing was written — try again")
    return bc.Secret.passphrase(text, "the typed passphrase")


# -- create ------------------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    from .backup import BackupError, create_and_ship

    cfg = load_or_exit(args)
    target = args.to or cfg.backup.target
    try:
        secret = resolve_secret(args, cfg, create=True)
    except bc.SecretError as exc:
        audit = AuditLog(cfg.audit_path, "cli")
        audit.record("backup.create", "failure", operator=current_operator(), target=target, error=str(exc))
        audit.close()
        return _error(str(exc))
    try:
        run = create_and_ship(cfg, Path(args.config), secret, target)  # audits itself
    except (BackupError, bc.BundleError) as exc:
        return _error(str(exc))
    if args.json:
        print_json(run.as_dict())
    else:
        print(run.summary())
    return EXIT_OK


# -- list --------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from .backup import BackupError, human_size, list_local, list_remote, sftp_store
    from .sftp import SftpError

    cfg = load_or_exit(args)
    try:
        if args.source == "sftp":
            with sftp_store(cfg) as store:
                refs = list_remote(store)
            where = f"sftp {cfg.backup.sftp.host}:{cfg.backup.sftp.remote_dir}" if cfg.backup.sftp else "sftp"
        else:
            refs = list_local(cfg.backup_dir)
            where = str(cfg.backup_dir)
    except (BackupError, SftpError) as exc:
        return _error(str(exc))
    if args.json:
        print_json({"where": where, "bundles": [r.as_dict() for r in refs]})
        return EXIT_OK
    print(f"{len(refs)} bundle(s) in {where}, oldest first:")
    for r in refs:
        created = r.created.strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"  {r.name}  {created}  {human_size(r.size):>9}  host {r.host}")
    return EXIT_OK


# -- locating a bundle -------------------------------------------------------------------------------
def _locate(cfg: RouterConfig, arg: str, source: str | None) -> Path:
    """The bundle named by BUNDLE: a path, a name in the backup dir, or `latest` (this host's newest).
    With --from sftp — or by default when it is not here and an sftp: block is configured — it is first
    downloaded from the SFTP server into the backup dir."""
    from .backup import BackupError, list_local, list_remote, safe_host, sftp_store
    from .store import this_host

    me = safe_host(this_host())
    if source != "sftp":
        if arg != "latest" and Path(arg).is_file():
            return Path(arg)
        mine = [r for r in list_local(cfg.backup_dir) if r.host == me]
        if arg == "latest" and mine:
            return cfg.backup_dir / mine[-1].name
        if arg != "latest" and (cfg.backup_dir / arg).is_file():
            return cfg.backup_dir / arg
        if source == "local" or cfg.backup.sftp is None:
            what = "no bundle of this host" if arg == "latest" else f"no bundle {arg} here nor"
            raise BackupError(
                f"{what} in {cfg.backup_dir} — see `dicom-router backup list` (and `--from sftp` once "
                "backup.sftp is configured)"
            )
    with sftp_store(cfg) as store:
        name = Path(arg).name
        if arg == "latest":
            remote = [r for r in list_remote(store) if r.host == me]
            if not remote:
                raise BackupError(
                    "no bundle of this host on the SFTP server: name one (see `dicom-router backup list --from sftp`)"
                )
            name = remote[-1].name
        cfg.backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        local = cfg.backup_dir / name
        if not local.exists():
            store.download(name, local)
            print(f"downloaded {name} from the SFTP server to {local}", file=sys.stderr)
        return local


# -- verify ------------------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    from .backup import BackupError, human_size, read_bundle
    from .sftp import SftpError

    cfg = load_or_exit(args)
    audit = AuditLog(cfg.audit_path, "cli")
    path: Path | None = None
    try:
        path = _locate(cfg, args.bundle, args.source)
        secret = resolve_secret(args, cfg, create=False)
        contents = read_bundle(path, secret)
    except (BackupError, SftpError, bc.BundleError) as exc:
        audit.record(
            "backup.verify",
            "failure",
            operator=current_operator(),
            bundle=path.name if path else args.bundle,
            error=str(exc),
        )
        if args.json:
            print_json({"ok": False, "bundle": path.name if path else args.bundle, "error": str(exc)})
        return _error(str(exc))
    audit.record(
        "backup.verify",
        "success",
        operator=current_operator(),
        bundle=path.name,
        files=contents.files,
        bytes=contents.bytes,
    )
    h = contents.header
    if args.json:
        print_json(
            {
                "ok": True,
                "bundle": path.name,
                "created": h.created,
                "host": h.host,
                "router_version": h.router_version,
                "encrypted_with": h.secret_kind,
                "parts": contents.parts,
                "files": contents.files,
                "bytes": contents.bytes,
            }
        )
    else:
        print(
            f"OK: {path.name} is intact and opens with {secret.source}: every chunk authenticated, "
            f"{contents.files} files ({human_size(contents.bytes)}) match their sha256\n"
            f"  made {h.created} on {h.host} by dicom-router {h.router_version}; holds {contents.summary()}"
        )
    return EXIT_OK


# -- restore -----------------------------------------------------------------------------------------
def _confirm(args: argparse.Namespace) -> bool | None:
    """True = go on; False = the person said no; None = cannot ask (no terminal)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        return None
    answer = input("Restore as shown above? Type 'yes' to go on: ")
    return answer.strip().lower() == "yes"


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import BackupError
    from .backup_restore import RestoreFailed, audit_restore, execute, prepare
    from .sftp import SftpError

    config_path = Path(args.config)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        # A broken live config is one reason to restore: find the state without it.
        try:
            cfg = load_state_locations(config_path)
        except ConfigError:
            return _error(str(exc), EXIT_USAGE)
        print(f"warning: {config_path} has problems ({len(exc.problems)}); restoring over it", file=sys.stderr)
    mode = "config-only" if args.config_only else "full"
    operator = current_operator()
    why = {"reason": args.reason, "ticket": args.ticket}  # into every audit entry of this restore
    name = args.bundle
    try:
        path = _locate(cfg, args.bundle, args.source)
        name = path.name
        secret = resolve_secret(args, cfg, create=False)
        plan = prepare(config_path, path, secret, config_only=args.config_only)
    except (BackupError, SftpError, bc.BundleError) as exc:
        audit_restore(cfg, "failure", operator, name, mode, error=str(exc), **why)
        return _error(f"{exc}\nnothing was changed")
    try:
        print(plan.render())
        print()
        answer = _confirm(args)
        if answer is None:
            audit_restore(cfg, "refused", operator, name, mode, error="no terminal to confirm on and no --yes", **why)
            return _error(
                "not restoring: there is no terminal to confirm on — read the plan above and run again with --yes"
            )
        if not answer:
            audit_restore(cfg, "refused", operator, name, mode, error="not confirmed", **why)
            print("not restored: nothing was changed")
            return EXIT_FAIL
        try:
            result = execute(plan, operator, reason=args.reason, ticket=args.ticket)
        except RestoreFailed as exc:
            audit_restore(
                cfg,
                "failure",
                operator,
                name,
                mode,
                error=str(exc),
                restored=exc.result.restored,
                moved_aside=exc.result.moved_aside,
                **why,
            )
            return _error(str(exc))
    finally:
        plan.cleanup()
    outcome = "success" if result.complete else "partial"
    audit_restore(
        cfg,
        outcome,
        operator,
        name,
        mode,
        restored=result.restored,
        moved_aside=result.moved_aside or None,
        unchanged=result.unchanged or None,
        skipped=result.skipped or None,
        config_outcome=result.config_outcome,
        config_version=result.config_version,
        **why,
    )
    print(f"restored from {name}: {', '.join(result.restored)}")
    if result.unchanged:
        print(f"  already identical, left as they were: {', '.join(result.unchanged)}")
    for aside in result.moved_aside:
        print(f"  previous state kept in {aside}")
    print(f"  config: {result.config_message}")
    if "queue" in result.skipped:
        print(f"error: the queue was NOT restored: {result.skipped['queue']}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


# -- keygen ------------------------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        bc.write_key_file(path)
    except bc.SecretError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write {path}: {exc.strerror}")
    print(
        f"new backup key written to {path} (mode 0600). Keep a copy OFF this appliance (password manager, vault): "
        "without it no bundle made with it can be restored"
    )
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------------
def _default_add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="router.yaml (default: %(default)s)")


def _secret_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", metavar="FILE", help="file holding the passphrase (default: backup.*_file)")
    g.add_argument("--key-file", metavar="FILE", help="file holding a 32-byte key (from `backup keygen`)")


def _bundle_arg(b: argparse.ArgumentParser) -> None:
    b.add_argument("bundle", help="a path, a bundle name in the backup dir, or 'latest'")
    b.add_argument(
        "--from",
        dest="source",
        choices=["local", "sftp"],
        help="where BUNDLE is (default: the backup dir, then the SFTP server if one is configured)",
    )


def add_backup_commands(sub: Any, add_config: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Register `backup create|list|verify|restore|keygen` on the top-level subparsers."""
    add_config = add_config or _default_add_config
    p = sub.add_parser("backup", help="encrypted backups of config, history, TLS and queue (local and SFTP)")
    bsub = p.add_subparsers(dest="backup_command", required=True, metavar="ACTION")

    b = bsub.add_parser("create", help="write an encrypted bundle; with --to sftp also copy it off-box")
    b.add_argument("--to", choices=["local", "sftp"], help="where the bundle goes (default: backup.target)")
    _secret_args(b)
    b.add_argument("--json", action="store_true")
    add_config(b)
    b.set_defaults(func=cmd_create)

    b = bsub.add_parser("list", help="bundles with time, size and host")
    b.add_argument("--from", dest="source", choices=["local", "sftp"], default="local", help="(default: local)")
    b.add_argument("--json", action="store_true")
    add_config(b)
    b.set_defaults(func=cmd_list)

    b = bsub.add_parser("verify", help="decrypt and check a whole bundle against its manifest; restores nothing")
    _bundle_arg(b)
    _secret_args(b)
    b.add_argument("--json", action="store_true")
    add_config(b)
    b.set_defaults(func=cmd_verify)

    b = bsub.add_parser("restore", help="show what a bundle would change, then restore it (asks first)")
    _bundle_arg(b)
    b.add_argument("--config-only", action="store_true", help="restore only the config (through config apply)")
    b.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    b.add_argument("--reason", help="why (incident, migration…): kept in the audit trail and the config history")
    b.add_argument("--ticket", help="incident / change ticket")
    _secret_args(b)
    add_config(b)
    b.set_defaults(func=cmd_restore)

    b = bsub.add_parser("keygen", help="write a new random backup key to FILE (mode 0600)")
    b.add_argument("file")
    b.set_defaults(func=cmd_keygen)
