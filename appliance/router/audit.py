"""The audit trail: `audit.jsonl`, one JSON object per line, appended by every router process, hash-chained.

Every entry ends with three members: `seq` (1, 2, 3 … across all processes and rotated files), `prev` (the
`hash` of the entry before it) and `hash` — the sha256 of the entry's JSON text without `hash`, i.e. of the
exact bytes written up to `,"hash":…`, closed with `}`. Changing, deleting, inserting or reordering lines
breaks the chain where it happened; `dicom-router audit verify` (audit_verify.py) names the place.

Several processes write (receiver, forwarder, scheduler, CLI, console). Each append runs under an exclusive
`flock` on `audit.lock` beside the log — never on the log itself, which logrotate renames — held across the
rotation check, finding the previous entry's hash, and the write. So file order is chain order, also across
a rotation. The lock file holds the *head*: seq and hash of the last entry written and the signature (device,
inode, size, mtime) of the file it went to. While the log still matches the head, the previous hash comes
from the head without reading the log. After logrotate renamed the log, the new file's first entry chains
to the head — the last line of the renamed file. When the log does not match the head (something else wrote
or edited it), and on a process's first write, the writer reads and checks the last line. A tail that does
not verify, or a head the file no longer reaches, is recorded as an `audit_chain_broken` entry chained from
the tail as found (so the break is itself on record and the chain goes on), logged at ERROR, and kept in
`audit-chain-breaks.json` until an operator runs `dicom-router audit acknowledge`; `status` shows it.

Durability: an operator's action (an entry with `operator`) and a chain break are fdatasync'd before
record() returns — rare entries a person is accountable for. The receiver's and forwarder's per-object
entries are not: a flush per entry would add a disk round trip to every received object on top of the
spool's own fsync (docs/audit.md has the measurements); a crashed process loses nothing (the kernel holds
the bytes), a power failure at most the kernel's write-back window, and the queue database
(synchronous=FULL) still has every object and job. A tail lost that way shows up as a recorded gap.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .config import RouterConfig

LOG = logging.getLogger("router.audit")

GENESIS = "0" * 64  # `prev` of the very first entry
CHAIN_KEYS = ("seq", "prev", "hash")
LOCK_NAME = "audit.lock"
BREAKS_NAME = "audit-chain-breaks.json"
PATIENT_KEY_NAME = "audit-patient.key"
HEAD_SIZE = 160  # the head is rewritten in place, always this many bytes
_HEAD_MAGIC = "dicom-router-audit-head/1"
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_TAIL_CHUNK = 65536


def current_operator() -> str:
    """The login user, so every operator action names a person, never a shared identity."""
    for var in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:
        return f"uid:{os.getuid()}"


# -- the chain's format ------------------------------------------------------------------------------
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # one encoder: json.dumps(…) builds one per call


def seal(entry: dict[str, Any]) -> bytes:
    """The line for `entry` (which already ends with seq and prev): its JSON text plus its hash, newline."""
    body = _ENCODER.encode(entry)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (body[:-1] + ',"hash":"' + digest + '"}\n').encode()


@dataclass
class Checked:
    """One line of the trail, parsed and checked on its own (not its link to the line before)."""

    raw: bytes  # without the newline
    entry: dict[str, Any] | None  # None: not a JSON object
    claimed: str | None  # the `hash` it carries (when it has one in the right place)
    intact: bool  # claimed == sha256 of its body

    @property
    def chained(self) -> bool:
        return self.entry is not None and "hash" in self.entry

    @property
    def seq(self) -> int | None:
        s = self.entry.get("seq") if self.entry else None
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    @property
    def prev(self) -> str | None:
        p = self.entry.get("prev") if self.entry else None
        return p if isinstance(p, str) else None

    @property
    def link(self) -> str:
        """What the next entry chains to: the hash it claims, or (no usable claim) the hash of its bytes."""
        return self.claimed or hashlib.sha256(self.raw).hexdigest()

    def problem(self) -> str | None:
        if self.entry is None:
            return "is not a JSON object (damaged, or written by hand)"
        if not self.chained:
            return "has no hash (written by hand, or by a tool that does not chain)"
        if self.claimed is None:
            return "does not end with its hash member (reformatted or edited by hand)"
        if not self.intact:
            return "does not match its hash: its content was changed after it was written"
        if self.seq is None or self.prev is None:
            return "has no valid seq/prev members"
        return None


def check_line(raw: bytes) -> Checked:
    raw = raw.rstrip(b"\r\n")
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        return Checked(raw, None, None, False)
    m = _HASH_TAIL.search(raw)
    if m is None:
        return Checked(raw, entry, None, False)
    claimed = m.group(1).decode()
    actual = hashlib.sha256(raw[: m.start()] + b"}").hexdigest()
    return Checked(raw, entry, claimed, hmac.compare_digest(actual, claimed))


# -- the head in the lock file -----------------------------------------------------------------------
class Head(NamedTuple):  # a NamedTuple: built on every entry, and cheap to build
    """The last entry written (seq, hash) and the file it went to, as it was right after the write."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    seq: int
    hash: str

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (self.dev, self.ino, self.size, self.mtime_ns)

    def encode(self) -> bytes:
        text = f"{_HEAD_MAGIC} {self.dev} {self.ino} {self.size} {self.mtime_ns} {self.seq} {self.hash}"
        return text.encode().ljust(HEAD_SIZE - 1) + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Head | None:
        parts = data.decode("ascii", "replace").split()
        if len(parts) != 7 or parts[0] != _HEAD_MAGIC:
            return None
        try:
            dev, ino, size, mtime_ns, seq = (int(x) for x in parts[1:6])
        except ValueError:
            return None
        return cls(dev, ino, size, mtime_ns, seq, parts[6]) if re.fullmatch(r"[0-9a-f]{64}", parts[6]) else None


