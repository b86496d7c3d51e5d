"""`dicom-router tls init|issue|rotate|show`: the router's local CA and its certificates.

Every change is audited (who, why, fingerprints and expiry; never key material). Keys are written mode 0600
from the first byte. `rotate` keeps the previous pair as *.prev for rollback and has the running router
pick up the new one (SIGHUP), then checks the TLS port really presents it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from .audit import AuditLog, current_operator
from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, load_or_exit, print_json
from .config import RouterConfig
from .fsutil import atomic_write_bytes

CA_KEY_NAME = "ca.key"  # beside the CA certificate in tls_dir; never leaves the appliance


def _paths(cfg: RouterConfig) -> dict[str, Path]:
    t = cfg.router.tls
    return {
        "ca_cert": cfg.tls_path(t.ca),
        "ca_key": cfg.router.tls_dir / CA_KEY_NAME,
        "cert": cfg.tls_path(t.cert),
        "key": cfg.tls_path(t.key),
    }


def _default_names(cfg: RouterConfig) -> tuple[list[str], list[str]]:
    """This host's names and addresses (and the listener's own address when it binds one)."""
    host = socket.gethostname()
    dns = list(dict.fromkeys(n for n in (host, socket.getfqdn(), "localhost") if n))
    ips = ["127.0.0.1"]
    if cfg.router.bind not in ("0.0.0.0", "::", ""):
        ips.append(cfg.router.bind)
    try:
        for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
            addr = str(info[4][0])
            if not addr.startswith("127.") and addr != "::1" and "%" not in addr:
                ips.append(addr)
    except OSError:
        pass
    return dns, list(dict.fromkeys(ips))


def _audit(cfg: RouterConfig, event: str, args: argparse.Namespace, **fields: Any) -> None:
    AuditLog(cfg.audit_path, "cli").record(
        event, operator=current_operator(), reason=args.reason, ticket=args.ticket, **fields
    )


def _cert_fields(prefix: str, cert: x509.Certificate) -> dict[str, Any]:
    from .tls_ca import fingerprint

    return {
        f"{prefix}_fingerprint_sha256": fingerprint(cert),
        f"{prefix}_not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{prefix}_subject": cert.subject.rfc4514_string(),
    }


def _write(path: Path, what: Any, key: bool) -> None:
    """A key (0600) or certificate (0644), owned like its directory: an operator running this with sudo
    must not leave root-owned keys the router's service user cannot read."""
    from . import tls_ca

    path.parent.mkdir(parents=True, exist_ok=True)
    (tls_ca.write_key if key else tls_ca.write_cert)(path, what)
    _own_like_dir(path)


def _own_like_dir(path: Path) -> None:
    if os.geteuid() == 0:
        st = path.parent.stat()
        os.chown(path, st.st_uid, st.st_gid)


def _fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# -- init --------------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from . import tls_ca

    cfg = load_or_exit(args)
    p = _paths(cfg)
    existing = [str(path) for path in p.values() if path.exists()]
    if existing and not args.force:
        return _fail(
            f"{', '.join(existing)} already exist(s): not overwritten (every peer trusting this CA would have to "
            "be reconfigured) — `dicom-router tls rotate` renews the router's certificate; --force starts over",
            EXIT_USAGE,
        )
    dns, ips = _names_or_default(cfg, args)
    cn = args.cn or (dns[0] if dns else cfg.router.ae_title)
    try:
        ca = tls_ca.make_ca(f"{cfg.router.ae_title} DICOM router CA ({socket.gethostname()})", args.ca_key_type)
        node = tls_ca.make_node(ca, cn, dns, ips, args.key_type, args.days)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if not cfg.router.tls_dir.exists():
        cfg.router.tls_dir.mkdir(parents=True, mode=0o750)
    _write(p["ca_key"], ca.key, key=True)
    _write(p["ca_cert"], ca.cert, key=False)
    _write(p["key"], node.key, key=True)
    _write(p["cert"], node.cert, key=False)
    _audit(
        cfg, "tls_init", args, forced=bool(existing) or None, **_cert_fields("ca", ca.cert),
        **_cert_fields("router", node.cert), dns=dns, ip=ips,
    )  # fmt: skip
    result = {"ca": _describe(p["ca_cert"], ca.cert), "router": _describe(p["cert"], node.cert)}
    if args.json:
        print_json(result)
    else:
        print(f"made a CA in {p['ca_cert']} (key {p['ca_key']}, mode 0600; keep it on this appliance)")
        print(_render(result["ca"]))
        print(f"made the router's certificate in {p['cert']} (key {p['key']}, mode 0600)")
        print(_render(result["router"]))
        print(
            f"next: give peers {p['ca_cert']} to trust the router; set router.tls.port (e.g. 2762) in "
            "router.yaml and apply it; `dicom-router tls issue NAME` makes certificates for peers that need one"
        )
    return EXIT_OK


