"""The forwarding process: one worker pool per destination, fed only by the queue.

Each pool runs up to `max_associations` workers. A worker claims a few due jobs (priority, then
arrival), reuses its open association while the accepted presentation contexts fit, sends each
spooled file as-is, and records the outcome: delivered → done; transient → retry with exponential
backoff and jitter; permanent refusal → failed at once with the status and its meaning. Connection
failures feed a circuit breaker: after N in a row the pool stops sending and probes with C-ECHO
until the destination answers, then everything waiting becomes due again.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from pynetdicom import AE, Association

from . import commitment, outgoing, transcode
from .audit import AuditLog, patient_field
from .config import ConfigError, Node, RouterConfig, load_config
from .dicom_status import Outcome, classify_store_status, describe
from .logsetup import log
from .metrics import recorder
from .scu import AssociationFailed, Peer, echo, make_ae, open_association, store_file
from .spool import Spool
from .store import Job, Store, backoff_delay, this_host
from .wakeup import DoorbellListener, socket_path

LOG = logging.getLogger("router.forwarder")

CLAIM_BATCH = 8  # jobs a worker takes at once: fewer transactions, association reuse across them
IDLE_RECHECK_SECONDS = 1.0  # an idle worker re-checks the queue this often even without a doorbell
IDLE_RELEASE_SECONDS = 5.0  # release an association left unused this long
HEARTBEAT_SECONDS = 5.0  # how often `status` learns this process is alive (a small SQLite write)
STUDY_CHECK_SECONDS = 2.0  # how often waiting per-study/per-series jobs are checked for completion
BUSY_PEER_WAIT_SECONDS = 10.0  # an extra worker whose association the peer would not take waits this long


class Circuit:
    """Per-destination breaker, mirrored into the queue DB so `status` can show it."""

    def __init__(self, name: str, node: Node, store: Store):
        self.name = name
        self.node = node
        self.store = store
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.failing = True  # unknown until the first connection: the first success resets the count
        if store.circuit_of(name) == "open":
            self.closed.clear()
        else:
            self.closed.set()

    def success(self) -> None:
        if self.failing:
            with self.lock:
                self.failing = False
                self.store.record_connect_result(self.name, True, None, time.time())

    def failure(self, error: str) -> None:
        with self.lock:
            self.failing = True
            n = self.store.record_connect_result(self.name, False, error, time.time())
            if n >= self.node.circuit.open_after_failures and self.closed.is_set():
                self.closed.clear()
                self.store.set_circuit(self.name, "open", time.time(), error)
                log(
                    LOG,
                    logging.ERROR,
                    f"destination {self.name}: {n} connection failures in a row, pausing sends and probing "
                    f"with C-ECHO every {self.node.circuit.probe_seconds:g} s. Last error: {error}",
                    destination=self.name,
                )

    def close(self) -> None:
        with self.lock:
            self.failing = False
            self.store.record_connect_result(self.name, True, None, time.time())
            self.store.set_circuit(self.name, "closed", time.time())
            self.closed.set()


class DestinationPool:
    def __init__(
        self,
        name: str,
        node: Node,
        cfg: RouterConfig,
        store: Store,
        spool: Spool,
        audit: AuditLog,
        out: outgoing.OutgoingDir,
    ):
        self.name = name
        self.node = node
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.audit = audit
        self.outgoing = out
        self.peer = Peer.from_node(name, node, cfg)
        self.stop = threading.Event()
        self.abort_now = threading.Event()
        self.circuit = Circuit(name, node, store)
        # Storage commitment after sending (commitment.py): None when this destination is not asked.
        self.commitment = (
            commitment.Requester(name, node, cfg, store, spool, audit, self.peer) if node.commitment.enabled else None
        )
        self.threads: list[threading.Thread] = []
        self.work_arrived = threading.Event()  # set by the receiver's doorbell (see wakeup.py)
        self.recheck_seconds = IDLE_RECHECK_SECONDS
        self.live: dict[int, Association | None] = {}  # each worker's current association
        self.busy_noted = False
        self._local = threading.local()  # .worker_id: whose claims this thread settles
        self.claimant_prefix = f"{this_host()}:{os.getpid()}:{name}"

    def start(self) -> None:
        for i in range(self.node.max_associations):
            t = threading.Thread(target=self._worker, args=(i,), name=f"fwd-{self.name}-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._prober, name=f"probe-{self.name}", daemon=True)
        t.start()
        self.threads.append(t)

    def request_stop(self) -> None:
        self.stop.set()
        self.circuit.closed.set()  # wake waiting workers so they can exit
        self.work_arrived.set()

    def join(self, deadline: float) -> bool:
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    # -- the circuit's probe --------------------------------------------------------------------
    def _prober(self) -> None:
        while not self.stop.is_set():
            if self.circuit.closed.is_set():
                self.stop.wait(1.0)
                continue
            if self.stop.wait(self.node.circuit.probe_seconds):
                return
            result = echo(self.cfg.router.ae_title, self.peer)
            if result.ok:
                try:
                    self.circuit.close()
                    due = self.store.make_due(self.name, time.time())
                    self.work_arrived.set()
                except sqlite3.Error as exc:
                    log(
                        LOG,
                        logging.ERROR,
                        f"probe of {self.name} succeeded but the queue database failed: {exc}",
                    )
                    continue
                log(
                    LOG,
                    logging.INFO,
                    f"destination {self.name} answers again ({result.message}); resuming, {due} waiting job(s) due now",
                    destination=self.name,
                )
                self.audit.record("destination_recovered", destination=self.name, jobs_due=due)
            else:
                log(
                    LOG,
                    logging.WARNING,
                    f"probe of {self.name} failed: {result.message}",
                    destination=self.name,
                )

    # -- workers --------------------------------------------------------------------------------
    def _worker(self, index: int) -> None:
        worker_id = f"{self.claimant_prefix}:{index}"
        self._local.worker_id = worker_id
        ae = make_ae(self.cfg.router.ae_title, self.node.timeouts)
        assoc: Association | None = None
        accepted = Negotiated()
        last_used = time.monotonic()
        while not self.stop.is_set():
            self.live[index] = assoc
            try:
                if not self.circuit.closed.is_set():
                    assoc = _release(assoc)
                    self.circuit.closed.wait(1.0)
                    continue
                self.work_arrived.clear()  # before looking, so a ring during the look is not lost
                wait = self._seconds_until_due_work()
                if wait > 0:
                    if self.commitment is not None:
                        self.commitment.when_idle(ae, assoc, worker_id, self.work_arrived)
                    if (
                        assoc is not None
                        and time.monotonic() - last_used > IDLE_RELEASE_SECONDS
                        and not (self.commitment is not None and self.commitment.holds(assoc))
                    ):
                        assoc = _release(assoc)
                    self.work_arrived.wait(min(wait, self.recheck_seconds))
                    continue
                if assoc is None or not assoc.is_established:
                    # Associate BEFORE claiming: a worker waiting on a peer that serves one association at a
                    # time (DCMTK storescp without --fork, many modalities) must not sit on jobs another
                    # worker could be sending.
                    contexts = self.store.due_contexts(self.name, time.time(), CLAIM_BATCH)
                    if not contexts:
                        continue
                    try:
                        assoc, accepted = self._open(ae, [c for sop, ts in contexts for c in _proposals(sop, ts)])
                    except AssociationFailed as exc:
                        assoc, accepted = None, Negotiated()
                        if exc.no_contexts:
                            # Reachable, but refuses these objects: let the batch path fail them one by one.
                            self.circuit.success()
                        elif self._others_connected(index):
                            # The peer is up (a sibling is sending) but takes fewer parallel associations
                            # than max_associations: not an outage. This worker stands by.
                            self._note_busy_peer(str(exc))
                            self.stop.wait(BUSY_PEER_WAIT_SECONDS)
                            continue
                        else:
                            self.circuit.failure(str(exc))
                            log(LOG, logging.WARNING, str(exc), destination=self.name)
                            self._backoff_due_jobs(str(exc))
                            continue
                    else:
                        self.circuit.success()
                        last_used = time.monotonic()
                jobs = self.store.claim(self.name, worker_id, CLAIM_BATCH, self.cfg.router.lease_seconds, time.time())
                if jobs:
                    assoc, accepted = self._send_batch(ae, assoc, accepted, jobs)
                    last_used = time.monotonic()
                    if self.commitment is not None:
                        self.commitment.after_batch(ae, assoc, worker_id)
            except Exception as exc:
                # E.g. the queue database's disk is full. Keep the worker alive; claims it could not
                # settle stay `sending` and are requeued when their lease runs out.
                log(
                    LOG,
                    logging.ERROR,
                    f"forwarder worker {worker_id}: {type(exc).__name__}: {exc}; retrying in 5 s",
                    destination=self.name,
                )
                assoc = _abort(assoc)
                self.stop.wait(5.0)
        _release(assoc)
        self.live.pop(index, None)

    def _others_connected(self, index: int) -> bool:
        return any(a is not None and a.is_established for i, a in list(self.live.items()) if i != index)

    def _note_busy_peer(self, error: str) -> None:
        if not self.busy_noted:
            self.busy_noted = True
            log(
                LOG,
                logging.WARNING,
                f"destination {self.name} did not take another association while one is "
                f"open ({error}); it may accept fewer than max_associations={self.node.max_associations} — "
                "lower max_associations for this node",
                destination=self.name,
            )

    def _backoff_due_jobs(self, error: str) -> None:
        """A connection failure before any claim: record it as a failed attempt on the next due jobs, so
        their history shows the outage and they back off (the circuit breaker counts the failure too)."""
        jobs = self.store.claim(
            self.name, self._claimant() or "?", CLAIM_BATCH, self.cfg.router.lease_seconds, time.time()
        )
        for job in jobs:
            self._retry_later(job, None, error)

    def _seconds_until_due_work(self) -> float:
        """0 if a job is due now, else how long until the earliest backed-off job is (inf if none)."""
        due = self.store.next_due_at(self.name)
        if due is None:
            return float("inf")
        return max(0.0, due - time.time())

    def _open(self, ae: AE, contexts: list[tuple[str, str]]) -> tuple[Association, Negotiated]:
        if self.commitment is not None:
            contexts = [commitment.CONTEXT, *contexts]  # first: never cut by the 128-context limit
        assoc, accepted = open_association(ae, self.peer, contexts)
        if self.commitment is not None:
            self.commitment.prepare(assoc)
        recorder().watch_outbound(assoc, self.name)
        proposed = set(list(dict.fromkeys(contexts))[:128])  # what open_association put to the peer
        return assoc, Negotiated(accepted, proposed - accepted)

    def _send_batch(
        self,
        ae: AE,
        assoc: Association | None,
        accepted: Negotiated,
        jobs: list[Job],
    ) -> tuple[Association | None, Negotiated]:
        pending = list(jobs)
        while pending:
            if self.stop.is_set() and self.abort_now.is_set():
                break
            job = pending[0]
            if assoc is None or not assoc.is_established or not accepted.decided(job):
                assoc = _release(assoc)
                wanted = [c for j in pending for c in _proposals(j.sop_class_uid, j.transfer_syntax)]
                try:
                    assoc, accepted = self._open(ae, wanted + sorted(accepted.accepted))
                except AssociationFailed as exc:
                    if exc.no_contexts:
                        self.circuit.success()
                        for j in pending:
                            self._fail(j, None, _no_context_reason(self.peer, j, set()))
                        return None, Negotiated()
                    self.circuit.failure(str(exc))
                    for j in pending:
                        self._retry_later(j, None, str(exc))
                    log(LOG, logging.WARNING, str(exc), destination=self.name)
                    return None, Negotiated()
                self.circuit.success()
            pending.pop(0)
            send_syntax = accepted.syntax_for(job)
            if send_syntax is None:
                self._fail(job, None, _no_context_reason(self.peer, job, accepted.syntaxes(job.sop_class_uid)))
                continue
            assoc = self._send_one(assoc, job, send_syntax)
        if pending:
            self.store.give_back([j.id for j in pending], time.time(), "router shutting down", self._claimant())
        return assoc, accepted if assoc is not None else Negotiated()

    def _send_one(self, assoc: Association, job: Job, send_syntax: str) -> Association | None:
        path = self.spool.path(job.spool_key)
        if not path.exists():
            self._fail(job, None, f"spooled file {job.spool_key} is missing from {self.spool.root} — cannot send")
            return assoc
        prepared = None
        if job.morph or send_syntax != job.transfer_syntax:
            try:
                prepared = self._prepare(job, path, send_syntax)
            except outgoing.CannotPrepare as exc:
                self._fail(job, None, f"cannot prepare the object for {self.peer.describe()}: {exc}")
                return assoc
            path = prepared.path
        started = time.monotonic()
        try:
            status = store_file(assoc, path)
        except Exception as exc:  # pynetdicom raises for unreadable files, closed sockets …
            status = None
            error = f"sending to {self.peer.describe()} failed: {type(exc).__name__}: {exc}"
        else:
            error = (
                f"no C-STORE response from {self.peer.describe()} within {self.node.timeouts.dimse:g} s "
                "(association aborted or timed out)"
            )
        finally:
            outgoing.discard(prepared)
        if status is None:
            self._retry_later(job, None, error)
            log(LOG, logging.WARNING, error, destination=self.name, job=job.id)
            return _abort(assoc)
        outcome = classify_store_status(status)
        if outcome is Outcome.DELIVERED:
            self._ack(job, status, time.monotonic() - started, prepared)
        elif outcome is Outcome.RETRY:
            self._retry_later(job, status, f"{self.peer.describe()} answered {describe(status)}")
        else:
            self._fail(job, status, f"{self.peer.describe()} answered {describe(status)}")
        return assoc

    def _prepare(self, job: Job, path: Path, send_syntax: str) -> outgoing.Prepared:
        """The morphed and/or decompressed copy for this destination; every morph is audited (hashes only)."""
        try:
            prepared = outgoing.prepare(
                path,
                self.outgoing,
                send_syntax=send_syntax,
                profile_names=job.morph,
                profiles=self.cfg.morph_profiles,
                uids=self.store,
            )
        except outgoing.CannotPrepare:
            raise
        except Exception as exc:  # pydicom cannot re-read or re-write the spooled object
            raise outgoing.CannotPrepare(f"{type(exc).__name__}: {exc}") from exc
        if job.morph:
            self.audit.record(
                "morph",
                destination=self.name,
                job=job.id,
                sop_instance_uid=job.sop_instance_uid,
                sent_sop_instance_uid=prepared.sop_instance_uid
                if prepared.sop_instance_uid != job.sop_instance_uid
                else None,
                profiles=list(job.morph),
                config_sha=self.cfg.source_sha256[:12] or None,
                **outgoing.changes_for_audit(prepared.changes),
            )
        if prepared.decompressed_from:
            self.audit.record(
                "transcode",
                destination=self.name,
                job=job.id,
                sop_instance_uid=job.sop_instance_uid,
                from_syntax=prepared.decompressed_from,
                to_syntax=prepared.transfer_syntax,
            )
        return prepared

    # -- outcomes -------------------------------------------------------------------------------
    def _ack(self, job: Job, status: int, seconds: float, prepared: outgoing.Prepared | None = None) -> None:
        keep = self.cfg.router.retention.keep_sent_hours > 0
        freed = self.store.ack(
            job.id,
            status,
            f"stored by {self.peer.describe()} in {seconds * 1000:.0f} ms",
            time.time(),
            keep_spool=keep,
            commit=self.commitment is not None,  # then the spool file stays until the commitment report
            sent_uid=_morphed_uid(job, prepared),
        )
        if freed:
            self.spool.delete(freed)
        recorder().forwarded(self.name, job.size_bytes)
        self.audit.record(
            "forward",
            destination=self.name,
            job=job.id,
            sop_instance_uid=job.sop_instance_uid,
            study_uid=job.study_uid,
            accession=job.accession,
            status=f"0x{status:04X}",
            attempts=job.attempts,
            sent_as=None if prepared is None else prepared.sop_instance_uid,
            transfer_syntax=None if prepared is None else prepared.transfer_syntax,
            **patient_field(self.cfg, job.patient_id),
        )

    def _claimant(self) -> str | None:
        return getattr(self._local, "worker_id", None)

    def _retry_later(self, job: Job, status: int | None, error: str) -> None:
        r = self.node.retry
        delay = backoff_delay(job.attempts, r.base_seconds, r.cap_seconds)
        state = self.store.retry_later(
            job.id,
            status,
            f"{error} (retry in {delay:.0f} s)",
            time.time(),
            delay,
            r.max_attempts,
            self._claimant(),
        )
        if state == "queued":
            recorder().retried(self.name)
        else:
            recorder().failed(self.name)
        self.audit.record(
            "forward_attempt_failed" if state == "queued" else "forward_failed",
            "failure",
            destination=self.name,
            job=job.id,
            sop_instance_uid=job.sop_instance_uid,
            study_uid=job.study_uid,
            attempts=job.attempts,
            reason=error,
            retry_in_seconds=round(delay, 1) if state == "queued" else None,
        )

    def _fail(self, job: Job, status: int | None, error: str) -> None:
        self.store.fail(job.id, status, error, time.time(), self._claimant())
        recorder().failed(self.name)
        log(LOG, logging.ERROR, f"job {job.id} failed permanently: {error}", destination=self.name, job=job.id)
        self.audit.record(
            "forward_failed",
            "failure",
            destination=self.name,
            job=job.id,
            sop_instance_uid=job.sop_instance_uid,
            study_uid=job.study_uid,
            accession=job.accession,
            reason=error,
            status=None if status is None else f"0x{status:04X}",
        )


class Negotiated:
    """What one association can carry: the (SOP class, transfer syntax) pairs the peer accepted, and
    those it was offered and refused (so a refused original is not proposed again on the same association)."""

    def __init__(self, accepted: set[tuple[str, str]] | None = None, refused: set[tuple[str, str]] | None = None):
        self.accepted = accepted or set()
        self.refused = refused or set()

    def syntaxes(self, sop_class: str) -> set[str]:
        return {ts for sop, ts in self.accepted if sop == sop_class}

    def decided(self, job: Job) -> bool:
        """Was this job's own encoding put to the peer on this association (accepted or not)?"""
        key = (job.sop_class_uid, job.transfer_syntax)
        return key in self.accepted or key in self.refused

    def syntax_for(self, job: Job) -> str | None:
        return transcode.choose_syntax(job.transfer_syntax, self.syntaxes(job.sop_class_uid), job.transcode)


