"""Restoring a backup bundle: decrypt and verify into a private temporary directory first, show what would
change, then put the parts in place — history, TLS, queue (only while the router is stopped), and last the
config through `history.apply_config`, the one path by which configuration changes.

Nothing current is deleted: the history and TLS directories and the queue database are moved aside to
`<name>.before-restore-<UTC time>` next to where they were, so a restore can itself be undone by hand.
"""

from __future__ import annotations

import datetime as dt
import grp
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bundle_crypto as bc
from .audit import AuditLog
from .backup import QUEUE_MEMBER, BackupError, BundleContents, human_size, read_bundle
from .config import ConfigError, RouterConfig, load_config, load_state_locations, parse_config_for
from .fsutil import fsync_dir
from .history import ApplyError, ChangeRequest, apply_config, daemon_pid, unified_diff
from .store import JobState, Store


def _is_key_file(name: str) -> bool:
    """Private key material in the TLS directory (restored mode 0600): *.key, *key*.pem, keystores."""
    lower = name.lower()
    return "key" in lower or lower.endswith((".p12", ".pfx", ".jks"))


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _aside(path: Path, stamp: str) -> Path:
    return path.with_name(f"{path.name}.before-restore-{stamp}")


def _files_below(root: Path) -> dict[str, bytes]:
    """relative path → content, for comparing small trees (TLS)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def _count_entries(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


# -- queue counts ------------------------------------------------------------------------------------
@dataclass
class QueueCounts:
    jobs: dict[str, int]  # state → count, over all destinations
    instances: int
    unrouted: int

    @classmethod
    def of(cls, db: Path) -> QueueCounts | None:
        if not db.is_file():
            return None
        store = Store(db, durable=False)
        try:
            jobs: dict[str, int] = {}
            for stats in store.destination_stats(time.time()).values():
                for state, n in stats.counts.items():
                    jobs[state] = jobs.get(state, 0) + n
            counts = store.instance_counts()
            return cls(jobs, counts["instances"], counts["unrouted"])
        finally:
            store.close()

    @property
    def pending(self) -> int:
        return sum(
            self.jobs.get(s, 0)
            for s in (JobState.QUEUED, JobState.SENDING, JobState.HELD, JobState.FAILED, JobState.WAITING)
        )


def _counts_table(live: QueueCounts | None, bundle: QueueCounts | None) -> list[str]:
    def cell(c: QueueCounts | None, key: str) -> str:
        if c is None:
            return "-"
        if key == "objects":
            return str(c.instances)
        if key == "unrouted":
            return str(c.unrouted)
        return str(c.jobs.get(key, 0))

    rows = [f"{'':<12}{'live':>10}{'bundle':>10}"]
    for key in [*(s.value for s in JobState), "objects", "unrouted"]:
        rows.append(f"{key:<12}{cell(live, key):>10}{cell(bundle, key):>10}")
    return rows


# -- the plan ----------------------------------------------------------------------------------------
@dataclass
class RestorePlan:
    bundle_path: Path
    config_path: Path
    config_only: bool
    contents: BundleContents
    work: Path  # the decrypted, verified members
    new_cfg: RouterConfig  # the bundle's config as it will be read at config_path
    live_config: bytes | None
    new_config: bytes
    daemon: int | None
    stamp: str = field(default_factory=_stamp)
    live_queue: QueueCounts | None = None
    bundle_queue: QueueCounts | None = None

    @property
    def name(self) -> str:
        return self.bundle_path.name

    def has(self, part: str) -> bool:
        return part in self.contents.parts

    @property
    def queue_refusal(self) -> str | None:
        if self.config_only or not self.has("queue") or self.daemon is None:
            return None
        return (
            f"the router is running (pid {self.daemon}): the queue database can only be replaced while it is "
            "stopped — stop it (systemctl stop dicom-router), run this restore again, then start it"
        )

    def tls_changed(self) -> bool:
        live = self.new_cfg.router.tls_dir
        if not live.is_dir():
            return True
        return _files_below(live) != _files_below(self.work / "tls")

    def render(self) -> str:
        h = self.contents.header
        lines = [
            f"Bundle {self.name}: made {h.created} on {h.host} by dicom-router {h.router_version}",
            f"  verified: every chunk authenticated, {self.contents.files} files ({human_size(self.contents.bytes)}) "
            "match their sha256 in the manifest",
            f"  holds: {self.contents.summary()}",
            "",
            f"Restore plan ({'config only' if self.config_only else 'full'}):",
        ]
        step = 0
        if not self.config_only:
            step += 1
            hist = self.new_cfg.history_dir
            if not self.has("history"):
                lines.append(f"  {step}. history  the bundle has none: {hist} is left as it is")
            else:
                n_live = _count_entries(hist)
                n_new = len([m for m in self.contents.members("history") if m["type"] == "file"])
                aside = f"moved aside to {_aside(hist, self.stamp).name}" if n_live else "empty now"
                lines.append(
                    f"  {step}. history  {hist}: {n_live} file(s) now, {aside}; "
                    f"the bundle's {n_new} file(s) put in place"
                )
            step += 1
            tls = self.new_cfg.router.tls_dir
            if not self.has("tls"):
                lines.append(f"  {step}. tls      the bundle has none: {tls} is left as it is")
            elif not self.tls_changed():
                lines.append(f"  {step}. tls      {tls}: identical to the bundle's, left as it is")
            else:
                now = f"moved aside to {_aside(tls, self.stamp).name}" if tls.exists() else "does not exist yet"
                lines.append(f"  {step}. tls      {tls}: {now}; the bundle's files put in place (keys mode 0600)")
            step += 1
            db = self.new_cfg.db_path
            if not self.has("queue"):
                lines.append(f"  {step}. queue    the bundle has none: {db} is left as it is")
            else:
                refusal = self.queue_refusal
                if refusal:
                    lines.append(f"  {step}. queue    NOT restored: {refusal}")
                else:
                    now = (
                        f"moved aside (with -wal/-shm) to {_aside(db, self.stamp).name}"
                        if db.exists()
                        else "does not exist yet"
                    )
                    lines.append(f"  {step}. queue    {db}: {now}; the bundle's snapshot put in place")
                lines += [f"       {row}" for row in _counts_table(self.live_queue, self.bundle_queue)]
                if self.bundle_queue and self.bundle_queue.pending:
                    lines.append(
                        f"       note: bundles hold no DICOM objects: the bundle's {self.bundle_queue.pending} "
                        "unfinished job(s) can only be sent if their objects are still in this box's spool"
                    )
        step += 1
        diff = unified_diff(self.live_config, self.new_config, f"live {self.config_path}", f"bundle {self.name}")
        what = "no change to the content" if not diff else "changes:"
        lines.append(f"  {step}. config   {self.config_path} through `config apply` (source restore): {what}")
        if diff:
            lines += ["       " + ln for ln in diff.rstrip("\n").split("\n")]
        return "\n".join(lines)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _bundle_config(contents: BundleContents, work: Path, config_path: Path) -> tuple[bytes, RouterConfig]:
    content = (work / contents.config_member).read_bytes()
    try:
        cfg = parse_config_for(content.decode("utf-8"), config_path, f"the config in {contents.name}")
    except (ConfigError, UnicodeDecodeError) as exc:
        raise BackupError(f"the config in {contents.name} is not valid for this dicom-router version: {exc}") from None
    return content, cfg


def prepare(config_path: Path, bundle_path: Path, secret: bc.Secret, *, config_only: bool) -> RestorePlan:
    """Decrypt and verify the whole bundle into a private temporary directory and work out the plan.
    Changes nothing live. The caller must call `plan.cleanup()`."""
    config_path = Path(config_path)
    try:
        live_config: bytes | None = config_path.read_bytes()
    except FileNotFoundError:
        live_config = None
    live_cfg: RouterConfig | None = None
    if live_config is not None:
        try:
            live_cfg = load_config(config_path)
        except ConfigError:
            live_cfg = load_state_locations(config_path)  # a broken live config is a reason to restore
    base = live_cfg.router.state_dir if live_cfg is not None else config_path.parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".restore-", dir=base))
    except OSError as exc:
        raise BackupError(f"cannot make a temporary directory in {base} for the restore: {exc.strerror}") from None
    try:
        contents = read_bundle(bundle_path, secret, work)
        new_config, new_cfg = _bundle_config(contents, work, config_path)
        live_cfg = live_cfg or new_cfg
        if new_cfg.router.state_dir != live_cfg.router.state_dir:
            raise BackupError(
                f"the bundle's config keeps its state in {new_cfg.router.state_dir}, this appliance in "
                f"{live_cfg.router.state_dir}: change router.state_dir in {config_path} to match (or restore "
                "with --config-only after moving the state by hand)"
            )
        plan = RestorePlan(
            bundle_path,
            config_path,
            config_only,
            contents,
            work,
            new_cfg,
            live_config,
            new_config,
            daemon_pid(live_cfg),
        )
        if not config_only and plan.has("queue"):
            plan.live_queue = QueueCounts.of(new_cfg.db_path)
            plan.bundle_queue = QueueCounts.of(work / QUEUE_MEMBER)
        return plan
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# -- doing it ----------------------------------------------------------------------------------------
@dataclass
class RestoreResult:
    restored: list[str] = field(default_factory=list)
    moved_aside: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    config_outcome: str = ""
    config_version: int | None = None
    config_message: str = ""

    @property
    def complete(self) -> bool:
        return not self.skipped


def _ownership(entry: dict[str, Any]) -> tuple[int, int]:
    """uid/gid to give a restored file: the names recorded in the manifest where they exist on this box."""
    uid = gid = -1
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid if entry.get("owner") else -1
    except KeyError:
        pass
    try:
        gid = grp.getgrnam(entry["group"]).gr_gid if entry.get("group") else -1
    except KeyError:
        pass
    return uid, gid


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def _place_tree(src: Path, dst: Path, entries: list[dict[str, Any]], keys_private: bool) -> None:
    """Copy the extracted `src` tree to `dst` (which must not exist): into a sibling temporary directory,
    modes and owners as recorded, fsync'd, then renamed into place in one step."""
    tmp = dst.with_name(f".{dst.name}.restoring-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, symlinks=True)
    root_user = os.geteuid() == 0
    for e in entries:
        rel = e["path"].split("/", 1)[1] if "/" in e["path"] else ""
        p = tmp / rel if rel else tmp
        if keys_private and e["type"] == "file" and _is_key_file(p.name):
            os.chmod(p, 0o600)
        if root_user:
            uid, gid = _ownership(e)
            os.lchown(p, uid, gid)
    _fsync_tree(tmp)
    os.rename(tmp, dst)
    fsync_dir(dst.parent)


def _place_file(src: Path, dst: Path, entry: dict[str, Any]) -> None:
    """Move the extracted file to `dst` (rename when on the same filesystem, else copy + fsync + rename)."""
    try:
        os.rename(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.restoring-{os.getpid()}")
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, dst)
    if os.geteuid() == 0:
        os.chown(dst, *_ownership(entry))
    fsync_dir(dst.parent)


def _restore_history(plan: RestorePlan, result: RestoreResult) -> None:
    hist = plan.new_cfg.history_dir
    if hist.exists() and (not hist.is_dir() or any(hist.iterdir())):
        aside = _aside(hist, plan.stamp)
        os.rename(hist, aside)
        result.moved_aside.append(str(aside))
    elif hist.is_dir():
        hist.rmdir()
    _place_tree(plan.work / "history", hist, plan.contents.members("history"), keys_private=False)
    result.restored.append("history")


def _restore_tls(plan: RestorePlan, result: RestoreResult) -> None:
    tls = plan.new_cfg.router.tls_dir
    if not plan.tls_changed():
        result.unchanged.append("tls")
        return
    if tls.exists():
        aside = _aside(tls, plan.stamp)
        os.rename(tls, aside)
        result.moved_aside.append(str(aside))
    _place_tree(plan.work / "tls", tls, plan.contents.members("tls"), keys_private=True)
    result.restored.append("tls")


def _restore_queue(plan: RestorePlan, result: RestoreResult) -> None:
    db = plan.new_cfg.db_path
    # Checked again right before acting: the router may have been started since the plan was shown.
    plan.daemon = daemon_pid(plan.new_cfg)
    refusal = plan.queue_refusal
    if refusal:
        result.skipped["queue"] = refusal
        return
    for suffix in ("", "-wal", "-shm"):
        current = db.with_name(db.name + suffix)
        if current.exists():
            aside = db.with_name(f"{db.name}.before-restore-{plan.stamp}{suffix}")
            os.rename(current, aside)
            result.moved_aside.append(str(aside))
    db.parent.mkdir(parents=True, exist_ok=True)
    entry = next(m for m in plan.contents.manifest["members"] if m["path"] == QUEUE_MEMBER)
    _place_file(plan.work / QUEUE_MEMBER, db, entry)
    result.restored.append("queue")


def execute(plan: RestorePlan, operator: str, *, reason: str | None = None, ticket: str | None = None) -> RestoreResult:
    """Put the bundle in place: history, TLS, queue, then the config through apply_config (`reason` and
    `ticket` — the operator's why — go into its history entry and audit record).
    Raises BackupError (the result so far in `.result`) when a step fails."""
    result = RestoreResult()
    steps: list[tuple[str, Callable[[RestorePlan, RestoreResult], None]]] = [
        ("history", _restore_history),
        ("tls", _restore_tls),
        ("queue", _restore_queue),
    ]
    if plan.config_only:
        steps = []
    for part, step in steps:
        if not plan.has(part):
            continue
        try:
            step(plan, result)
        except OSError as exc:
            raise RestoreFailed(
                f"restoring the {part} failed: {exc.strerror or exc} ({exc.filename or ''})", result
            ) from None
    try:
        applied = apply_config(
            plan.config_path,
            plan.new_config,
            ChangeRequest(
                author=operator,
                ticket=ticket,
                reason=f"restore from {plan.name}" + (f": {reason}" if reason else ""),
                source="restore",
                force=True,
            ),
            check=False,
            label=f"the config in {plan.name}",
        )
    except ApplyError as exc:
        raise RestoreFailed(f"the config was not applied: {exc}", result) from None
    result.config_outcome = applied.outcome
    result.config_version = applied.version
    result.config_message = applied.message
    result.restored.append("config")
    return result


class RestoreFailed(BackupError):
    def __init__(self, message: str, result: RestoreResult):
        done = ", ".join(result.restored) or "nothing"
        aside = "; the previous state is kept in " + ", ".join(result.moved_aside) if result.moved_aside else ""
        super().__init__(f"{message}. Restored before the failure: {done}{aside}")
        self.result = result


def audit_restore(cfg: RouterConfig, outcome: str, operator: str, bundle: str, mode: str, **fields: Any) -> None:
    audit = AuditLog(cfg.audit_path, "cli")
    audit.record("backup.restore", outcome, operator=operator, bundle=bundle, mode=mode, **fields)
    audit.close()