def _names_or_default(cfg: RouterConfig, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.dns or args.ip:
        return list(args.dns or []), list(args.ip or [])
    return _default_names(cfg)


# -- issue -------------------------------------------------------------------------------------------
def cmd_issue(args: argparse.Namespace) -> int:
    from . import tls_ca

    cfg = load_or_exit(args)
    p = _paths(cfg)
    if not args.dns and not args.ip:
        return _fail("give the peer's names: --dns HOSTNAME and/or --ip ADDRESS (what it is reached by)", EXIT_USAGE)
    if not all(c.isalnum() or c in "-_." for c in args.name) or args.name.startswith("."):
        return _fail(f"'{args.name}' is not a usable file name: letters, digits, - _ . only", EXIT_USAGE)
    out = Path(args.out) if args.out else cfg.router.tls_dir / "issued"
    cert_path, key_path = out / f"{args.name}.crt", out / f"{args.name}.key"
    if (cert_path.exists() or key_path.exists()) and not args.force:
        return _fail(f"{cert_path} already exists: not overwritten (--force replaces it)", EXIT_USAGE)
    try:
        ca = tls_ca.load_ca(p["ca_cert"], p["ca_key"])
        node = tls_ca.make_node(ca, args.cn or args.name, list(args.dns or []), list(args.ip or []), args.key_type,
                                args.days)  # fmt: skip
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    _write(key_path, node.key, key=True)
    _write(cert_path, node.cert, key=False)
    _audit(cfg, "tls_issue", args, name=args.name, **_cert_fields("cert", node.cert), file=str(cert_path))
    result = _describe(cert_path, node.cert)
    if args.json:
        print_json({**result, "key": str(key_path), "ca": str(p["ca_cert"])})
    else:
        print(f"issued {cert_path} (key {key_path}, mode 0600)")
        print(_render(result))
        print(
            f"next: install {cert_path.name}, {key_path.name} and {p['ca_cert'].name} on the peer (DCMTK: "
            f"+tls {key_path.name} {cert_path.name} +cf {p['ca_cert'].name}), then delete {key_path} here"
        )
    return EXIT_OK


# -- rotate ------------------------------------------------------------------------------------------
def cmd_rotate(args: argparse.Namespace) -> int:
    from . import tls_ca
    from .history import daemon_pid

    cfg = load_or_exit(args)
    p = _paths(cfg)
    try:
        ca = tls_ca.load_ca(p["ca_cert"], p["ca_key"])
    except ValueError as exc:
        return _fail(str(exc))
    old: x509.Certificate | None = None
    try:
        old = x509.load_pem_x509_certificate(p["cert"].read_bytes())
    except (OSError, ValueError):
        pass
    if args.dns or args.ip:
        dns, ips = list(args.dns or []), list(args.ip or [])
    elif old is not None:
        dns, ips = _sans(old)  # same names as the certificate it replaces
    else:
        dns, ips = _default_names(cfg)
    cn = args.cn or (_cn(old) if old is not None else None) or (dns[0] if dns else cfg.router.ae_title)
    try:
        node = tls_ca.make_node(ca, cn, dns, ips, args.key_type, args.days)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    for path in (p["cert"], p["key"]):  # the previous pair, for rollback
        if path.exists():
            prev = path.with_name(path.name + ".prev")
            atomic_write_bytes(prev, path.read_bytes(), mode=0o600 if path == p["key"] else 0o644)
            _own_like_dir(prev)
    # Key first: between the two renames the pair does not match, and a reload in that moment refuses it
    # (the running certificate stays) rather than using a mismatched pair.
    _write(p["key"], node.key, key=True)
    _write(p["cert"], node.cert, key=False)
    fields = _cert_fields("router", node.cert)
    if old is not None:
        fields.update(_cert_fields("previous", old))
    pid = daemon_pid(cfg)
    confirmed, served = False, ""
    if pid is not None and not args.no_reload:
        os.kill(pid, signal.SIGHUP)
        confirmed, served = _wait_served(cfg, fields["router_fingerprint_sha256"], args.timeout)
    _audit(cfg, "tls_rotate", args, **fields, dns=dns, ip=ips, reloaded=confirmed if served else None)
    described = _describe(p["cert"], node.cert)
    running = "not running" if pid is None else ("not signalled" if args.no_reload else served)
    result = {"router": described, "previous_kept_as": str(p["cert"]) + ".prev", "running_router": running}
    if args.json:
        print_json(result)
    else:
        print(f"new router certificate in {p['cert']} (previous kept as {p['cert'].name}.prev, {p['key'].name}.prev)")
        print(_render(described))
        if pid is None:
            print("the router is not running: it uses the new certificate when it starts")
        elif args.no_reload:
            print(f"not signalled (--no-reload): `kill -HUP {pid}` or a restart makes the router use it")
        elif confirmed:
            print(f"the running router (pid {pid}): {served}")
        else:
            print(f"warning: {served}", file=sys.stderr)
    return EXIT_OK if pid is None or args.no_reload or confirmed else EXIT_FAIL


def _wait_served(cfg: RouterConfig, fingerprint: str, timeout: float) -> tuple[bool, str]:
    """Connect to the TLS port (as the router itself: its certificate passes require_client_cert) until it
    presents `fingerprint`."""
    from . import tls
    from .tls_ca import fingerprint as fp_of

    t = cfg.router.tls
    if t.port is None:  # outbound contexts notice the changed files by themselves
        return True, "signalled; no TLS listener — outbound associations use the new certificate from now on"
    host = (
        "127.0.0.1" if cfg.router.bind in ("0.0.0.0", "") else ("::1" if cfg.router.bind == "::" else cfg.router.bind)
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # we compare the exact certificate instead
    ctx.load_verify_locations(cfg.tls_path(t.ca))
    ctx.load_cert_chain(cfg.tls_path(t.cert), cfg.tls_path(t.key))
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, t.port), timeout=2) as raw, ctx.wrap_socket(raw) as s:
                der = s.getpeercert(binary_form=True)
            if der and fp_of(x509.load_der_x509_certificate(der)) == fingerprint:
                return True, f"now presents the new certificate on port {t.port}"
            last = "it still presents the previous certificate"
        except (OSError, ssl.SSLError) as exc:
            last = tls.explain_handshake_error(exc) if isinstance(exc, ssl.SSLError) else str(exc)
        time.sleep(0.2)
    return False, (
        f"the running router did not present the new certificate within {timeout:g} s ({last}) — "
        "see its service log ('TLS material not reloaded' says why); restart it to be sure"
    )


