"""Encryption of backup bundles: a streaming, authenticated format built only from `cryptography` primitives.

Layout of a `.drbk` file::

    header   b"DRBK" | version (1 byte) | length (4 bytes, big-endian) | JSON | sha256 of the preceding bytes
    chunks   ChaCha20-Poly1305(payload_key, nonce, plaintext chunk, associated data = the header bytes)

* Key: scrypt(passphrase, salt) — or the 32 bytes of a key file — then HKDF-SHA256 with the bundle's random
  32-byte salt into a payload key and a key-check key. A fresh salt per bundle means a fresh key per bundle.
* STREAM construction (as in age and Tink): the plaintext is cut into chunks of `chunk_size` bytes; chunk i
  is sealed with the nonce `i` (11 bytes, big-endian) followed by a last-chunk flag byte (1 on the final
  chunk, else 0). Dropping, reordering or duplicating chunks, or cutting the file at a chunk boundary,
  therefore fails authentication. Every chunk is bound to the header (associated data).
* The header's `key_check` (HMAC-SHA256 of a fixed label under a key derived like the payload key) tells a
  wrong passphrase or key apart from a damaged or altered bundle; the header's own sha256 tells accidental
  damage of the header apart from a wrong passphrase.

Decryption streams too: plaintext is released chunk by chunk, each chunk only after it authenticated; the
bundle as a whole is proven complete only when the final chunk has been read (`DecryptingReader.finish`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import os
import stat
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"DRBK"
FORMAT_VERSION = 1
CHUNK_SIZE = 1 << 20  # 1 MiB of plaintext per chunk
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32
MAX_HEADER_JSON = 64 * 1024

# scrypt cost: n=2**17, r=8 needs 128 MiB and about 0.5 s on the appliance's 2 cores (measured) — once per bundle.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
# What a header may ask of us when decrypting: enough to honour any bundle we write, not enough for a crafted
# header to exhaust memory (n=2**20, r=16 is 2 GiB).
_SCRYPT_N_RANGE = (2**10, 2**20)
_SCRYPT_R_RANGE = (1, 16)
_SCRYPT_P_RANGE = (1, 4)
_CHUNK_RANGE = (1024, 64 << 20)

_INFO_PAYLOAD = b"DRBK v1 payload key"
_INFO_CHECK = b"DRBK v1 key check key"
_CHECK_LABEL = b"DRBK v1 key check"

SecretKind = Literal["passphrase", "key"]


# -- errors ------------------------------------------------------------------------------------------
class BundleError(Exception):
    """A bundle cannot be created or opened; the message says what and what to do."""


class NotABundleError(BundleError):
    """The file is not a backup bundle of a format this version reads."""


class WrongSecretError(BundleError):
    """The passphrase or key does not open the bundle (the bundle itself looks intact)."""


class DamagedBundleError(BundleError):
    """The bundle was altered, damaged or cut short: some part failed authentication."""


class SecretError(BundleError):
    """A passphrase or key file is missing, empty or malformed."""


# -- secrets -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Secret:
    """What a bundle is encrypted with: a passphrase (stretched with scrypt) or a 32-byte random key."""

    kind: SecretKind
    material: bytes = field(repr=False)
    source: str  # where it came from, for messages: "passphrase file /etc/…", "typed passphrase", …

    @classmethod
    def passphrase(cls, text: str, source: str) -> Secret:
        if not text:
            raise SecretError(f"the passphrase from {source} is empty")
        return cls("passphrase", unicodedata.normalize("NFC", text).encode("utf-8"), source)

    @classmethod
    def key(cls, key: bytes, source: str) -> Secret:
        if len(key) != KEY_SIZE:
            raise SecretError(f"the key from {source} has {len(key)} bytes, not {KEY_SIZE}")
        return cls("key", key, source)


def parse_key(data: bytes, source: str) -> bytes:
    """A key file holds 32 random bytes, raw or as base64 text (what `backup keygen` writes)."""
    if len(data) == KEY_SIZE:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise SecretError(
            f"{source} is not a backup key: it must hold {KEY_SIZE} random bytes, raw or base64 "
            "(make one with `dicom-router backup keygen FILE`)"
        )
    return key


def read_key_file(path: Path) -> Secret:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SecretError(f"key file {path} does not exist — check backup.key_file / --key-file") from None
    except OSError as exc:
        raise SecretError(f"cannot read key file {path}: {exc.strerror}") from None
    return Secret.key(parse_key(data, f"key file {path}"), f"key file {path}")


def read_passphrase_file(path: Path) -> Secret:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(
            f"passphrase file {path} does not exist — check backup.passphrase_file / --passphrase-file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read passphrase file {path}: {exc}") from None
    # One trailing newline is what editors and `echo` add; it is not part of the passphrase.
    return Secret.passphrase(text.removesuffix("\n").removesuffix("\r"), f"passphrase file {path}")


def loosely_readable(path: Path) -> bool:
    """True when a secret file is open to more than its owner (worth a warning: it should be 0600).

    One layout is deliberate and not loose: owned by root and readable (not writable) by the group, as
    the appliance's backup role deploys it (root:dicom-router 0640) so the service can read but not change it."""
    try:
        st = Path(path).stat()
    except OSError:
        return False
    if st.st_mode & stat.S_IRWXO or st.st_mode & (stat.S_IWGRP | stat.S_IXGRP):
        return True
    return bool(st.st_mode & stat.S_IRGRP) and st.st_uid != 0


