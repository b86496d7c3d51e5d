"""The queue: instances and their per-destination jobs, in SQLite. ALL queue SQL lives in this module.

Narrow interface (what a PostgreSQL backend would implement too): add_instance, claim, ack, retry_later,
fail, give_back, operator actions (retry/hold/release/cancel), list/count with filters, stats; and for
routing: complete_studies (study/series completion), map_uid (stable replacement UIDs), study_counts,
list_studies, conflicts.

add_instance keeps the delivery ledger (an object identical to one a destination already has or is getting
is SKIPPED there; a different object reusing a SOP Instance UID is a conflict, held by default) and the
study/series tracking that WAITING jobs (routes with `forward: series|study`) are released by.

Durability: WAL with synchronous=FULL for the receiver (a committed row backs a Success the sender
saw). Forwarder connections may use synchronous=NORMAL: losing one of its commits to a power cut can
only make a job be sent again (at-least-once), never lose one. Claims run in BEGIN IMMEDIATE with a
lease; a claim whose lease ran out, or whose process is gone, goes back to `queued`.
"""

from __future__ import annotations

import enum
import json
import os
import random
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

SCHEMA_VERSION = 3  # 2: content hashes, delivery ledger, study/series tracking, UID map, job morph/transcode
# 3: storage commitment (jobs.awaiting_commit, commit_tx, sent_uid; the commitments table; state committed)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"
    CANCELLED = "cancelled"
    WAITING = "waiting"  # for its study or series to be complete (route `forward: study|series`)
    SKIPPED = "skipped"  # an identical object already went (or is going) to this destination
    COMMITTED = "committed"  # done, and the destination confirmed by storage commitment that it keeps it


