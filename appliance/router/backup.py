"""Backup bundles: create, read back (verify / extract), list, ship over SFTP, and retention.

A bundle is one encrypted file `dicom-router-<host>-<YYYYmmddTHHMMSSZ>.drbk` (see bundle_crypto for the
encryption) whose plaintext is a tar stream:

    manifest.json            format, time, host, version, where each part came from, and for every member
                             its type, size, mode, owner and sha256
    config/<name>            the live config file, as-is
    history/…                the config history directory, recursively, as-is
    tls/…                    the TLS directory (CA, certificates, keys), when it exists
    queue/queue.sqlite3      a consistent snapshot of the queue database (SQLite online backup)

Members are staged into a private temporary directory below state_dir first, so the manifest describes
exactly the bytes that go into the tar stream.
"""

from __future__ import annotations

import datetime as dt
import grp
import hashlib
import io
import json
import os
import pwd
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal

from . import bundle_crypto as bc
from .audit import AuditLog, current_operator
from .config import RouterConfig, SftpTarget
from .fsutil import fsync_dir
from .store import Store, this_host

if TYPE_CHECKING:  # paramiko is imported only when a bundle goes to or comes from SFTP
    from .sftp import SftpStore

SUFFIX = ".drbk"
PART_SUFFIX = ".part"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PARTS = ("config", "history", "tls", "queue")
QUEUE_MEMBER = "queue/queue.sqlite3"
_MAX_MANIFEST = 64 << 20
_STALE_PART_SECONDS = 6 * 3600
_NAME_RE = re.compile(r"^dicom-router-(?P<host>.+)-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<seq>\d+))?\.drbk$")
_STAMP = "%Y%m%dT%H%M%SZ"


class BackupError(Exception):
    """A backup operation failed; the message says what failed and what to do next."""


# -- names -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleRef:
    """A bundle known by its file name (local or remote): who made it and when."""

    name: str
    host: str
    created: dt.datetime  # UTC
    seq: int = 1
    size: int = 0
    where: str = "local"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "created": self.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "size": self.size,
            "where": self.where,
        }


def safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", host) or "unknown"


def bundle_name(host: str, created: dt.datetime, seq: int = 1) -> str:
    extra = f"-{seq}" if seq > 1 else ""
    return f"dicom-router-{safe_host(host)}-{created.astimezone(dt.UTC).strftime(_STAMP)}{extra}{SUFFIX}"


def parse_bundle_name(name: str, size: int = 0, where: str = "local") -> BundleRef | None:
    m = _NAME_RE.match(name)
    if not m:
        return None
    created = dt.datetime.strptime(m["stamp"], _STAMP).replace(tzinfo=dt.UTC)
    return BundleRef(name, m["host"], created, int(m["seq"] or 1), size, where)


def router_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dicom-router-appliance")
    except PackageNotFoundError:
        return "unknown"


def human_size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def secret_from_config(cfg: RouterConfig) -> bc.Secret | None:
    """The secret named in the config (backup.passphrase_file or backup.key_file), or None."""
    if cfg.backup.key_file is not None:
        return bc.read_key_file(cfg.backup.key_file)
    if cfg.backup.passphrase_file is not None:
        return bc.read_passphrase_file(cfg.backup.passphrase_file)
    return None


# -- manifest ----------------------------------------------------------------------------------------
def _owner_names(st: os.stat_result) -> tuple[str | None, str | None]:
    try:
        owner: str | None = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = None
    try:
        group: str | None = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = None
    return owner, group


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _describe(root: Path, rel: str) -> dict[str, Any]:
    path = root / rel
    st = path.lstat()
    owner, group = _owner_names(st)
    entry: dict[str, Any] = {"path": rel, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "owner": owner, "group": group}
    if stat.S_ISLNK(st.st_mode):
        entry.update(type="symlink", target=os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        entry.update(type="dir")
    elif stat.S_ISREG(st.st_mode):
        entry.update(type="file", size=st.st_size, sha256=_sha256_file(path))
    else:
        raise BackupError(f"{path} is neither a file, a directory nor a symlink: cannot back it up")
    return entry


def _walk(root: Path, top: str) -> Iterator[str]:
    """`top` and everything below it, parents before children, in a stable order (symlinks not followed)."""
    yield top
    base = root / top
    if base.is_symlink() or not base.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames + filenames):
            yield (rel_dir / name).as_posix()