def write_key_file(path: Path) -> None:
    """A new random key as base64 text, mode 0600; never overwrites (bundles made with a key need that key)."""
    key = os.urandom(KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretError(
            f"{path} already exists: refusing to overwrite a key (bundles encrypted with it would become "
            "unreadable) — choose another file name"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


# -- header ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleHeader:
    kdf: dict[str, Any]  # {"kind": "scrypt", "n", "r", "p"} or {"kind": "key"}
    salt: bytes
    created: str  # ISO 8601 UTC, e.g. 2026-11-28T02:30:00Z
    host: str
    router_version: str
    chunk_size: int
    key_check: bytes
    raw: bytes = b""  # the exact header bytes (associated data of every chunk)

    @property
    def secret_kind(self) -> SecretKind:
        return "key" if self.kdf.get("kind") == "key" else "passphrase"

    def _json(self) -> bytes:
        doc = {
            "cipher": "chacha20poly1305-stream",
            "kdf": self.kdf,
            "salt": base64.b64encode(self.salt).decode(),
            "created": self.created,
            "host": self.host,
            "router_version": self.router_version,
            "chunk_size": self.chunk_size,
            "key_check": base64.b64encode(self.key_check).decode(),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def encode(self) -> bytes:
        body = self._json()
        head = MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", len(body)) + body
        return head + hashlib.sha256(head).digest()


def read_header(f: IO[bytes], name: str = "the bundle") -> BundleHeader:
    """Read and check the plaintext header (no key needed): what `backup list` shows."""
    fixed = f.read(9)
    if len(fixed) < 9 or fixed[:4] != MAGIC:
        raise NotABundleError(f"{name} is not a dicom-router backup bundle (it does not start with DRBK)")
    if fixed[4] != FORMAT_VERSION:
        raise NotABundleError(
            f"{name} has bundle format version {fixed[4]}; this dicom-router reads version {FORMAT_VERSION} — "
            "use the dicom-router version that wrote it"
        )
    (length,) = struct.unpack(">I", fixed[5:9])
    if length > MAX_HEADER_JSON:
        raise DamagedBundleError(f"the header of {name} is damaged (claims {length} bytes)")
    body = f.read(length)
    digest = f.read(32)
    raw = fixed + body + digest
    if len(body) != length or len(digest) != 32:
        raise DamagedBundleError(f"{name} is cut short inside its header: the file is truncated")
    if not hmac.compare_digest(hashlib.sha256(fixed + body).digest(), digest):
        raise DamagedBundleError(
            f"the header of {name} is damaged (its checksum does not match): the bundle was "
            "altered or damaged — use another copy"
        )
    try:
        doc = json.loads(body)
        kdf = doc["kdf"]
        header = BundleHeader(
            kdf=kdf,
            salt=base64.b64decode(doc["salt"], validate=True),
            created=str(doc["created"]),
            host=str(doc["host"]),
            router_version=str(doc["router_version"]),
            chunk_size=int(doc["chunk_size"]),
            key_check=base64.b64decode(doc["key_check"], validate=True),
            raw=raw,
        )
        _check_params(header)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise DamagedBundleError(f"the header of {name} is not usable ({exc}): the bundle was altered") from None
    return header


def _in(value: Any, bounds: tuple[int, int]) -> bool:
    return isinstance(value, int) and bounds[0] <= value <= bounds[1]


def _check_params(h: BundleHeader) -> None:
    kind = h.kdf.get("kind")
    if kind == "scrypt":
        if not (
            _in(h.kdf.get("n"), _SCRYPT_N_RANGE)
            and _in(h.kdf.get("r"), _SCRYPT_R_RANGE)
            and _in(h.kdf.get("p"), _SCRYPT_P_RANGE)
        ):
            raise ValueError(f"scrypt parameters {h.kdf} out of range")
    elif kind != "key":
        raise ValueError(f"unknown key derivation {kind!r}")
    if len(h.salt) != SALT_SIZE or len(h.key_check) != 32 or not _in(h.chunk_size, _CHUNK_RANGE):
        raise ValueError("salt, key check or chunk size malformed")


# -- keys --------------------------------------------------------------------------------------------
def _derive(secret: Secret, kdf: dict[str, Any], salt: bytes) -> tuple[bytes, bytes]:
    """(payload key, key-check value)."""
    if kdf["kind"] == "scrypt":
        ikm = Scrypt(salt=salt, length=KEY_SIZE, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(secret.material)
    else:
        ikm = secret.material

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(ikm)

    check = hmac.new(hkdf(_INFO_CHECK), _CHECK_LABEL, hashlib.sha256).digest()
    return hkdf(_INFO_PAYLOAD), check


def _nonce(counter: int, last: bool) -> bytes:
    if counter >= 1 << 88:
        raise BundleError("bundle too large for one stream")  # 2**88 MiB: never in practice
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# -- writing -----------------------------------------------------------------------------------------
class EncryptingWriter(io.RawIOBase):
    """A write-only file object: everything written is encrypted into `out` in sealed chunks.

    `close()` seals the final chunk; until then the output is not a complete bundle.
    """

    def __init__(
        self,
        out: IO[bytes],
        secret: Secret,
        *,
        created: str,
        host: str,
        router_version: str,
        scrypt_n: int = SCRYPT_N,
        chunk_size: int = CHUNK_SIZE,
    ):
        super().__init__()
        salt = os.urandom(SALT_SIZE)
        kdf: dict[str, Any] = (
            {"kind": "scrypt", "n": scrypt_n, "r": SCRYPT_R, "p": SCRYPT_P}
            if secret.kind == "passphrase"
            else {"kind": "key"}
        )
        key, check = _derive(secret, kdf, salt)
        self.header = BundleHeader(kdf, salt, created, host, router_version, chunk_size, check)
        self._ad = self.header.encode()
        self._aead = ChaCha20Poly1305(key)
        self._out = out
        self._buf = bytearray()
        self._counter = 0
        self._chunk = chunk_size
        self.plaintext_bytes = 0
        out.write(self._ad)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed bundle")
        view = memoryview(data).cast("B")
        self._buf += view
        self.plaintext_bytes += len(view)
        # Keep at least one byte back: the final chunk must be sealed as final, and only close() knows which.
        while len(self._buf) > self._chunk:
            self._seal(bytes(self._buf[: self._chunk]), last=False)
            del self._buf[: self._chunk]
        return len(view)

    def _seal(self, plain: bytes, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._counter, last), plain, self._ad))
        self._counter += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buf), last=True)
            self._buf.clear()
        super().close()

    def abort(self) -> None:
        """Stop without sealing a final chunk (the output is then an incomplete bundle, to be deleted)."""
        self._buf.clear()
        super().close()


