"""DICOM TLS: certificates from the local CA, checks on TLS material, contexts, handshake failures in words,
the TLS listener's handshake off the accept thread, and the inbound TLS policy."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.router import cli, tls, tls_ca
from appliance.router.config import Node, RouterConfig, load_config

NOW = dt.datetime.now(dt.UTC)


def _write_pair(d: Path, name: str, issued: tls_ca.Issued) -> tuple[Path, Path]:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    tls_ca.write_cert(cert, issued.cert)
    tls_ca.write_key(key, issued.key)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, the router's pair, a client pair, a pair from another CA and an expired pair (RSA 2048: quick)."""
    d = tmp_path_factory.mktemp("pki")
    ca = tls_ca.make_ca("Test CA", "rsa2048")
    other_ca = tls_ca.make_ca("Other CA", "rsa2048")
    tls_ca.write_cert(d / "ca.crt", ca.cert)
    tls_ca.write_cert(d / "other-ca.crt", other_ca.cert)
    out: dict[str, Any] = {"dir": d, "ca": ca, "ca_crt": d / "ca.crt", "other_ca_crt": d / "other-ca.crt"}
    out["router"] = _write_pair(d, "router", tls_ca.make_node(ca, "router", ["localhost"], ["127.0.0.1"], "rsa2048"))
    out["client"] = _write_pair(d, "client", tls_ca.make_node(ca, "client", ["client.example"], [], "rsa2048"))
    out["stranger"] = _write_pair(
        d, "stranger", tls_ca.make_node(other_ca, "stranger", ["localhost"], ["127.0.0.1"], "rsa2048")
    )
    old = NOW - dt.timedelta(days=30)
    out["expired"] = _write_pair(
        d, "expired", tls_ca.make_node(ca, "expired", ["localhost"], ["127.0.0.1"], "rsa2048", days=2, now=old)
    )
    return out


# -- the local CA ------------------------------------------------------------------------------------
def test_node_certificate_has_names_usages_and_bounded_validity(pki: dict[str, Any]) -> None:
    cert = x509.load_pem_x509_certificate(pki["router"][0].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= tls_ca.NODE_DAYS
    assert cert.issuer == pki["ca"].cert.subject
    ca_bc = pki["ca"].cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_bc.ca is True and ca_bc.path_length == 0
    other = tls_ca.make_node(pki["ca"], "x", ["localhost"], [], "ec-p256")
    assert other.cert.serial_number != cert.serial_number and other.cert.serial_number.bit_length() > 64
    with pytest.raises(ValueError, match="825"):
        tls_ca.make_node(pki["ca"], "x", ["a"], [], "ec-p256", days=900)
    with pytest.raises(ValueError, match="not an IP address"):
        tls_ca.make_node(pki["ca"], "x", [], ["host.example"], "ec-p256")


def test_keys_are_written_mode_0600_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        tls_ca.write_key(tmp_path / "k.key", tls_ca.new_key("ec-p256"))
    finally:
        os.umask(old)
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600


# -- bad material: each with its own message, none loads -----------------------------------------------
def _copy_pair(pki: dict[str, Any], tmp_path: Path, name: str = "router") -> tuple[Path, Path]:
    cert, key = pki[name]
    c, k = tmp_path / "r.crt", tmp_path / "r.key"
    c.write_bytes(cert.read_bytes())
    k.write_bytes(key.read_bytes())
    k.chmod(0o600)
    return c, k


def test_good_pair_loads(pki: dict[str, Any], tmp_path: Path) -> None:
    c, k = _copy_pair(pki, tmp_path)
    assert tls.check_identity(c, k).cert.subject.rfc4514_string() == "CN=router"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_cert", "does not exist — run `dicom-router tls init`"),
        ("key_0644", "has mode 0644: group or others may read it — `chmod 600"),
        ("key_0640", "has mode 0640"),
        ("cert_not_pem", "is not a PEM certificate"),
        ("swapped", "is not a PEM certificate: no '-----BEGIN CERTIFICATE-----' block (it holds a private key"),
        ("key_not_pem", "is not a PEM private key"),
        ("mismatch", "does not match"),
        ("expired", "EXPIRED on"),
        ("encrypted", "encrypted with a passphrase"),
        ("unreadable_dir", "is a directory"),
    ],
)
def test_bad_material_is_refused_with_a_specific_message(
    pki: dict[str, Any], tmp_path: Path, damage: str, message: str
) -> None:
    c, k = _copy_pair(pki, tmp_path, "expired" if damage == "expired" else "router")
    if damage == "missing_cert":
        c.unlink()
    elif damage == "key_0644":
        k.chmod(0o644)
    elif damage == "key_0640":
        k.chmod(0o640)
    elif damage == "cert_not_pem":
        c.write_bytes(b"\x30\x82garbage DER")
    elif damage == "swapped":
        c.write_bytes(k.read_bytes())
    elif damage == "key_not_pem":
        k.write_bytes(b"hello")
    elif damage == "mismatch":
        k.write_bytes(pki["client"][1].read_bytes())
    elif damage == "encrypted":
        key = serialization.load_pem_private_key(k.read_bytes(), None)
        k.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    elif damage == "unreadable_dir":
        c.unlink()
        c.mkdir()
    with pytest.raises(tls.TlsMaterialError) as err:
        tls.check_identity(c, k)
    assert message in str(err.value)
    assert str(c if damage in ("missing_cert", "cert_not_pem", "swapped", "unreadable_dir") else k) in str(
        err.value
    ) or damage in ("mismatch", "expired")