# -- show --------------------------------------------------------------------------------------------
def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(san.get_values_for_type(x509.DNSName)), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def _cn(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _describe(path: Path, cert: x509.Certificate, now: dt.datetime | None = None) -> dict[str, Any]:
    from .tls_ca import fingerprint

    now = now or dt.datetime.now(dt.UTC)
    dns, ips = _sans(cert)
    days = (cert.not_valid_after_utc - now).total_seconds() / 86400
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "file": str(path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "ca": is_ca,
        "dns": dns,
        "ip": ips,
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": round(days, 1),
        "expired": days < 0,
        "fingerprint_sha256": fingerprint(cert),
    }


def _render(d: dict[str, Any]) -> str:
    names = ", ".join([*(f"DNS:{n}" for n in d["dns"]), *(f"IP:{n}" for n in d["ip"])]) or "-"
    left = "EXPIRED" if d["expired"] else f"{int(d['days_left'])} days left"
    return "\n".join(
        [
            f"  {d['file']}" + ("  [CA]" if d["ca"] else ""),
            f"    subject  {d['subject']}",
            f"    names    {names}",
            f"    issuer   {d['issuer']}",
            f"    expires  {d['not_after']} ({left})",
            f"    sha256   {d['fingerprint_sha256']}",
        ]
    )


def cmd_show(args: argparse.Namespace) -> int:
    from . import tls

    cfg = load_or_exit(args)
    tls_dir = cfg.router.tls_dir
    files = sorted({q for pat in ("*.crt", "*.pem", "*.crt.prev") for q in tls_dir.rglob(pat) if q.is_file()})
    certs: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for path in files:
        try:
            for cert in x509.load_pem_x509_certificates(path.read_bytes()):
                certs.append(_describe(path, cert))
        except (OSError, ValueError) as exc:
            unreadable.append(f"{path}: {exc}")
    listener = tls.listener_status(cfg)
    if args.json:
        print_json({"tls_dir": str(tls_dir), "listener": listener, "certificates": certs, "unreadable": unreadable})
        return EXIT_OK
    if not tls_dir.is_dir():
        print(f"no TLS directory {tls_dir} — `dicom-router tls init` makes the CA and the router's certificate")
        return EXIT_OK
    if listener is None:
        print(f"TLS listener: none (router.tls.port unset); certificates in {tls_dir}:")
    elif listener["ok"]:
        print(f"TLS listener on port {listener['port']}: certificate loads, {int(listener['days_left'])} days left")
    else:
        print(f"TLS listener on port {listener['port']}: WILL NOT START — {listener['problem']}")
    for d in certs:
        print(_render(d))
    for line in unreadable:
        print(f"  ! cannot read {line}")
    return EXIT_OK


# -- registration ------------------------------------------------------------------------------------
def add_tls_commands(sub: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    from .tls_ca import KEY_TYPES, NODE_DAYS

    p = sub.add_parser("tls", help="the router's local CA and TLS certificates (init, issue, rotate, show)")
    tsub = p.add_subparsers(dest="tls_command", required=True, metavar="ACTION")

    def names(q: argparse.ArgumentParser, what: str) -> None:
        q.add_argument("--dns", action="append", metavar="NAME", help=f"DNS subjectAltName {what} (repeatable)")
        q.add_argument("--ip", action="append", metavar="ADDRESS", help=f"IP subjectAltName {what} (repeatable)")
        q.add_argument("--cn", help="subject common name (default: the first name)")
        q.add_argument(
            "--key-type",
            dest="key_type",
            choices=KEY_TYPES,
            default="rsa3072",
            help="rsa3072 (default; DCMTK's TLS 1.2 profile needs RSA), rsa2048, ec-p256 (TLS 1.3 peers only)",
        )
        q.add_argument("--days", type=int, default=NODE_DAYS, help="validity (default and maximum: %(default)s)")

    def change(q: argparse.ArgumentParser) -> None:
        q.add_argument("--reason", help="why (recorded in the audit trail)")
        q.add_argument("--ticket", help="change ticket (recorded in the audit trail)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        add_config(q)

    q = tsub.add_parser("init", help="make the CA and the router's certificate in router.tls_dir")
    names(q, "of the router (default: this host's names and addresses)")
    q.add_argument("--ca-key-type", dest="ca_key_type", choices=KEY_TYPES, default="rsa3072")
    q.add_argument("--force", action="store_true", help="replace an existing CA (every peer must then be redone)")
    change(q)
    q.set_defaults(func=cmd_init)

    q = tsub.add_parser("issue", help="a certificate for a peer (modality, PACS) signed by the router's CA")
    q.add_argument("name", help="file name: NAME.crt and NAME.key")
    names(q, "of the peer")
    q.add_argument("--out", metavar="DIR", help="where to write them (default: TLS_DIR/issued)")
    q.add_argument("--force", action="store_true", help="replace an existing NAME.crt")
    change(q)
    q.set_defaults(func=cmd_issue)

    q = tsub.add_parser("rotate", help="a new router certificate from the same CA; the running router picks it up")
    names(q, "(default: those of the current certificate)")
    q.add_argument("--no-reload", dest="no_reload", action="store_true", help="do not signal the running router")
    q.add_argument("--timeout", type=float, default=15.0, help="wait this long for the router to present it")
    change(q)
    q.set_defaults(func=cmd_rotate)

    q = tsub.add_parser("show", help="every certificate under tls_dir: names, issuer, expiry, fingerprint")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    add_config(q)
    q.set_defaults(func=cmd_show)