# -- create ------------------------------------------------------------------------------------------
@dataclass
class CreatedBundle:
    path: Path
    name: str
    size: int
    parts: list[str]
    members: int


def _copy_in(src: Path, dst: Path) -> None:
    """Copy a file or a whole directory into the staging area as-is: modes kept, symlinks inside a directory
    kept as symlinks (`src` itself may be a symlink: what it points to is copied)."""
    try:
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    except PermissionError as exc:
        raise BackupError(
            f"cannot read {exc.filename or src}: permission denied — run the backup as root or as the service user"
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot copy {src} into the backup: {exc}") from None


def _stage(cfg: RouterConfig, config_path: Path, stage: Path) -> dict[str, str]:
    sources: dict[str, str] = {}
    (stage / "config").mkdir()
    if not config_path.is_file():
        raise BackupError(f"config file {config_path} does not exist — pass --config FILE")
    _copy_in(config_path, stage / "config" / config_path.name)
    sources["config"] = str(config_path.resolve())
    if cfg.history_dir.is_dir():
        _copy_in(cfg.history_dir, stage / "history")
        sources["history"] = str(cfg.history_dir)
    if cfg.router.tls_dir.is_dir():
        _copy_in(cfg.router.tls_dir, stage / "tls")
        sources["tls"] = str(cfg.router.tls_dir)
    if cfg.db_path.is_file():
        (stage / "queue").mkdir()
        store = Store(cfg.db_path)
        try:
            store.snapshot_to(stage / QUEUE_MEMBER)
        except Exception as exc:
            raise BackupError(f"could not snapshot the queue database {cfg.db_path}: {exc}") from None
        finally:
            store.close()
        sources["queue"] = str(cfg.db_path)
    return sources


def _clear_stale(directory: Path, pattern: str) -> None:
    """Remove what a killed backup or restore left behind (older than a few hours, so never a running one's)."""
    for p in directory.glob(pattern):
        try:
            if time.time() - p.lstat().st_mtime > _STALE_PART_SECONDS:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass


def _unique_target(out_dir: Path, host: str, created: dt.datetime) -> Path:
    seq = 1
    while (out_dir / bundle_name(host, created, seq)).exists() or (
        out_dir / (bundle_name(host, created, seq) + PART_SUFFIX)
    ).exists():
        seq += 1
    return out_dir / bundle_name(host, created, seq)


def create_bundle(cfg: RouterConfig, config_path: Path, secret: bc.Secret) -> CreatedBundle:
    """Write one encrypted bundle into the configured backup directory and return it."""
    out_dir = cfg.backup_dir
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    host = this_host()
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg.router.state_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale(cfg.router.state_dir, ".backup-stage-*")
        stage = Path(tempfile.mkdtemp(prefix=".backup-stage-", dir=cfg.router.state_dir))
    except OSError as exc:
        raise BackupError(f"cannot prepare the backup ({exc}) — check that {out_dir} is writable") from None
    try:
        sources = _stage(cfg, Path(config_path), stage)
        parts = [p for p in PARTS if p in sources]
        members = [_describe(stage, rel) for part in parts for rel in _walk(stage, part)]
        manifest = {
            "format": MANIFEST_FORMAT,
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": host,
            "router_version": router_version(),
            "config_name": Path(config_path).name,
            "sources": sources,
            "parts": parts,
            "members": members,
        }
        target = _unique_target(out_dir, host, created)
        part = target.with_name(target.name + PART_SUFFIX)
        _write_bundle(part, stage, manifest, secret, created, host)
        os.replace(part, target)
        fsync_dir(out_dir)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise BackupError(f"writing the backup into {out_dir} failed: {exc.strerror or exc}{where}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return CreatedBundle(target, target.name, target.stat().st_size, parts, len(members))


def _write_bundle(
    part: Path,
    stage: Path,
    manifest: dict[str, Any],
    secret: bc.Secret,
    created: dt.datetime,
    host: str,
) -> None:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    ok = False
    try:
        with os.fdopen(fd, "wb") as out:
            writer = bc.EncryptingWriter(
                out,
                secret,
                created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                host=host,
                router_version=router_version(),
            )
            try:
                with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    data = json.dumps(manifest, indent=1).encode()
                    info = tarfile.TarInfo(MANIFEST)
                    info.size, info.mode, info.mtime = len(data), 0o600, int(created.timestamp())
                    tar.addfile(info, io.BytesIO(data))
                    for m in manifest["members"]:
                        tar.add(stage / m["path"], arcname=m["path"], recursive=False)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            out.flush()
            os.fsync(out.fileno())
        ok = True
    finally:
        if not ok:
            part.unlink(missing_ok=True)


# -- read back: verify and extract -------------------------------------------------------------------
@dataclass
class BundleContents:
    """What a bundle holds (from its authenticated manifest), after every member was checked."""

    name: str
    header: bc.BundleHeader
    manifest: dict[str, Any]
    files: int = 0
    bytes: int = 0

    @property
    def parts(self) -> list[str]:
        return list(self.manifest.get("parts", []))

    def members(self, part: str) -> list[dict[str, Any]]:
        return [m for m in self.manifest["members"] if m["path"].split("/", 1)[0] == part]

    @property
    def config_member(self) -> str:
        return f"config/{self.manifest['config_name']}"

    def summary(self) -> str:
        counts = []
        for part in self.parts:
            files = [m for m in self.members(part) if m["type"] == "file"]
            size = human_size(sum(m["size"] for m in files))
            counts.append(f"{part} ({len(files)} file{'s' if len(files) != 1 else ''}, {size})")
        return ", ".join(counts)


def _member_problem(name: str, what: str) -> bc.DamagedBundleError:
    return bc.DamagedBundleError(f"{name}: {what} — the bundle was not written by dicom-router or was altered")


def _check_member_name(bundle: str, rel: str) -> None:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] not in PARTS or p.as_posix() != rel:
        raise _member_problem(bundle, f"member name {rel!r} is not allowed")


def _safe_path(dest: Path, rel: str) -> Path:
    """dest/rel, refusing to go through anything that is not a real directory we created (no symlinks)."""
    cur = dest
    for part in PurePosixPath(rel).parts[:-1]:
        cur = cur / part
        if not stat.S_ISDIR(cur.lstat().st_mode):
            raise bc.DamagedBundleError(f"bundle member {rel} would be written through {cur}, which is not a directory")
    return dest / rel


def read_bundle(path: Path, secret: bc.Secret, dest: Path | None = None) -> BundleContents:
    """Decrypt and check the whole bundle: every chunk authenticated, every member against the manifest's
    sha256, size and type, nothing missing or extra. With `dest`, members are also written below it."""
    name = path.name
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally, lives across the stream
    except FileNotFoundError:
        raise BackupError(f"bundle {path} does not exist") from None
    except OSError as exc:
        raise BackupError(f"cannot open bundle {path}: {exc.strerror}") from None
    try:
        reader = bc.DecryptingReader(f, secret, name)
        try:
            contents = _read_members(reader, name, dest)
        except tarfile.TarError as exc:
            raise _member_problem(name, f"the decrypted content is not a valid archive ({exc})") from None
        except OSError as exc:  # writing below dest: disk full, permissions
            where = exc.filename or dest
            raise BackupError(f"cannot unpack {name} into {where}: {exc.strerror or exc}") from None
        reader.finish()
        return contents
    finally:
        f.close()


def _read_members(reader: bc.DecryptingReader, name: str, dest: Path | None) -> BundleContents:
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile() or first.size > _MAX_MANIFEST:
            raise _member_problem(name, "it does not start with a manifest")
        raw = tar.extractfile(first)
        assert raw is not None
        try:
            manifest = json.loads(raw.read())
            expected = {m["path"]: m for m in manifest["members"]}
            if manifest.get("format") != MANIFEST_FORMAT:
                raise bc.NotABundleError(
                    f"{name} has manifest format {manifest.get('format')}; this dicom-router reads "
                    f"{MANIFEST_FORMAT} — use the version that wrote it ({manifest.get('router_version')})"
                )
        except (ValueError, KeyError, TypeError):
            raise _member_problem(name, "its manifest is unreadable") from None
        contents = BundleContents(name, reader.header, manifest)
        seen: set[str] = set()
        dirs: list[tuple[Path, int, float]] = []
        while (ti := tar.next()) is not None:
            _check_member_name(name, ti.name)
            entry = expected.get(ti.name)
            if entry is None or ti.name in seen:
                raise _member_problem(name, f"member {ti.name} is not in its manifest (or appears twice)")
            seen.add(ti.name)
            _read_member(tar, ti, entry, name, dest, contents)
            if dest is not None and entry["type"] == "dir":
                dirs.append((dest / ti.name, int(entry["mode"], 8), ti.mtime))
        missing = sorted(set(expected) - seen)
        if missing:
            raise _member_problem(name, f"{len(missing)} member(s) in the manifest are missing, e.g. {missing[0]}")
    # Directory modes and times last (children first): a read-only directory must not block its own contents.
    for path, mode, mtime in reversed(dirs):
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return contents


def _read_member(
    tar: tarfile.TarFile,
    ti: tarfile.TarInfo,
    entry: dict[str, Any],
    name: str,
    dest: Path | None,
    contents: BundleContents,
) -> None:
    kind = entry.get("type")
    target = _safe_path(dest, ti.name) if dest is not None else None
    if kind == "dir" and ti.isdir():
        if target is not None:
            target.mkdir(mode=0o700)
    elif kind == "symlink" and ti.issym():
        if ti.linkname != entry.get("target"):
            raise _member_problem(name, f"symlink {ti.name} does not match its manifest")
        if target is not None:
            os.symlink(ti.linkname, target)
    elif kind == "file" and ti.isfile():
        src = tar.extractfile(ti)
        assert src is not None
        h = hashlib.sha256()
        size = 0
        out: IO[bytes] | None = None
        if target is not None:
            out = os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")
        try:
            while block := src.read(1 << 20):
                h.update(block)
                size += len(block)
                if out is not None:
                    out.write(block)
        finally:
            if out is not None:
                out.close()
        if size != entry.get("size") or h.hexdigest() != entry.get("sha256"):
            raise bc.DamagedBundleError(
                f"{name}: member {ti.name} does not match the sha256 in its manifest — the bundle is damaged"
            )
        contents.files += 1
        contents.bytes += size
    else:
        raise _member_problem(name, f"member {ti.name} is a {kind} in the manifest but not in the archive")
    if target is not None and kind == "file":
        os.chmod(target, int(entry["mode"], 8))
        os.utime(target, (ti.mtime, ti.mtime))


def read_header_of(path: Path) -> bc.BundleHeader:
    with open(path, "rb") as f:
        return bc.read_header(f, path.name)


# -- listing -----------------------------------------------------------------------------------------
def list_local(directory: Path) -> list[BundleRef]:
    if not directory.is_dir():
        return []
    refs = []
    for p in directory.iterdir():
        ref = parse_bundle_name(p.name, where="local")
        if ref is not None and p.is_file():
            refs.append(BundleRef(ref.name, ref.host, ref.created, ref.seq, p.stat().st_size, "local"))
    return sorted(refs, key=_order_key)


def list_remote(store: SftpStore) -> list[BundleRef]:
    refs = []
    for f in store.list():
        ref = parse_bundle_name(f.name, f.size, "sftp")
        if ref is not None:
            refs.append(ref)
    return sorted(refs, key=_order_key)


def _order_key(ref: BundleRef) -> tuple[dt.datetime, int, str]:
    return ref.created, ref.seq, ref.name


# -- retention ---------------------------------------------------------------------------------------
def retention_keep(refs: Iterable[BundleRef], keep_daily: int, keep_weekly: int) -> set[str]:
    """Names to keep: the newest bundle of each of the `keep_daily` most recent days that have a bundle,
    and the newest of each of the `keep_weekly` most recent ISO weeks that have one (UTC). Counting days that
    have bundles (not calendar days) means a week of failed backups never deletes the last good ones."""
    newest_first = sorted(refs, key=_order_key, reverse=True)

    def pick(bucket: Callable[[BundleRef], Any], n: int) -> set[str]:
        kept: set[str] = set()
        buckets: set[Any] = set()
        for ref in newest_first:
            b = bucket(ref)
            if b in buckets:
                continue
            if len(buckets) >= n:
                break
            buckets.add(b)
            kept.add(ref.name)
        return kept

    return pick(lambda r: r.created.date(), keep_daily) | pick(lambda r: r.created.isocalendar()[:2], keep_weekly)


@dataclass
class RetentionResult:
    where: str
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.where}: kept {len(self.kept)}, removed {len(self.removed)}"


