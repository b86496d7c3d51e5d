"""Outbound DICOM: opening associations, explaining why one failed, C-ECHO, and C-STORE of spooled files.

Used by the forwarder, the circuit-breaker probe, and the `echo` and `send` commands, so an operator
sees the same words for a failure whichever of them hit it.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, Association, _config, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from . import tls
from .config import Node, Timeouts

if TYPE_CHECKING:
    from .config import RouterConfig

# Send spooled files straight from disk in PDU-sized chunks: memory stays flat for a 1 GB object, and
# the bytes leave exactly as they arrived (no decode, no re-encode).
_config.STORE_SEND_CHUNKED_DATASET = True


# pynetdicom's DIMSE layer puts EVERY P-DATA PDU of a message on the DUL's unbounded send queue as fast
# as it can read the file, and the DUL thread sends one PDU per loop: with chunked sending a 1 GB object
# would still end up in memory. Make the sending thread wait while more than a few PDUs are queued.
_MAX_QUEUED_PDUS = 8
_unbounded_send_pdu = DULServiceProvider.send_pdu


def _send_pdu_bounded(self: DULServiceProvider, primitive: Any) -> None:
    if isinstance(primitive, P_DATA):
        while self.to_provider_queue.qsize() >= _MAX_QUEUED_PDUS and self.is_alive() and not self._kill_thread:
            time.sleep(0.0005)
    _unbounded_send_pdu(self, primitive)


DULServiceProvider.send_pdu = _send_pdu_bounded  # type: ignore[method-assign]

# PS3.8 Table 9-21: A-ASSOCIATE-RJ reasons by (source, reason).
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised — the destination must list this router's AE title as a peer",
    (1, 7): "called AE title not recognised — check the AE title on both ends",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion — the destination is busy",
    (3, 2): "local limit exceeded — the destination has too many associations open",
}


@dataclass(frozen=True)
class Peer:
    """Where to connect: a configured node or an ad-hoc AE@HOST:PORT."""

    name: str
    ae_title: str
    host: str
    port: int
    timeouts: Timeouts = Timeouts()
    max_pdu: int = 0
    # The node has tls.enabled: never connect to it in plain. `tls_target` says how (None: the caller did
    # not give the router's config, so the TLS material is unknown — open_association refuses).
    tls_required: bool = False
    tls_target: tls.TlsTarget | None = None

    @classmethod
    def from_node(cls, name: str, node: Node, cfg: RouterConfig | None = None) -> Peer:
        target = tls.target_for(cfg, name, node) if node.tls.enabled and cfg is not None else None
        return cls(name, node.ae_title, node.host, node.port, node.timeouts, node.max_pdu, node.tls.enabled, target)

    @classmethod
    def parse(cls, text: str) -> Peer:
        """`AE@HOST:PORT` (for `echo` and `send` to an unconfigured peer)."""
        try:
            ae, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            return cls(text, ae, host.strip("[]"), int(port))
        except ValueError:
            raise ValueError(f"'{text}' is neither a configured node nor AE@HOST:PORT") from None

    def describe(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port}{', TLS' if self.tls_required else ''})"


class AssociationFailed(Exception):
    """Could not open an association; the message is meant for an operator."""

    def __init__(self, message: str, permanent: bool = False, no_contexts: bool = False):
        super().__init__(message)
        self.permanent = permanent
        # The peer accepted the association but none of the proposed (SOP class, transfer syntax) pairs:
        # it is reachable, it just will not take these objects in this encoding.
        self.no_contexts = no_contexts


def _nodelay(event: evt.Event) -> None:
    # pynetdicom leaves Nagle on: every small PDU (C-STORE-RSP, last fragment) would wait ~40 ms.
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


NODELAY_HANDLERS: list[Any] = [(evt.EVT_CONN_OPEN, _nodelay)]

# What the router announces in every A-ASSOCIATE (and its conformance statement lists): its own identity, not
# pynetdicom's, so a peer's logs and a support case name this product. A 2.25 (UUID-derived) UID needs no
# registered root (PS3.5 B.2); the version name changes with each release that changes behaviour on the wire.
IMPLEMENTATION_CLASS_UID = "2.25.208743637450684428680277307961684391906"
IMPLEMENTATION_VERSION_NAME = "DICOM_ROUTER_010"  # ≤ 16 characters


def new_ae(own_ae_title: str) -> AE:
    """An AE that identifies as this router (used for every association, in and out)."""
    ae = AE(ae_title=own_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae


def make_ae(own_ae_title: str, timeouts: Timeouts) -> AE:
    ae = new_ae(own_ae_title)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def _diagnose_connect(peer: Peer) -> str:
    """Explain why no association came up: the one thing pynetdicom does not tell us."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=peer.timeouts.connect):
            pass
    except socket.gaierror as exc:
        return f"cannot resolve host name '{peer.host}': {exc.strerror} — check the node's host in router.yaml"
    except TimeoutError:
        return (
            f"no answer from {peer.host}:{peer.port} within {peer.timeouts.connect:g} s — "
            "host down, or a firewall drops the traffic"
        )
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return (
                f"connection refused by {peer.host}:{peer.port} — nothing listens on that port "
                "(DICOM service stopped, or wrong port)"
            )
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"host {peer.host} is unreachable: {exc.strerror} — check routing/VLAN"
        return f"cannot connect to {peer.host}:{peer.port}: {exc.strerror}"
    return "the TCP connection opened but the association was aborted or timed out during negotiation"