def _proposals(sop_class: str, stored_syntax: str) -> list[tuple[str, str]]:
    """The object's own encoding first, then what it could be decompressed to (one context each, so the
    peer says yes or no to each and the original is used whenever it is accepted)."""
    return [(sop_class, stored_syntax)] + [
        (sop_class, ts) for ts in transcode.fallback_syntaxes(stored_syntax, "decompress")
    ]


def _no_context_reason(peer: Peer, job: Job, accepted_syntaxes: set[str]) -> str:
    what = f"SOP class {job.sop_class_uid} in {transcode.describe_ts(job.transfer_syntax)}"
    if not accepted_syntaxes:
        return (
            f"destination {peer.describe()} does not accept {what}, nor any encoding the router could convert it "
            "to (no presentation context accepted) — enable this SOP class on the destination, or route this kind "
            "of object elsewhere"
        )
    offered = ", ".join(transcode.describe_ts(ts) for ts in sorted(accepted_syntaxes))
    if job.transcode == "never" and transcode.fallback_syntaxes(job.transfer_syntax, "decompress"):
        return (
            f"destination {peer.describe()} does not accept {what} (it accepts {offered}) and the route says "
            "transcode: never — enable this transfer syntax on the destination, or allow transcode: decompress"
        )
    if not transcode.can_decode(job.transfer_syntax):
        return (
            f"destination {peer.describe()} does not accept {what} (it accepts {offered}) and the router cannot "
            "decode that transfer syntax — enable it on the destination, or route this kind of object elsewhere"
        )
    return (
        f"destination {peer.describe()} does not accept {what} (it accepts {offered}); the router only "
        "decompresses (lossless) and never compresses — enable one of these syntaxes on the destination"
    )