def test_certificate_not_yet_valid_names_the_clock(pki: dict[str, Any], tmp_path: Path) -> None:
    c, k = _copy_pair(pki, tmp_path)
    with pytest.raises(tls.TlsMaterialError, match="not valid before .* check this machine's clock"):
        tls.check_identity(c, k, now=NOW - dt.timedelta(days=1))


# -- contexts --------------------------------------------------------------------------------------------
def _cfg(tmp_path: Path, pki: dict[str, Any], **router_tls: Any) -> RouterConfig:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir(exist_ok=True)
    for name in ("router", "client"):
        for src in pki[name]:
            (tls_dir / src.name).write_bytes(src.read_bytes())
            (tls_dir / src.name).chmod(0o600)
    (tls_dir / "ca.crt").write_bytes(pki["ca_crt"].read_bytes())
    doc = {
        "router": {"state_dir": str(tmp_path / "s"), "log_dir": str(tmp_path / "l"), "tls_dir": str(tls_dir),
                   "tls": {"port": 2762, **router_tls}},
        "nodes": {
            "PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "role": "destination",
                     "tls": {"enabled": True}},
            "CT": {"ae_title": "CT", "host": "10.0.0.9", "port": 104, "role": "source",
                   "tls": {"enabled": True, "peer_name": "client.example"}},
            "MR": {"ae_title": "MR", "host": "10.0.0.8", "port": 104, "role": "source"},
        },
    }  # fmt: skip
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def test_server_context_requires_client_certificates_and_tls12(pki: dict[str, Any], tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, pki)
    ctx = tls.server_context(cfg).context
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"} <= set(tls.CIPHERS_TLS12.split(":"))
    assert tls.server_context(_cfg(tmp_path, pki, min_version="1.3")).context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_client_context_is_cached_until_a_file_changes(pki: dict[str, Any], tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, pki)
    target = tls.target_for(cfg, "PACS", cfg.nodes["PACS"])
    assert target.server_hostname == "127.0.0.1" and target.cert is not None
    first = tls.client_context(target)
    assert tls.client_context(target) is first
    assert first.check_hostname and first.verify_mode == ssl.CERT_REQUIRED
    # A rotation replaces the files (new inode): the next association gets a fresh context.
    cert = cfg.tls_path(cfg.router.tls.cert)
    data = cert.read_bytes()
    cert.unlink()
    cert.write_bytes(data)
    assert tls.client_context(target) is not first


