"""appliance.router.bundle_crypto: the streaming authenticated format of backup bundles (real crypto, no mocks)."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import pytest

from appliance.router import bundle_crypto as bc

KEY = bc.Secret.key(bytes(range(32)), "test key")
SMALL_N = 2**10  # the format's scrypt cost is a parameter in the header; tests of everything else use a cheap one
CHUNK = bc.CHUNK_SIZE


def seal(plain: bytes, secret: bc.Secret = KEY, *, scrypt_n: int = SMALL_N, chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    w = bc.EncryptingWriter(
        out,
        secret,
        created="2026-11-28T02:30:00Z",
        host="rtr1",
        router_version="0.1.0",
        scrypt_n=scrypt_n,
        chunk_size=chunk_size,
    )
    # Write in odd-sized pieces, as tarfile does, so chunking does not depend on write boundaries.
    for i in range(0, len(plain), 100_003):
        w.write(plain[i : i + 100_003])
    w.close()
    return out.getvalue()


def unseal(blob: bytes, secret: bc.Secret = KEY) -> bytes:
    r = bc.DecryptingReader(io.BytesIO(blob), secret, "test.drbk")
    data = r.read()
    r.finish()
    assert r.done
    return data


def header_len(blob: bytes) -> int:
    return 9 + int.from_bytes(blob[5:9], "big") + 32


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345])
def test_round_trip(size: int) -> None:
    plain = os.urandom(size)
    blob = seal(plain)
    n_chunks = max(1, -(-size // CHUNK))  # a final chunk always exists, possibly empty for an empty payload
    assert len(blob) == header_len(blob) + size + n_chunks * bc.TAG_SIZE
    assert unseal(blob) == plain


def test_header_is_readable_without_a_key() -> None:
    h = bc.read_header(io.BytesIO(seal(b"x")))
    assert (h.host, h.created, h.router_version, h.secret_kind, h.chunk_size) == (
        "rtr1",
        "2026-11-28T02:30:00Z",
        "0.1.0",
        "key",
        CHUNK,
    )


def test_each_bundle_gets_its_own_salt_and_ciphertext() -> None:
    a, b = seal(b"same content"), seal(b"same content")
    assert bc.read_header(io.BytesIO(a)).salt != bc.read_header(io.BytesIO(b)).salt
    assert a[header_len(a) :] != b[header_len(b) :]


def test_passphrase_round_trip_with_the_real_scrypt_cost() -> None:
    secret = bc.Secret.passphrase("correct horse battery staple", "test passphrase")
    t0 = time.monotonic()
    blob = seal(b"payload", secret, scrypt_n=bc.SCRYPT_N)
    took = time.monotonic() - t0
    h = bc.read_header(io.BytesIO(blob))
    assert h.kdf == {"kind": "scrypt", "n": 2**17, "r": 8, "p": 1}
    # The cost is fixed by the parameters above (about 0.5 s and 128 MiB on the 2-core appliance); the time is
    # printed, not asserted: a loaded CI machine is no measure of it.
    print(f"scrypt n=2^17 key derivation took {took:.2f} s")
    assert unseal(blob, bc.Secret.passphrase("correct horse battery staple", "again")) == b"payload"


def test_unicode_passphrases_are_normalised() -> None:
    composed = bc.Secret.passphrase("caf\u00e9 au lait", "composed")
    decomposed = bc.Secret.passphrase("cafe\u0301 au lait", "decomposed")
    assert unseal(seal(b"x", composed), decomposed) == b"x"


def test_wrong_passphrase_is_reported_as_such() -> None:
    blob = seal(b"secret config", bc.Secret.passphrase("the right one", "right"))
    with pytest.raises(bc.WrongSecretError, match="wrong passphrase.*the bundle itself looks intact"):
        unseal(blob, bc.Secret.passphrase("the wrong one", "passphrase file /x"))


def test_wrong_key_and_wrong_kind_of_secret() -> None:
    blob = seal(b"secret config")
    with pytest.raises(bc.WrongSecretError, match="wrong key"):
        unseal(blob, bc.Secret.key(b"\x01" * 32, "key file /other.key"))
    with pytest.raises(bc.WrongSecretError, match="encrypted with a key file.*use --key-file"):
        unseal(blob, bc.Secret.passphrase("anything at all", "the typed passphrase"))


@pytest.mark.parametrize("where", ["magic", "salt", "host"])
def test_flipped_byte_in_header(where: str) -> None:
    blob = bytearray(seal(b"hello" * 1000))
    if where == "magic":
        blob[0] ^= 1
        with pytest.raises(bc.NotABundleError, match="not a dicom-router backup bundle"):
            unseal(bytes(blob))
        return
    pos = bytes(blob).index(b'"salt":"') + 10 if where == "salt" else bytes(blob).index(b"rtr1")
    blob[pos] ^= 0x01
    with pytest.raises(bc.DamagedBundleError, match="header .* is damaged"):
        unseal(bytes(blob))


def test_flipped_byte_in_a_chunk_names_the_chunk() -> None:
    blob = bytearray(seal(os.urandom(3 * CHUNK)))
    blob[header_len(blob) + CHUNK + bc.TAG_SIZE + 500] ^= 0x80  # inside the second chunk
    r = bc.DecryptingReader(io.BytesIO(bytes(blob)), KEY, "test.drbk")
    assert len(r.read(CHUNK)) == CHUNK  # the first chunk is intact and released
    with pytest.raises(
        bc.DamagedBundleError, match="chunk 2 .*failed authentication: the bundle was altered or damaged"
    ):
        r.read(CHUNK)


def test_header_edit_with_recomputed_checksum_fails_every_chunk() -> None:
    # Someone rewrites the (unencrypted) host name and fixes up the header checksum: the header is the
    # associated data of every chunk, so the first chunk no longer authenticates.
    import hashlib

    blob = seal(b"hello")
    n = header_len(blob)
    head = blob[: n - 32].replace(b"rtr1", b"rtr2")
    forged = head + hashlib.sha256(head).digest() + blob[n:]
    assert bc.read_header(io.BytesIO(forged)).host == "rtr2"
    with pytest.raises(bc.DamagedBundleError, match="chunk 1 .*failed authentication"):
        unseal(forged)


def test_truncated_at_a_chunk_boundary() -> None:
    blob = seal(os.urandom(2 * CHUNK + 10))
    cut = blob[: header_len(blob) + 2 * (CHUNK + bc.TAG_SIZE)]  # the final (short) chunk is gone
    with pytest.raises(bc.DamagedBundleError, match="truncated: it ends after chunk 2 without its final chunk"):
        unseal(cut)


def test_truncated_inside_a_chunk_and_after_the_header() -> None:
    blob = seal(os.urandom(CHUNK + 10))
    with pytest.raises(bc.DamagedBundleError, match="chunk 2 .*altered or damaged \\(or cut short\\)"):
        unseal(blob[:-5])
    with pytest.raises(bc.DamagedBundleError, match="truncated"):
        unseal(blob[: header_len(blob)])
    with pytest.raises(bc.DamagedBundleError, match="truncated"):
        unseal(blob[:40])


def test_appended_bytes_are_detected() -> None:
    blob = seal(b"payload")
    with pytest.raises(bc.DamagedBundleError, match="chunk 1 .*failed authentication"):
        unseal(blob + b"extra")


def test_reordered_chunks() -> None:
    blob = seal(os.urandom(3 * CHUNK))
    n, size = header_len(blob), CHUNK + bc.TAG_SIZE
    c1, c2 = blob[n : n + size], blob[n + size : n + 2 * size]
    swapped = blob[:n] + c2 + c1 + blob[n + 2 * size :]
    with pytest.raises(bc.DamagedBundleError, match="chunk 1 .*failed authentication"):
        unseal(swapped)


def test_dropped_chunk() -> None:
    blob = seal(os.urandom(3 * CHUNK))
    n, size = header_len(blob), CHUNK + bc.TAG_SIZE
    with pytest.raises(bc.DamagedBundleError, match="chunk 2 .*failed authentication"):
        unseal(blob[: n + size] + blob[n + 2 * size :])


def test_crafted_header_cannot_demand_huge_scrypt_memory() -> None:
    import hashlib
    import json

    blob = seal(b"x", bc.Secret.passphrase("passphrase", "p"))
    n = header_len(blob)
    doc = json.loads(blob[9 : n - 32])
    doc["kdf"]["n"] = 2**24
    body = json.dumps(doc).encode()
    head = blob[:5] + len(body).to_bytes(4, "big") + body
    with pytest.raises(bc.DamagedBundleError, match="not usable"):
        unseal(head + hashlib.sha256(head).digest() + blob[n:], bc.Secret.passphrase("passphrase", "p"))


def test_keygen_writes_a_private_key_file_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    old_umask = os.umask(0)  # even with a permissive umask the key is 0600
    try:
        bc.write_key_file(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = bc.read_key_file(path)
    assert secret.kind == "key" and len(secret.material) == 32
    before = path.read_bytes()
    with pytest.raises(bc.SecretError, match="refusing to overwrite a key"):
        bc.write_key_file(path)
    assert path.read_bytes() == before
    assert bc.loosely_readable(path) is False
    path.chmod(0o644)
    assert bc.loosely_readable(path) is True
    path.chmod(0o660)  # group may change it
    assert bc.loosely_readable(path) is True
    path.chmod(0o640)  # group may read it: fine only for root's file (root:dicom-router, the backup role's layout)
    assert bc.loosely_readable(path) is (os.stat(path).st_uid != 0)


def test_key_files_raw_or_base64(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    b64 = tmp_path / "b64.key"
    b64.write_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    assert bc.read_key_file(raw).material == bc.read_key_file(b64).material == bytes(range(32))
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(bc.SecretError, match="is not a backup key.*backup keygen"):
        bc.read_key_file(bad)
    with pytest.raises(bc.SecretError, match="does not exist"):
        bc.read_key_file(tmp_path / "missing.key")


def test_passphrase_file_drops_one_trailing_newline(tmp_path: Path) -> None:
    p = tmp_path / "pass"
    p.write_text("  spaces kept  \n")
    assert bc.read_passphrase_file(p).material == b"  spaces kept  "
    p.write_text("\n")
    with pytest.raises(bc.SecretError, match="empty"):
        bc.read_passphrase_file(p)
