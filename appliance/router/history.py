"""Config change control: every version of `router.yaml` the router ever ran, and the one way to change it.

`apply_config` is the single path by which configuration changes — the CLI, the console and Ansible all
call it, so they share one history. It validates, refuses drift, records the version, writes the live
file atomically, reloads the daemon and waits until every router process reports the new version's
sha256 in its heartbeat. On any failure the previous file is put back and the history says so.

Layout below `state_dir/history/` (plain files, so a backup or a person can read them):
    versions/000007.yaml   the exact bytes of version 7
    versions/000007.json   who/when/why: author, ticket, reason, source, parent, outcome, error
    .lock                  flock'd while an apply runs, so two applies never interleave
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .audit import AuditLog, current_operator
from .config import ConfigError, RouterConfig, config_sha256, load_state_locations, parse_config_for
from .fsutil import atomic_write_bytes
from .store import Store, this_host

SOURCES = ("cli", "console", "ansible", "rollback", "restore", "adopted")
CONFIRM_EXTRA_SECONDS = 30.0  # on top of drain_seconds: how long a reload may take to show in heartbeats


class ApplyError(Exception):
    """The change was not applied; the message says why and what to do. The live config is unchanged."""

    def __init__(self, message: str, *, drift: bool = False, problems: list[str] | None = None, recorded: bool = False):
        super().__init__(message)
        self.drift = drift
        self.problems = problems or []
        self.recorded = recorded  # already in the history (or not a change attempt at all)


@dataclass(frozen=True)
class ChangeRequest:
    author: str
    reason: str
    source: str = "cli"
    ticket: str | None = None
    expect_parent: str | None = None  # sha256 the caller believes is live (Ansible: the one it last applied)
    force: bool = False  # apply even if the live config drifted from expect_parent
    rollback_of: int | None = None


@dataclass
class Version:
    version: int
    sha256: str
    time: str
    author: str
    reason: str
    source: str
    outcome: str  # pending | applied | failed
    ticket: str | None = None
    parent_version: int | None = None
    parent_sha256: str | None = None
    rollback_of: int | None = None
    forced: bool = False
    host: str = ""
    daemon: str = ""  # reloaded | not running | …
    error: str | None = None

    def describe(self) -> str:
        ticket = f" ticket {self.ticket}" if self.ticket else ""
        return f"version {self.version} ({self.time}, {self.source} by {self.author}{ticket}: {self.reason})"


@dataclass
class ApplyResult:
    outcome: str  # applied | unchanged | checked
    changed: bool
    sha256: str
    parent_sha256: str | None
    version: int | None = None
    diff: str = ""
    message: str = ""
    daemon: str = ""
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def unified_diff(old: bytes | None, new: bytes | None, old_label: str, new_label: str) -> str:
    a = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
    b = (new or b"").decode("utf-8", "replace").splitlines(keepends=True)
    lines = list(difflib.unified_diff(a, b, old_label, new_label))
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


class History:
    """The versions directory. Reads need no lock; writers hold `locked()`."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.versions_dir = self.dir / "versions"

    @contextmanager
    def locked(self, timeout: float = 120.0) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o660)  # the console operator shares the group
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ApplyError(
                            recorded=True,
                            message=f"another config change holds {self.dir / '.lock'} for over {timeout:g} s; "
                            "wait for it to finish (or find the stuck `dicom-router config` process) and retry",
                        ) from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)

    def _meta_path(self, n: int) -> Path:
        return self.versions_dir / f"{n:06d}.json"

    def _content_path(self, n: int) -> Path:
        return self.versions_dir / f"{n:06d}.yaml"

    def versions(self) -> list[Version]:
        if not self.versions_dir.is_dir():
            return []
        out = []
        for p in sorted(self.versions_dir.glob("*.json")):
            data = json.loads(p.read_text(encoding="utf-8"))
            out.append(Version(**{k: v for k, v in data.items() if k in Version.__dataclass_fields__}))
        return out

    def get(self, n: int) -> Version:
        p = self._meta_path(n)
        if not p.exists():
            known = [v.version for v in self.versions()]
            span = f"{known[0]}-{known[-1]}" if known else "none yet"
            raise ApplyError(f"there is no config version {n} (versions: {span}); see `dicom-router config history`")
        data = json.loads(p.read_text(encoding="utf-8"))
        return Version(**{k: v for k, v in data.items() if k in Version.__dataclass_fields__})

    def content(self, n: int) -> bytes:
        self.get(n)
        return self._content_path(n).read_bytes()

    def last_applied(self) -> Version | None:
        for v in reversed(self.versions()):
            if v.outcome == "applied":
                return v
        return None

    def find_sha(self, sha: str) -> Version | None:
        """The newest applied version with this content (a prefix of 8+ hex digits is enough)."""
        for v in reversed(self.versions()):
            if v.outcome == "applied" and (v.sha256 == sha or (len(sha) >= 8 and v.sha256.startswith(sha))):
                return v
        return None

    def record(self, content: bytes, meta: Version) -> Version:
        """Store a new version (content first, then its metadata, each durable)."""
        existing = self.versions()
        meta.version = (existing[-1].version + 1) if existing else 1
        atomic_write_bytes(self._content_path(meta.version), content, mode=0o640)
        self.update(meta)
        return meta

    def update(self, meta: Version) -> None:
        data = json.dumps(asdict(meta), indent=2, sort_keys=True).encode() + b"\n"
        atomic_write_bytes(self._meta_path(meta.version), data, mode=0o640)