# -- real handshakes in memory: what each failure says ------------------------------------------------------
def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> tuple[Any, Any]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    errors: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            errors["server"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.wrap_socket(b, server_hostname=hostname) as c:
            c.sendall(b"x")
    except Exception as exc:  # noqa: BLE001
        errors["client"] = exc
    t.join(5)
    return errors.get("server"), errors.get("client")


def _client(pki: dict[str, Any], pair: str | None, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if pair:
        ctx.load_cert_chain(*pki[pair])
    return ctx


def test_handshake_failures_are_explained(pki: dict[str, Any], tmp_path: Path) -> None:
    server = tls.server_context(_cfg(tmp_path, pki)).context
    ok = _handshake(server, _client(pki, "client", pki["ca_crt"]), "localhost")
    assert ok == (None, None)

    srv, cli_ = _handshake(server, _client(pki, "stranger", pki["ca_crt"]), "localhost")
    assert "not signed by a CA we trust" in tls.explain_handshake_error(srv, server_side=True)
    srv, _ = _handshake(server, _client(pki, "expired", pki["ca_crt"]), "localhost")
    assert "certificate has expired" in tls.explain_handshake_error(srv, server_side=True)
    srv, _ = _handshake(server, _client(pki, None, pki["ca_crt"]), "localhost")
    assert "presented no client certificate" in tls.explain_handshake_error(srv, server_side=True)
    _, cli_ = _handshake(server, _client(pki, "client", pki["other_ca_crt"]), "localhost")
    assert "not signed by a CA we trust" in tls.explain_handshake_error(cli_)
    _, cli_ = _handshake(server, _client(pki, "client", pki["ca_crt"]), "pacs.example")
    assert "does not carry the expected name" in tls.explain_handshake_error(cli_)


# -- the listener: handshakes off the accept thread ----------------------------------------------------------
@pytest.fixture
def tls_scp(pki: dict[str, Any], tmp_path: Path) -> Iterator[tuple[int, list[str]]]:
    ae = AE("SCP")
    ae.add_supported_context(Verification)
    failures: list[str] = []
    server = tls.start_tls_server(
        ae,
        ("127.0.0.1", 0),
        tls.server_context(_cfg(tmp_path, pki)).context,
        [],
        lambda addr, why: failures.append(why),
        handshake_timeout=0.5,
    )
    yield server.server_address[1], failures
    server.shutdown()


def test_an_idle_caller_does_not_block_other_tls_callers(pki: dict[str, Any], tls_scp: tuple[int, list[str]]) -> None:
    port, failures = tls_scp
    idle = socket.create_connection(("127.0.0.1", port))  # connects, never starts a handshake
    try:
        ae = AE("SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, tls_args=(_client(pki, "client", pki["ca_crt"]), "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        from tests.support.peers import wait_until

        wait_until(lambda: failures, 5, "the idle caller's handshake to time out")
        assert failures == ["no TLS handshake within the time allowed (a plain client waiting for the server to "
                            "speak, or a stall)"]  # fmt: skip
    finally:
        idle.close()


# -- inbound policy ----------------------------------------------------------------------------------------
def test_policy_plain_port_and_peer_name(pki: dict[str, Any], tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, pki)
    ct, mr = cfg.nodes["CT"], cfg.nodes["MR"]
    assert "must use TLS" in (tls.policy_violation("CT", ct, False, None, 2762) or "")
    assert tls.policy_violation("MR", mr, False, None, 2762) is None
    assert tls.policy_violation("MR", mr, True, None, 2762) is None  # TLS is fine for anyone
    good = {"subjectAltName": (("DNS", "client.example"),)}
    assert tls.policy_violation("CT", ct, True, good, 2762) is None
    bad = {"subjectAltName": (("DNS", "other.example"), ("IP Address", "10.0.0.9"))}
    assert "names other.example, 10.0.0.9, not 'client.example'" in (tls.policy_violation("CT", ct, True, bad, 1) or "")
    assert tls.certificate_names({"subject": ((("commonName", "old-modality"),),)}) == ["old-modality"]
    assert tls.name_matches("ct1.rad.example", ["*.rad.example"])
    assert not tls.name_matches("a.b.rad.example", ["*.rad.example"])
    assert tls.policy_violation(None, None, False, None, 1) is None
    assert isinstance(ct, Node)


# -- the CLI ---------------------------------------------------------------------------------------------------
def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_init_issue_rotate_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"router": {"state_dir": "s", "log_dir": "l", "tls": {"port": 2762}}}))
    c = ["--config", str(path)]
    code, out, err = _run(capsys, "tls", "init", "--dns", "router.example", "--ip", "10.1.1.1", "--reason", "r", *c)
    assert code == 0, err
    tls_dir = tmp_path / "tls"
    assert {p.name for p in tls_dir.iterdir()} == {"ca.crt", "ca.key", "router.crt", "router.key"}
    assert all((tls_dir / k).stat().st_mode & 0o777 == 0o600 for k in ("ca.key", "router.key"))
    code, _, err = _run(capsys, "tls", "init", *c)
    assert code == 2 and "not overwritten" in err

    code, out, err = _run(capsys, "tls", "issue", "CT1", "--dns", "ct1.example", "--key-type", "ec-p256", "--json", *c)
    assert code == 0, err
    issued = json.loads(out)
    assert issued["dns"] == ["ct1.example"] and (tls_dir / "issued" / "CT1.key").stat().st_mode & 0o777 == 0o600

    before = x509.load_pem_x509_certificate((tls_dir / "router.crt").read_bytes())
    code, out, err = _run(capsys, "tls", "rotate", "--ticket", "CHG-1", "--json", *c)
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["running_router"] == "not running"
    assert (tls_dir / "router.crt.prev").read_bytes() == before.public_bytes(serialization.Encoding.PEM)
    assert rotated["router"]["dns"] == ["router.example"] and rotated["router"]["ip"] == ["10.1.1.1"]
    assert (tls_dir / "router.key.prev").stat().st_mode & 0o777 == 0o600

    code, out, err = _run(capsys, "tls", "show", "--json", *c)
    shown = json.loads(out)
    assert shown["listener"]["ok"] and shown["listener"]["days_left"] > 800
    files = {Path(d["file"]).name for d in shown["certificates"]}
    assert files == {"ca.crt", "router.crt", "router.crt.prev", "CT1.crt"}
    (tls_dir / "router.key").chmod(0o644)
    code, out, _ = _run(capsys, "tls", "show", *c)
    assert "WILL NOT START" in out and "chmod 600" in out

    audit = [json.loads(line) for line in (tmp_path / "l" / "audit.jsonl").read_text().splitlines()]
    events = {e["event"]: e for e in audit}
    assert set(events) >= {"tls_init", "tls_issue", "tls_rotate"}
    assert events["tls_rotate"]["ticket"] == "CHG-1" and events["tls_rotate"]["operator"]
    assert events["tls_rotate"]["previous_fingerprint_sha256"] != events["tls_rotate"]["router_fingerprint_sha256"]
    assert not any("PRIVATE KEY" in line for line in (tmp_path / "l" / "audit.jsonl").read_text().splitlines())


def test_cli_run_with_sudo_leaves_files_owned_like_the_tls_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The appliance's tls dir belongs to the service user; `sudo dicom-router tls …` must not leave root-owned
    keys the router cannot read."""
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"router": {"state_dir": "s", "log_dir": "l"}}))
    (tmp_path / "tls").mkdir()
    chowned: list[tuple[str, int, int]] = []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "chown", lambda p, uid, gid: chowned.append((Path(p).name, uid, gid)))
    code, _, err = _run(capsys, "tls", "init", "--dns", "r.example", "--key-type", "ec-p256", "--ca-key-type",
                        "ec-p256", "--config", str(path))  # fmt: skip
    assert code == 0, err
    st = (tmp_path / "tls").stat()
    assert sorted(chowned) == [(n, st.st_uid, st.st_gid) for n in ("ca.crt", "ca.key", "router.crt", "router.key")]
