"""`dicom-router audit verify`: check the kept audit trail entry by entry and link by link.

The files are read in chain order: logrotate's dated files oldest first (`audit.jsonl-YYYYMMDD`, older
ones compressed `.gz`, read as they are), then `audit.jsonl`. Each entry must match its own hash and carry
the seq after, and the hash of, the entry before it. Where that fails the report names the first broken
entry (file, line, seq) and what happened there: edited, inserted, deleted, reordered, replaced, torn.
After a break the check goes on from the entry as found (the writers chain that way too), so later breaks
are listed as well. The lock file's head (the last entry the router wrote) also reveals entries cut off
the end. Files removed by retention are no break: the chain is verified from the oldest kept entry.
"""

from __future__ import annotations

import fcntl
import os
import re
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from .audit import GENESIS, Checked, Head, check_line, lock_path, read_head

LOOKAHEAD = 5000  # entries read ahead to tell "moved" from "deleted"
RECENT = 50000  # entries remembered behind, to name duplicates and the genuine one of two with one seq
MAX_BREAKS = 50


def rotated_files(audit_path: Path) -> list[Path]:
    """logrotate's renamed copies of `audit_path`, oldest first (dated names sort in time order)."""
    audit_path = Path(audit_path)
    pattern = re.compile(re.escape(audit_path.name) + r"-(\d[\w.-]*?)(\.gz)?")
    found = []
    try:
        names = os.listdir(audit_path.parent)
    except FileNotFoundError:
        return []
    for name in names:
        m = pattern.fullmatch(name)
        if m and not name.endswith(".tmp"):
            found.append((m.group(1), name))
    return [audit_path.parent / name for _, name in sorted(found)]


@dataclass
class Break:
    file: str
    line: int
    seq: int | None
    kind: str  # edited, inserted, deleted, reordered, replaced, duplicated, torn, damaged
    message: str
    position: int = 0  # in reading order, to sort breaks found late (an insertion is seen at the next entry)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "seq": self.seq, "kind": self.kind, "message": self.message}

    def describe(self) -> str:
        seq = f", seq {self.seq}" if self.seq is not None else ""
        return f"{self.file} line {self.line}{seq}: {self.kind.upper()} — {self.message}"


@dataclass
class FileSummary:
    name: str
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, "entries": self.entries, "first_seq": self.first_seq, "last_seq": self.last_seq}


