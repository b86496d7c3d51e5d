"""The router's local certificate authority: private keys and X.509 certificates made with `cryptography`.

Key type: RSA by default. DCMTK 3.6.7 (storescu/storescp, and the many modalities built on DCMTK) offers only
ECDHE_RSA cipher suites in TLS 1.2 under its default BCP 195 profile: with an EC certificate the handshake
fails with "no shared cipher" unless both ends speak TLS 1.3 (measured; see docs/tls.md). RSA 3072 is NIST
SP 800-57's size for use beyond 2030 (the CA lives 10 years); `ec-p256` is there for TLS 1.3-only sites.

Node certificates carry DNS and IP subjectAltNames, serverAuth + clientAuth (the router both accepts and
makes associations with one certificate), at most 825 days of validity, and random serial numbers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fsutil import atomic_write_bytes

KeyType = Literal["rsa3072", "rsa2048", "ec-p256"]
KEY_TYPES: tuple[KeyType, ...] = ("rsa3072", "rsa2048", "ec-p256")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

CA_DAYS = 3650
NODE_DAYS = 825  # the CA/Browser Forum's old ceiling; long enough to avoid yearly churn on modalities
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_before slightly in the past: a peer whose clock lags still accepts


@dataclass(frozen=True)
class Issued:
    key: PrivateKey
    cert: x509.Certificate


def new_key(kind: KeyType) -> PrivateKey:
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072 if kind == "rsa3072" else 2048)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def make_ca(common_name: str, kind: KeyType = "rsa3072", days: int = CA_DAYS, now: dt.datetime | None = None) -> Issued:
    key = new_key(kind)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DICOM router local CA"),
        ]
    )
    start = _now(now) - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def san_entries(dns: list[str], ips: list[str]) -> list[x509.GeneralName]:
    """subjectAltName entries; raises ValueError naming a malformed IP address."""
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns) if d]
    for ip in dict.fromkeys(ips):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ValueError(f"'{ip}' is not an IP address (use --dns for host names)") from None
    return names


def make_node(
    ca: Issued,
    common_name: str,
    dns: list[str],
    ips: list[str],
    kind: KeyType = "rsa3072",
    days: int = NODE_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """A certificate for the router or a peer, signed by `ca`, usable as TLS server and client."""
    if not 1 <= days <= NODE_DAYS:
        raise ValueError(f"validity of {days} days: node certificates may last 1 to {NODE_DAYS} days")
    sans = san_entries(dns, ips)
    if not sans:
        raise ValueError("a certificate needs at least one name: give --dns NAME and/or --ip ADDRESS")
    key = new_key(kind)
    start = _now(now) - CLOCK_SKEW
    not_after = min(start + dt.timedelta(days=days), ca.cert.not_valid_after_utc)  # never outlive the CA
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


# -- files -------------------------------------------------------------------------------------------
def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: PrivateKey) -> None:
    atomic_write_bytes(path, key_pem(key), mode=0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write_bytes(path, cert_pem(cert), mode=0o644)


def load_ca(cert_path: Path, key_path: Path) -> Issued:
    """The CA `tls init` made, to sign with. Raises ValueError with an operator's message."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(
            key_path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except FileNotFoundError as exc:
        raise ValueError(f"{exc.filename} does not exist — run `dicom-router tls init` first") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: unsupported key type {type(key).__name__}")
    return Issued(key, cert)


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER, as `openssl x509 -fingerprint -sha256` prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