def lock_path(audit_path: Path) -> Path:
    return Path(audit_path).with_name(LOCK_NAME)


def breaks_path(audit_path: Path) -> Path:
    return Path(audit_path).with_name(BREAKS_NAME)


def read_head(audit_path: Path) -> Head | None:
    try:
        with open(lock_path(audit_path), "rb") as f:
            return Head.decode(f.read(HEAD_SIZE))
    except FileNotFoundError:
        return None


def read_last_line(fd: int, size: int) -> tuple[bytes, bool]:
    """The last line of the open file (without its newline) and whether it is complete (ends with one).
    Reads backwards in chunks: an entry naming 500 jobs is ~100 KB."""
    if size <= 0:
        return b"", True
    end = size
    buf = b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        body = buf[:-1] if buf.endswith(b"\n") else buf
        cut = body.rfind(b"\n")
        if cut >= 0 or end == 0:
            return body[cut + 1 :], buf.endswith(b"\n")
    return buf, buf.endswith(b"\n")  # pragma: no cover (loop always returns)


# -- what the tail says about the chain ---------------------------------------------------------------
class Continuation(NamedTuple):
    """Where the next entry continues: after `seq` with `prev`; `broken` says why the chain broke there."""

    seq: int
    prev: str
    broken: str | None = None
    kind: str | None = None


def continue_from(
    tail: Checked | None, complete: bool, head: Head | None, where: str, changed: bool = False
) -> Continuation:
    """Decide how the next entry chains, given the log's last line (None = the log is empty) and the head.

    `where` names the file for messages; `changed`: the file is not as the head left it (other inode, size
    or mtime). A legacy tail (an entry from before the chain existed) and no head starts the chain without
    alarm: that is the upgrade, not tampering."""
    if tail is None:
        return Continuation(head.seq, head.hash) if head else Continuation(0, GENESIS)
    after = head.seq if head else 0
    if not complete:
        return Continuation(
            after,
            tail.link,
            f"the last line of {where} is incomplete (torn by a crash, a full disk, or an edit)",
            "torn",
        )
    problem = tail.problem()
    if problem is None:
        assert tail.seq is not None
        if head is None or tail.seq > head.seq:
            return Continuation(tail.seq, tail.link)  # a stale head (crash before it was updated) is fine
        if tail.seq == head.seq and tail.claimed == head.hash:
            if not changed:
                return Continuation(tail.seq, tail.link)
            return Continuation(
                tail.seq,
                tail.link,
                f"{where} was modified or replaced outside the router although its last entry is intact "
                "(an editor, sed -i, a copy?) — `audit verify` shows whether and where entries changed",
                "modified",
            )
        if tail.seq == head.seq:
            return Continuation(
                tail.seq,
                tail.link,
                f"the last entry of {where} (seq {tail.seq}) was replaced by another one",
                "replaced",
            )
        return Continuation(
            tail.seq,
            tail.link,
            f"entries seq {tail.seq + 1}–{head.seq} are missing from the end of {where}: the file was truncated, "
            "rewritten or replaced (or lost its last writes in a power failure)",
            "deleted",
        )
    if head is None and tail.entry is not None and not tail.chained:
        return Continuation(0, tail.link)  # the first chained entry after the pre-chain (legacy) entries
    seq = tail.seq if tail.seq is not None and (head is None or tail.seq >= head.seq) else after
    kind = "edited" if tail.chained else "inserted"
    return Continuation(seq, tail.link, f"the last entry of {where} {problem}", kind)