# ---------------------------------------------------------------------------------------------------
# Reading the live state


@dataclass
class LiveState:
    path: Path
    sha256: str | None  # of the live file; None = no file
    version: Version | None  # the newest applied version (what the history says should be live)
    drifted: bool  # the live file differs from that version: edited outside `config apply`
    daemon_pid: int | None
    running: dict[str, str | None]  # process → config sha it reports (fresh heartbeats only)

    @property
    def daemon_runs_live(self) -> bool | None:
        if self.daemon_pid is None:
            return None
        return bool(self.running) and all(sha == self.sha256 for sha in self.running.values())


def daemon_pid(cfg: RouterConfig) -> int | None:
    """The supervisor's pid from `router.pid`, if that process is alive."""
    try:
        pid = int(cfg.supervisor_pid_path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _fresh_heartbeats(cfg: RouterConfig, since: float) -> dict[str, str | None]:
    if not cfg.db_path.exists():
        return {}
    store = Store(cfg.db_path, durable=False)
    try:
        return {p["name"]: p.get("config_sha") for p in store.processes() if p["heartbeat_at"] >= since}
    except Exception:
        return {}
    finally:
        store.close()


def live_state(config_path: Path, cfg: RouterConfig | None = None) -> LiveState:
    cfg = cfg or load_state_locations(config_path)
    try:
        live = config_path.read_bytes()
        sha: str | None = config_sha256(live)
    except FileNotFoundError:
        sha = None
    last = History(cfg.history_dir).last_applied()
    pid = daemon_pid(cfg)
    running = _fresh_heartbeats(cfg, time.time() - 20) if pid else {}
    return LiveState(config_path, sha, last, sha is not None and (last is None or last.sha256 != sha), pid, running)


# ---------------------------------------------------------------------------------------------------
# Applying


def _validate(content: bytes, label: str, live_path: Path) -> RouterConfig:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApplyError(f"{label} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and retry") from None
    try:
        return parse_config_for(text, live_path, label)
    except ConfigError as exc:
        problems = [str(p) for p in exc.problems]
        raise ApplyError(
            f"{label} is invalid ({len(problems)} problem(s)); nothing was changed:\n"
            + "\n".join(f"  {p}" for p in problems),
            problems=problems,
        ) from None


def _drift_report(history: History, live: bytes | None, live_sha: str | None, expected: str) -> str:
    """Who changed what since the version the caller expected to be live."""
    base = history.find_sha(expected)
    lines = [f"the live config ({(live_sha or 'no file')[:12]}) is not the expected parent {expected[:12]}"]
    versions = history.versions()
    if base is None:
        lines.append(f"  no applied version in the history has sha256 {expected[:12]}…")
    else:
        since = [v for v in versions if v.version > base.version and v.outcome == "applied"]
        for v in since:
            lines.append(f"  changed by {v.describe()}")
    last = history.last_applied()
    if live_sha is not None and (last is None or last.sha256 != live_sha):
        lines.append("  and the live file was edited outside `dicom-router config apply` (not in the history)")
    if base is not None:
        diff = unified_diff(history.content(base.version), live, f"expected (version {base.version})", "live")
        if diff:
            lines.append("  difference, expected → live:")
            lines += ["    " + ln for ln in diff.rstrip("\n").split("\n")]
    lines.append(
        "Reconcile first: fold the live change into your source of truth (or roll it back), then apply again; "
        "or apply anyway with --force and a --reason that says why."
    )
    return "\n".join(lines)


def _signal_reload_and_confirm(cfg: RouterConfig, pid: int, sha: str, timeout: float) -> str | None:
    """SIGHUP the supervisor; wait until every child's fresh heartbeat reports `sha`. None = confirmed."""
    wanted = {"receiver", "forwarder"} | set(_fresh_heartbeats(cfg, time.time() - 20))
    started = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return f"could not signal the router (pid {pid}): {exc.strerror}"
    deadline = time.monotonic() + timeout
    seen: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        seen = _fresh_heartbeats(cfg, started)
        if all(seen.get(n) == sha for n in wanted):
            return None
        if daemon_pid(cfg) is None:
            return "the router stopped while reloading (see its service log)"
        time.sleep(0.2)
    behind = sorted(n for n in wanted if seen.get(n) != sha)
    return (
        f"the router did not confirm the new version within {timeout:g} s "
        f"({', '.join(behind)} still on the old one or not running; see the service log)"
    )


def apply_config(
    config_path: Path,
    content: bytes,
    req: ChangeRequest,
    *,
    check: bool = False,
    label: str = "the new config",
    confirm_timeout: float | None = None,
) -> ApplyResult:
    """Validate → drift check → record → write atomically → reload → confirm → audit. See the module doc.

    A refused or failed attempt (invalid file, drift, …) is recorded in the history too, unless `check`."""
    if req.source not in SOURCES:
        raise ApplyError(f"source must be one of {', '.join(SOURCES)}, not '{req.source}'")
    if not req.reason.strip():
        raise ApplyError("a reason is required (--reason): the history must say why the config changed")
    config_path = Path(config_path)
    try:
        return _apply(config_path, content, req, check, label, confirm_timeout)
    except ApplyError as exc:
        if not check and not exc.recorded:
            _record_refusal(config_path, content, req, exc)
        raise


def _record_refusal(config_path: Path, content: bytes, req: ChangeRequest, exc: ApplyError) -> None:
    try:
        cfg = load_state_locations(config_path)
    except ConfigError:
        return  # no readable live config: nowhere to record it
    history = History(cfg.history_dir)
    outcome = "refused" if exc.drift else "failed"
    with history.locked():
        meta = history.record(
            content,
            Version(
                0, config_sha256(content), _now_iso(), req.author, req.reason, req.source, outcome,
                ticket=req.ticket, rollback_of=req.rollback_of, host=this_host(), error=str(exc),
            ),
        )  # fmt: skip
    AuditLog(cfg.audit_path, _audit_process(req)).record(
        "config.apply", "failure", version=meta.version, sha256=meta.sha256, operator=_operator(req),
        author=req.author, ticket=req.ticket, reason=req.reason, source=req.source,
        rollback_of=req.rollback_of, error=str(exc).splitlines()[0],
    )  # fmt: skip


def _audit_process(req: ChangeRequest) -> str:
    return "console" if req.source == "console" else "cli"


def _operator(req: ChangeRequest) -> str:
    """Who ran it: the console names its operator as the author; elsewhere the login that ran the command
    (`author` may name someone else, e.g. the person an Ansible run applies a change for)."""
    return req.author if req.source == "console" else current_operator()


def _apply(
    config_path: Path,
    content: bytes,
    req: ChangeRequest,
    check: bool,
    label: str,
    confirm_timeout: float | None,
) -> ApplyResult:
    new_cfg = _validate(content, label, config_path)
    new_sha = config_sha256(content)
    try:
        live: bytes | None = config_path.read_bytes()
    except FileNotFoundError:
        live = None
    live_sha = config_sha256(live) if live is not None else None
    warnings: list[str] = []
    if live is not None:
        try:
            old_cfg = _validate(live, "the live config", config_path)
        except ApplyError:
            old_cfg = load_state_locations(config_path)
            warnings.append("the live config is itself invalid; the router runs whatever it last loaded")
        if old_cfg.router.state_dir != new_cfg.router.state_dir:
            raise ApplyError(
                f"router.state_dir would change from {old_cfg.router.state_dir} to {new_cfg.router.state_dir}: "
                "the queue, spool and this history live there. Stop the router, move the directory, and edit "
                "the file by hand; then run `config apply` once to record it"
            )
    history = History(new_cfg.history_dir)
    with history.locked():
        last = history.last_applied()
        if (
            req.expect_parent
            and live_sha != req.expect_parent
            and not (live_sha and len(req.expect_parent) >= 8 and live_sha.startswith(req.expect_parent))
        ):
            report = _drift_report(history, live, live_sha, req.expect_parent)
            if not req.force:
                raise ApplyError("refused: " + report, drift=True)
            warnings.append("forced over drift: " + report.splitlines()[0])
        diff = unified_diff(live, content, f"live {config_path}", label)
        recorded = last is not None and last.sha256 == live_sha
        if new_sha == live_sha and recorded:
            return ApplyResult(
                "unchanged",
                False,
                new_sha,
                live_sha,
                last.version if last else None,
                "",
                ("the live config already has this content; nothing to do"),
                warnings=warnings,
            )
        if check:
            what = "would record the live file's content in the history" if new_sha == live_sha else "would apply"
            return ApplyResult(
                "checked",
                True,
                new_sha,
                live_sha,
                None,
                diff,
                f"check mode: {what}; nothing was changed",
                warnings=warnings,
            )
        audit = AuditLog(new_cfg.audit_path, _audit_process(req))
        operator = _operator(req)
        if new_sha == live_sha:
            diff = ""  # the live file has this content but the history does not: record it, caller vouches
        if live is not None and not recorded and new_sha != live_sha:
            # The file on disk never went through apply (first use, or a hand edit): record it first,
            # so the history can show it and roll back to it.
            adopted = history.record(
                live,
                Version(
                    0,
                    live_sha or "",
                    _now_iso(),
                    "unknown",
                    "found on disk, not applied through `config apply`",
                    "adopted",
                    "applied",
                    host=this_host(),
                    parent_version=last.version if last else None,
                    parent_sha256=last.sha256 if last else None,
                ),
            )
            last = adopted
            audit.record(
                "config.adopt", "success", version=adopted.version, sha256=live_sha, operator=operator,
                ticket=req.ticket, reason="found on disk, not applied through `config apply`",
            )  # fmt: skip
        meta = history.record(
            content,
            Version(
                0,
                new_sha,
                _now_iso(),
                req.author,
                req.reason,
                req.source,
                "pending",
                ticket=req.ticket,
                parent_version=last.version if last else None,
                parent_sha256=live_sha,
                rollback_of=req.rollback_of,
                forced=bool(req.force and warnings),
                host=this_host(),
            ),
        )
        audit_fields = dict(
            version=meta.version,
            sha256=new_sha,
            parent_sha256=live_sha,
            operator=operator,
            author=req.author,
            ticket=req.ticket,
            reason=req.reason,
            source=req.source,
            rollback_of=req.rollback_of,
            forced=meta.forced or None,
        )
        try:
            if new_sha != live_sha:
                atomic_write_bytes(config_path, content)
        except OSError as exc:
            meta.outcome, meta.error = "failed", f"could not write {config_path}: {exc.strerror}"
            history.update(meta)
            audit.record("config.apply", "failure", error=meta.error, **audit_fields)
            raise ApplyError(f"{meta.error}; the previous config stays live", recorded=True) from None
        pid = daemon_pid(new_cfg)
        if pid is None:
            meta.daemon = "not running: takes effect when the router starts"
        else:
            timeout = confirm_timeout or (new_cfg.router.drain_seconds + CONFIRM_EXTRA_SECONDS)
            problem = _signal_reload_and_confirm(new_cfg, pid, new_sha, timeout)
            if problem is not None:
                if live is not None:
                    atomic_write_bytes(config_path, live)
                else:
                    config_path.unlink(missing_ok=True)
                back = _signal_reload_and_confirm(new_cfg, pid, live_sha or "", timeout) if live_sha else None
                meta.outcome, meta.error = "failed", problem
                meta.daemon = "previous version restored" + ("" if back is None else f" (but: {back})")
                history.update(meta)
                audit.record("config.apply", "failure", error=problem, **audit_fields)
                raise ApplyError(
                    f"version {meta.version} was NOT applied: {problem}. The previous config "
                    f"({(live_sha or 'none')[:12]}) was put back" + ("" if back is None else f"; {back}"),
                    recorded=True,
                )
            meta.daemon = f"reloaded (pid {pid})"
        meta.outcome = "applied"
        history.update(meta)
        audit.record("config.apply", "success", daemon=meta.daemon, **audit_fields)
        return ApplyResult(
            "applied",
            True,
            new_sha,
            live_sha,
            meta.version,
            diff,
            f"version {meta.version} applied; router {meta.daemon}",
            meta.daemon,
            warnings,
        )


def rollback_target(history: History, live_sha: str | None) -> Version:
    """Default rollback: the version that was live before the current one (its parent), so a rollback
    undoes the last change — and rolling back a rollback redoes it. A hand-edited live file (not in the
    history) rolls back to the last applied version."""
    current = history.find_sha(live_sha) if live_sha else None
    if current is None:
        last = history.last_applied()
        if last is not None:
            return last
    step = current
    while step is not None and step.parent_version is not None:
        parent = history.get(step.parent_version)
        if parent.outcome == "applied" and parent.sha256 != live_sha:
            return parent
        step = parent
    raise ApplyError("there is no earlier applied version to roll back to; see `dicom-router config history`")