@dataclass
class Report:
    directory: str
    files: list[FileSummary] = field(default_factory=list)
    entries: int = 0
    legacy_entries: int = 0  # before the chain existed (an older release): kept, not protected
    first_seq: int | None = None
    last_seq: int | None = None
    starts_at: str | None = None
    breaks: list[Break] = field(default_factory=list)
    recorded: list[dict[str, Any]] = field(default_factory=list)  # audit_chain_broken entries
    acknowledged: list[dict[str, Any]] = field(default_factory=list)  # audit_chain_acknowledged entries
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks and not self.recorded

    @property
    def unacknowledged(self) -> int:
        """Breaks (found or recorded) after the last `audit acknowledge`: what a nightly check alarms on."""
        acked = max((a["position"] for a in self.acknowledged), default=0)
        found = sum(1 for b in self.breaks if b.position > acked)
        return found + sum(1 for r in self.recorded if r["position"] > acked)

    @property
    def first_break(self) -> Break | None:
        return min(self.breaks, key=lambda b: b.position) if self.breaks else None

    def as_dict(self) -> dict[str, Any]:
        first = self.first_break
        return {
            "ok": self.ok,
            "directory": self.directory,
            "files": [f.as_dict() for f in self.files],
            "entries": self.entries,
            "legacy_entries": self.legacy_entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "starts_at": self.starts_at,
            "first_break": first.as_dict() if first else None,
            "breaks": [b.as_dict() for b in sorted(self.breaks, key=lambda b: b.position)],
            "unacknowledged_breaks": self.unacknowledged,
            "recorded_breaks": self.recorded,
            "acknowledged": self.acknowledged,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _Loc:
    """Where an entry is: all that is remembered of the entries behind (memory stays flat on long trails)."""

    file: str
    line: int
    seq: int | None
    position: int


@dataclass
class _Item:
    position: int
    file: str
    line: int
    checked: Checked
    complete: bool
    first_in_file: bool
    error: str | None = None  # the file could not be read on from here (a damaged .gz)

    @property
    def loc(self) -> _Loc:
        return _Loc(self.file, self.line, self.checked.seq, self.position)


class _Stream:
    """The trail's lines in order, with look-ahead."""

    def __init__(self, sources: list[tuple[str, IO[bytes]]]):
        self._gen = self._items(sources)
        self._buf: deque[_Item] = deque()

    def _items(self, sources: list[tuple[str, IO[bytes]]]) -> Iterator[_Item]:
        pos = 0
        for name, f in sources:
            first, n = True, 0
            try:
                for n, raw in enumerate(f, 1):
                    pos += 1
                    yield _Item(pos, name, n, check_line(raw), raw.endswith(b"\n"), first)
                    first = False
            except (OSError, EOFError, zlib.error) as exc:
                pos += 1
                yield _Item(pos, name, n + 1, check_line(b""), True, first, f"the file cannot be read on: {exc}")

    def next(self) -> _Item | None:
        if self._buf:
            return self._buf.popleft()
        return next(self._gen, None)

    def peek(self, k: int = 1) -> _Item | None:
        while len(self._buf) < k:
            item = next(self._gen, None)
            if item is None:
                return None
            self._buf.append(item)
        return self._buf[k - 1]

    def find(self, want: set[int], limit: int = LOOKAHEAD) -> _Item | None:
        for k in range(1, limit + 1):
            item = self.peek(k)
            if item is None:
                return None
            if item.checked.seq in want and item.checked.problem() is None:
                return item
        return None


def _open(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        import gzip

        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


class _Checker:
    def __init__(self, report: Report, stream: _Stream):
        self.r = report
        self.s = stream
        self.link: str | None = None  # what the next entry's prev must be
        self.seq: int | None = None  # the seq of the last entry in the chain
        self.started = False
        self.recent: OrderedDict[int, tuple[str, _Loc]] = OrderedDict()
        self.moved: set[int] = set()  # seqs already reported as moved: no second break when they turn up
        self.last: _Item | None = None

    def add(self, item: _Item, kind: str, message: str, *, at: _Loc | None = None) -> None:
        if len(self.r.breaks) < MAX_BREAKS:
            where = at or item.loc
            self.r.breaks.append(Break(where.file, where.line, where.seq, kind, message, where.position))

    def remember(self, item: _Item) -> None:
        c = item.checked
        if c.seq is not None:
            self.recent[c.seq] = (c.link, item.loc)
            if len(self.recent) > RECENT:
                self.recent.popitem(last=False)

    def run(self) -> None:
        while (item := self.s.next()) is not None:
            self.count(item)
            self.step(item)

    def count(self, item: _Item) -> None:
        summary = self.r.files[-1] if self.r.files and self.r.files[-1].name == item.file else None
        if summary is None:
            summary = FileSummary(item.file)
            self.r.files.append(summary)
        summary.entries += 1
        self.r.entries += 1
        seq = item.checked.seq
        if seq is not None:
            summary.first_seq = seq if summary.first_seq is None else summary.first_seq
            summary.last_seq = seq
        e = item.checked.entry or {}
        event = e.get("event")
        if event in ("audit_chain_broken", "audit_chain_acknowledged") and item.checked.problem() is None:
            note = {"file": item.file, "line": item.line, "seq": seq, "time": e.get("time"), "position": item.position}
            if event == "audit_chain_broken":
                self.r.recorded.append({**note, "process": e.get("process"), "what": e.get("what")})
            else:
                who = {k: e.get(k) for k in ("operator", "reason", "ticket")}
                self.r.acknowledged.append({**note, **who})

    def skipped_by_chain(self) -> bool:
        """The next entry links to what this one should have linked from: this line is not in the chain."""
        nxt = self.s.peek()
        return nxt is not None and self.link is not None and nxt.checked.prev == self.link

    def step(self, item: _Item) -> None:
        c = item.checked
        if item.error is not None:
            self.add(item, "damaged", item.error)
            return
        if not item.complete:
            self.add(item, "torn", "the line is incomplete: a crash or a full disk while writing, or an edit")
            self.link = c.link
            return
        if c.entry is None or not c.chained:
            if c.entry is not None and not self.started:
                self.r.legacy_entries += 1  # written before the chain existed
                self.link = c.link
                return
            what = "is not a JSON entry" if c.entry is None else "has no hash"
            if self.skipped_by_chain():
                self.add(item, "inserted", f"this line {what} and the chain goes round it: it was added")
            elif c.entry is None and c.raw.startswith(b"{") and not c.raw.rstrip().endswith(b"}"):
                self.add(item, "torn", "the line is the start of an entry only: a crash or a full disk while writing")
                self.link = c.link
            else:
                self.add(item, "damaged" if c.entry is None else "inserted", f"this line {what}")
                self.link = c.link
            return
        problem = c.problem()
        if problem is not None:
            nxt = self.s.peek()
            if c.claimed and nxt is not None and nxt.checked.prev == c.claimed:
                self.add(item, "edited", f"the entry {problem}")
            elif self.skipped_by_chain():
                self.add(item, "inserted", f"the entry {problem}, and the chain goes round it: it was added")
                return
            else:
                self.add(item, "edited", f"the entry {problem}")
            self.link, self.seq = c.link, c.seq if c.seq is not None else self.seq
            self.remember(item)
            return
        assert c.seq is not None and c.prev is not None
        if not self.started:
            self.start(item)
        else:
            self.link_check(item)
        self.last = item

    def start(self, item: _Item) -> None:
        c = item.checked
        assert c.seq is not None
        self.started = True
        self.r.first_seq = c.seq
        self.r.starts_at = f"{item.file} line {item.line} (seq {c.seq})"
        if self.r.legacy_entries:
            if c.prev != self.link:
                self.add(item, "inserted", "the first chained entry does not link to the last entry before the chain")
        elif c.seq != 1 or c.prev != GENESIS:
            self.r.notes.append(
                f"the chain starts at seq {c.seq} in {item.file}: the entries before it were in files no longer kept "
                "(removed by the retention period) — verified from there"
            )
        self.accept(item)

    def accept(self, item: _Item) -> None:
        self.link, self.seq = item.checked.link, item.checked.seq
        self.remember(item)

    def link_check(self, item: _Item) -> None:
        c = item.checked
        assert c.seq is not None and self.seq is not None
        expected = self.seq + 1
        if c.seq == expected and c.prev == self.link:
            self.accept(item)
            return
        if c.seq in self.moved:
            self.moved.discard(c.seq)  # already reported where it should have been
            self.remember(item)
            return
        seen = self.recent.get(c.seq)
        if seen is not None:
            self.same_seq_twice(item, seen)
            return
        if c.seq > expected:
            self.gap(item, expected)
            return
        if c.seq < expected:
            self.add(item, "reordered", f"seq {c.seq} comes after seq {self.seq}: lines were moved")
            self.remember(item)
            return
        # right seq, wrong link: the entry before it was replaced (its hash recomputed) — or this one was
        before = self.last or item
        self.add(
            item,
            "replaced",
            f"{item.file} line {item.line} (seq {c.seq}) links to a different entry: this one was replaced by an "
            "entry with a recomputed hash",
            at=before.loc if before is not item else None,
        )
        self.accept(item)

    def same_seq_twice(self, item: _Item, seen: tuple[str, _Loc]) -> None:
        c = item.checked
        assert c.seq is not None
        hash_seen, earlier = seen
        if hash_seen == c.link:
            self.add(item, "duplicated", f"a copy of {earlier.file} line {earlier.line}")
            return
        nxt = self.s.find({c.seq + 1}, 2)
        if nxt is not None and nxt.checked.prev == c.link:
            # the chain goes on from this one: the earlier entry with this seq was the insertion
            self.add(
                item,
                "inserted",
                f"{earlier.file} line {earlier.line} (seq {c.seq}) was added: the chain goes on from "
                f"{item.file} line {item.line}, which carries the same seq",
                at=earlier,
            )
            self.accept(item)
        else:
            self.add(item, "inserted", f"seq {c.seq} appears twice (also {earlier.file} line {earlier.line})")

    def gap(self, item: _Item, expected: int) -> None:
        c = item.checked
        assert c.seq is not None
        missing = set(range(expected, c.seq))
        later = self.s.find(missing) if len(missing) <= LOOKAHEAD else None
        if later is not None:
            self.moved |= missing
            self.add(
                item,
                "reordered",
                f"seq {c.seq} comes before seq {later.checked.seq} ({later.file} line {later.line}): lines were moved",
            )
        else:
            n = len(missing)
            span = f"seq {expected}" if n == 1 else f"seq {expected}–{c.seq - 1}"
            where = ""
            if item.first_in_file:
                where = " (at the start of this file: a whole rotated file may have been deleted)"
            self.add(item, "deleted", f"{n} entr{'y' if n == 1 else 'ies'} missing before this one ({span}){where}")
        self.accept(item)


def _snapshot(audit_path: Path) -> tuple[Head | None, int | None]:
    """Under a shared lock: the head and the size of audit.jsonl at the same moment, so a verify running
    beside the writers reads a consistent prefix (no half-written line, no head ahead of the file)."""
    try:
        fd = os.open(lock_path(audit_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        head = read_head(audit_path)
        try:
            size = os.stat(audit_path).st_size
        except FileNotFoundError:
            size = None
        return head, size
    finally:
        if fd is not None:
            os.close(fd)


class _Prefix:
    """The first `size` bytes of a file, line by line."""

    def __init__(self, path: Path, size: int):
        self._f = open(path, "rb")
        self._left = size

    def __iter__(self) -> Iterator[bytes]:
        for line in self._f:
            if self._left <= 0:
                return
            line = line[: self._left]
            self._left -= len(line)
            yield line

    def close(self) -> None:
        self._f.close()


def trail_files(audit_path: Path, start: str | None = None) -> list[Path]:
    files = rotated_files(audit_path)
    if Path(audit_path).exists():
        files.append(Path(audit_path))
    if start is None:
        return files
    names = [f.name for f in files]
    wanted = Path(start).name
    if wanted not in names:
        raise ValueError(
            f"--from {start}: no such file of the audit trail in {Path(audit_path).parent} "
            f"(there are: {', '.join(names) or 'none'})"
        )
    return files[names.index(wanted) :]


def verify(audit_path: Path, start: str | None = None) -> Report:
    """Check the trail of `audit_path` (rotated files too), from the file named `start` if given."""
    audit_path = Path(audit_path)
    head, size = _snapshot(audit_path)
    files = trail_files(audit_path, start)
    report = Report(str(audit_path.parent))
    sources: list[tuple[str, Any]] = []
    try:
        for f in files:
            if f == audit_path:
                sources.append((f.name, _Prefix(f, size or 0)))
            else:
                sources.append((f.name, _open(f)))
        checker = _Checker(report, _Stream(sources))
        checker.run()
    finally:
        for _, src in sources:
            src.close()
    report.last_seq = checker.seq
    _check_head(report, checker, head)
    if report.legacy_entries:
        report.notes.append(
            f"{report.legacy_entries} entr{'y' if report.legacy_entries == 1 else 'ies'} before the chain started "
            "(written by a release without the hash chain) are kept but not protected by it"
        )
    return report


def _check_head(report: Report, checker: _Checker, head: Head | None) -> None:
    """Entries cut off the end leave the chain intact; the head in the lock file still knows them."""
    if head is None:
        return
    last = checker.last
    if last is None and not checker.started:
        if head.seq > 0 and not report.legacy_entries:
            report.breaks.append(
                Break(Path(report.directory, "audit.jsonl").name, 0, None, "deleted",
                      f"the trail holds no chained entries, but the router wrote up to seq {head.seq} (its lock file "
                      "says so): the files were deleted or emptied", 10**12)
            )  # fmt: skip
        return
    if checker.seq is None or last is None:
        return
    if head.seq > checker.seq:
        report.breaks.append(
            Break(last.file, last.line + 1, checker.seq + 1, "deleted",
                  f"entries seq {checker.seq + 1}–{head.seq} are missing from the end: the router wrote them (its "
                  "lock file says so) but the file ends at seq " + str(checker.seq), last.position + 1)
        )  # fmt: skip
    elif head.seq == last.checked.seq and head.hash != last.checked.link:
        report.breaks.append(
            Break(last.file, last.line, checker.seq, "replaced",
                  "the last entry is not the one the router wrote (its lock file has another hash)", last.position)
        )  # fmt: skip


def render(report: Report) -> str:
    lines = []
    files = report.files
    what = f"{len(files)} file(s), {report.entries} line(s)"
    if report.first_seq is not None:
        what += f", seq {report.first_seq}–{report.last_seq}"
    lines.append(f"audit trail in {report.directory}: {what}")
    for f in files:
        span = f"seq {f.first_seq}–{f.last_seq}" if f.first_seq is not None else "no chained entries"
        lines.append(f"  {f.name:<28} {f.entries:>8} line(s)  {span}")
    first = report.first_break
    if first is None and not report.recorded and not report.entries:
        lines.append("no entries yet: nothing to verify")
    elif first is None and not report.recorded:
        lines.append("INTACT: every entry matches its hash and links to the one before it.")
    elif first is None:
        lines.append(
            "BROKEN EARLIER: the chain links as it is now, but the router recorded break(s) it found when writing:"
        )
    else:
        lines.append(f"BROKEN: first broken entry at {first.describe()}")
        others = sorted(report.breaks, key=lambda b: b.position)[1:]
        for b in others[:20]:
            lines.append(f"  also: {b.describe()}")
        if len(others) > 20:
            lines.append(f"  … and {len(others) - 20} more (see --json)")
    for r in report.recorded:
        lines.append(f"  recorded by the {r['process']} at {r['time']} (seq {r['seq']}): {r['what']}")
    for a in report.acknowledged:
        ticket = f", ticket {a['ticket']}" if a.get("ticket") else ""
        lines.append(f"  acknowledged by {a['operator']} at {a['time']}{ticket}: {a['reason']}")
    if report.starts_at:
        lines.append(f"  chain verified from {report.starts_at}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    if not report.ok:
        lines.append(
            "What to do: keep a copy of these files as they are (evidence), find out who changed them and why "
            "(docs/audit.md, 'A broken chain'), then `dicom-router audit acknowledge --reason …` to clear status"
        )
    return "\n".join(lines)