def _own(refs: list[BundleRef]) -> list[BundleRef]:
    """Retention only ever touches this appliance's bundles (a shared SFTP directory holds others' too)."""
    me = safe_host(this_host())
    return [r for r in refs if r.host == me]


def apply_local_retention(cfg: RouterConfig) -> RetentionResult:
    refs = _own(list_local(cfg.backup_dir))
    keep = retention_keep(refs, cfg.backup.keep_daily, cfg.backup.keep_weekly)
    result = RetentionResult(f"local {cfg.backup_dir}")
    for ref in refs:
        if ref.name in keep:
            result.kept.append(ref.name)
            continue
        try:
            (cfg.backup_dir / ref.name).unlink()
        except OSError as exc:
            raise BackupError(f"retention could not delete {cfg.backup_dir / ref.name}: {exc.strerror}") from None
        result.removed.append(ref.name)
    _clear_stale(cfg.backup_dir, f"*{SUFFIX}{PART_SUFFIX}")  # left by a backup that was killed
    return result


def apply_remote_retention(cfg: RouterConfig, store: SftpStore) -> RetentionResult:
    refs = _own(list_remote(store))
    keep = retention_keep(refs, cfg.backup.keep_daily, cfg.backup.keep_weekly)
    result = RetentionResult(f"sftp {_sftp_where(cfg.backup.sftp)}")
    for ref in refs:
        if ref.name in keep:
            result.kept.append(ref.name)
        else:
            store.delete(ref.name)
            result.removed.append(ref.name)
    return result


