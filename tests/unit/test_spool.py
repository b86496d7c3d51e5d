"""appliance.router.spool: durable, key-addressed object store (tmp → fsync → rename → fsync dir)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest

from appliance.router.spool import Spool, SpoolTempFile, is_out_of_space


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.init()
    return s


class FailingFile:
    """Stands in for the real file: accepts `good_writes` writes, then fails like a full disk."""

    def __init__(self, real: io.BufferedWriter, err: int = errno.ENOSPC, good_writes: int = 0):
        self.real = real
        self.err = err
        self.good_writes = good_writes
        self.writes_attempted = 0

    @property
    def closed(self) -> bool:
        return self.real.closed

    def write(self, data: bytes) -> int:
        self.writes_attempted += 1
        if self.writes_attempted > self.good_writes:
            raise OSError(self.err, os.strerror(self.err))
        return self.real.write(data)

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def tmp_entries(spool: Spool) -> list[str]:
    return sorted(os.listdir(spool.tmp_dir))


def test_init_creates_layout(spool: Spool) -> None:
    assert spool.tmp_dir.is_dir()
    subdirs = sorted(p.name for p in spool.objects_dir.iterdir())
    assert len(subdirs) == 256 and subdirs[0] == "00" and subdirs[-1] == "ff"
    spool.init()  # again: harmless
    assert list(spool.keys()) == []


def test_commit_makes_the_object_appear_with_exact_bytes(spool: Spool) -> None:
    data = os.urandom(200_000) + b"\x00\xff" * 10
    tmp = spool.new_temp()
    assert Path(tmp.name).parent == spool.tmp_dir
    assert Path(tmp.name).exists()  # the reception is on disk while in progress
    for i in range(0, len(data), 16_384):  # pynetdicom writes PDV by PDV
        assert tmp.write(data[i : i + 16_384]) == len(data[i : i + 16_384])
    tmp.file.flush()
    assert tmp.size == len(data)
    key = spool.commit(tmp)
    assert key == tmp.key
    final = spool.objects_dir / key[:2] / f"{key}.dcm"
    assert spool.path(key) == final
    assert final.read_bytes() == data
    assert spool.exists(key)
    assert tmp_entries(spool) == []


def test_put_bytes(spool: Spool) -> None:
    key = spool.put_bytes(b"DICM-ish")
    assert spool.path(key).read_bytes() == b"DICM-ish"
    assert tmp_entries(spool) == []


def test_keys_are_unique_and_listed(spool: Spool) -> None:
    keys = {spool.put_bytes(bytes([i])) for i in range(20)}
    assert len(keys) == 20
    assert set(spool.keys()) == keys
    # A stray non-.dcm file in an object directory is not a key.
    (spool.objects_dir / "00" / "stray.part").write_bytes(b"x")
    assert set(spool.keys()) == keys


def test_write_error_is_remembered_not_raised(spool: Spool) -> None:
    tmp = spool.new_temp()
    assert tmp.write(b"first chunk ") == 12
    failing = FailingFile(tmp._real)  # type: ignore[arg-type]
    tmp._real = failing
    # pynetdicom must not see an exception mid-association: write reports success and records the error.
    assert tmp.write(b"second chunk") == 12
    assert isinstance(tmp.error, OSError) and tmp.error.errno == errno.ENOSPC
    assert is_out_of_space(tmp.error)
    assert tmp.write(b"third chunk") == 11
    assert failing.writes_attempted == 1  # after the first error nothing more is attempted
    assert tmp.size == 12  # only what really reached the file is counted
    tmp.file.flush()  # must not raise either
    with pytest.raises(OSError) as info:
        spool.commit(tmp)
    assert info.value.errno == errno.ENOSPC
    assert list(spool.keys()) == []  # nothing half-written was committed
    assert tmp_entries(spool) == [Path(tmp.name).name]
    tmp.discard()
    assert tmp_entries(spool) == []
    tmp.discard()  # idempotent


def test_first_error_wins(spool: Spool) -> None:
    tmp = spool.new_temp()
    tmp._real = FailingFile(tmp._real, err=errno.EIO)  # type: ignore[arg-type]
    tmp.write(b"x")
    assert tmp.error is not None and tmp.error.errno == errno.EIO
    assert not is_out_of_space(tmp.error)
    tmp.write(b"y")
    assert tmp.error.errno == errno.EIO
    tmp.discard()


def test_discard_removes_an_unfinished_reception(spool: Spool) -> None:
    tmp = spool.new_temp()
    tmp.write(b"partial")
    tmp.discard()
    assert tmp_entries(spool) == []
    assert list(spool.keys()) == []


def test_clean_tmp_removes_leftovers(spool: Spool) -> None:
    left = [spool.new_temp() for _ in range(3)]
    for t in left:
        t.write(b"interrupted")
        t.close()  # as if the process died: never committed
    committed = spool.put_bytes(b"kept")
    assert len(tmp_entries(spool)) == 3
    assert spool.clean_tmp() == 3
    assert tmp_entries(spool) == []
    assert spool.clean_tmp() == 0
    assert list(spool.keys()) == [committed]


def test_delete_is_idempotent(spool: Spool) -> None:
    key = spool.put_bytes(b"abc")
    other = spool.put_bytes(b"def")
    spool.delete(key)
    assert not spool.exists(key)
    spool.delete(key)  # again: no error
    spool.delete("0123456789abcdef0123456789abcdef")  # never existed: no error
    assert list(spool.keys()) == [other]


def test_temp_file_names_never_collide(tmp_path: Path) -> None:
    a, b = SpoolTempFile(tmp_path), SpoolTempFile(tmp_path)
    assert a.key != b.key and a.name != b.name
    a.discard()
    b.discard()


def test_is_out_of_space() -> None:
    assert is_out_of_space(OSError(errno.ENOSPC, "full"))
    assert is_out_of_space(OSError(errno.EDQUOT, "quota"))
    assert not is_out_of_space(OSError(errno.EACCES, "denied"))
    assert not is_out_of_space(ValueError("no"))


def test_below_reserve_refuses_before_writing(tmp_path: Path) -> None:
    from appliance.router.spool import BelowReserve

    spool = Spool(tmp_path / "spool", min_free_bytes=10**18)  # more than any disk has
    spool.init()
    tmp = spool.new_temp()
    assert isinstance(tmp.error, BelowReserve)
    assert "reserve" in str(tmp.error.strerror)
    tmp.write(b"x" * 1000)  # swallowed, nothing lands on disk
    assert not list(spool.tmp_dir.iterdir())
    with pytest.raises(BelowReserve):
        spool.commit(tmp)
    tmp.discard()
    spool.min_free_bytes = 0
    ok = spool.new_temp()
    assert ok.error is None
    ok.write(b"data")
    assert spool.path(spool.commit(ok)).read_bytes() == b"data"


def test_the_reception_is_hashed_while_written(spool: Spool) -> None:
    data = os.urandom(300_000)
    tmp = spool.new_temp()
    for i in range(0, len(data), 16_384):
        tmp.write(memoryview(data)[i : i + 16_384])  # pynetdicom hands over slices of its PDU buffer
    key = spool.commit(tmp)
    assert tmp.sha256 == hashlib.sha256(data).hexdigest() == hashlib.sha256(spool.path(key).read_bytes()).hexdigest()
    assert spool.new_temp().sha256 == hashlib.sha256(b"").hexdigest()


def test_a_failed_write_is_not_hashed(spool: Spool) -> None:
    tmp = spool.new_temp()
    tmp.write(b"abc")
    tmp._real = FailingFile(tmp._real)  # type: ignore[assignment]
    tmp.write(b"lost")
    assert tmp.error is not None and tmp.sha256 == hashlib.sha256(b"abc").hexdigest()
    tmp.discard()
