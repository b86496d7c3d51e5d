"""DICOM TLS on the wire: checking certificate material, SSL contexts for the listener and for outbound
associations, the TLS listener's handshake, and operator words for handshake failures.

Bad material is refused with a message naming the file and what to do, never replaced by plain DICOM.
Certificates are made by tls_ca.py (`dicom-router tls init|issue|rotate`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pynetdicom.transport import ThreadedAssociationServer

from .tls_ca import fingerprint

if TYPE_CHECKING:
    from pynetdicom import AE

    from .config import Node, RouterConfig

LOG = logging.getLogger("router.tls")

# The TLS profile (also what the conformance statement reports). BCP 195 (RFC 9325): TLS 1.2 or newer,
# ECDHE key exchange with AEAD ciphers only. TLS 1.3 suites are OpenSSL's defaults (all AEAD).
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CIPHERS_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
CIPHERS_TLS13 = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
HANDSHAKE_TIMEOUT = 10.0  # seconds a caller on the TLS port has to complete its handshake


class TlsMaterialError(Exception):
    """A certificate, key or CA bundle cannot be used; the message names the file and what to do."""


# -- checking material -------------------------------------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsMaterialError(
            f"{what} {path} does not exist — run `dicom-router tls init` or correct the path in router.yaml"
        ) from None
    except PermissionError:
        raise TlsMaterialError(
            f"{what} {path} is not readable by user {_user()}: permission denied — "
            f"`chown {_user()} {path}` (the router's service user must own it)"
        ) from None
    except IsADirectoryError:
        raise TlsMaterialError(f"{what} {path} is a directory, not a file — correct the path in router.yaml") from None
    except OSError as exc:
        raise TlsMaterialError(f"{what} {path} cannot be read: {exc.strerror}") from None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        hint = " (it holds a private key: cert and key paths swapped?)" if b"PRIVATE KEY-----" in data else ""
        raise TlsMaterialError(
            f"{what} {path} is not a PEM certificate: no '-----BEGIN CERTIFICATE-----' block{hint} — "
            "convert DER with `openssl x509 -inform der -in FILE -out FILE.crt`"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsMaterialError(f"{what} {path} holds a damaged PEM certificate: {exc}") from None


def check_key_permissions(path: Path, what: str) -> None:
    """The key must be readable by its owner only: a key others can read is a key others may have copied."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        _read(path, what)  # raises the 'does not exist' message
        return
    if mode & 0o077:
        raise TlsMaterialError(
            f"{what} {path} has mode {mode:04o}: group or others may read it — `chmod 600 {path}` "
            "(and replace the key with `dicom-router tls rotate` if others may have copied it); "
            "TLS is not started with it"
        )


def load_private_key(path: Path, what: str) -> Any:
    check_key_permissions(path, what)
    data = _read(path, what)
    if b"PRIVATE KEY-----" not in data:
        raise TlsMaterialError(f"{what} {path} is not a PEM private key (no '-----BEGIN … PRIVATE KEY-----' block)")
    try:
        # Full RSA key validation (OpenSSL 3) costs ~0.7 s for 3072 bits; the pair check below and
        # OpenSSL's load_cert_chain catch what matters for a key the operator installed.
        return serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        raise TlsMaterialError(
            f"{what} {path} is encrypted with a passphrase: the router needs it unencrypted (kept mode 0600) — "
            f"`openssl pkey -in {path} -out {path}.plain` and replace it"
        ) from None
    except (ValueError, Exception) as exc:  # cryptography raises a few kinds for damaged keys
        raise TlsMaterialError(f"{what} {path} holds a damaged private key: {exc}") from None


def check_validity(cert: x509.Certificate, path: Path, what: str, now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.UTC)
    subject = cert.subject.rfc4514_string()
    if now > cert.not_valid_after_utc:
        raise TlsMaterialError(
            f"{what} {path} ({subject}) EXPIRED on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC — "
            "make a new one (`dicom-router tls rotate` for the router's own)"
        )
    if now < cert.not_valid_before_utc:
        raise TlsMaterialError(
            f"{what} {path} ({subject}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC — "
            "check this machine's clock (`timedatectl`) or the certificate's dates"
        )