def _sftp_where(t: SftpTarget | None) -> str:
    return "-" if t is None else f"{t.username}@{t.host}:{t.port}:{t.remote_dir}"


def sftp_store(cfg: RouterConfig) -> SftpStore:
    """An SftpStore for the configured target (imported lazily: paramiko is only needed here)."""
    from .sftp import SftpStore

    if cfg.backup.sftp is None:
        raise BackupError(
            "there is no backup.sftp block in the config: add host, username, key_file and known_hosts "
            "(see docs/backup.md)"
        )
    return SftpStore(cfg.backup.sftp)


# -- create + ship + retention, audited (CLI and scheduler) ------------------------------------------
@dataclass
class BackupRun:
    bundle: CreatedBundle
    target: str
    remote: str | None = None
    retention: list[RetentionResult] = field(default_factory=list)

    def summary(self) -> str:
        b = self.bundle
        text = f"backup {b.name} ({human_size(b.size)}; {', '.join(b.parts)}) written to {b.path.parent}"
        if self.remote:
            text += f" and copied to sftp {self.remote}"
        if self.retention:
            text += "; retention " + ", ".join(r.summary() for r in self.retention)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle.name,
            "path": str(self.bundle.path),
            "size": self.bundle.size,
            "parts": self.bundle.parts,
            "members": self.bundle.members,
            "target": self.target,
            "remote": self.remote,
            "retention": [{"where": r.where, "kept": r.kept, "removed": r.removed} for r in self.retention],
        }