# -- the writer --------------------------------------------------------------------------------------
class AuditLog:
    """Appends hash-chained entries to `path`. One per process and purpose is fine; many are fine too."""

    def __init__(self, path: Path, process: str):
        self.path = Path(path)
        self._path = os.fspath(self.path)  # a str: os.stat on a Path converts it on every call
        self.process = process
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_id: tuple[int, int] | None = None
        self._lock_fd: int | None = None
        self._head_writable = True
        self._pid = -1
        self._tail_checked = False  # the first write of this object reads and checks the log's last line
        self._head: Head | None = None  # the head this object wrote last, and its bytes
        self._head_bytes = b""

    # -- files --
    def _reset_after_fork(self) -> None:
        # A forked child shares the parent's open file descriptions, and flock on a shared one excludes
        # nothing: give the child its own.
        if self._pid != os.getpid():
            self._fd = self._fd_id = self._lock_fd = None
            self._pid = os.getpid()
            self._tail_checked = False

    def _open_lock(self) -> int:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            path = lock_path(self.path)
            try:
                self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
                self._head_writable = True
            except PermissionError:
                # flock works on a read-only descriptor: still serialised, the head just is not kept.
                self._lock_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._head_writable = False
                LOG.warning(
                    "audit: %s is not writable by this user (uid %d): entries are still chained, but by reading "
                    "the log's last line each time — make it group-writable for the router's group",
                    path,
                    os.getuid(),
                )
        return self._lock_fd

    def _log_fd(self, on_disk: os.stat_result | None) -> int:
        """The log's descriptor, reopened when logrotate renamed (or someone deleted) the file we hold."""
        if self._fd is not None and (on_disk is None or (on_disk.st_dev, on_disk.st_ino) != self._fd_id):
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            st = os.fstat(self._fd)
            self._fd_id = (st.st_dev, st.st_ino)
        return self._fd

    # -- chain --
    def _continuation(self, lock_fd: int, st: os.stat_result | None) -> tuple[Continuation, bool]:
        """Under the lock: how the next entry chains, and whether a newline must first end a torn line."""
        raw_head = os.pread(lock_fd, HEAD_SIZE, 0)
        if raw_head == self._head_bytes and self._head is not None:
            head: Head | None = self._head  # what this object wrote last: no need to parse it again
        else:
            head = Head.decode(raw_head)
        if head is not None and st is not None and self._tail_checked and head.matches(st):
            return Continuation(head.seq, head.hash), False  # the fast path: nobody else touched the log
        if st is None or st.st_size == 0:
            return (self._after_rotation(head, st) if head else self._continue_from_rotated()), False
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw, complete = read_last_line(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        changed = head is not None and not head.matches(st)
        return continue_from(check_line(raw), complete, head, self.path.name, changed), not complete

    def _after_rotation(self, head: Head, st: os.stat_result | None) -> Continuation:
        """The log is empty or missing: fine after logrotate renamed it (the renamed file holds the head's
        entry), a break when the file the head's entry went to was emptied or deleted."""
        name = self.path.name
        if st is not None and (st.st_dev, st.st_ino) == (head.dev, head.ino):
            if head.size == 0:
                return Continuation(head.seq, head.hash)
            return Continuation(
                head.seq,
                head.hash,
                f"{name} was emptied although it held the entries up to seq {head.seq} (truncated by hand or by "
                "logrotate's copytruncate, which must not be used)",
                "deleted",
            )
        with os.scandir(self.path.parent) as it:
            for f in it:
                if f.inode() == head.ino and f.name != name and f.stat(follow_symlinks=False).st_dev == head.dev:
                    return Continuation(head.seq, head.hash)  # renamed by logrotate
        newest = self._last_rotated_entry()
        if newest is not None and newest.seq == head.seq and newest.claimed == head.hash:
            return Continuation(head.seq, head.hash)  # renamed and compressed at once (no delaycompress)
        return Continuation(
            head.seq,
            head.hash,
            f"the file holding the entries up to seq {head.seq} is gone: {name} was deleted or replaced, not rotated",
            "deleted",
        )

    def _last_rotated_entry(self) -> Checked | None:
        from .audit_verify import rotated_files  # only on the rare paths after a rotation

        for older in reversed(rotated_files(self.path)):
            last = None
            for raw in _lines(older):
                if raw.strip():
                    last = raw
            if last is not None:
                return check_line(last)
        return None

    def _continue_from_rotated(self) -> Continuation:
        """No head and an empty log: chain to the newest rotated file's last entry (head lost or first run)."""
        last = self._last_rotated_entry()
        return Continuation(0, GENESIS) if last is None else continue_from(last, True, None, "the newest rotated file")

    def _append(
        self, lock_fd: int, st: os.stat_result | None, entry: dict[str, Any], cont: Continuation, newline_first: bool
    ) -> Continuation:
        fd = self._log_fd(st)
        entry["seq"], entry["prev"] = cont.seq + 1, cont.prev
        line = seal(entry)
        os.write(fd, (b"\n" + line) if newline_first else line)
        if "operator" in entry or entry["event"].startswith("audit_chain"):
            os.fdatasync(fd)
        after = os.fstat(fd)
        digest = line[-67:-3].decode()
        if self._head_writable:
            head = Head(after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns, cont.seq + 1, digest)
            self._head, self._head_bytes = head, head.encode()
            os.pwrite(lock_fd, self._head_bytes, 0)
        return Continuation(cont.seq + 1, digest)

    def _entry(self, event: str, outcome: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        entry: dict[str, Any] = {"time": stamp, "event": event, "outcome": outcome, "process": self.process}
        for k, v in fields.items():
            if v is not None:
                entry[f"field_{k}" if k in CHAIN_KEYS or k in entry else k] = v
        return entry

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        entry = self._entry(event, outcome, fields)
        with self._lock:
            try:
                self._reset_after_fork()
                lock_fd = self._open_lock()
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    st = _stat(self._path)
                    cont, newline_first = self._continuation(lock_fd, st)
                    if cont.broken is not None:
                        cont = self._record_break(lock_fd, st, cont, newline_first)
                        newline_first, st = False, _stat(self._path)
                    self._append(lock_fd, st, entry, cont, newline_first)
                    self._tail_checked = True
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                # A full log disk must not stop DICOM traffic; the service log says so once per failure.
                LOG.error(
                    "could not append to the audit log %s: %s — the %s entry is lost; free space or fix the "
                    "permissions of %s",
                    self.path,
                    exc.strerror or exc,
                    event,
                    self.path.parent,
                )

    def _record_break(
        self, lock_fd: int, st: os.stat_result | None, cont: Continuation, newline_first: bool
    ) -> Continuation:
        """Put the break on record, chained from the tail as it is now, so the chain goes on from here."""
        LOG.error(
            "AUDIT TRAIL TAMPERED OR DAMAGED: %s. Recorded as audit_chain_broken (seq %d); run `dicom-router audit "
            "verify`, investigate (docs/audit.md), then `dicom-router audit acknowledge --reason …`",
            cont.broken,
            cont.seq + 1,
        )
        note = {"file": self.path.name, "kind": cont.kind, "what": cont.broken, "after_seq": cont.seq}
        entry = self._entry("audit_chain_broken", "failure", note)
        after = self._append(lock_fd, st, entry, cont, newline_first)
        _add_break({**note, "seq": after.seq, "time": entry["time"], "process": self.process}, self.path)
        return after

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None and self._pid == os.getpid():
                    os.close(fd)
            self._fd = self._fd_id = self._lock_fd = None
            self._tail_checked = False

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _lines(path: Path) -> Any:
    if path.name.endswith(".gz"):
        import gzip

        with gzip.open(path, "rb") as g:
            yield from g
    else:
        with open(path, "rb") as f:
            yield from f


def read_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                entries.append(json.loads(line))
    return entries


# -- breaks waiting for an operator -------------------------------------------------------------------
def _add_break(note: dict[str, Any], audit_path: Path) -> None:
    """Called under the audit lock: append to the list of unacknowledged breaks (atomic replace)."""
    path = breaks_path(audit_path)
    breaks = open_breaks(audit_path)
    breaks.append(note)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(breaks, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        LOG.error("could not write %s (%s): status will not show this audit chain break", path, exc.strerror)


def open_breaks(audit_path: Path) -> list[dict[str, Any]]:
    """Breaks the writers recorded that no operator has acknowledged yet."""
    try:
        data = json.loads(breaks_path(audit_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        return [{"what": f"{breaks_path(audit_path)} is unreadable ({exc}): check it by hand", "kind": "unknown"}]
    return [b for b in data if isinstance(b, dict)] if isinstance(data, list) else []


def acknowledge(audit_path: Path, operator: str, reason: str, ticket: str | None = None) -> list[dict[str, Any]]:
    """Record that a person looked at the open breaks, and clear them from `status`. Returns them."""
    audit = AuditLog(audit_path, "cli")
    audit._reset_after_fork()  # (marks the descriptors as this process's)
    fd = audit._open_lock()
    fcntl.flock(fd, fcntl.LOCK_EX)  # no break is added between reading the list and removing it
    try:
        breaks = open_breaks(audit_path)
        if breaks:
            breaks_path(audit_path).unlink()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    if breaks:
        audit.record(
            "audit_chain_acknowledged",
            operator=operator,
            reason=reason,
            ticket=ticket,
            breaks=[{k: b.get(k) for k in ("seq", "kind", "what", "time")} for b in breaks],
        )
    audit.close()
    return breaks


def chain_problems(audit_path: Path) -> list[str]:
    """For `status`: recorded breaks not yet acknowledged, and a tail that does not verify right now (a
    hand edit no writer has met yet). Cheap: a small JSON file, the lock file and the log's last line."""
    audit_path = Path(audit_path)
    problems = []
    for b in open_breaks(audit_path):
        when = f", noticed {b['time']} by the {b.get('process', '?')}" if b.get("time") else ""
        at = f" (seq {b['seq']})" if b.get("seq") else ""
        problems.append(
            f"audit trail broken{at}: {b.get('what')}{when} — run `dicom-router audit verify`, find out why "
            "(docs/audit.md), then `dicom-router audit acknowledge --reason …`"
        )
    try:
        fd = os.open(audit_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return problems
    except OSError as exc:
        why = f"{exc.strerror} (run status as the router's user)"
        return problems + [f"audit trail {audit_path} cannot be checked: {why}"]
    lock_fd = None
    try:
        try:
            lock_fd = os.open(lock_path(audit_path), os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(lock_fd, fcntl.LOCK_SH)  # no half-written line; the head and the tail agree
        except FileNotFoundError:
            pass
        head = read_head(audit_path)
        st = os.fstat(fd)
        raw, complete = read_last_line(fd, st.st_size)
    except OSError as exc:
        return problems + [f"audit trail {audit_path} cannot be checked: {exc.strerror}"]
    finally:
        os.close(fd)
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock
    if raw or not complete:
        changed = head is not None and not head.matches(st)
        cont = continue_from(check_line(raw), complete, head, audit_path.name, changed)
        if cont.broken and not any(b.get("what") == cont.broken for b in open_breaks(audit_path)):
            problems.append(
                f"audit trail: {cont.broken} — not yet recorded by a writer; run `dicom-router audit verify`"
            )
    return problems


# -- Patient ID per policy ---------------------------------------------------------------------------
_patient_keys: dict[Path, bytes] = {}


def patient_key(key_dir: Path) -> bytes:
    """The secret behind `patient_ids: hash` (router.tls_dir/audit-patient.key, made on first use). Keyed, so a
    reader of the audit trail cannot recover Patient IDs by hashing guesses. It lives beside the TLS keys
    because backups carry that directory (keys kept private) and a full restore puts it back: hashes in the
    old audit files stay searchable on a rebuilt appliance."""
    path = Path(key_dir) / PATIENT_KEY_NAME
    key = _patient_keys.get(path)
    if key is not None:
        return key
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{PATIENT_KEY_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never replaces: two first users end up with one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        key = path.read_bytes()
    if len(key) < 16:
        raise OSError(errno.EINVAL, f"{path} holds {len(key)} bytes, not a key: restore it from a backup")
    _patient_keys[path] = key
    return key


def patient_hash(key_dir: Path, patient_id: str) -> str:
    digest = hmac.new(patient_key(key_dir), patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:32]


def patient_field(cfg: RouterConfig, patient_id: str | None) -> dict[str, str]:
    """The Patient ID as `cfg.audit.patient_ids` allows: `{}` (omit), `{"patient_id_hash": …}` (keyed hash;
    `dicom-router audit patient-hash ID` computes it for a search) or `{"patient_id": …}` (include).
    Use as `audit.record(…, **patient_field(cfg, pid))`. Names and birth dates never go in the trail."""
    if not patient_id or cfg.audit.patient_ids == "omit":
        return {}
    if cfg.audit.patient_ids == "include":
        return {"patient_id": patient_id}
    try:
        return {"patient_id_hash": patient_hash(cfg.router.tls_dir, patient_id)}
    except OSError as exc:
        LOG.error("audit: cannot use the Patient ID key (%s): Patient ID left out of the entry", exc)
        return {"patient_id_hash": "unavailable"}