@dataclass(frozen=True)
class Identity:
    """A checked certificate + key pair: what the router presents."""

    cert_path: Path
    key_path: Path
    cert: x509.Certificate

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()


def check_identity(cert_path: Path, key_path: Path, now: dt.datetime | None = None) -> Identity:
    what_cert, what_key = "the router's certificate (router.tls.cert)", "the router's private key (router.tls.key)"
    certs = load_certificates(cert_path, what_cert)
    key = load_private_key(key_path, what_key)
    leaf = certs[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TlsMaterialError(
            f"{what_key} {key_path} does not match {what_cert} {cert_path}: they are from different pairs — "
            "restore the matching key (a rotation keeps the old pair as *.prev) or `dicom-router tls rotate`"
        )
    check_validity(leaf, cert_path, what_cert, now)
    return Identity(cert_path, key_path, leaf)


def check_ca(path: Path, what: str, now: dt.datetime | None = None) -> list[x509.Certificate]:
    certs = load_certificates(path, what)
    for cert in certs:
        check_validity(cert, path, what, now)
    return certs


# -- contexts ----------------------------------------------------------------------------------------
def _base_context(purpose: ssl._SSLMethod, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = TLS_VERSIONS[min_version]
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _load(ctx: ssl.SSLContext, identity: Identity | None, ca: Path) -> None:
    try:
        if identity is not None:
            ctx.load_cert_chain(identity.cert_path, identity.key_path)
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:  # checked above; only a race with a rotation gets here
        raise TlsMaterialError(f"OpenSSL refused the TLS material ({exc}) — run `dicom-router tls show`") from None


@dataclass(frozen=True)
class ServerTls:
    context: ssl.SSLContext
    identity: Identity


def server_context(cfg: RouterConfig, now: dt.datetime | None = None) -> ServerTls:
    """The listener's context: the router's certificate, callers verified against router.tls.ca."""
    t = cfg.router.tls
    identity = check_identity(cfg.tls_path(t.cert), cfg.tls_path(t.key), now)
    ca = cfg.tls_path(t.ca)
    check_ca(ca, "the CA bundle for callers (router.tls.ca)", now)
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, t.min_version)
    _load(ctx, identity, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if t.require_client_cert else ssl.CERT_OPTIONAL
    return ServerTls(ctx, identity)


@dataclass(frozen=True)
class TlsTarget:
    """TLS towards one destination: what to trust, which name to expect, what to present."""

    node: str
    ca: Path
    server_hostname: str
    cert: Path | None  # None: not mutual
    key: Path | None
    min_version: str

    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.ca, self.cert, self.key) if p is not None)


def target_for(cfg: RouterConfig, name: str, node: Node) -> TlsTarget:
    t, r = node.tls, cfg.router.tls
    return TlsTarget(
        node=name,
        ca=cfg.tls_path(t.ca or r.ca),
        server_hostname=t.peer_name or node.host,
        cert=cfg.tls_path(r.cert) if t.mutual else None,
        key=cfg.tls_path(r.key) if t.mutual else None,
        min_version=r.min_version,
    )


@dataclass
class _Cached:
    signature: tuple[Any, ...]
    context: ssl.SSLContext
    valid_until: float


_client_cache: dict[TlsTarget, _Cached] = {}
_client_lock = threading.Lock()


def _files_signature(paths: tuple[Path, ...]) -> tuple[Any, ...]:
    sig: list[Any] = []
    for p in paths:
        try:
            st = p.stat()
            sig.append((st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode))
        except OSError:
            sig.append(None)
    return tuple(sig)