def create_and_ship(
    cfg: RouterConfig,
    config_path: Path,
    secret: bc.Secret,
    target: Literal["local", "sftp"],
    *,
    process: str = "cli",
    operator: str | None = None,
) -> BackupRun:
    """Create a bundle, copy it off-box when `target` is sftp, apply retention; audited either way."""
    audit = AuditLog(cfg.audit_path, process)
    operator = operator or current_operator()
    bundle: CreatedBundle | None = None
    try:
        if target == "sftp" and cfg.backup.sftp is None:
            raise BackupError(
                "--to sftp needs a backup.sftp block in the config (host, username, key_file, known_hosts): "
                "see docs/backup.md"
            )
        bundle = create_bundle(cfg, config_path, secret)
        run = BackupRun(bundle, target)
        run.retention.append(apply_local_retention(cfg))
        if target == "sftp":
            ship(cfg, run)
    except (BackupError, bc.BundleError) as exc:
        audit.record(
            "backup.create",
            "failure",
            operator=operator,
            bundle=bundle.name if bundle else None,
            target=target,
            error=str(exc),
        )
        audit.close()
        raise
    audit.record(
        "backup.create",
        "success",
        operator=operator,
        bundle=bundle.name,
        size=bundle.size,
        parts=bundle.parts,
        key=secret.kind,
        target=target,
        remote=run.remote,
        removed=[n for r in run.retention for n in r.removed] or None,
    )
    audit.close()
    return run