# -- reading -----------------------------------------------------------------------------------------
class DecryptingReader(io.RawIOBase):
    """A read-only file object over a bundle's plaintext; each chunk is released only once authenticated.

    Reading to the end (or `finish()`) proves the bundle complete: a missing final chunk raises.
    """

    def __init__(self, f: IO[bytes], secret: Secret, name: str = "the bundle"):
        super().__init__()
        self.name_for_messages = name
        self.header = read_header(f, name)
        h = self.header
        if secret.kind != h.secret_kind:
            made = "a passphrase" if h.secret_kind == "passphrase" else "a key file"
            hint = "--passphrase-file or type the passphrase" if h.secret_kind == "passphrase" else "--key-file"
            raise WrongSecretError(f"{name} was encrypted with {made}, but {secret.source} was given — use {hint}")
        key, check = _derive(secret, h.kdf, h.salt)
        if not hmac.compare_digest(check, h.key_check):
            raise WrongSecretError(
                f"{secret.source} does not open {name}: wrong "
                f"{'passphrase' if secret.kind == 'passphrase' else 'key'} (the bundle itself looks intact)"
            )
        self._aead = ChaCha20Poly1305(key)
        self._f = f
        self._offset = len(h.raw)  # file offset of the next chunk, for messages
        self._block = h.chunk_size + TAG_SIZE
        self._next = f.read(self._block)
        self._counter = 0
        self._plain = b""
        self._pos = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def _open_next(self) -> None:
        block, start = self._next, self._offset
        if not block:
            raise DamagedBundleError(
                f"{self.name_for_messages} is truncated: it ends after chunk {self._counter} without its final "
                "chunk (an interrupted copy?) — use another copy"
            )
        self._next = self._f.read(self._block)
        self._offset += len(block)
        last = not self._next
        n = self._counter
        try:
            self._plain = self._aead.decrypt(_nonce(n, last), block, self.header.raw)
        except InvalidTag:
            cut = last and len(block) == self._block and self._authentic(block, n, last=False)
            if cut:
                raise DamagedBundleError(
                    f"{self.name_for_messages} is truncated: it ends after chunk {n + 1} without its final "
                    "chunk (an interrupted copy?) — use another copy"
                ) from None
            cut_short = " (or cut short)" if last and len(block) < self._block else ""
            raise DamagedBundleError(
                f"chunk {n + 1} (at byte {start}) of {self.name_for_messages} failed authentication: the bundle "
                f"was altered or damaged{cut_short} — use another copy"
            ) from None
        self._pos = 0
        self._counter += 1
        self.done = last

    def _authentic(self, block: bytes, n: int, last: bool) -> bool:
        try:
            self._aead.decrypt(_nonce(n, last), block, self.header.raw)
            return True
        except InvalidTag:
            return False

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._pos >= len(self._plain):
            if self.done:
                return 0
            self._open_next()
        n = min(len(view), len(self._plain) - self._pos)
        view[:n] = self._plain[self._pos : self._pos + n]
        self._pos += n
        return n

    def finish(self) -> None:
        """Read and authenticate whatever remains, so the whole bundle is proven intact and complete."""
        while not self.done:
            self._open_next()
        self._plain, self._pos = b"", 0