def client_context(target: TlsTarget) -> ssl.SSLContext:
    """The context for associations to one destination, cached (building one costs milliseconds) until a
    file changes (a rotation is picked up by the next association) or a certificate in it expires."""
    signature = _files_signature(target.files())
    with _client_lock:
        hit = _client_cache.get(target)
        if hit is not None and hit.signature == signature and time.time() < hit.valid_until:
            return hit.context
    what_ca = f"the CA bundle for {target.node} (nodes.{target.node}.tls.ca or router.tls.ca)"
    cas = check_ca(target.ca, what_ca)
    identity = check_identity(target.cert, target.key) if target.cert and target.key else None
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, target.min_version)  # verifies the peer and its name
    _load(ctx, identity, target.ca)
    ends = [c.not_valid_after_utc.timestamp() for c in cas] + ([identity.not_after] if identity else [])
    with _client_lock:
        _client_cache[target] = _Cached(signature, ctx, min(ends))
    return ctx


# -- names in a peer's certificate ---------------------------------------------------------------------
def certificate_names(peercert: dict[str, Any] | None) -> list[str]:
    """DNS and IP subjectAltNames of a verified peer certificate (`SSLSocket.getpeercert()`); the CN only
    when there is no subjectAltName at all (old modality certificates)."""
    if not peercert:
        return []
    names = [v for k, v in peercert.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    if names:
        return names
    return [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]


def name_matches(expected: str, names: list[str]) -> bool:
    expected = expected.lower().rstrip(".")
    for n in names:
        n = n.lower().rstrip(".")
        if n == expected or (n.startswith("*.") and "." in expected and expected.split(".", 1)[1] == n[2:]):
            return True
    return False


def peer_certificate(assoc: Any) -> tuple[bool, dict[str, Any] | None]:
    """(came over TLS, the verified client certificate or None) for an inbound association."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return False, None
    try:
        return True, sock.getpeercert() or None
    except (ValueError, OSError):
        return True, None


# -- handshake failures in words -----------------------------------------------------------------------
_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (unknown CA) — give it this router's ca.crt",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer rejected our certificate (certificate unknown)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired — `dicom-router tls rotate`",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer could not verify our key (decrypt error)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate: set tls.mutual: true for it",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": (
        "the caller presented no client certificate, and router.tls.require_client_cert is true — "
        "configure the sender with a certificate (`dicom-router tls issue NAME`)"
    ),
    "NO_SHARED_CIPHER": "no cipher suite in common — the peer's TLS profile is too old (TLS 1.2 needs ECDHE+AES-GCM)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer ended the handshake (handshake failure): no common cipher or it "
    "refused our certificate — check its TLS log",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (router.tls.min_version)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (router.tls.min_version)",
    "WRONG_VERSION_NUMBER": "the other side does not speak TLS (plain DICOM on a TLS port, or TLS to a plain port)",
    "HTTP_REQUEST": "an HTTP request arrived instead of a TLS handshake",
    "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the handshake (it may have refused "
    "our certificate — check its log)",
}

_VERIFY = {
    "certificate has expired": "its certificate has expired",
    "certificate is not yet valid": "its certificate is not yet valid (check both clocks)",
    "unable to get local issuer certificate": "its certificate is not signed by a CA we trust",
    "self-signed certificate": "its certificate is not signed by a CA we trust (it is self-signed)",
    "self-signed certificate in certificate chain": "its certificate is not signed by a CA we trust (another CA)",
    "unsupported certificate purpose": "its certificate is not allowed for this use (extendedKeyUsage)",
}


def explain_handshake_error(exc: BaseException, server_side: bool = False) -> str:
    """One line saying why a TLS handshake failed, for the log and for `echo`."""
    reason = str(getattr(exc, "reason", "") or "")
    if server_side and reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
        return (
            "the caller sent plain DICOM (no TLS) to the TLS port — configure it for TLS, or have it call the "
            "plain port if its node may (tls.enabled: false)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = str(exc.verify_message or "")
        if msg.startswith("Hostname mismatch") or msg.startswith("IP address mismatch"):
            return f"certificate verify failed: the peer's certificate does not carry the expected name ({msg})"
        return f"certificate verify failed: {msg}: {_VERIFY.get(msg, 'the certificate is not acceptable')}"
    if isinstance(exc, ssl.SSLError):
        if reason in _ALERTS:
            return f"{reason.lower().replace('_', ' ')}: {_ALERTS[reason]}"
        if reason == "CERTIFICATE_VERIFY_FAILED":
            return "certificate verify failed: the peer's certificate is not signed by a CA we trust, or expired"
        if isinstance(exc, ssl.SSLEOFError):
            return _ALERTS["UNEXPECTED_EOF_WHILE_READING"]
        return f"TLS error: {reason or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the time allowed (a plain client waiting for the server to speak, or a stall)"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "the peer reset the connection during the TLS handshake (it may have refused our certificate)"
    return f"{type(exc).__name__}: {exc}"


# -- the TLS listener ------------------------------------------------------------------------------------
HandshakeFailed = Callable[[tuple[str, int], str], None]


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accepting thread.

    pynetdicom 3.0.4 wraps each accepted socket with the handshake on connect *in the accept loop*
    (`AssociationServer.get_request`): one caller that connects and sends nothing blocks every other TLS
    caller, and a failed handshake is swallowed by socketserver without a word. Here the accept loop only
    wraps; each connection's own thread does the handshake with a deadline and reports a failure once.
    """

    on_handshake_failed: HandshakeFailed | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            try:
                if self.on_handshake_failed is not None:
                    self.on_handshake_failed(client_address, explain_handshake_error(exc, server_side=True))
            finally:
                self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def start_tls_server(
    ae: AE,
    address: tuple[str, int],
    context: ssl.SSLContext,
    evt_handlers: list[Any],
    on_handshake_failed: HandshakeFailed,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> TlsAssociationServer:
    """Like `ae.start_server(address, block=False, ssl_context=context, …)`, with TlsAssociationServer."""
    server = cast(
        TlsAssociationServer,
        ae.make_server(address, ssl_context=context, evt_handlers=evt_handlers, server_class=TlsAssociationServer),
    )
    server.on_handshake_failed = on_handshake_failed
    server.handshake_timeout = handshake_timeout
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer-TLS", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


# -- status ----------------------------------------------------------------------------------------------
def listener_status(cfg: RouterConfig, now: float | None = None) -> dict[str, Any] | None:
    """The TLS listener and the router's own certificate for `status`: port, days left, fingerprint, or
    the reason the material does not load. None when no TLS listener is configured."""
    t = cfg.router.tls
    if t.port is None:
        return None
    now = time.time() if now is None else now
    out: dict[str, Any] = {"port": t.port, "plain": t.plain, "cert": str(cfg.tls_path(t.cert))}
    try:
        identity = check_identity(cfg.tls_path(t.cert), cfg.tls_path(t.key), dt.datetime.fromtimestamp(now, dt.UTC))
    except TlsMaterialError as exc:
        out.update(ok=False, problem=str(exc))
        return out
    cn = identity.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    out.update(
        ok=True,
        subject=str(cn[0].value) if cn else identity.cert.subject.rfc4514_string(),
        not_after=identity.not_after,
        days_left=round((identity.not_after - now) / 86400, 1),
        fingerprint_sha256=fingerprint(identity.cert),
    )
    return out


# -- who may call which port ------------------------------------------------------------------------------
def policy_violation(
    source: str | None, node: Node | None, came_tls: bool, peercert: dict[str, Any] | None, tls_port: int | None
) -> str | None:
    """Why an inbound association breaks the TLS policy (None: it does not). `source` is the calling
    node's name. A source with tls.enabled may call only the TLS port; over TLS, a source with
    tls.peer_name must present a certificate carrying that name."""
    if node is None or source is None:
        return None
    if node.tls.enabled and not came_tls:
        return (
            f"source {source} must use TLS (nodes.{source}.tls.enabled) but called the plain port — "
            f"configure the sender for TLS to port {tls_port}"
        )
    if came_tls and node.tls.peer_name:
        names = certificate_names(peercert)
        if not name_matches(node.tls.peer_name, names):
            shown = ", ".join(names) if names else "no certificate"
            return (
                f"source {source}'s client certificate names {shown}, not '{node.tls.peer_name}' "
                f"(nodes.{source}.tls.peer_name) — issue it a certificate with that name or correct peer_name"
            )
    return None
