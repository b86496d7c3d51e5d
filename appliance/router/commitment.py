"""Storage Commitment Push Model (PS3.4 Annex J), the router as SCU: after sending objects to a destination
whose `commitment.enabled` is set, ask it to commit them, and take its report.

The request: one N-ACTION (Action Type 1) per batch of sent objects, listing them in the Referenced SOP
Sequence under a new Transaction UID, which is recorded in the queue *before* the request goes out so a
report arriving anywhere finds its jobs. The report: an N-EVENT-REPORT from the destination, either on the
requesting association (the forwarder keeps it open up to `wait_seconds` for that) or on a new association
to the router's listener (the receiver takes it). Jobs go `done → committed`, or `failed` with the reason
from the Failed SOP Sequence; their spool files are kept until then. A report that never comes turns into a
warning once `deadline_minutes` have passed (commitment_deadline.py: a scheduler job, and `status` live).

pynetdicom 3.0.4 serves an incoming N-EVENT-REPORT at once on a thread of its own, not through the
reactor (which scu.py switches off on outbound associations). On the forwarder's associations we take that
request ourselves (`prepare`): pynetdicom's own path flips the association's reactor-pause flag from that
thread, which can leave a concurrent `send_c_store` spinning forever; and every outgoing DIMSE message is
queued whole under a lock, so our N-EVENT-REPORT response never interleaves with a C-STORE's fragments.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, Association, evt
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import decode

from .audit import AuditLog
from .config import Node, RouterConfig
from .logsetup import log
from .scu import AssociationFailed, Peer, open_association
from .spool import Spool
from .store import CommitItem, Store, this_host

LOG = logging.getLogger("router.commitment")

# -- the SOP class (also read by the conformance statement) -----------------------------------------
PUSH_MODEL_SOP_CLASS = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
PUSH_MODEL_SOP_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
ACTION_REQUEST_COMMIT = 1  # N-ACTION Action Type ID: Request Storage Commitment
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type ID: Storage Commitment Request Successful
EVENT_SOME_FAILED = 2  # ... Complete – Failures Exist
PROPOSED_TRANSFER_SYNTAX = ImplicitVRLittleEndian  # the one every implementation must accept
CONTEXT = (PUSH_MODEL_SOP_CLASS, str(PROPOSED_TRANSFER_SYNTAX))  # (SOP class, transfer syntax) the forwarder adds
ROLES = "SCU (requests commitment; receives N-EVENT-REPORT on the same or a new association)"

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_MISSING_ATTRIBUTE = 0x0120

# PS3.3 C.14.1.1 / PS3.4 J.3.3.1: Failure Reason (0008,1197) in the Failed SOP Sequence.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance (the destination does not have it)",
    0x0119: "class/instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}

MAX_PER_REQUEST = 500  # objects listed in one N-ACTION (a large study goes in a few requests)
BUSY_BATCH = 100  # while objects keep coming, ask once this many are sent; when idle, ask at once
RETRY_FIRST_SECONDS = 30.0  # a request that failed is tried again after this, doubling up to
RETRY_MAX_SECONDS = 600.0


def describe_failure(code: int | None) -> str:
    if code is None:
        return "no failure reason given"
    words = FAILURE_REASONS.get(code, "unknown failure reason")
    return f"{words} (0x{code:04X})"


# -- the messages ------------------------------------------------------------------------------------
def build_request(transaction_uid: str, items: Sequence[CommitItem]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    refs = []
    for item in items:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item.sop_class_uid
        ref.ReferencedSOPInstanceUID = item.sop_instance_uid
        refs.append(ref)
    ds.ReferencedSOPSequence = refs
    return ds


@dataclass(frozen=True)
class Report:
    transaction_uid: str | None
    committed: list[str] = field(default_factory=list)  # SOP Instance UIDs
    failed: list[tuple[str, int | None, str]] = field(default_factory=list)  # (UID, reason code, words)


def parse_report(ds: Dataset) -> Report:
    """The Event Information of an N-EVENT-REPORT (Event Type 1 or 2)."""
    committed = [str(item.ReferencedSOPInstanceUID) for item in ds.get("ReferencedSOPSequence", None) or []]
    failed = []
    for item in ds.get("FailedSOPSequence", None) or []:
        code = item.get("FailureReason", None)
        code = None if code is None else int(code)
        failed.append((str(item.ReferencedSOPInstanceUID), code, describe_failure(code)))
    tx = ds.get("TransactionUID", None)
    return Report(str(tx) if tx else None, committed, failed)


# -- taking a report (either side) -------------------------------------------------------------------
@dataclass
class ReportContext:
    """What applying a report needs, from whichever process took it."""

    store: Store
    spool: Spool
    audit: AuditLog
    keep_spool: bool
    node_ae: Callable[[str], str | None]  # destination name → its configured AE title (None: not configured)


def apply_report(ctx: ReportContext, report: Report, reporter: str, calling_ae: str | None = None) -> int:
    """Record a storage commitment report; log and audit it. Returns the N-EVENT-REPORT response status."""
    if not report.transaction_uid:
        log(LOG, logging.WARNING, f"storage commitment report without a Transaction UID ({reporter}): refused")
        ctx.audit.record("commitment_result", "failure", reporter=reporter, reason="no Transaction UID")
        return STATUS_MISSING_ATTRIBUTE
    tx = report.transaction_uid
    outcome = ctx.store.record_commitment_report(
        tx, report.committed, report.failed, reporter, time.time(), ctx.keep_spool
    )
    if outcome is None:
        log(
            LOG,
            logging.WARNING,
            f"storage commitment report for transaction {tx} ({reporter}), which this router never requested: "
            "ignored (answered Success so the sender does not repeat it)",
            transaction_uid=tx,
        )
        ctx.audit.record(
            "commitment_result", "failure", transaction_uid=tx, reporter=reporter, reason="unknown transaction"
        )
        return STATUS_SUCCESS
    for key in outcome.spool_keys_freed:
        ctx.spool.delete(key)
    dest = outcome.destination
    expected_ae = ctx.node_ae(dest)
    if calling_ae is not None and expected_ae is not None and calling_ae != expected_ae:
        log(
            LOG,
            logging.INFO,
            f"storage commitment report for {dest} came from AE '{calling_ae}', not its AE title '{expected_ae}' "
            "(accepted: the Transaction UID identifies the request)",
            destination=dest,
        )
    committed, failed = len(outcome.committed_jobs), len(outcome.failed_jobs)
    if failed:
        shown = "; ".join(f"job {j} ({uid}): {why}" for j, uid, why in outcome.failed_jobs[:5])
        more = f"; and {failed - 5} more" if failed > 5 else ""
        log(
            LOG,
            logging.ERROR,
            f"destination {dest} did NOT commit {failed} object(s) (transaction {tx}, {reporter}): {shown}{more} — "
            f"the jobs are failed and their files kept; check the destination, then `dicom-router queue retry "
            f"--destination {dest} --state failed` to send them again",
            destination=dest,
            transaction_uid=tx,
        )
    else:
        log(
            LOG,
            logging.INFO,
            f"destination {dest} committed {committed} object(s) (transaction {tx}, {reporter})",
            destination=dest,
            transaction_uid=tx,
        )
    if outcome.unmatched:
        log(
            LOG,
            logging.INFO,
            f"{outcome.unmatched} object(s) in the commitment report of {dest} await no report any more "
            "(reported before, re-sent or cancelled): left as they are",
            destination=dest,
        )
    ctx.audit.record(
        "commitment_result",
        "failure" if failed else "success",
        destination=dest,
        transaction_uid=tx,
        reporter=reporter,
        committed=committed,
        failed=failed,
        failed_objects=[{"job": j, "sop_instance_uid": uid, "reason": why} for j, uid, why in outcome.failed_jobs]
        or None,
        unmatched=outcome.unmatched or None,
    )
    return STATUS_SUCCESS


# -- the receiver: reports on a new association ------------------------------------------------------
def may_report(cfg: RouterConfig, calling_ae: str) -> bool:
    """A destination the router asks for commitment may call in to report (it is no source: it may not store)."""
    return any(n.is_destination and n.commitment.enabled and n.ae_title == calling_ae for n in cfg.nodes.values())


def add_supported_context(ae: AE) -> None:
    """Accept the SOP class in whichever role the peer proposes: a PACS reporting on its own association
    proposes itself as SCP (SCP/SCU role selection); one that does not negotiate roles is taken as well."""
    ae.add_supported_context(PUSH_MODEL_SOP_CLASS, scu_role=True, scp_role=True)


def receiver_handler(receiver: Any) -> Callable[[evt.Event], tuple[int, None]]:
    """EVT_N_EVENT_REPORT handler for the receiver's listener. `receiver` gives store, spool, audit, cfg
    (read at each report, so a reload applies)."""

    def on_report(event: evt.Event) -> tuple[int, None]:
        a = event.assoc
        calling = (a.requestor.ae_title or "").strip()
        reporter = f"new association from {calling}@{a.requestor.address}"
        try:
            if str(event.request.AffectedSOPClassUID) != PUSH_MODEL_SOP_CLASS:
                return STATUS_PROCESSING_FAILURE, None
            report = parse_report(event.event_information)
            ctx = _context(receiver.cfg, receiver.store, receiver.spool, receiver.audit)
            return apply_report(ctx, report, reporter, calling), None
        except Exception as exc:  # a malformed report must not take the listener down
            log(LOG, logging.ERROR, f"could not take a storage commitment report ({reporter}): {exc}")
            return STATUS_PROCESSING_FAILURE, None

    return on_report


def _context(cfg: RouterConfig, store: Store, spool: Spool, audit: AuditLog) -> ReportContext:
    def node_ae(name: str) -> str | None:
        node = cfg.nodes.get(name)
        return node.ae_title if node else None

    return ReportContext(store, spool, audit, cfg.router.retention.keep_sent_hours > 0, node_ae)


# -- the forwarder: asking, and reports on the requesting association --------------------------------
class Requester:
    """One destination's storage commitment requests, shared by its pool's workers."""

    def __init__(
        self, name: str, node: Node, cfg: RouterConfig, store: Store, spool: Spool, audit: AuditLog, peer: Peer
    ):
        self.name = name
        self.node = node
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.audit = audit
        self.peer = peer
        self.wait_seconds = node.commitment.wait_seconds
        self._lock = threading.Lock()
        self._holds: dict[int, tuple[float, set[str]]] = {}  # id(assoc) → (release no earlier than, open txs)
        self._reported: set[str] = set()  # transactions whose report came on one of our associations
        self._retry_at = 0.0  # monotonic: after a failed request, not before this
        self._retry_delay = RETRY_FIRST_SECONDS
        self._failing = False

    # associations ---------------------------------------------------------------------------------
    def prepare(self, assoc: Association) -> None:
        """Take N-EVENT-REPORTs on this association ourselves, and send each DIMSE message whole."""
        send_lock = threading.Lock()
        send_msg = assoc.dimse.send_msg
        serve_request = assoc._serve_request

        def locked_send(primitive: Any, context_id: int) -> None:
            with send_lock:
                send_msg(primitive, context_id)

        def serve(msg: Any, context_id: int) -> None:
            if isinstance(msg, N_EVENT_REPORT) and msg.is_valid_request and not assoc._sent_release:
                self._on_report(assoc, msg, context_id)  # (during our release: unanswered, the peer reports again)
            else:
                serve_request(msg, context_id)

        assoc.dimse.send_msg = locked_send  # type: ignore[method-assign]
        assoc._serve_request = serve  # type: ignore[method-assign]

    def _on_report(self, assoc: Association, req: N_EVENT_REPORT, context_id: int) -> None:
        status = STATUS_PROCESSING_FAILURE
        taken: str | None = None
        try:
            cx = assoc._accepted_cx[context_id]
            ts = cx.transfer_syntax[0]
            if str(req.AffectedSOPClassUID) == PUSH_MODEL_SOP_CLASS and req.EventInformation is not None:
                ds = decode(req.EventInformation, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
                report = parse_report(ds)
                status = apply_report(
                    _context(self.cfg, self.store, self.spool, self.audit),
                    report,
                    "on the requesting association",
                    self.node.ae_title,
                )
                taken = report.transaction_uid
        except Exception as exc:
            log(LOG, logging.ERROR, f"could not take the storage commitment report of {self.name}: {exc}")
        rsp = N_EVENT_REPORT()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
        rsp.EventTypeID = req.EventTypeID
        rsp.Status = status
        try:
            assoc.dimse.send_msg(rsp, context_id)
        except Exception as exc:
            log(LOG, logging.WARNING, f"could not answer the storage commitment report of {self.name}: {exc}")
        # Only now, with the answer queued: the thread waiting for this report then releases the association,
        # and a release queued before the answer leaves the destination without one (it waits out its DIMSE
        # timeout, aborts, and counts the report as failed).
        if taken:
            with self._lock:
                self._reported.add(taken)

    @staticmethod
    def carries(assoc: Association | None) -> bool:
        if assoc is None or not assoc.is_established:
            return False
        return any(str(cx.abstract_syntax) == PUSH_MODEL_SOP_CLASS for cx in assoc.accepted_contexts)

    def holds(self, assoc: Association | None) -> bool:
        """Keep this association open: a report may still come on it (up to wait_seconds after asking)."""
        if assoc is None:
            return False
        with self._lock:
            hold = self._holds.get(id(assoc))
            if hold is None:
                return False
            until, txs = hold
            if time.monotonic() >= until or txs <= self._reported or not assoc.is_established:
                del self._holds[id(assoc)]
                return False
            return True

    # asking -----------------------------------------------------------------------------------------
    def after_batch(self, ae: AE, assoc: Association | None, worker: str) -> None:
        """While objects keep coming: ask once BUSY_BATCH are sent, on the sending association."""
        if (
            self.carries(assoc)  # else it waits for the worker to be idle: never a stall mid-stream
            and time.monotonic() >= self._retry_at
            and self.store.commitment_due(self.name) >= BUSY_BATCH
        ):
            self.request(ae, assoc, worker, interrupt=None)

    def when_idle(self, ae: AE, assoc: Association | None, worker: str, interrupt: threading.Event) -> None:
        """Nothing left to send: ask about everything sent and not yet asked about."""
        if time.monotonic() >= self._retry_at and self.store.commitment_due(self.name):
            self.request(ae, assoc, worker, interrupt=interrupt)

    def request(self, ae: AE, assoc: Association | None, worker: str, interrupt: threading.Event | None) -> None:
        """Ask on `assoc` if it carries the SOP class (the caller then keeps it open while `holds` says so);
        otherwise on an association of our own, waiting on it up to wait_seconds (or until `interrupt`)."""
        own: Association | None = None
        if not self.carries(assoc):
            if assoc is not None and assoc.is_established:
                # The destination took our storage contexts but refused Storage Commitment on this association.
                self._failed(
                    f"destination {self.peer.describe()} did not accept the Storage Commitment Push Model "
                    "presentation context — enable storage commitment for this router's AE title on the "
                    "destination, or set commitment.enabled: false for this node"
                )
                return
            try:
                own, _ = open_association(ae, self.peer, [CONTEXT])
            except AssociationFailed as exc:
                self._failed(f"cannot ask {self.name} for storage commitment: {exc}")
                return
            self.prepare(own)
            assoc = own
        assert assoc is not None
        asked: set[str] = set()
        try:
            while True:
                tx = generate_uid()
                items = self.store.begin_commitment(self.name, tx, worker, time.time(), MAX_PER_REQUEST)
                if not items:
                    break
                if not self._send(assoc, tx, items):
                    break
                asked.add(tx)
        finally:
            if own is not None:
                self._wait_for_reports(own, asked, interrupt)
                if own.is_established:
                    own.release()
            elif asked and self.wait_seconds > 0:
                with self._lock:
                    self._holds[id(assoc)] = (time.monotonic() + self.wait_seconds, asked)

    def _wait_for_reports(self, assoc: Association, txs: set[str], interrupt: threading.Event | None) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while txs and assoc.is_established and time.monotonic() < deadline:
            with self._lock:
                if txs <= self._reported:
                    return
            if interrupt is not None and interrupt.wait(0.05):
                return  # new work: the report may still come on a new association
            if interrupt is None:
                time.sleep(0.05)  # a poll of our own flag, set by the thread that takes the report

    def _send(self, assoc: Association, tx: str, items: Sequence[CommitItem]) -> bool:
        error: str | None = None
        try:
            status_ds, _ = assoc.send_n_action(
                build_request(tx, items), ACTION_REQUEST_COMMIT, PUSH_MODEL_SOP_CLASS, PUSH_MODEL_SOP_INSTANCE
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            status = getattr(status_ds, "Status", None) if status_ds else None
            if status is None:
                error = f"no N-ACTION response within {self.node.timeouts.dimse:g} s"
            elif int(status) != STATUS_SUCCESS:
                error = f"it answered the N-ACTION with status 0x{int(status):04X}"
        if error is not None:
            back = self.store.abandon_commitment(tx, error, time.time())
            self._failed(
                f"storage commitment request to {self.peer.describe()} failed: {error}; {back} object(s) will be "
                "asked about again"
            )
            self.audit.record(
                "commitment_requested", "failure", destination=self.name, transaction_uid=tx, count=len(items),
                reason=error,
            )  # fmt: skip
            return False
        self.store.commitment_sent(tx, time.time())
        if self._failing:
            self._failing = False
            log(LOG, logging.INFO, f"storage commitment requests to {self.name} work again", destination=self.name)
        self._retry_at, self._retry_delay = 0.0, RETRY_FIRST_SECONDS
        log(
            LOG,
            logging.INFO,
            f"asked {self.name} to commit {len(items)} object(s) (transaction {tx})",
            destination=self.name,
            transaction_uid=tx,
        )
        self.audit.record("commitment_requested", destination=self.name, transaction_uid=tx, count=len(items))
        return True

    def _failed(self, message: str) -> None:
        """Back off; say it at WARNING the first time, then quietly until it works again."""
        self._retry_at = time.monotonic() + self._retry_delay
        message += f" (next try in {self._retry_delay:g} s)"
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2)
        log(LOG, logging.DEBUG if self._failing else logging.WARNING, message, destination=self.name)
        self._failing = True


def recover_interrupted(store: Store, now: float) -> int:
    """At forwarder start: requests a dead forwarder on this host was making are asked again."""
    n = store.abandon_interrupted_requests(f"{this_host()}:", now)
    if n:
        log(LOG, logging.WARNING, f"{n} storage commitment request(s) were interrupted by a stop: asking again")
    return n