def _morphed_uid(job: Job, prepared: outgoing.Prepared | None) -> str | None:
    """The SOP Instance UID the destination got, when morphing replaced the original (commitment lists it)."""
    if prepared is None or prepared.sop_instance_uid in ("", job.sop_instance_uid):
        return None
    return prepared.sop_instance_uid


def _release(assoc: Association | None) -> Association | None:
    """Release an association if open; returns None so callers can write `assoc = _release(assoc)`."""
    if assoc is not None and assoc.is_established:
        try:
            assoc.release()
        except Exception:
            assoc.abort()
    return None


def _abort(assoc: Association | None) -> Association | None:
    if assoc is not None:
        try:
            assoc.abort()
        except Exception:
            pass
    return None


class Forwarder:
    def __init__(self, config_path: Path, cfg: RouterConfig):
        self.config_path = config_path
        self.cfg = cfg
        self.store = Store(cfg.db_path, durable=False)
        self.spool = Spool(cfg.spool_dir)
        self.audit = AuditLog(cfg.audit_path, "forwarder")
        self.outgoing = outgoing.OutgoingDir(cfg.router.state_dir / "outgoing")
        self.pools: dict[str, DestinationPool] = {}
        self.started_at = time.time()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.recheck_seconds = IDLE_RECHECK_SECONDS

    def _start_pool(self, name: str, node: Node) -> None:
        pool = DestinationPool(name, node, self.cfg, self.store, self.spool, self.audit, self.outgoing)
        pool.recheck_seconds = self.recheck_seconds
        pool.start()
        self.pools[name] = pool

    def reconcile(self) -> None:
        """Start, stop or restart pools so they match the config's destinations."""
        wanted = self.cfg.destinations()
        for name in list(self.pools):
            pool = self.pools[name]
            if name not in wanted or pool.node != wanted[name] or pool.cfg.router != self.cfg.router:
                pool.request_stop()
                pool.join(time.monotonic() + self.cfg.router.drain_seconds)
                del self.pools[name]
        for name, node in wanted.items():
            if name not in self.pools:
                self._start_pool(name, node)

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log(LOG, logging.ERROR, f"config reload refused, the running config stays: {exc}")
            return
        self.cfg = new
        self.reconcile()
        log(LOG, logging.INFO, "config reloaded", destinations=sorted(self.pools))
        try:
            self._heartbeat()  # `config apply` waits for this to confirm the new version runs
        except sqlite3.Error as exc:
            log(LOG, logging.WARNING, f"heartbeat not recorded: {exc}")

    def _heartbeat(self) -> None:
        self.store.heartbeat(
            "forwarder", self.started_at, time.time(), ",".join(sorted(self.pools)), self.cfg.source_sha256
        )

    def release_complete_studies(self) -> None:
        """Studies and series quiet for `quiet_seconds` (or with all their expected objects) are complete:
        jobs waiting for them (routes with `forward: study|series`) become due."""
        st = self.cfg.router.studies
        done = self.store.complete_studies(time.time(), st.quiet_seconds, st.keep_days)
        if done.jobs_released:
            log(
                LOG,
                logging.INFO,
                f"{done.jobs_released} job(s) released: {done.studies_completed} study(ies) and "
                f"{done.series_completed} series complete",
            )
            self._ring()

    def housekeeping(self) -> None:
        """Requeue claims whose lease ran out. Here, not in the scheduler: only this process knows which
        claims are its own live sends. (Spool retention and the orphan sweep are scheduler jobs.)"""
        n = self.store.recover_abandoned(time.time(), live_claimants_prefix=f"{this_host()}:{os.getpid()}:")
        if n:
            log(LOG, logging.WARNING, f"requeued {n} job(s) whose claim lease ran out")

    def serve(self) -> int:
        self.spool.init()
        self.store.init()
        self.outgoing.init()
        # Claims held by earlier forwarders on this host are from processes that are gone (the
        # supervisor starts one forwarder at a time): requeue them now rather than wait out the lease.
        n = self.store.recover_abandoned(time.time(), dead_claimants_prefix=f"{this_host()}:")
        if n:
            log(LOG, logging.WARNING, f"requeued {n} job(s) that were mid-send when the router last stopped")
        commitment.recover_interrupted(self.store, time.time())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        self.reconcile()
        doorbell: DoorbellListener | None = None
        try:
            doorbell = DoorbellListener(socket_path(self.cfg.router.state_dir), self._ring).start()
        except OSError as exc:  # e.g. a state_dir path longer than a UNIX socket name allows
            doorbell = None
            log(LOG, logging.WARNING, f"no doorbell socket ({exc}); idle workers poll the queue every 50 ms instead")
            self.recheck_seconds = 0.05
            for pool in self.pools.values():
                pool.recheck_seconds = self.recheck_seconds
        log(
            LOG,
            logging.INFO,
            f"forwarding to {len(self.pools)} destination(s): {', '.join(sorted(self.pools))}",
        )
        last_house = 0.0
        last_beat = 0.0
        last_studies = 0.0
        while not self.stop.wait(1.0):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            now = time.monotonic()
            try:
                if now - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = now
                    self._heartbeat()
                if now - last_studies >= STUDY_CHECK_SECONDS:
                    last_studies = now
                    self.release_complete_studies()
                if now - last_house > 30:
                    last_house = now
                    self.housekeeping()
            except sqlite3.Error as exc:
                log(LOG, logging.WARNING, f"housekeeping skipped: {exc}")
        if doorbell is not None:
            doorbell.close()
        self._drain()
        return 0

    def _ring(self) -> None:
        for pool in list(self.pools.values()):
            pool.work_arrived.set()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.cfg.router.drain_seconds
        for pool in self.pools.values():
            pool.request_stop()
        stuck = [name for name, pool in self.pools.items() if not pool.join(deadline)]
        if stuck:
            log(
                LOG,
                logging.WARNING,
                f"drain deadline reached with sends in flight to {', '.join(stuck)}; "
                "they will be sent again after restart",
            )
        log(LOG, logging.INFO, "forwarder stopped")