def _tls_args(peer: Peer) -> tuple[ssl.SSLContext, str] | None:
    """(context, expected name) for a TLS destination; AssociationFailed rather than plain when the
    material does not load."""
    if not peer.tls_required:
        return None
    if peer.tls_target is None:
        raise AssociationFailed(
            f"destination {peer.describe()} requires TLS, but this caller has no TLS settings for it "
            "(internal: Peer.from_node was called without the router config) — not connecting in plain"
        )
    try:
        return tls.client_context(peer.tls_target), peer.tls_target.server_hostname
    except tls.TlsMaterialError as exc:
        raise AssociationFailed(f"destination {peer.describe()}: TLS not attempted: {exc}") from None


def _diagnose_tls(peer: Peer, tls_args: tuple[ssl.SSLContext, str]) -> str:
    """pynetdicom logs a failed handshake as a traceback and reports only 'not established': try the
    handshake once more on our own to say why."""
    context, hostname = tls_args
    try:
        with (
            socket.create_connection((peer.host, peer.port), timeout=peer.timeouts.connect) as raw,
            context.wrap_socket(raw, server_hostname=hostname),
        ):
            pass
    except (ssl.SSLError, TimeoutError, ConnectionResetError) as exc:
        return f"TLS handshake failed: {tls.explain_handshake_error(exc)} (expected name '{hostname}')"
    except OSError:
        return _diagnose_connect(peer)
    return "the TLS handshake succeeded but the association was aborted or timed out during negotiation"


def _requests_only(assoc: Association) -> None:
    """Stop the association's own reactor thread from ever taking a DIMSE message off the queue.

    pynetdicom 3.0.4 race: `send_c_store` clears `_reactor_checkpoint` and waits for `_is_paused`, but the
    reactor sets `_is_paused` *before* it waits at the checkpoint, so it can pass the checkpoint, then
    poll `dimse.get_msg(block=False)` and take the C-STORE-RSP the sender is waiting for ("Received
    unexpected C-STORE service message"); the sender then waits out the whole DIMSE timeout, aborts, and
    the object is sent twice. Our associations only ever send requests and read their answers with
    blocking calls, so the reactor's non-blocking poll (its only use) is answered "nothing there".
    tests/integration/test_pynetdicom_race.py reproduces the race and shows this closes it.
    """
    blocking_get = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            return None, None
        return blocking_get(block=True)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


def open_association(
    ae: AE, peer: Peer, contexts: Iterable[tuple[str, str]] | None = None
) -> tuple[Association, set[tuple[str, str]]]:
    """Open an association proposing (SOP class, transfer syntax) pairs; return it and what was accepted.

    With no contexts, proposes Verification only (for C-ECHO). Raises AssociationFailed.
    """
    requested = []
    if contexts is None:
        requested.append(build_context(Verification))
    else:
        for sop_class, ts in list(dict.fromkeys(contexts))[:128]:  # 128 = the protocol's limit
            requested.append(build_context(sop_class, [ts]))
    ae.requested_contexts = requested
    tls_args = _tls_args(peer)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        max_pdu=peer.max_pdu,
        evt_handlers=NODELAY_HANDLERS,
        tls_args=tls_args,
    )
    if assoc.is_established:
        _requests_only(assoc)
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        return assoc, accepted
    if assoc.is_rejected:
        prim = assoc.acceptor.primitive
        result = getattr(prim, "result", None)
        source = getattr(prim, "result_source", None)
        reason = getattr(prim, "diagnostic", None)
        words = _REJECT_REASONS.get((source or 0, reason or 0), f"source {source}, reason {reason}")
        kind = "permanently" if result == 1 else "for now (transient)"
        raise AssociationFailed(f"destination {peer.describe()} rejected the association {kind}: {words}")
    prim = assoc.acceptor.primitive
    if prim is not None and getattr(prim, "result", None) == 0:
        raise AssociationFailed(
            f"destination {peer.describe()} accepted the association but none of the proposed presentation contexts",
            no_contexts=True,
        )
    why = _diagnose_tls(peer, tls_args) if tls_args else _diagnose_connect(peer)
    raise AssociationFailed(f"destination {peer.describe()}: {why}")


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    seconds: float
    message: str


def echo(own_ae_title: str, peer: Peer) -> EchoResult:
    ae = make_ae(own_ae_title, peer.timeouts)
    start = time.monotonic()
    try:
        assoc, _ = open_association(ae, peer)
    except AssociationFailed as exc:
        return EchoResult(False, time.monotonic() - start, str(exc))
    try:
        status = assoc.send_c_echo()
        elapsed = time.monotonic() - start
        if status and getattr(status, "Status", None) == 0:
            return EchoResult(True, elapsed, f"{peer.describe()} answered C-ECHO in {elapsed * 1000:.0f} ms")
        if not status:
            return EchoResult(False, elapsed, f"{peer.describe()} accepted the association but did not answer C-ECHO")
        return EchoResult(False, elapsed, f"{peer.describe()} answered C-ECHO with status 0x{status.Status:04X}")
    finally:
        if assoc.is_established:
            assoc.release()


def store_file(assoc: Association, path: Path) -> int | None:
    """C-STORE one spooled file. Returns the response status, or None when no response came."""
    rsp = assoc.send_c_store(path)
    if rsp is None or "Status" not in rsp:
        return None
    return int(rsp.Status)