def ship(cfg: RouterConfig, run: BackupRun) -> None:
    """Copy the run's bundle to the SFTP server, then apply retention there."""
    from .sftp import SftpError

    bundle = run.bundle
    try:
        with sftp_store(cfg) as store:
            store.upload(bundle.path, bundle.name)
            run.remote = f"{_sftp_where(cfg.backup.sftp)}/{bundle.name}"
            run.retention.append(apply_remote_retention(cfg, store))
    except SftpError as exc:
        if run.remote is None:
            raise BackupError(
                f"bundle {bundle.name} was written locally to {bundle.path.parent}, but the off-box copy failed: {exc}"
            ) from None
        raise BackupError(
            f"bundle {bundle.name} was copied to {run.remote}, but retention there failed: {exc}"
        ) from None


def run_scheduled(cfg: RouterConfig, config_path: Path) -> str:
    """The nightly job: create with the configured secret, ship to the configured target, apply retention.
    Returns a one-line summary; raises BackupError (with a message for a person) on failure."""
    try:
        secret = secret_from_config(cfg)
        if secret is None:
            raise bc.SecretError("set backup.passphrase_file or backup.key_file in the config")
    except bc.SecretError as exc:
        audit = AuditLog(cfg.audit_path, "scheduler")
        audit.record("backup.create", "failure", operator=current_operator(), target=cfg.backup.target, error=str(exc))
        audit.close()
        raise BackupError(f"scheduled backup: {exc}") from None
    try:
        return create_and_ship(cfg, config_path, secret, cfg.backup.target, process="scheduler").summary()
    except bc.BundleError as exc:
        raise BackupError(f"scheduled backup: {exc}") from None