# A DONE job whose destination asks for storage commitment still awaits its report (`awaiting_commit`): its
# instance is not finished and its spool file is kept until the report commits (or fails) it.
TERMINAL = (JobState.DONE, JobState.CANCELLED, JobState.SKIPPED, JobState.COMMITTED)
# Jobs the delivery ledger counts: the object is at the destination or on its way there.
_LEDGER_STATES = (
    JobState.QUEUED,
    JobState.SENDING,
    JobState.WAITING,
    JobState.HELD,
    JobState.DONE,
    JobState.COMMITTED,
)
# Not a job state: a filter for DONE jobs still awaiting their storage commitment report.
AWAITING_COMMITMENT = "awaiting-commitment"
# commitments.state
COMMIT_REQUESTING = "requesting"  # N-ACTION being sent (a forwarder crash here leaves it: re-requested at start)
COMMIT_PENDING = "pending"  # the destination accepted the request; its report has not come
COMMIT_REPORTED = "reported"
COMMIT_ABANDONED = "abandoned"  # the request failed or its forwarder died mid-request: its jobs are asked again
ON_CONFLICT_HOLD = "hold"
ON_CONFLICT_FORWARD = "forward"
WAIT_FOR = ("series", "study")
# `unrouted` is not a job state: it is an instance that matched no route (it has no jobs at all).
UNROUTED = "unrouted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id               INTEGER PRIMARY KEY,
    spool_key        TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    study_uid        TEXT,
    series_uid       TEXT,
    patient_id       TEXT,
    accession        TEXT,
    modality         TEXT,
    calling_ae       TEXT,
    called_ae        TEXT,
    source_node      TEXT,
    size_bytes       INTEGER NOT NULL,
    received_at      REAL NOT NULL,
    routed           INTEGER NOT NULL,
    spool_state      TEXT NOT NULL DEFAULT 'kept',   -- kept | deleted
    finished_at      REAL,
    content_sha256   TEXT,                           -- of the spooled file, hashed while it was written
    late             INTEGER NOT NULL DEFAULT 0,     -- arrived after its study/series was complete
    conflict_of      INTEGER                         -- an earlier instance: same SOP Instance UID, other content
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS instances_accession ON instances(accession);
CREATE INDEX IF NOT EXISTS instances_patient ON instances(patient_id);
CREATE INDEX IF NOT EXISTS instances_unrouted ON instances(routed) WHERE routed = 0;
CREATE INDEX IF NOT EXISTS instances_sweep ON instances(finished_at) WHERE spool_state = 'kept';
CREATE INDEX IF NOT EXISTS instances_sop ON instances(sop_instance_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY,
    instance_id     INTEGER NOT NULL REFERENCES instances(id),
    destination     TEXT NOT NULL,
    route           TEXT,
    priority        INTEGER NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until     REAL,
    claimed_by      TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    done_at         REAL,
    morph           TEXT NOT NULL DEFAULT '[]',         -- JSON list of morph profile names, in order
    transcode       TEXT NOT NULL DEFAULT 'decompress', -- decompress | never
    wait_for        TEXT                                -- NULL | series | study
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(destination, state, priority, id);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(destination, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_instance ON jobs(instance_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, destination);
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs(state, id);
CREATE TABLE IF NOT EXISTS job_events (
    id      INTEGER PRIMARY KEY,
    job_id  INTEGER NOT NULL,
    at      REAL NOT NULL,
    event   TEXT NOT NULL,
    status  INTEGER,
    detail  TEXT,
    actor   TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id);
CREATE INDEX IF NOT EXISTS job_events_recent ON job_events(event, at);
CREATE TABLE IF NOT EXISTS destinations (
    name                 TEXT PRIMARY KEY,
    circuit              TEXT NOT NULL DEFAULT 'closed',
    circuit_since        REAL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    last_success_at      REAL,
    paused               INTEGER NOT NULL DEFAULT 0,
    paused_by            TEXT,
    paused_reason        TEXT,
    paused_at            REAL
);
CREATE TABLE IF NOT EXISTS processes (
    name         TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    detail       TEXT,
    config_sha   TEXT
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid    TEXT PRIMARY KEY,
    patient_id   TEXT,
    first_at     REAL NOT NULL,
    last_at      REAL NOT NULL,
    instances    INTEGER NOT NULL DEFAULT 0,   -- distinct SOP Instance UIDs received
    expected     INTEGER,                      -- NumberOfStudyRelatedInstances, when a sender gave it
    state        TEXT NOT NULL DEFAULT 'open', -- open | complete
    completed_at REAL,
    late_count   INTEGER NOT NULL DEFAULT 0
);
-- Indexes leave out last_at, which every received object updates: open studies are few (they complete after
-- the quiet time) and are scanned; complete ones are found by last_at only for pruning.
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE INDEX IF NOT EXISTS studies_prune ON studies(last_at) WHERE state = 'complete';
CREATE TABLE IF NOT EXISTS series (
    series_uid   TEXT PRIMARY KEY,
    study_uid    TEXT,
    instances    INTEGER NOT NULL DEFAULT 0,
    expected     INTEGER,                      -- NumberOfSeriesRelatedInstances, when a sender gave it
    last_at      REAL NOT NULL,
    state        TEXT NOT NULL DEFAULT 'open',
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE INDEX IF NOT EXISTS series_prune ON series(last_at) WHERE state = 'complete';
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS commitments (
    transaction_uid TEXT PRIMARY KEY,
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL,                  -- requesting | pending | reported | abandoned
    requester       TEXT,                           -- host:pid:destination:worker that sent the N-ACTION
    requested_at    REAL NOT NULL,
    objects         INTEGER NOT NULL,
    reported_at     REAL,
    committed       INTEGER,
    failed          INTEGER,
    reporter        TEXT,                           -- where the report came from (same association / AE@host)
    error           TEXT,                           -- why the request failed (abandoned)
    overdue_noted   INTEGER NOT NULL DEFAULT 0      -- commitment_overdue audited for it
);
CREATE INDEX IF NOT EXISTS commitments_open ON commitments(state, destination) WHERE state IN ('requesting', 'pending');
CREATE TABLE IF NOT EXISTS uid_map (
    namespace   TEXT NOT NULL,
    original    TEXT NOT NULL,
    replacement TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (namespace, original)
);
"""

# Indexes on columns that _ADDED_COLUMNS may have just added (an older database gets them after the upgrade).
_SCHEMA_AFTER_UPGRADE = """
CREATE INDEX IF NOT EXISTS instances_late ON instances(late) WHERE late = 1;
CREATE INDEX IF NOT EXISTS instances_conflict ON instances(conflict_of) WHERE conflict_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_awaiting_commit ON jobs(destination, commit_tx) WHERE awaiting_commit = 1;
"""


@dataclass(frozen=True)
class InstanceFacts:
    """What the router knows about one received object (read once, at receive time)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size_bytes: int
    study_uid: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None
    accession: str | None = None
    modality: str | None = None
    calling_ae: str | None = None
    called_ae: str | None = None
    source_node: str | None = None
    content_sha256: str | None = None  # None: no ledger check (the content cannot be compared)
    expected_in_study: int | None = None  # NumberOfStudyRelatedInstances, if the sender gave it
    expected_in_series: int | None = None  # NumberOfSeriesRelatedInstances, if the sender gave it


@dataclass(frozen=True)
class NewJob:
    destination: str
    route: str
    priority: int
    hold_reason: str | None = None  # not None: created HELD, this text as the event's detail
    wait_for: str | None = None  # None | "series" | "study": created WAITING until that is complete
    morph: tuple[str, ...] = ()  # morph profile names, applied in order on the way out
    transcode: str = "decompress"  # "decompress" | "never"

    def __post_init__(self) -> None:
        if self.wait_for is not None and self.wait_for not in WAIT_FOR:
            raise ValueError(f"NewJob.wait_for must be None, 'series' or 'study', not {self.wait_for!r}")


@dataclass(frozen=True)
class Duplicate:
    """A job not created as sendable: this destination already has (or is getting) an identical object."""

    destination: str
    job_id: int  # the new job, SKIPPED
    earlier_job_id: int
    earlier_state: str


@dataclass(frozen=True)
class Conflict:
    """The SOP Instance UID was seen before with other content. `destination` None: no destination of this
    object has had the earlier version (flagged only)."""

    earlier_instance_id: int
    earlier_sha256: str
    destination: str | None = None
    job_id: int | None = None  # the new job to that destination
    earlier_job_id: int | None = None  # the job that took (or takes) the earlier version there
    held: bool = False  # router.on_conflict: hold


@dataclass(frozen=True)
class InstanceAdded:
    """What add_instance decided, for the receiver's log and audit."""

    instance_id: int
    job_ids: list[int] = field(default_factory=list)
    skipped: list[Duplicate] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    late: bool = False  # its study/series was already complete: forwarded at once as a delta
    held: list[int] = field(default_factory=list)  # jobs created HELD (route hold or conflict)
    waiting: list[int] = field(default_factory=list)  # jobs created WAITING for their study/series


@dataclass(frozen=True)
class Job:
    id: int
    instance_id: int
    destination: str
    route: str | None
    priority: int
    state: str
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    done_at: float | None
    spool_key: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str | None
    patient_id: str | None
    accession: str | None
    modality: str | None
    calling_ae: str | None
    size_bytes: int
    received_at: float
    morph: tuple[str, ...] = ()
    transcode: str = "decompress"
    wait_for: str | None = None
    series_uid: str | None = None
    content_sha256: str | None = None
    awaiting_commit: bool = False  # DONE, its storage commitment report not yet in
    commit_tx: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["morph"] = tuple(json.loads(values["morph"] or "[]"))
        values["awaiting_commit"] = bool(values.get("awaiting_commit"))
        return cls(**values)


_JOB_COLUMNS = (
    "j.id, j.instance_id, j.destination, j.route, j.priority, j.state, j.attempts, j.next_attempt_at, "
    "j.last_status, j.last_error, j.created_at, j.updated_at, j.done_at, i.spool_key, i.sop_instance_uid, "
    "i.sop_class_uid, i.transfer_syntax, i.study_uid, i.patient_id, i.accession, i.modality, i.calling_ae, "
    "i.size_bytes, i.received_at, j.morph, j.transcode, j.wait_for, i.series_uid, i.content_sha256, "
    "j.awaiting_commit, j.commit_tx"
)


@dataclass
class JobFilter:
    """Selects jobs for listing and operator actions. Empty filter = every job."""

    ids: Sequence[int] = ()
    destination: str | None = None
    states: Sequence[str] = ()
    study_uid: str | None = None
    sop_instance_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    older_than_seconds: float | None = None

    def is_empty(self) -> bool:
        return not (
            self.ids
            or self.destination
            or self.states
            or self.study_uid
            or self.sop_instance_uid
            or self.accession
            or self.patient_id
            or self.older_than_seconds is not None
        )

    def where(self, now: float) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.ids:
            clauses.append(f"j.id IN ({','.join('?' * len(self.ids))})")
            args += list(self.ids)
        if self.destination:
            clauses.append("j.destination = ?")
            args.append(self.destination)
        if self.states:
            states = [s for s in self.states if s != AWAITING_COMMITMENT]
            either = [f"j.state IN ({','.join('?' * len(states))})"] if states else []
            if AWAITING_COMMITMENT in self.states:
                either.append("(j.state = 'done' AND j.awaiting_commit = 1)")
            clauses.append(f"({' OR '.join(either)})")
            args += states
        for column, value in (
            ("i.study_uid", self.study_uid),
            ("i.sop_instance_uid", self.sop_instance_uid),
            ("i.accession", self.accession),
            ("i.patient_id", self.patient_id),
        ):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.older_than_seconds is not None:
            clauses.append("i.received_at < ?")
            args.append(now - self.older_than_seconds)
        return (" AND ".join(clauses) or "1"), args


_ADDED_COLUMNS = (
    ("processes", "config_sha", "TEXT"),  # which config version each process runs
    ("destinations", "paused", "INTEGER NOT NULL DEFAULT 0"),  # operator paused sending
    ("destinations", "paused_by", "TEXT"),
    ("destinations", "paused_reason", "TEXT"),
    ("destinations", "paused_at", "REAL"),
    ("instances", "content_sha256", "TEXT"),  # schema 2: the delivery ledger and study tracking
    ("instances", "late", "INTEGER NOT NULL DEFAULT 0"),
    ("instances", "conflict_of", "INTEGER"),
    ("jobs", "morph", "TEXT NOT NULL DEFAULT '[]'"),
    ("jobs", "transcode", "TEXT NOT NULL DEFAULT 'decompress'"),
    ("jobs", "wait_for", "TEXT"),
    ("jobs", "awaiting_commit", "INTEGER NOT NULL DEFAULT 0"),  # schema 3: storage commitment
    ("jobs", "commit_tx", "TEXT"),  # the Transaction UID its commitment was asked under
    ("jobs", "sent_uid", "TEXT"),  # SOP Instance UID the destination got, when morphing replaced it
)


@dataclass(frozen=True)
class StudySweep:
    """What one complete_studies pass did."""

    studies_completed: int = 0
    series_completed: int = 0
    jobs_released: int = 0
    studies_pruned: int = 0
    series_pruned: int = 0


@dataclass
class DestinationStats:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    oldest_pending_at: float | None = None
    failures_last_hour: int = 0
    circuit: str = "closed"
    circuit_since: float | None = None
    last_error: str | None = None
    last_success_at: float | None = None
    paused: bool = False
    paused_by: str | None = None
    paused_reason: str | None = None
    paused_at: float | None = None

    @property
    def backlog(self) -> int:
        return sum(self.counts.get(s, 0) for s in (JobState.QUEUED, JobState.SENDING))


@dataclass(frozen=True)
class CommitItem:
    """One sent object put to storage commitment: what the N-ACTION's Referenced SOP Sequence lists."""

    job_id: int
    sop_class_uid: str
    sop_instance_uid: str  # as the destination got it (after morphing)


@dataclass
class CommitmentOutcome:
    """What one storage commitment report did."""

    transaction_uid: str
    destination: str
    committed_jobs: list[int] = field(default_factory=list)
    failed_jobs: list[tuple[int, str, str]] = field(default_factory=list)  # (job, SOP Instance UID, reason)
    unmatched: int = 0  # listed objects no job awaits any more (already reported, retried, cancelled)
    spool_keys_freed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CommitmentSummary:
    destination: str
    requested: int  # asked about, report not yet in
    unasked: int  # sent, commitment not yet requested (queued for the next request)
    oldest_at: float | None  # when the oldest of them was sent

    @property
    def awaiting(self) -> int:
        return self.requested + self.unasked


@dataclass(frozen=True)
class ActionResult:
    changed: int
    skipped: int  # matched the filter but the action does not apply to their state
    spool_keys_freed: list[str] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)  # the jobs that changed


STUDY_OPEN = "open"
STUDY_COMPLETE = "complete"


def _positive(count: int | None) -> int | None:
    return count if count is not None and count > 0 else None  # 0 expected instances is no count at all


@dataclass
class _Ledger:
    """Earlier objects with the incoming SOP Instance UID, and the live or done jobs that took them where.

    Content is compared by the spooled file's sha256, and only within one transfer syntax: the same object
    re-sent in another encoding hashes differently without being different, so it is neither a duplicate
    nor a conflict (it is forwarded, as before the ledger)."""

    resend: bool = False  # the UID was seen before (the object counts once in its study and series)
    conflict_of: int | None = None  # the latest earlier instance, when its content differs
    conflict_sha: str | None = None
    same: dict[str, tuple[int, str]] = field(default_factory=dict)  # destination → (job, state), identical
    other: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # destination → (job, instance, sha)

    @classmethod
    def read(cls, conn: sqlite3.Connection, facts: InstanceFacts) -> _Ledger:
        earlier = conn.execute(
            "SELECT id, content_sha256, transfer_syntax FROM instances WHERE sop_instance_uid = ? ORDER BY id DESC",
            (facts.sop_instance_uid,),
        ).fetchall()
        ledger = cls(resend=bool(earlier))
        sha = facts.content_sha256
        comparable = {r[0]: r[1] for r in earlier if sha and r[1] and r[2] == facts.transfer_syntax}
        if not comparable:
            return ledger
        latest_id, latest_sha = next(iter(comparable.items()))
        if latest_sha != sha:  # the UID was last seen with other content
            ledger.conflict_of, ledger.conflict_sha = latest_id, latest_sha
        ids = list(comparable)
        seen: set[str] = set()
        for job_id, instance_id, destination, state in conn.execute(
            f"SELECT id, instance_id, destination, state FROM jobs WHERE instance_id IN ({','.join('?' * len(ids))}) "
            f"AND state IN ({','.join('?' * len(_LEDGER_STATES))}) ORDER BY id DESC",
            (*ids, *_LEDGER_STATES),
        ):
            if destination in seen:
                continue  # what a destination was sent last decides
            seen.add(destination)
            if comparable[instance_id] == sha:
                ledger.same[destination] = (job_id, state)
            else:
                ledger.other[destination] = (job_id, instance_id, comparable[instance_id])
        return ledger


@dataclass(frozen=True)
class _Completion:
    """Where the incoming object's study (or series) stands."""

    kind: str  # "study" | "series"
    uid: str | None  # None: the object has no such UID, so nothing to wait for
    was_complete: bool = False  # before this object: it is a late arrival
    completes_now: bool = False  # this object brought the count to the sender's expected number


@dataclass
class _Plan:
    state: JobState = JobState.QUEUED
    events: list[tuple[str, str]] = field(default_factory=list)  # (event, detail); "{job}" = the new job's id
    late: bool = False
    duplicate: tuple[int, str] | None = None  # (earlier job, its state)
    conflict: tuple[int, int, str] | None = None  # (earlier job, earlier instance, earlier sha256)


def _plan_job(job: NewJob, ledger: _Ledger, study: _Completion, series: _Completion, on_conflict: str) -> _Plan:
    """The state a new job starts in, and the events that say why."""
    plan = _Plan()
    dest = job.destination
    if dest in ledger.same:
        earlier_job, earlier_state = plan.duplicate = ledger.same[dest]
        plan.state = JobState.SKIPPED
        plan.events.append(
            (
                "duplicate",
                f"identical object already {earlier_state} for {dest} by job {earlier_job}: not sent again; "
                "`dicom-router queue retry {job}` sends it anyway",
            )
        )
        return plan
    if dest in ledger.other:
        earlier_job, earlier_instance, _ = plan.conflict = ledger.other[dest]
        what = (
            f"job {earlier_job} took another object with the same SOP Instance UID but different content to "
            f"{dest} (instance {earlier_instance})"
        )
        if on_conflict == ON_CONFLICT_HOLD:
            plan.state = JobState.HELD
            plan.events.append(
                (
                    "uid_conflict",
                    f"held: {what} — check patient/study identifiers before releasing "
                    "(`dicom-router queue release {job}`, or cancel it)",
                )
            )
        else:
            plan.events.append(("uid_conflict", f"forwarded (router.on_conflict: forward): {what}"))
    if job.hold_reason is not None:
        plan.state = JobState.HELD
        plan.events.append(("route_hold", job.hold_reason or f"route {job.route} holds what it matches"))
    if job.wait_for is None or plan.state != JobState.QUEUED:
        return plan
    target = study if job.wait_for == "study" else series
    if target.uid is None:
        what = "Study" if target.kind == "study" else "Series"
        plan.events.append(("not_waiting", f"no {what} Instance UID to wait for: sent at once"))
    elif target.was_complete:
        plan.late = True
        plan.events.append(
            ("late_arrival", f"{target.kind} {target.uid} was already complete: sent at once as a delta")
        )
    elif target.completes_now:
        plan.events.append(
            (f"{target.kind}_complete", f"{target.kind} {target.uid} complete: all expected instances arrived")
        )
    else:
        plan.state = JobState.WAITING
    return plan


def this_host() -> str:
    return socket.gethostname()


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, so retries of many jobs spread."""
    exp = min(cap, base * (2 ** max(0, attempts - 1)))
    r = (rng or random).random()
    return exp / 2 + r * exp / 2


class _ThreadConnection:
    """One thread's connection. It lives in that thread's thread-local storage only, so when the thread
    ends the connection is released and closed (sqlite3 connections cannot be weakly referenced)."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn


class Store:
    """One object per process; it keeps one SQLite connection per thread."""

    def __init__(self, path: Path, *, durable: bool = True, busy_timeout_ms: int = 60_000):
        self.path = Path(path)
        self.durable = durable
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # Weak: a connection must close when its thread ends. The receiver serves each association on a
        # new thread; holding every thread's connection here leaked two file descriptors per association
        # (the receiver would hit the fd limit after ~500 associations).
        self._all: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()

    # -- connections ----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        held = getattr(self._local, "held", None)
        if held is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            held = _ThreadConnection(conn)
            self._local.held = held
            with self._lock:
                self._all.add(held)
        return held.conn

    def close(self) -> None:
        with self._lock:
            for held in list(self._all):
                try:
                    held.conn.close()
                except sqlite3.Error:
                    pass
            self._all = weakref.WeakSet()
        self._local = threading.local()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (BEGIN IMMEDIATE) so it never fails half-way on a lock."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        # executescript manages its own transaction; every statement is IF NOT EXISTS.
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        with self._tx():
            # Columns added after the first release of the schema (databases created before get them here).
            for table, column, ddl in _ADDED_COLUMNS:
                if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
            for statement in filter(str.strip, _SCHEMA_AFTER_UPGRADE.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(SCHEMA_VERSION),),
            )

    # -- receiving ------------------------------------------------------------------------------
    def add_instance(
        self,
        spool_key: str,
        facts: InstanceFacts,
        jobs: Sequence[NewJob],
        now: float,
        *,
        on_conflict: str = ON_CONFLICT_HOLD,
    ) -> InstanceAdded:
        """Record a spooled object and its jobs in one transaction. No jobs = kept as unrouted.

        Each job is created QUEUED, or SKIPPED (the delivery ledger: an identical object already went, or is
        going, to that destination), HELD (the destination had another object with this SOP Instance UID and
        `on_conflict` is hold; or a hold route), or WAITING for its study/series to be complete (QUEUED at
        once, and the object flagged late, when that is already complete). The sender is answered only
        after this commits, so it uses indexed lookups only."""
        with self._tx() as conn:
            ledger = _Ledger.read(conn, facts)
            series = self._track_series(conn, facts, ledger.resend, now)
            study = self._track_study(conn, facts, ledger.resend, now)
            if study.completes_now and series.uid is not None and not series.was_complete:
                series = _Completion("series", series.uid, completes_now=True)  # completed with its study

            plans = [_plan_job(job, ledger, study, series, on_conflict) for job in jobs]
            late = any(p.late for p in plans)
            all_skipped = bool(plans) and all(p.state == JobState.SKIPPED for p in plans)
            cur = conn.execute(
                "INSERT INTO instances(spool_key, sop_instance_uid, sop_class_uid, transfer_syntax, study_uid, "
                "series_uid, patient_id, accession, modality, calling_ae, called_ae, source_node, size_bytes, "
                "received_at, routed, content_sha256, late, conflict_of, finished_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    spool_key,
                    facts.sop_instance_uid,
                    facts.sop_class_uid,
                    facts.transfer_syntax,
                    facts.study_uid,
                    facts.series_uid,
                    facts.patient_id,
                    facts.accession,
                    facts.modality,
                    facts.calling_ae,
                    facts.called_ae,
                    facts.source_node,
                    facts.size_bytes,
                    now,
                    1 if jobs else 0,
                    facts.content_sha256,
                    int(late),
                    ledger.conflict_of,
                    now if all_skipped else None,  # nothing to send: spool retention applies as if sent
                ),
            )
            added = InstanceAdded(instance_id=int(cur.lastrowid or 0), late=late)
            for job, plan in zip(jobs, plans, strict=True):
                cur = conn.execute(
                    "INSERT INTO jobs(instance_id, destination, route, priority, state, next_attempt_at, "
                    "created_at, updated_at, done_at, morph, transcode, wait_for) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        added.instance_id,
                        job.destination,
                        job.route,
                        job.priority,
                        plan.state,
                        now,
                        now,
                        now,
                        now if plan.state == JobState.SKIPPED else None,
                        json.dumps(list(job.morph)) if job.morph else "[]",
                        job.transcode,
                        job.wait_for,
                    ),
                )
                job_id = int(cur.lastrowid or 0)
                added.job_ids.append(job_id)
                for event, detail in plan.events:
                    self._event(conn, job_id, now, event, None, detail.replace("{job}", str(job_id)))
                if plan.duplicate is not None:
                    earlier_job, earlier_state = plan.duplicate
                    added.skipped.append(Duplicate(job.destination, job_id, earlier_job, earlier_state))
                if plan.conflict is not None:
                    earlier_job, earlier_instance, earlier_sha = plan.conflict
                    held = plan.state == JobState.HELD and on_conflict == ON_CONFLICT_HOLD
                    added.conflicts.append(
                        Conflict(earlier_instance, earlier_sha, job.destination, job_id, earlier_job, held)
                    )
                if plan.state == JobState.HELD:
                    added.held.append(job_id)
                elif plan.state == JobState.WAITING:
                    added.waiting.append(job_id)
            if ledger.conflict_of is not None and not added.conflicts:
                added.conflicts.append(Conflict(ledger.conflict_of, ledger.conflict_sha or ""))
            if late and study.uid is not None:
                conn.execute("UPDATE studies SET late_count = late_count + 1 WHERE study_uid = ?", (study.uid,))
        return added

    @staticmethod
    def _track_study(conn: sqlite3.Connection, facts: InstanceFacts, resend: bool, now: float) -> _Completion:
        """Count the object into its study (a re-sent SOP Instance UID counts once); complete the study at
        once when the sender's expected count is reached."""
        if not facts.study_uid:
            return _Completion("study", None)
        state, count, expected = conn.execute(
            "INSERT INTO studies(study_uid, patient_id, first_at, last_at, instances, expected) VALUES (?,?,?,?,1,?) "
            "ON CONFLICT(study_uid) DO UPDATE SET last_at = MAX(last_at, excluded.last_at), "
            "instances = instances + ?, expected = COALESCE(excluded.expected, expected) "
            "RETURNING state, instances, expected",
            (facts.study_uid, facts.patient_id, now, now, _positive(facts.expected_in_study), 0 if resend else 1),
        ).fetchone()
        if state == STUDY_COMPLETE:
            return _Completion("study", facts.study_uid, was_complete=True)
        if expected is not None and count >= expected:
            Store._complete_study(conn, facts.study_uid, now, f"all {expected} expected instances arrived")
            return _Completion("study", facts.study_uid, completes_now=True)
        return _Completion("study", facts.study_uid)

    @staticmethod
    def _track_series(conn: sqlite3.Connection, facts: InstanceFacts, resend: bool, now: float) -> _Completion:
        if not facts.series_uid:
            return _Completion("series", None)
        state, count, expected = conn.execute(
            "INSERT INTO series(series_uid, study_uid, instances, expected, last_at) VALUES (?,?,1,?,?) "
            "ON CONFLICT(series_uid) DO UPDATE SET last_at = MAX(last_at, excluded.last_at), "
            "instances = instances + ?, expected = COALESCE(excluded.expected, expected) "
            "RETURNING state, instances, expected",
            (facts.series_uid, facts.study_uid, _positive(facts.expected_in_series), now, 0 if resend else 1),
        ).fetchone()
        if state == STUDY_COMPLETE:
            return _Completion("series", facts.series_uid, was_complete=True)
        if expected is not None and count >= expected:
            Store._complete_series(
                conn, facts.series_uid, facts.study_uid, now, f"all {expected} expected instances arrived"
            )
            return _Completion("series", facts.series_uid, completes_now=True)
        return _Completion("series", facts.series_uid)

    # -- studies and series: completion, late arrivals ------------------------------------------
    def complete_studies(self, now: float, quiet_seconds: float, keep_days: float = 30.0) -> StudySweep:
        """Complete the studies and series no object has arrived for in `quiet_seconds`, releasing their
        WAITING jobs to QUEUED; forget complete ones quiet for `keep_days`. The forwarder calls this every
        few seconds: a pass that finds nothing to do only reads (no write lock)."""
        cutoff, forget_before = now - quiet_seconds, now - keep_days * 86400
        # 'complete' as a literal: only then can SQLite use the partial prune indexes (named, so the planner
        # never scans every complete study instead).
        args = (STUDY_OPEN, cutoff, STUDY_OPEN, cutoff, forget_before, forget_before)
        work = (
            "SELECT EXISTS(SELECT 1 FROM studies WHERE state = ? AND last_at <= ?) "
            "OR EXISTS(SELECT 1 FROM series WHERE state = ? AND last_at <= ?) "
            "OR EXISTS(SELECT 1 FROM studies INDEXED BY studies_prune "
            f"WHERE state = '{STUDY_COMPLETE}' AND last_at < ?) "
            "OR EXISTS(SELECT 1 FROM series INDEXED BY series_prune "
            f"WHERE state = '{STUDY_COMPLETE}' AND last_at < ?)"
        )
        if not self._conn().execute(work, args).fetchone()[0]:
            return StudySweep()
        why = f"no new object for {quiet_seconds:g} s"
        studies = series = released = 0
        with self._tx() as conn:
            for uid, count in conn.execute(
                "SELECT study_uid, instances FROM studies WHERE state = ? AND last_at <= ?", (STUDY_OPEN, cutoff)
            ).fetchall():
                n_series, n_jobs = self._complete_study(conn, uid, now, f"{why} ({count} instances)")
                studies, series, released = studies + 1, series + n_series, released + n_jobs
            for uid, study_uid, count in conn.execute(
                "SELECT series_uid, study_uid, instances FROM series WHERE state = ? AND last_at <= ?",
                (STUDY_OPEN, cutoff),
            ).fetchall():
                released += self._complete_series(conn, uid, study_uid, now, f"{why} ({count} instances)")
                series += 1
            pruned_studies = conn.execute(
                f"DELETE FROM studies INDEXED BY studies_prune WHERE state = '{STUDY_COMPLETE}' AND last_at < ?",
                (forget_before,),
            ).rowcount
            pruned_series = conn.execute(
                f"DELETE FROM series INDEXED BY series_prune WHERE state = '{STUDY_COMPLETE}' AND last_at < ?",
                (forget_before,),
            ).rowcount
        return StudySweep(studies, series, released, pruned_studies, pruned_series)

    @staticmethod
    def _complete_study(conn: sqlite3.Connection, study_uid: str, now: float, why: str) -> tuple[int, int]:
        """Mark a study complete with its open series; release what waited for them. Returns (series
        completed, jobs released)."""
        conn.execute(
            "UPDATE studies SET state = ?, completed_at = ? WHERE study_uid = ? AND state = ?",
            (STUDY_COMPLETE, now, study_uid, STUDY_OPEN),
        )
        released = Store._release_waiting(
            conn, "study", "i.study_uid = ?", (study_uid,), now, f"study {study_uid} complete: {why}"
        )
        open_series = conn.execute(
            "SELECT series_uid FROM series WHERE study_uid = ? AND state = ?", (study_uid, STUDY_OPEN)
        ).fetchall()
        for (series_uid,) in open_series:
            released += Store._complete_series(conn, series_uid, study_uid, now, f"its study is complete: {why}")
        return len(open_series), released

    @staticmethod
    def _complete_series(conn: sqlite3.Connection, series_uid: str, study_uid: str | None, now: float, why: str) -> int:
        conn.execute(
            "UPDATE series SET state = ?, completed_at = ? WHERE series_uid = ? AND state = ?",
            (STUDY_COMPLETE, now, series_uid, STUDY_OPEN),
        )
        # Through the study's instances (indexed), not an index on series_uid the hot path would pay for.
        return Store._release_waiting(
            conn,
            "series",
            "i.study_uid IS ? AND i.series_uid = ?",
            (study_uid, series_uid),
            now,
            f"series {series_uid} complete: {why}",
        )

    @staticmethod
    def _release_waiting(
        conn: sqlite3.Connection, wait_for: str, instances_where: str, args: tuple[Any, ...], now: float, detail: str
    ) -> int:
        # From the study's instances to their jobs (CROSS JOIN fixes that order): never a scan of every
        # waiting job of every open study.
        rows = conn.execute(
            "UPDATE jobs SET state = ?, next_attempt_at = ?, updated_at = ? WHERE id IN (SELECT j.id FROM "
            f"instances i CROSS JOIN jobs j ON j.instance_id = i.id WHERE {instances_where} AND j.state = ? "
            "AND j.wait_for = ?) RETURNING id",
            (JobState.QUEUED, now, now, *args, JobState.WAITING, wait_for),
        ).fetchall()
        conn.executemany(
            "INSERT INTO job_events(job_id, at, event, detail) VALUES (?,?,?,?)",
            [(job_id, now, f"{wait_for}_complete", detail) for (job_id,) in rows],
        )
        return len(rows)

    def study_counts(self) -> dict[str, int]:
        """For `status`: studies open/complete, late arrivals, SOP Instance UID conflicts (all, and those
        with a job still held for an operator)."""
        conn = self._conn()
        by_state = dict(conn.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
        late = conn.execute("SELECT COUNT(*) FROM instances WHERE late = 1").fetchone()[0]
        conflicts, held = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(EXISTS(SELECT 1 FROM jobs j WHERE j.instance_id = i.id "
            "AND j.state = ?)), 0) FROM instances i WHERE i.conflict_of IS NOT NULL",
            (JobState.HELD,),
        ).fetchone()
        return {
            "open": int(by_state.get(STUDY_OPEN, 0)),
            "complete": int(by_state.get(STUDY_COMPLETE, 0)),
            "late_instances": int(late),
            "conflicts": int(conflicts),
            "conflicts_held": int(held),
        }

    def list_studies(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        """Tracked studies, most recently active first (open and complete, until pruned)."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        rows = self._conn().execute(
            "SELECT study_uid, patient_id, first_at, last_at, instances, expected, state, completed_at, late_count, "
            f"(SELECT COUNT(*) FROM series s WHERE s.study_uid = studies.study_uid) AS series "
            f"FROM studies {where} ORDER BY last_at DESC LIMIT ?",
            (*args, limit),
        )
        return [dict(r) for r in rows]

    def conflicts(self, limit: int = 50) -> list[dict[str, Any]]:
        """Objects that reused an earlier object's SOP Instance UID with other content, newest first, with
        the identifiers an operator compares before releasing (and the jobs each has)."""
        rows = self._conn().execute(
            "SELECT i.id AS instance_id, i.conflict_of AS earlier_instance_id, i.sop_instance_uid, i.received_at, "
            "i.calling_ae, i.content_sha256, e.content_sha256 AS earlier_sha256, i.patient_id, "
            "e.patient_id AS earlier_patient_id, i.study_uid, e.study_uid AS earlier_study_uid, i.accession, "
            "e.accession AS earlier_accession, e.received_at AS earlier_received_at, "
            "(SELECT json_group_array(json_object('id', j.id, 'destination', j.destination, 'state', j.state)) "
            " FROM jobs j WHERE j.instance_id = i.id) AS jobs "
            "FROM instances i INDEXED BY instances_conflict LEFT JOIN instances e ON e.id = i.conflict_of "
            "WHERE i.conflict_of IS NOT NULL ORDER BY i.id DESC LIMIT ?",
            (limit,),
        )
        out = []
        for r in rows:
            d = dict(r)
            d["jobs"] = json.loads(d["jobs"])
            out.append(d)
        return out

    # -- UID map (stable replacement UIDs for morphing) -------------------------------------------
    def map_uid(self, namespace: str, original: str) -> str:
        """The replacement for `original` in `namespace`: made once, then the same forever, whichever
        process asks first (INSERT OR IGNORE, then read what won)."""
        conn = self._conn()
        row = conn.execute(
            "SELECT replacement FROM uid_map WHERE namespace = ? AND original = ?", (namespace, original)
        ).fetchone()
        if row is not None:
            return str(row[0])
        # A new mapping may be sent out at once: it must survive a power cut even on a NORMAL-sync connection.
        if not self.durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO uid_map(namespace, original, replacement, created_at) VALUES (?,?,?,?)",
                    (namespace, original, generate_uid(), time.time()),
                )
                row = conn.execute(
                    "SELECT replacement FROM uid_map WHERE namespace = ? AND original = ?", (namespace, original)
                ).fetchone()
        finally:
            if not self.durable:
                conn.execute("PRAGMA synchronous=NORMAL")
        return str(row[0])

    # -- forwarding -----------------------------------------------------------------------------
    def claim(self, destination: str, worker: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
        """Take up to `limit` due jobs of one destination, highest priority first, then oldest."""
        with self._tx() as conn:
            if self._is_paused(conn, destination):
                return []
            rows = conn.execute(
                "UPDATE jobs SET state = ?, claimed_by = ?, lease_until = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id IN (SELECT id FROM jobs WHERE destination = ? AND state = ? "
                "AND next_attempt_at <= ? ORDER BY priority, id LIMIT ?) RETURNING id",
                (
                    JobState.SENDING,
                    worker,
                    now + lease_seconds,
                    now,
                    destination,
                    JobState.QUEUED,
                    now,
                    limit,
                ),
            ).fetchall()
            ids = sorted((r[0] for r in rows), key=int)
            if not ids:
                return []
            jobs = self._jobs_by_ids(conn, ids)
        jobs.sort(key=lambda j: (j.priority, j.id))
        return jobs

    def due_contexts(self, destination: str, now: float, limit: int) -> list[tuple[str, str]]:
        """(SOP class, transfer syntax) pairs of the next due jobs, without claiming them."""
        if self._is_paused(self._conn(), destination):
            return []
        rows = (
            self._conn()
            .execute(
                "SELECT DISTINCT sop_class_uid, transfer_syntax FROM (SELECT i.sop_class_uid, i.transfer_syntax "
                "FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.destination = ? AND j.state = ? "
                "AND j.next_attempt_at <= ? ORDER BY j.priority, j.id LIMIT ?)",
                (destination, JobState.QUEUED, now, limit),
            )
            .fetchall()
        )
        return [(r[0], r[1]) for r in rows]

    def next_due_at(self, destination: str) -> float | None:
        if self._is_paused(self._conn(), destination):
            return None  # resume rings the doorbell
        row = (
            self._conn()
            .execute(
                "SELECT MIN(next_attempt_at) FROM jobs WHERE destination = ? AND state = ?",
                (destination, JobState.QUEUED),
            )
            .fetchone()
        )
        return None if row[0] is None else float(row[0])

    def ack(
        self,
        job_id: int,
        status: int,
        detail: str,
        now: float,
        keep_spool: bool,
        *,
        commit: bool = False,
        sent_uid: str | None = None,
    ) -> str | None:
        """The destination has the object. Returns the spool key to delete if nothing else needs it.

        Accepted even if the claim's lease ran out meanwhile (job requeued or re-claimed): the
        destination confirmed storage, so the job is done and a pending re-send becomes harmless.
        With `commit` the job awaits a storage commitment report: its spool file stays until one comes.
        `sent_uid`: the SOP Instance UID the destination got, if morphing replaced the original.
        """
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, last_status = ?, last_error = NULL, done_at = ?, updated_at = ?, "
                "lease_until = NULL, claimed_by = NULL, awaiting_commit = ?, commit_tx = NULL, sent_uid = ? "
                "WHERE id = ? AND state IN (?, ?)",
                (JobState.DONE, status, now, now, int(commit), sent_uid, job_id, JobState.SENDING, JobState.QUEUED),
            )
            if cur.rowcount == 0:
                return None
            self._event(conn, job_id, now, "delivered", status, detail)
            return self._finish_instance_if_complete(conn, job_id, now, keep_spool)

    def retry_later(
        self,
        job_id: int,
        status: int | None,
        error: str,
        now: float,
        delay: float,
        max_attempts: int | None,
        claimant: str | None = None,
    ) -> str:
        """A transient failure. Returns the new state (queued, or failed once attempts are used up).

        With `claimant`, only that worker's live claim is changed (a result that arrives after the lease
        ran out and another worker took the job must not overwrite the newer attempt)."""
        with self._tx() as conn:
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            exhausted = max_attempts is not None and row is not None and row[0] >= max_attempts
            state = JobState.FAILED if exhausted else JobState.QUEUED
            cur = conn.execute(
                "UPDATE jobs SET state = ?, last_status = ?, last_error = ?, next_attempt_at = ?, updated_at = ?, "
                "lease_until = NULL, claimed_by = NULL WHERE id = ? AND state = ? AND (? IS NULL OR claimed_by = ?)",
                (state, status, error, now + delay, now, job_id, JobState.SENDING, claimant, claimant),
            )
            if cur.rowcount:
                self._event(conn, job_id, now, "failed" if exhausted else "attempt_failed", status, error)
        return state

    def fail(self, job_id: int, status: int | None, error: str, now: float, claimant: str | None = None) -> None:
        """A permanent refusal: retrying will not help, an operator must decide."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, last_status = ?, last_error = ?, updated_at = ?, lease_until = NULL, "
                "claimed_by = NULL WHERE id = ? AND state = ? AND (? IS NULL OR claimed_by = ?)",
                (JobState.FAILED, status, error, now, job_id, JobState.SENDING, claimant, claimant),
            )
            if cur.rowcount:
                self._event(conn, job_id, now, "failed", status, error)

    def give_back(self, job_ids: Sequence[int], now: float, reason: str, claimant: str | None = None) -> None:
        """Return claimed jobs unsent (shutdown, circuit opened) without counting the attempt."""
        if not job_ids:
            return
        with self._tx() as conn:
            for job_id in job_ids:
                cur = conn.execute(
                    "UPDATE jobs SET state = ?, attempts = MAX(0, attempts - 1), lease_until = NULL, "
                    "claimed_by = NULL, updated_at = ? WHERE id = ? AND state = ? AND (? IS NULL OR claimed_by = ?)",
                    (JobState.QUEUED, now, job_id, JobState.SENDING, claimant, claimant),
                )
                if cur.rowcount:
                    self._event(conn, job_id, now, "returned", None, reason)

    def recover_abandoned(
        self, now: float, dead_claimants_prefix: str | None = None, live_claimants_prefix: str | None = None
    ) -> int:
        """Requeue claims whose lease ran out, or that a dead process on this host held.

        Claims by `live_claimants_prefix` (the calling process, whose threads are still sending) are never
        requeued by lease expiry: a slow send of a large object may outlast the lease, and requeueing it
        would have a second worker send the same object while the first is still at it.
        """
        # Exact prefix comparisons: with LIKE, `_` or `%` in a hostname would be wildcards.
        with self._tx() as conn:
            args: list[Any] = [JobState.QUEUED, now, JobState.SENDING, now]
            expired = "lease_until < ?"
            if live_claimants_prefix:
                expired += " AND substr(claimed_by, 1, ?) != ?"
                args += [len(live_claimants_prefix), live_claimants_prefix]
            extra = ""
            if dead_claimants_prefix:
                extra = " OR substr(claimed_by, 1, ?) = ?"
                args += [len(dead_claimants_prefix), dead_claimants_prefix]
            rows = conn.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, claimed_by = NULL, updated_at = ? "
                f"WHERE state = ? AND (({expired}){extra}) RETURNING id",
                args,
            ).fetchall()
            for (job_id,) in rows:
                self._event(conn, job_id, now, "requeued", None, "claim abandoned (process ended mid-send)")
        return len(rows)

    def make_due(self, destination: str, now: float) -> int:
        """Jobs backed off during an outage need not wait out their delays once the peer answers."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET next_attempt_at = ? WHERE destination = ? AND state = ? AND next_attempt_at > ?",
                (now, destination, JobState.QUEUED, now),
            )
            return cur.rowcount

    # -- storage commitment ---------------------------------------------------------------------
    def begin_commitment(
        self, destination: str, transaction_uid: str, requester: str, now: float, limit: int
    ) -> list[CommitItem]:
        """Take up to `limit` sent jobs of `destination` that await commitment and have not been asked about
        yet, and record the request under `transaction_uid` (state requesting) before the N-ACTION goes out,
        so a report arriving on another association finds them. Returns what to list in the request."""
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE jobs SET commit_tx = ? WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_awaiting_commit "
                "WHERE awaiting_commit = 1 AND destination = ? AND commit_tx IS NULL ORDER BY id LIMIT ?) "
                "RETURNING id",
                (transaction_uid, destination, limit),
            ).fetchall()
            ids = [r[0] for r in rows]
            if not ids:
                return []
            conn.execute(
                "INSERT INTO commitments(transaction_uid, destination, state, requester, requested_at, objects) "
                "VALUES (?,?,?,?,?,?)",
                (transaction_uid, destination, COMMIT_REQUESTING, requester, now, len(ids)),
            )
            items = conn.execute(
                "SELECT j.id, i.sop_class_uid, COALESCE(j.sent_uid, i.sop_instance_uid) FROM jobs j "
                f"JOIN instances i ON i.id = j.instance_id WHERE j.id IN ({','.join('?' * len(ids))}) ORDER BY j.id",
                ids,
            ).fetchall()
            conn.executemany(
                "INSERT INTO job_events(job_id, at, event, detail) VALUES (?,?,?,?)",
                [(i, now, "commitment_requested", f"transaction {transaction_uid}") for i in ids],
            )
        return [CommitItem(r[0], r[1], r[2]) for r in items]

    def commitment_sent(self, transaction_uid: str, now: float) -> None:
        """The destination accepted the N-ACTION: now its report is awaited (unless it already came)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE commitments SET state = ? WHERE transaction_uid = ? AND state = ?",
                (COMMIT_PENDING, transaction_uid, COMMIT_REQUESTING),
            )

    def abandon_commitment(self, transaction_uid: str, error: str, now: float) -> int:
        """The N-ACTION failed: the jobs it listed go back to be asked again (by a later request). Returns how
        many jobs went back."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE commitments SET state = ?, error = ? WHERE transaction_uid = ? AND state IN (?, ?)",
                (COMMIT_ABANDONED, error, transaction_uid, COMMIT_REQUESTING, COMMIT_PENDING),
            )
            return conn.execute(
                "UPDATE jobs SET commit_tx = NULL WHERE commit_tx = ? AND awaiting_commit = 1", (transaction_uid,)
            ).rowcount

    def abandon_interrupted_requests(self, requester_prefix: str, now: float) -> int:
        """Open requests of a forwarder that stopped (at its successor's start): one it may not have sent (it
        died mid-request), or whose report it was waiting for on an association that is gone. Their jobs are
        asked again under a new Transaction UID; a report still arriving for the old one is applied all the
        same (a second report then finds nothing left to do). The deadline counts from sending, so asking
        again never postpones the warning."""
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE commitments SET state = ?, error = ? WHERE state IN (?, ?) AND substr(requester, 1, ?) = ? "
                "RETURNING transaction_uid",
                (
                    COMMIT_ABANDONED,
                    "the forwarder stopped before the report came",
                    COMMIT_REQUESTING,
                    COMMIT_PENDING,
                    len(requester_prefix),
                    requester_prefix,
                ),
            ).fetchall()
            for (uid,) in rows:
                conn.execute("UPDATE jobs SET commit_tx = NULL WHERE commit_tx = ? AND awaiting_commit = 1", (uid,))
        return len(rows)

    def commitment_due(self, destination: str) -> int:
        """Sent jobs of `destination` awaiting commitment that have not been asked about yet."""
        row = (
            self._conn()
            .execute(
                "SELECT COUNT(*) FROM jobs INDEXED BY jobs_awaiting_commit WHERE awaiting_commit = 1 "
                "AND destination = ? AND commit_tx IS NULL",
                (destination,),
            )
            .fetchone()
        )
        return int(row[0])

    def commitment_transaction(self, transaction_uid: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM commitments WHERE transaction_uid = ?", (transaction_uid,)).fetchone()
        return None if row is None else dict(row)

    def record_commitment_report(
        self,
        transaction_uid: str,
        committed: Sequence[str],
        failed: Sequence[tuple[str, int | None, str]],
        reporter: str,
        now: float,
        keep_spool: bool,
    ) -> CommitmentOutcome | None:
        """Apply a storage commitment report: jobs of the transaction's destination awaiting commitment whose
        sent SOP Instance UID the report lists become COMMITTED, or FAILED with the reason (`failed`: (SOP
        Instance UID, failure reason code, words)). A late report, or one for an abandoned request, counts the
        same. Returns None for a Transaction UID this router never issued."""
        with self._tx() as conn:
            tx = conn.execute(
                "SELECT destination FROM commitments WHERE transaction_uid = ?", (transaction_uid,)
            ).fetchone()
            if tx is None:
                return None
            destination = str(tx[0])
            listed = set(committed) | {f[0] for f in failed}
            # The request's own jobs first (an index lookup); all the destination's awaiting jobs only when the
            # report names objects asked about under another transaction (a request asked again, a late report).
            waiting: dict[str, list[int]] = {}
            for where, arg in (("j.commit_tx = ?", transaction_uid), ("j.destination = ?", destination)):
                waiting.clear()
                for job_id, uid in conn.execute(
                    "SELECT j.id, COALESCE(j.sent_uid, i.sop_instance_uid) FROM jobs j INDEXED BY jobs_awaiting_commit "
                    f"JOIN instances i ON i.id = j.instance_id WHERE j.awaiting_commit = 1 AND j.destination = ? "
                    f"AND {where}",
                    (destination, arg),
                ):
                    waiting.setdefault(uid, []).append(job_id)
                if listed <= set(waiting):
                    break
            out = CommitmentOutcome(transaction_uid, destination)
            matched_uids = [uid for uid in (*committed, *(f[0] for f in failed)) if uid in waiting]
            for uid in committed:
                for job_id in waiting.pop(uid, []):
                    conn.execute(
                        "UPDATE jobs SET state = ?, awaiting_commit = 0, updated_at = ? WHERE id = ?",
                        (JobState.COMMITTED, now, job_id),
                    )
                    self._event(conn, job_id, now, "committed", None, f"{reporter}, transaction {transaction_uid}")
                    out.committed_jobs.append(job_id)
                    key = self._finish_instance_if_complete(conn, job_id, now, keep_spool)
                    if key:
                        out.spool_keys_freed.append(key)
            for uid, code, words in failed:
                for job_id in waiting.pop(uid, []):
                    error = (
                        f"storage commitment FAILED at {destination}: {words} (transaction {transaction_uid}) — "
                        f"the destination may not keep this object; `dicom-router queue retry {job_id}` sends it again"
                    )
                    conn.execute(
                        "UPDATE jobs SET state = ?, awaiting_commit = 0, last_status = ?, last_error = ?, "
                        "updated_at = ? WHERE id = ?",
                        (JobState.FAILED, code, error, now, job_id),
                    )
                    self._event(conn, job_id, now, "commitment_failed", code, f"{words}; {reporter}")
                    out.failed_jobs.append((job_id, uid, words))
            out.unmatched = len(listed - set(matched_uids))
            conn.execute(
                "UPDATE commitments SET state = ?, reported_at = COALESCE(reported_at, ?), "
                "committed = COALESCE(committed, 0) + ?, failed = COALESCE(failed, 0) + ?, reporter = ? "
                "WHERE transaction_uid = ?",
                (COMMIT_REPORTED, now, len(out.committed_jobs), len(out.failed_jobs), reporter, transaction_uid),
            )
        return out

    def commitment_overview(self, now: float) -> dict[str, CommitmentSummary]:
        """Per destination: jobs awaiting a commitment report (asked about or not yet) and the oldest send."""
        out: dict[str, CommitmentSummary] = {}
        for dest, requested, unasked, oldest in self._conn().execute(
            "SELECT destination, COALESCE(SUM(commit_tx IS NOT NULL), 0), COALESCE(SUM(commit_tx IS NULL), 0), "
            "MIN(done_at) FROM jobs INDEXED BY jobs_awaiting_commit WHERE awaiting_commit = 1 GROUP BY 1"
        ):
            out[dest] = CommitmentSummary(dest, int(requested), int(unasked), oldest)
        return out

    def overdue_commitments(self, destination: str, sent_before: float) -> list[dict[str, Any]]:
        """Jobs to `destination` sent before `sent_before` and still awaiting a report, grouped by the request
        they are in (transaction_uid None: not asked about yet), oldest first: transaction_uid, sent_at,
        objects, overdue_noted (1 = commitment_overdue audited already, or nothing to audit it under)."""
        rows = self._conn().execute(
            "SELECT j.commit_tx AS transaction_uid, MIN(j.done_at) AS sent_at, COUNT(*) AS objects, "
            "COALESCE(MAX(c.overdue_noted), 1) AS overdue_noted FROM jobs j INDEXED BY jobs_awaiting_commit "
            "LEFT JOIN commitments c ON c.transaction_uid = j.commit_tx "
            "WHERE j.awaiting_commit = 1 AND j.destination = ? AND j.done_at < ? GROUP BY j.commit_tx ORDER BY 2",
            (destination, sent_before),
        )
        return [dict(r) for r in rows]

    def note_overdue(self, transaction_uids: Sequence[str]) -> None:
        if not transaction_uids:
            return
        with self._tx() as conn:
            conn.executemany(
                "UPDATE commitments SET overdue_noted = 1 WHERE transaction_uid = ?", [(u,) for u in transaction_uids]
            )

    # -- destinations (circuit breaker state, shared with `status`) -----------------------------
    def record_connect_result(self, destination: str, ok: bool, error: str | None, now: float) -> int:
        """Count consecutive connection failures; returns the count after this result."""
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO destinations(name) VALUES (?)", (destination,))
            if ok:
                conn.execute(
                    "UPDATE destinations SET consecutive_failures = 0, last_success_at = ? WHERE name = ?",
                    (now, destination),
                )
                return 0
            row = conn.execute(
                "UPDATE destinations SET consecutive_failures = consecutive_failures + 1, last_error = ? "
                "WHERE name = ? RETURNING consecutive_failures",
                (error, destination),
            ).fetchone()
            return int(row[0])

    def set_circuit(self, destination: str, state: str, now: float, error: str | None = None) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO destinations(name) VALUES (?)", (destination,))
            conn.execute(
                "UPDATE destinations SET circuit = ?, circuit_since = ?, last_error = COALESCE(?, last_error) "
                "WHERE name = ?",
                (state, now, error, destination),
            )

    @staticmethod
    def _is_paused(conn: sqlite3.Connection, destination: str) -> bool:
        row = conn.execute("SELECT paused FROM destinations WHERE name = ?", (destination,)).fetchone()
        return bool(row and row[0])

    def set_paused(self, destination: str, paused: bool, actor: str, reason: str, now: float) -> bool:
        """Pause (or resume) sending to a destination; jobs keep their state. Returns whether it changed."""
        with self._tx() as conn:
            was = self._is_paused(conn, destination)
            if was == paused:
                return False  # keep who paused it first, and why
            conn.execute("INSERT OR IGNORE INTO destinations(name) VALUES (?)", (destination,))
            conn.execute(
                "UPDATE destinations SET paused = ?, paused_by = ?, paused_reason = ?, paused_at = ? WHERE name = ?",
                (int(paused), actor if paused else None, reason if paused else None, now if paused else None,
                 destination),
            )  # fmt: skip
        return True

    def circuit_of(self, destination: str) -> str:
        row = self._conn().execute("SELECT circuit FROM destinations WHERE name = ?", (destination,)).fetchone()
        return "closed" if row is None else str(row[0])

    # -- operator actions -----------------------------------------------------------------------
    def retry(self, flt: JobFilter, actor: str, reason: str, now: float) -> ActionResult:
        """Failed or backing-off jobs: try again now, with a fresh attempt budget. Skipped ones (an identical
        object went there already) are sent anyway, while their spooled file is still kept; so are sent ones
        still awaiting a storage commitment report (sent again, and commitment asked again)."""
        return self._transition(
            flt,
            (JobState.FAILED, JobState.QUEUED, JobState.SKIPPED, AWAITING_COMMITMENT),
            JobState.QUEUED,
            "operator_retry",
            actor,
            reason,
            now,
            reset_attempts=True,
        )

    def hold(self, flt: JobFilter, actor: str, reason: str, now: float) -> ActionResult:
        return self._transition(
            flt,
            (JobState.QUEUED, JobState.FAILED, JobState.WAITING),
            JobState.HELD,
            "operator_hold",
            actor,
            reason,
            now,
        )

    def release(self, flt: JobFilter, actor: str, reason: str, now: float) -> ActionResult:
        return self._transition(flt, (JobState.HELD,), JobState.QUEUED, "operator_release", actor, reason, now)

    def cancel(self, flt: JobFilter, actor: str, reason: str, now: float, keep_spool: bool) -> ActionResult:
        # An awaiting-commitment job may be cancelled too: the operator stops waiting for its report (e.g. the
        # PACS confirmed by other means); its spool file is then released like any finished job's.
        return self._transition(
            flt,
            (JobState.QUEUED, JobState.HELD, JobState.FAILED, JobState.WAITING, AWAITING_COMMITMENT),
            JobState.CANCELLED,
            "operator_cancel",
            actor,
            reason,
            now,
            finish=True,
            keep_spool=keep_spool,
        )

    def _transition(
        self,
        flt: JobFilter,
        from_states: Sequence[str],
        to_state: str,
        event: str,
        actor: str,
        reason: str,
        now: float,
        *,
        reset_attempts: bool = False,
        finish: bool = False,
        keep_spool: bool = True,
    ) -> ActionResult:
        where, args = flt.where(now)
        freed: list[str] = []
        with self._tx() as conn:
            matched = [
                # A DONE job awaiting its commitment report is matched as the pseudo-state AWAITING_COMMITMENT.
                (r[0], AWAITING_COMMITMENT if r[1] == JobState.DONE and r[4] else r[1], r[2], r[3])
                for r in conn.execute(
                    f"SELECT j.id, j.state, i.id, i.spool_state, j.awaiting_commit FROM jobs j "
                    f"JOIN instances i ON i.id = j.instance_id WHERE {where}",
                    args,
                ).fetchall()
            ]
            # A finished job sent again (a skipped one) needs its file, and reopens its instance so spool
            # retention keeps the file until it is sent.
            reopen = {r[0]: r[2] for r in matched if r[1] in from_states and r[1] in TERMINAL}
            ids = [r[0] for r in matched if r[1] in from_states and (r[0] not in reopen or r[3] == "kept")]
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, next_attempt_at = ?, awaiting_commit = 0, "
                    f"commit_tx = NULL, attempts = {'0' if reset_attempts else 'attempts'}"
                    f"{', done_at = NULL' if job_id in reopen else ''} WHERE id = ?",
                    (to_state, now, now, job_id),
                )
                if job_id in reopen:
                    conn.execute("UPDATE instances SET finished_at = NULL WHERE id = ?", (reopen[job_id],))
                self._event(conn, job_id, now, event, None, reason, actor)
                if finish:
                    key = self._finish_instance_if_complete(conn, job_id, now, keep_spool)
                    if key:
                        freed.append(key)
        return ActionResult(
            changed=len(ids), skipped=len(matched) - len(ids), spool_keys_freed=freed, job_ids=list(ids)
        )

    def reroute(self, flt: JobFilter, to_destination: str, actor: str, reason: str, now: float) -> ActionResult:
        """Send matching unsent jobs (queued/failed/held) to another destination instead: each is cancelled
        and its object gets a new queued job for `to_destination` (unless it already has a live one there)."""
        where, args = flt.where(now)
        movable = (JobState.QUEUED, JobState.FAILED, JobState.HELD)
        new_ids: list[int] = []
        with self._tx() as conn:
            matched = conn.execute(
                f"SELECT j.id, j.state, j.destination, j.instance_id, j.priority FROM jobs j "
                f"JOIN instances i ON i.id = j.instance_id WHERE {where}",
                args,
            ).fetchall()
            moved = 0
            for job_id, state, dest, instance_id, priority in matched:
                if state not in movable or dest == to_destination:
                    continue
                conn.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, done_at = ? WHERE id = ?",
                    (JobState.CANCELLED, now, now, job_id),
                )
                self._event(conn, job_id, now, "rerouted", None, f"to {to_destination}: {reason}", actor)
                moved += 1
                exists = conn.execute(
                    "SELECT 1 FROM jobs WHERE instance_id = ? AND destination = ? AND state NOT IN (?, ?)",
                    (instance_id, to_destination, JobState.CANCELLED, JobState.FAILED),
                ).fetchone()
                if exists:
                    continue
                cur = conn.execute(
                    "INSERT INTO jobs(instance_id, destination, route, priority, state, next_attempt_at, "
                    "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    (instance_id, to_destination, "operator", priority, JobState.QUEUED, now, now, now),
                )
                new_id = int(cur.lastrowid or 0)
                new_ids.append(new_id)
                self._event(conn, new_id, now, "operator_reroute", None, f"from job {job_id} ({dest}): {reason}", actor)
        return ActionResult(changed=moved, skipped=len(matched) - moved, spool_keys_freed=[], job_ids=new_ids)

    # -- reading --------------------------------------------------------------------------------
    def list_jobs(self, flt: JobFilter, limit: int = 100, offset: int = 0, after_id: int | None = None) -> list[Job]:
        """Jobs by id. For deep paging pass `after_id` (the last id of the previous page): an index seek,
        where a large OFFSET would scan every skipped row."""
        where, args = flt.where(time.time())
        if after_id is not None:
            where, args = f"({where}) AND j.id > ?", [*args, after_id]
        rows = (
            self._conn()
            .execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE {where} "
                "ORDER BY j.id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            )
            .fetchall()
        )
        return [Job.from_row(r) for r in rows]

    def count_jobs(self, flt: JobFilter, cap: int | None = None) -> int:
        """How many jobs match. With `cap`, a count that needs the instances join stops at cap + 1 (a screen
        shows "more than N"; actions count exactly)."""
        where, args = flt.where(time.time())
        # Join instances only when the filter names one of its columns: counting 1M jobs with the join
        # took ~250 ms, without it ~30 ms (tests/bench/bench_console_queue.py).
        joined = "i." in where
        source = "jobs j JOIN instances i ON i.id = j.instance_id" if joined else "jobs j"
        if joined and cap is not None:
            sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM {source} WHERE {where} LIMIT ?)"
            return int(self._conn().execute(sql, (*args, cap + 1)).fetchone()[0])
        row = self._conn().execute(f"SELECT COUNT(*) FROM {source} WHERE {where}", args).fetchone()
        return int(row[0])

    def get_job(self, job_id: int) -> Job | None:
        jobs = self._jobs_by_ids(self._conn(), [job_id])
        return jobs[0] if jobs else None

    def job_events(self, job_id: int) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT at, event, status, detail, actor FROM job_events WHERE job_id = ? ORDER BY id",
                (job_id,),
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

    def route_unrouted(
        self,
        instance_ids: Sequence[int] | None,
        destinations: Sequence[str],
        priority: int,
        actor: str,
        reason: str,
        now: float,
    ) -> int:
        """Give unrouted instances (all, or these ids) one job per destination. Returns instances routed."""
        with self._tx() as conn:
            if instance_ids is None:
                rows = conn.execute("SELECT id FROM instances WHERE routed = 0").fetchall()
            else:
                rows = conn.execute(
                    f"SELECT id FROM instances WHERE routed = 0 AND id IN ({','.join('?' * len(instance_ids))})",
                    list(instance_ids),
                ).fetchall()
            for (instance_id,) in rows:
                for dest in destinations:
                    cur = conn.execute(
                        "INSERT INTO jobs(instance_id, destination, route, priority, state, next_attempt_at, "
                        "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                        (instance_id, dest, "operator", priority, JobState.QUEUED, now, now, now),
                    )
                    self._event(conn, int(cur.lastrowid or 0), now, "operator_route", None, reason, actor)
                conn.execute("UPDATE instances SET routed = 1 WHERE id = ?", (instance_id,))
        return len(rows)

    def list_unrouted(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, spool_key, sop_instance_uid, study_uid, patient_id, accession, modality, calling_ae, "
                "received_at FROM instances WHERE routed = 0 ORDER BY id LIMIT ? OFFSET ?",
                (limit, offset),
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

    def instance_counts(self) -> dict[str, int]:
        row = (
            self._conn()
            .execute(
                "SELECT COUNT(*), COALESCE(SUM(routed = 0), 0), COALESCE(SUM(spool_state = 'kept'), 0), "
                "COALESCE(SUM(CASE WHEN spool_state = 'kept' THEN size_bytes ELSE 0 END), 0) FROM instances"
            )
            .fetchone()
        )
        return {"instances": row[0], "unrouted": row[1], "spooled": row[2], "spooled_bytes": row[3]}

    def destination_stats(self, now: float) -> dict[str, DestinationStats]:
        conn = self._conn()
        stats: dict[str, DestinationStats] = {}

        def get(name: str) -> DestinationStats:
            return stats.setdefault(name, DestinationStats(name))

        for name, state, n in conn.execute("SELECT destination, state, COUNT(*) FROM jobs GROUP BY 1, 2"):
            get(name).counts[state] = n
        for name, oldest in conn.execute(
            "SELECT destination, MIN(created_at) FROM jobs WHERE state IN (?, ?) GROUP BY 1",
            (JobState.QUEUED, JobState.SENDING),
        ):
            get(name).oldest_pending_at = oldest
        for name, n in conn.execute(
            "SELECT j.destination, COUNT(*) FROM job_events e JOIN jobs j ON j.id = e.job_id "
            "WHERE e.event IN ('attempt_failed', 'failed') AND e.at > ? GROUP BY 1",
            (now - 3600,),
        ):
            get(name).failures_last_hour = n
        for row in conn.execute(
            "SELECT name, circuit, circuit_since, last_error, last_success_at, paused, paused_by, paused_reason, "
            "paused_at FROM destinations"
        ):
            s = get(row[0])
            s.circuit, s.circuit_since, s.last_error, s.last_success_at = row[1], row[2], row[3], row[4]
            s.paused, s.paused_by, s.paused_reason, s.paused_at = bool(row[5]), row[6], row[7], row[8]
        return stats

    def send_outcomes_since(self, since: float) -> dict[str, tuple[int, int]]:
        """(delivered, failed attempts) per destination since `since`, from every process's job events."""
        rows = self._conn().execute(
            "SELECT j.destination, SUM(e.event = 'delivered'), SUM(e.event != 'delivered') FROM job_events e "
            "JOIN jobs j ON j.id = e.job_id WHERE e.event IN ('delivered', 'attempt_failed', 'failed') AND e.at > ? "
            "GROUP BY 1",
            (since,),
        )
        return {name: (int(ok or 0), int(bad or 0)) for name, ok, bad in rows}

    def delivered_per_minute(self, now: float, minutes: int = 30) -> list[int]:
        """Objects delivered in each of the last `minutes` minutes, oldest first (the console's sparkline)."""
        start = now - minutes * 60
        counts = [0] * minutes
        for bucket, n in self._conn().execute(
            "SELECT CAST((at - ?) / 60 AS INTEGER), COUNT(*) FROM job_events WHERE event = 'delivered' AND at >= ? "
            "GROUP BY 1",
            (start, start),
        ):
            if 0 <= bucket < minutes:
                counts[bucket] = n
        return counts

    # -- spool housekeeping ---------------------------------------------------------------------
    def spool_keys_to_delete(self, finished_before: float, limit: int = 500) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT spool_key FROM instances WHERE spool_state = 'kept' AND finished_at IS NOT NULL "
                "AND finished_at <= ? LIMIT ?",
                (finished_before, limit),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def mark_spool_deleted(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with self._tx() as conn:
            conn.executemany("UPDATE instances SET spool_state = 'deleted' WHERE spool_key = ?", [(k,) for k in keys])

    def known_spool_keys(self, keys: Sequence[str]) -> set[str]:
        """Of `keys`, those an instance still needs on disk (spool_state 'kept')."""
        known: set[str] = set()
        conn = self._conn()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            rows = conn.execute(
                f"SELECT spool_key FROM instances WHERE spool_state = 'kept' AND spool_key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            known.update(r[0] for r in rows)
        return known

    # -- processes (heartbeats, so `status` knows what runs) ------------------------------------
    def heartbeat(self, name: str, started_at: float, now: float, detail: str = "", config_sha: str = "") -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO processes(name, pid, host, started_at, heartbeat_at, detail, config_sha) "
                "VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, detail = excluded.detail, "
                "config_sha = excluded.config_sha",
                (name, os.getpid(), this_host(), started_at, now, detail, config_sha),
            )

    def processes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute("SELECT * FROM processes ORDER BY name")]

    # -- backups ---------------------------------------------------------------------------------
    def snapshot_to(self, dest: Path) -> None:
        """A consistent copy of the whole database while the router runs (SQLite's online backup API:
        readers and writers carry on; the copy is one point in time)."""
        dest = Path(dest)
        target = sqlite3.connect(dest)
        try:
            self._conn().backup(target, pages=4096)
            target.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file in the bundle
        finally:
            target.close()

    # -- internals ------------------------------------------------------------------------------
    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job_id: int,
        now: float,
        event: str,
        status: int | None,
        detail: str | None,
        actor: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO job_events(job_id, at, event, status, detail, actor) VALUES (?,?,?,?,?,?)",
            (job_id, now, event, status, detail, actor),
        )

    @staticmethod
    def _jobs_by_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> list[Job]:
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN instances i ON i.id = j.instance_id "
            f"WHERE j.id IN ({','.join('?' * len(ids))})",
            list(ids),
        ).fetchall()
        return [Job.from_row(r) for r in rows]

    @staticmethod
    def _finish_instance_if_complete(conn: sqlite3.Connection, job_id: int, now: float, keep_spool: bool) -> str | None:
        row = conn.execute(
            "SELECT i.id, i.spool_key FROM instances i JOIN jobs j ON j.instance_id = i.id WHERE j.id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        instance_id, key = row
        pending = conn.execute(
            f"SELECT COUNT(*) FROM jobs WHERE instance_id = ? AND (state NOT IN ({','.join('?' * len(TERMINAL))}) "
            "OR awaiting_commit = 1)",
            (instance_id, *TERMINAL),
        ).fetchone()[0]
        if pending:
            return None
        if keep_spool:
            conn.execute("UPDATE instances SET finished_at = ? WHERE id = ?", (now, instance_id))
            return None
        conn.execute("UPDATE instances SET finished_at = ?, spool_state = 'deleted' WHERE id = ?", (now, instance_id))
        return str(key)
