"""The receiving process: a pynetdicom Storage SCP (all storage SOP classes) plus Verification.

For each C-STORE: the dataset streams from the socket straight into a spool temp file (no decode, flat
memory); the handler reads the few tags routing needs, makes the file durable (fsync, rename,
fsync dir), records the instance and its jobs in one SQLite transaction, and only then answers
Success. Any failure answers a precise status and leaves nothing half-written behind.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from . import commitment, rules, tls
from .audit import AuditLog, patient_field
from .config import ConfigError, RouterConfig, load_config
from .dataset_facts import UnreadableDataset, read_facts
from .dicom_status import Status
from .logsetup import log
from .metrics import recorder
from .scu import NODELAY_HANDLERS, new_ae
from .spool import BelowReserve, Spool, SpoolTempFile, is_out_of_space
from .store import InstanceAdded, InstanceFacts, NewJob, Store
from .wakeup import Doorbell, socket_path

LOG = logging.getLogger("router.receiver")

# A-ASSOCIATE-RJ (result, source, reason) per PS3.8 Table 9-21.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
_STATUS_NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 Annex C, general status)
_REJECT_CALLED_AE = (0x01, 0x01, 0x07)
_REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, local limit exceeded: the sender will retry
_REJECT_NO_REASON = (0x01, 0x01, 0x01)  # permanent: TLS policy (the log line and audit say why)


class NoticeLimiter:
    """At most one notice per key per `every` seconds; says how many were held back in between."""

    MAX_KEYS = 4096  # bounded memory whatever the number of addresses trying

    def __init__(self, every: float):
        self.every = every
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # key → (time of the last notice, held back since)

    def due(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise notify, mentioning the returned number of notices held back."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.every:
                self._last[key] = (last[0], last[1] + 1)
                return None
            if len(self._last) >= self.MAX_KEYS:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
                if len(self._last) >= self.MAX_KEYS:
                    self._last.clear()  # a flood from thousands of addresses: start counting afresh
            self._last[key] = (now, 0)
            return last[1] if last is not None else 0


def _reject(assoc: Any, result_source_reason: tuple[int, int, int]) -> None:
    # As pynetdicom does for its own rejections: queue the A-ASSOCIATE-RJ, then wait (kill) until the
    # DUL has sent it and the peer closed; otherwise the socket is shut first and the peer sees an abort.
    assoc.acse.send_reject(*result_source_reason)
    assoc.kill()


def _use_spool_for_incoming(spool: Spool) -> None:
    """Make pynetdicom stream each incoming dataset into our spool's tmp/ rather than /tmp.

    pynetdicom (3.0.x) creates the file with `NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`
    when the C-STORE command arrives, writes the file meta and every data fragment to it, and unlinks
    it after our handler returns. Ours has the same surface, lives on the spool's filesystem (so commit
    is a rename, not a copy) and turns write errors into a status instead of an aborted association.
    tests/integration/test_receive_errors.py proves the full-disk path end to end.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True

    def factory(*_args: Any, **_kwargs: Any) -> SpoolTempFile:
        return spool.new_temp()

    dimse_messages.NamedTemporaryFile = factory  # type: ignore[assignment]


def new_job(target: rules.Target) -> NewJob:
    """The queue's job for one routing decision (hold, wait and outgoing steps come with the target)."""
    return NewJob(
        target.destination,
        target.route,
        target.priority,
        hold_reason=target.hold_reason,
        wait_for=target.wait_for,
        morph=tuple(target.morph),
        transcode=target.transcode,
    )


@dataclass(frozen=True)
class _Routing:
    """A config and what the C-STORE handler derives from it, computed once per (re)load, swapped as one."""

    cfg: RouterConfig
    sources_by_ae: dict[str, str]
    tag_keywords: tuple[str, ...]

    @classmethod
    def of(cls, cfg: RouterConfig) -> _Routing:
        return cls(cfg, cfg.sources_by_ae(), tuple(cfg.tag_keywords()))


class Receiver:
    def __init__(self, config_path: Path, cfg: RouterConfig):
        self.config_path = config_path
        self.cfg = cfg
        self.routing = _Routing.of(cfg)
        self.spool = Spool(cfg.spool_dir, min_free_bytes=int(cfg.router.min_free_mb * 1e6))
        self.store = Store(cfg.db_path, durable=True)
        self.audit = AuditLog(cfg.audit_path, "receiver")
        self.doorbell = Doorbell(socket_path(cfg.router.state_dir))
        self.draining = threading.Event()
        self.started_at = time.time()
        self.server: Any = None  # the plain listener (None with router.tls.plain: false)
        self.tls_server: tls.TlsAssociationServer | None = None
        self.handshake_notices = NoticeLimiter(60.0)

    # -- association policy ---------------------------------------------------------------------
    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        # The A-ASSOCIATE-RQ itself: pynetdicom copies these onto the association only after this event.
        rq = assoc.requestor.primitive
        assert rq is not None  # EVT_REQUESTED fires only once the A-ASSOCIATE-RQ has been read
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        cfg = self.cfg
        if self.draining.is_set():
            log(
                LOG,
                logging.INFO,
                "association refused: the router is shutting down",
                calling_ae=calling,
                peer=peer,
            )
            _reject(assoc, _REJECT_BUSY)
            return
        if called != cfg.router.ae_title:
            log(
                LOG,
                logging.WARNING,
                f"association rejected: called AE title '{called}' is not this router's "
                f"('{cfg.router.ae_title}') — the sender at {peer} must be configured with the router's AE title",
                calling_ae=calling,
                called_ae=called,
                peer=peer,
            )
            self.audit.record(
                "association_rejected",
                "failure",
                calling_ae=calling,
                called_ae=called,
                peer=peer,
                reason="called AE title not recognised",
            )
            _reject(assoc, _REJECT_CALLED_AE)
            return
        if self._is_self_check(calling, assoc.requestor.address):
            return  # accepted for C-ECHO only: on_c_store refuses storage from it
        if (
            calling not in self.routing.sources_by_ae
            and not cfg.router.accept_unknown_callers
            and not commitment.may_report(cfg, calling)  # a destination reporting storage commitment (not storing)
        ):
            log(
                LOG,
                logging.WARNING,
                f"association rejected: calling AE title '{calling}' from {peer} is not a configured source — "
                "add it under nodes with role: source (or both), or set router.accept_unknown_callers",
                calling_ae=calling,
                peer=peer,
            )
            self.audit.record(
                "association_rejected",
                "failure",
                calling_ae=calling,
                called_ae=called,
                peer=peer,
                reason="calling AE title not a configured source",
            )
            _reject(assoc, _REJECT_CALLING_AE)
            return
        source = self.routing.sources_by_ae.get(calling)
        came_tls, peercert = tls.peer_certificate(assoc)
        why = tls.policy_violation(source, cfg.nodes.get(source or ""), came_tls, peercert, cfg.router.tls.port)
        if why is not None:
            log(LOG, logging.WARNING, f"association rejected: {why}", calling_ae=calling, peer=peer, tls=came_tls)
            self.audit.record(
                "association_rejected", "failure", calling_ae=calling, called_ae=called, peer=peer, tls=came_tls,
                reason=why,
            )  # fmt: skip
            _reject(assoc, _REJECT_NO_REASON)

    def _is_self_check(self, calling: str, address: str) -> bool:
        """An on-box health check (Ansible, monitoring): the router's own AE title from loopback, or
        from the listener's own address when it binds one. Only a process on the appliance can open
        it (a TCP handshake from a spoofed address does not complete); it may C-ECHO but never store."""
        if calling != self.cfg.router.ae_title:
            return False
        try:
            return ipaddress.ip_address(address).is_loopback or address == self.cfg.router.bind
        except ValueError:
            return False

    def on_accepted(self, event: evt.Event) -> None:
        a = event.assoc
        log(
            LOG,
            logging.INFO,
            "association accepted",
            calling_ae=a.requestor.ae_title.strip(),
            peer=f"{a.requestor.address}:{a.requestor.port}",
        )
        recorder().association_started(a)

    def on_aborted(self, event: evt.Event) -> None:
        a = event.assoc
        log(
            LOG,
            logging.WARNING,
            "association aborted",
            calling_ae=(a.requestor.ae_title or "").strip(),
            peer=f"{a.requestor.address}:{a.requestor.port}",
        )

    def on_closed(self, event: evt.Event) -> None:
        assoc = event.assoc
        if assoc.requestor.primitive is None and not assoc.is_established:
            # Closed before any A-ASSOCIATE-RQ (a port scan, a TCP health check, a load balancer's probe).
            # pynetdicom's acceptor thread would go on waiting for one until acse_timeout, holding one of
            # max_associations all that time: a burst of probes locked real senders out with "local limit
            # exceeded" for up to 30 s. None is what that wait returns when it times out, so the thread ends
            # now, the way it would then.
            assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]
        calling = (assoc.requestor.ae_title or "").strip()
        recorder().association_closed(assoc, "in", self.routing.sources_by_ae.get(calling) or calling)

    # -- storage --------------------------------------------------------------------------------
    def on_c_store(self, event: evt.Event) -> int:
        req = event.request
        assert isinstance(req, C_STORE)
        tmp: SpoolTempFile | None = getattr(req, "_dataset_file", None)
        calling = event.assoc.requestor.ae_title.strip()
        called = self.cfg.router.ae_title
        sop_uid = str(req.AffectedSOPInstanceUID)
        peer = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        ctx = {"calling_ae": calling, "peer": peer, "sop_instance_uid": sop_uid}
        if not isinstance(tmp, SpoolTempFile):
            # Only possible if pynetdicom changed how it streams datasets; refuse rather than guess.
            log(
                LOG,
                logging.ERROR,
                "no spool file for the incoming dataset (pynetdicom internals changed?)",
                **ctx,
            )
            return Status.OUT_OF_RESOURCES
        if tmp.error is not None:
            return self._refuse_write_error(tmp, tmp.error, ctx)
        tmp.flush()
        if tmp.error is not None:
            return self._refuse_write_error(tmp, tmp.error, ctx)

        routing = self.routing  # one consistent config for this object, even if a reload lands meanwhile
        cfg = routing.cfg
        try:
            facts = read_facts(Path(tmp.name), routing.tag_keywords)
        except UnreadableDataset as exc:
            tmp.discard()
            log(LOG, logging.WARNING, f"refused an unreadable dataset from {calling}: {exc}", **ctx)
            self.audit.record("receive", "failure", reason=str(exc), status="0xC000", **ctx)
            return Status.CANNOT_UNDERSTAND

        source_node = routing.sources_by_ae.get(calling)
        if source_node is None and not cfg.router.accept_unknown_callers:
            # A self-check association (see on_requested) gets here, or a source removed by a reload
            # while its association was open: neither may store.
            tmp.discard()
            log(
                LOG,
                logging.WARNING,
                f"refused storage from {calling}: not a configured source (a self-check association may only C-ECHO)",
                **ctx,
            )
            self.audit.record("receive", "failure", reason="calling AE title not a configured source", **ctx)
            return _STATUS_NOT_AUTHORIZED
        targets, _ = rules.evaluate(
            cfg,
            rules.Facts(calling_ae=calling, called_ae=called, source_node=source_node, tags=facts.values),
            explain=False,
        )
        try:
            key = self.spool.commit(tmp)
        except OSError as exc:
            tmp.discard()
            return self._refuse_write_error(tmp, exc, ctx)

        v = facts
        instance = InstanceFacts(
            sop_instance_uid=v.get("SOPInstanceUID") or sop_uid,
            sop_class_uid=v.get("SOPClassUID") or str(req.AffectedSOPClassUID),
            transfer_syntax=facts.transfer_syntax,
            size_bytes=tmp.size,
            study_uid=v.get("StudyInstanceUID"),
            series_uid=v.get("SeriesInstanceUID"),
            patient_id=v.get("PatientID"),
            accession=v.get("AccessionNumber"),
            modality=v.get("Modality"),
            calling_ae=calling,
            called_ae=called,
            source_node=source_node,
            content_sha256=tmp.sha256,
            expected_in_study=facts.count("NumberOfStudyRelatedInstances"),
            expected_in_series=facts.count("NumberOfSeriesRelatedInstances"),
        )
        jobs = [new_job(t) for t in targets]
        try:
            added = self.store.add_instance(key, instance, jobs, time.time(), on_conflict=cfg.router.on_conflict)
        except sqlite3.Error as exc:
            # The object is on disk but not in the queue: remove it so nothing half-recorded remains.
            self.spool.delete(key)
            log(LOG, logging.ERROR, f"could not record the instance in the queue database: {exc}", **ctx)
            self.audit.record("receive", "failure", reason=f"queue database: {exc}", status="0xA700", **ctx)
            return Status.OUT_OF_RESOURCES

        if len(added.skipped) + len(added.held) + len(added.waiting) < len(jobs):
            self.doorbell.ring()  # something is queued now
        self.audit.record(
            "receive",
            study_uid=instance.study_uid,
            accession=instance.accession,
            destinations=[j.destination for j in jobs] or None,
            unrouted=True if not jobs else None,
            skipped=[d.destination for d in added.skipped] or None,  # identical object already sent there
            late=True if added.late else None,
            bytes=instance.size_bytes,
            **ctx,
            **patient_field(cfg, instance.patient_id),
        )
        if not jobs:
            log(LOG, logging.WARNING, "received an object that matches no route: kept as unrouted", **ctx)
        self._report_ledger(instance, added, ctx)
        recorder().received(source_node or calling, instance.size_bytes)
        return Status.SUCCESS

    def _report_ledger(self, instance: InstanceFacts, added: InstanceAdded, ctx: dict[str, Any]) -> None:
        """Say what the delivery ledger and study tracking decided (the sender got Success either way:
        the object is kept)."""
        for d in added.skipped:
            log(
                LOG,
                logging.INFO,
                f"identical object already {'sent' if d.earlier_state in ('done', 'committed') else 'on its way'} to "
                f"{d.destination} by job {d.earlier_job_id} ({d.earlier_state}): not sent again; "
                f"`dicom-router queue retry {d.job_id}` sends it anyway",
                destination=d.destination,
                job_id=d.job_id,
                **ctx,
            )
        for c in added.conflicts:
            if c.destination is None:
                where = "no destination of this object had the earlier one: forwarded as routed"
            elif c.held:
                where = (
                    f"job {c.job_id} to {c.destination} is HELD (job {c.earlier_job_id} sent the earlier one there) — "
                    f"check patient/study identifiers, then `dicom-router queue release {c.job_id}` or cancel it"
                )
            else:
                where = f"forwarded to {c.destination} anyway (router.on_conflict: forward)"
            log(
                LOG,
                logging.WARNING,
                f"SOP Instance UID conflict: a different object with this UID arrived before "
                f"(instance {c.earlier_instance_id}); {where}",
                **ctx,
            )
            # No PHI: the UID and hashes identify the objects; the operator looks the rest up in the queue.
            self.audit.record(
                "uid_conflict",
                "warning",
                instance_id=added.instance_id,
                earlier_instance_id=c.earlier_instance_id,
                sha256=instance.content_sha256,
                earlier_sha256=c.earlier_sha256,
                destination=c.destination,
                job_id=c.job_id,
                earlier_job_id=c.earlier_job_id,
                held=c.held,
                **ctx,
            )
        if added.late:
            log(
                LOG,
                logging.INFO,
                f"late arrival for study {instance.study_uid} after it was complete: forwarded as a delta",
                study_uid=instance.study_uid,
                **ctx,
            )

    def _refuse_write_error(self, tmp: SpoolTempFile, exc: OSError, ctx: dict[str, Any]) -> int:
        tmp.discard()
        if isinstance(exc, BelowReserve):
            what = f"the spool disk is nearly full: {exc.strerror}"
        elif is_out_of_space(exc):
            what = "the spool disk is full"
        else:
            what = f"writing to the spool failed ({exc})"
        log(
            LOG,
            logging.ERROR,
            f"refused an object with 0xA700: {what} — free space under {self.spool.root}",
            **ctx,
        )
        self.audit.record("receive", "failure", reason=what, status="0xA700", **ctx)
        return Status.OUT_OF_RESOURCES

    # -- lifecycle ------------------------------------------------------------------------------
    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log(LOG, logging.ERROR, f"config reload refused, the running config stays: {exc}")
            return
        changed = [
            k
            for k in ("ae_title", "bind", "port", "state_dir", "log_dir")
            if getattr(new.router, k) != getattr(self.cfg.router, k)
        ]
        if changed:
            log(LOG, logging.WARNING, f"reload: router.{', router.'.join(changed)} change only on restart")
        self.cfg = new
        self.routing = _Routing.of(new)
        self.spool.min_free_bytes = int(new.router.min_free_mb * 1e6)
        log(LOG, logging.INFO, "config reloaded", routes=len(new.routes), nodes=len(new.nodes))
        self._heartbeat()  # `config apply` waits for this to confirm the new version runs

    def build_ae(self) -> AE:
        r = self.cfg.router
        ae = new_ae(r.ae_title)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        commitment.add_supported_context(ae)  # storage commitment reports on a new association
        ae.maximum_pdu_size = r.max_pdu
        ae.maximum_associations = r.max_associations
        ae.acse_timeout = r.timeouts.acse
        ae.dimse_timeout = r.timeouts.dimse
        ae.network_timeout = r.timeouts.network
        ae.require_called_aet = False  # checked in on_requested, with a logged reason
        return ae

    def serve(self) -> int:
        self.spool.init()
        self.store.init()
        removed = self.spool.clean_tmp()
        if removed:
            log(
                LOG,
                logging.INFO,
                f"removed {removed} incomplete reception(s) left by a crash (never acknowledged)",
            )
        _use_spool_for_incoming(self.spool)
        r = self.cfg.router
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_closed),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_N_EVENT_REPORT, commitment.receiver_handler(self)),
            *NODELAY_HANDLERS,
        ]
        server_tls = None
        if r.tls.port is not None:
            # Bad TLS material stops the receiver (exit 3, the supervisor stops the router): never plain instead.
            try:
                server_tls = tls.server_context(self.cfg)
            except tls.TlsMaterialError as exc:
                log(LOG, logging.CRITICAL, f"TLS listener on port {r.tls.port} not started: {exc}", tls_port=r.tls.port)
                return 3
        ae = self.build_ae()
        port = r.port
        try:
            if r.tls.plain:
                self.server = ae.start_server((r.bind, r.port), block=False, evt_handlers=handlers)
            if server_tls is not None and r.tls.port is not None:
                port = r.tls.port
                self.tls_server = tls.start_tls_server(
                    ae, (r.bind, r.tls.port), server_tls.context, handlers, self._tls_handshake_failed
                )
        except OSError as exc:
            setting = "router.tls.port" if port != r.port else "router.port"
            log(
                LOG,
                logging.CRITICAL,
                f"cannot listen on {r.bind}:{port}: {exc.strerror} — is another "
                f"router or DICOM service using the port? (change {setting} or stop the other service)",
            )
            return 3
        if self.server is not None:
            log(LOG, logging.INFO, f"listening for DICOM on {r.bind}:{r.port} as {r.ae_title}")
        if server_tls is not None:
            ident = server_tls.identity
            log(
                LOG,
                logging.INFO,
                f"listening for DICOM over TLS on {r.bind}:{r.tls.port} as {r.ae_title} with certificate "
                f"{ident.cert.subject.rfc4514_string()} (expires {ident.cert.not_valid_after_utc:%Y-%m-%d})",
                fingerprint_sha256=tls.fingerprint(ident.cert),
            )

        def reload_with_tls() -> None:
            self.reload()
            if self.tls_server is None:
                return
            # A rotated certificate (`dicom-router tls rotate`) takes effect for the next caller; bad new
            # material leaves the running certificate in place.
            try:
                fresh = tls.server_context(self.cfg)
            except tls.TlsMaterialError as exc:
                log(LOG, logging.ERROR, f"TLS material not reloaded, the running certificate stays: {exc}")
                return
            self.tls_server.ssl_context = fresh.context
            log(LOG, logging.INFO, "TLS material reloaded", fingerprint_sha256=tls.fingerprint(fresh.identity.cert))

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, lambda *_: reload_with_tls())
        self._heartbeat()
        while not stop.wait(5.0):
            self._heartbeat()
        self._drain()
        return 0

    def _heartbeat(self) -> None:
        try:
            self.store.heartbeat(
                "receiver",
                self.started_at,
                time.time(),
                f"{self.cfg.router.ae_title}@{self.cfg.router.bind}:{self.cfg.router.port}",
                self.cfg.source_sha256,
            )
        except sqlite3.Error as exc:
            log(LOG, logging.WARNING, f"heartbeat not recorded: {exc}")

    def _tls_handshake_failed(self, address: tuple[str, int], why: str) -> None:
        # One line and one audit entry per address and reason per minute: a port scanner or a misconfigured
        # modality retrying every second must not flood the log and the audit trail.
        unreported = self.handshake_notices.due(f"{address[0]} {why}", time.monotonic())
        if unreported is None:
            return
        peer = f"{address[0]}:{address[1]}"
        port = self.cfg.router.tls.port
        more = f" ({unreported} more like it from {address[0]} in the last minute, not logged)" if unreported else ""
        log(LOG, logging.WARNING, f"TLS handshake from {peer} on port {port} failed: {why}{more}", peer=peer)
        self.audit.record(
            "association_rejected", "failure", peer=peer, tls=True, reason=f"TLS handshake: {why}",
            repeats=unreported or None,
        )  # fmt: skip

    def _drain(self) -> None:
        """Refuse new associations, let in-flight ones finish (up to drain_seconds), then stop."""
        self.draining.set()
        servers = [s for s in (self.server, self.tls_server) if s is not None]

        def in_flight() -> list[Any]:
            # Established associations only: pynetdicom keeps a connection that never sent an A-ASSOCIATE-RQ
            # (a port probe, a TLS check) waiting for acse_timeout, and it has nothing to finish.
            return [a for s in servers for a in s.active_associations if a.is_established]

        deadline = time.monotonic() + self.cfg.router.drain_seconds
        while in_flight() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = in_flight()
        if left:
            who = ", ".join(sorted({f"{(a.requestor.ae_title or '?').strip()}@{a.requestor.address}" for a in left}))
            log(LOG, logging.WARNING, f"drain deadline reached: aborting {len(left)} association(s) still open ({who})")
        for s in servers:
            s.shutdown()
        log(LOG, logging.INFO, "receiver stopped")
