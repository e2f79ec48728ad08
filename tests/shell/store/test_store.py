"""PieceStore: durable content-addressed pieces on real files under tmp_path."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import threading
from pathlib import Path

import blake3
import pytest

from peerstore.errors import DiskIOError, CorruptPieceError, DiskFullError, PieceNotFoundError, StoreError
from peerstore.shell.store import PieceStore


def make_piece(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3.blake3(data).digest(), data


def piece_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "pieces").rglob("*") if p.is_file())


def tmp_files(root: Path) -> list[Path]:
    return sorted((root / "tmp").iterdir())


@pytest.fixture
def store(tmp_path: Path) -> PieceStore:
    return PieceStore(tmp_path)


# -- write / read ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65537, (1 << 20) + 3])
def test_round_trip(store: PieceStore, tmp_path: Path, size: int):
    pid, data = make_piece(size, seed=size)
    assert store.write(pid, data) is True
    assert store.has(pid)
    assert store.read(pid) == data
    assert store.size_of(pid) == size
    assert store.verify(pid)
    path = store.path_of(pid)
    assert path == tmp_path / "pieces" / pid.hex()[:2] / pid.hex()
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert store.inventory() == frozenset({pid})
    assert store.stats() == (1, size)
    assert tmp_files(tmp_path) == []


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_write_accepts_bytes_like(store: PieceStore, kind):
    pid, data = make_piece(1000)
    assert store.write(kind(pid), kind(data))
    assert store.read(pid) == data


def test_identical_bytes_stored_once(store: PieceStore, tmp_path: Path):
    pid, data = make_piece(5000)
    assert store.write(pid, data) is True
    assert store.write(pid, bytes(data)) is False
    assert piece_files(tmp_path) == [store.path_of(pid)]
    assert store.stats() == (1, 5000)


def test_wrong_hash_is_refused_and_nothing_written(store: PieceStore, tmp_path: Path):
    pid, _ = make_piece(3000, seed=1)
    _, other = make_piece(3000, seed=2)
    with pytest.raises(CorruptPieceError, match=pid.hex()):
        store.write(pid, other)
    assert not store.has(pid)
    assert piece_files(tmp_path) == []
    assert tmp_files(tmp_path) == []
    assert store.stats() == (0, 0)


@pytest.mark.parametrize("bad_id", [b"", b"x" * 31, b"x" * 33, "a" * 32, None, 7])
@pytest.mark.parametrize("call", ["has", "size_of", "path_of", "read", "verify", "delete", "write"])
def test_malformed_ids_raise_store_error(store: PieceStore, bad_id, call: str):
    args = (bad_id, b"data") if call == "write" else (bad_id,)
    with pytest.raises(StoreError, match="32 bytes"):
        getattr(store, call)(*args)


@pytest.mark.parametrize(
    "call", [("size_of",), ("path_of",), ("read",), ("verify",), ("read_range", 0, 1)]
)
def test_absent_piece_raises_not_found(store: PieceStore, call):
    pid, _ = make_piece(10)
    with pytest.raises(PieceNotFoundError, match=pid.hex()):
        getattr(store, call[0])(pid, *call[1:])
    assert store.delete(pid) is False


@pytest.mark.parametrize(
    "offset,length,ok",
    [(0, 0, True), (0, 100, True), (37, 20, True), (99, 1, True), (100, 0, True),
     (-1, 5, False), (0, -1, False), (0, 101, False), (100, 1, False), (90, 20, False)],
)
def test_read_range_is_bounds_checked(store: PieceStore, offset: int, length: int, ok: bool):
    pid, data = make_piece(100)
    store.write(pid, data)
    if ok:
        assert store.read_range(pid, offset, length) == data[offset : offset + length]
    else:
        with pytest.raises(StoreError, match="outside piece"):
            store.read_range(pid, offset, length)


def test_delete(store: PieceStore, tmp_path: Path):
    (a, da), (b, db) = make_piece(100, 1), make_piece(200, 2)
    store.write(a, da)
    store.write(b, db)
    assert store.delete(a) is True
    assert store.delete(a) is False
    assert store.inventory() == frozenset({b})
    assert store.stats() == (1, 200)
    assert piece_files(tmp_path) == [store.path_of(b)]
    assert store.write(a, da) is True  # a deleted piece can be stored again


# -- streaming writer ----------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 1000, 65536, 300_000])
def test_streaming_writer_commits(store: PieceStore, tmp_path: Path, chunk: int):
    pid, data = make_piece(300_000, seed=chunk)
    with store.writer(pid, len(data)) as w:
        view = memoryview(data)
        for start in range(0, len(data), chunk):
            w.write(view[start : start + chunk])
        assert w.commit() is True
    assert store.read(pid) == data
    assert tmp_files(tmp_path) == []


def test_streaming_writer_of_held_piece_returns_false(store: PieceStore, tmp_path: Path):
    pid, data = make_piece(1000)
    store.write(pid, data)
    w = store.writer(pid, len(data))
    w.write(data)
    assert w.commit() is False
    assert piece_files(tmp_path) == [store.path_of(pid)]
    assert tmp_files(tmp_path) == []


@pytest.mark.parametrize(
    "what,send,match",
    [("wrong bytes", lambda d: bytes([d[0] ^ 1]) + d[1:], "hash to"),
     ("too short", lambda d: d[:-1], "incomplete")],
)
def test_streaming_writer_rejects_bad_content(store: PieceStore, tmp_path: Path, what, send, match):
    pid, data = make_piece(10_000)
    w = store.writer(pid, len(data))
    w.write(send(data))
    with pytest.raises(CorruptPieceError, match=match):
        w.commit()
    assert not store.has(pid)
    assert piece_files(tmp_path) == []
    assert tmp_files(tmp_path) == []
    with pytest.raises(StoreError, match="already committed or aborted"):
        w.write(b"x")


def test_streaming_writer_refuses_bytes_beyond_declared_size(store: PieceStore, tmp_path: Path):
    pid, data = make_piece(1000)
    with pytest.raises(StoreError, match="refusing 1 bytes"):
        with store.writer(pid, len(data)) as w:
            w.write(data[:600])
            w.write(data[600:] + b"!")
    assert not store.has(pid)
    assert tmp_files(tmp_path) == []


def test_streaming_writer_abort_and_unfinished_context(store: PieceStore, tmp_path: Path):
    pid, data = make_piece(1000)
    w = store.writer(pid, len(data))
    w.write(data[:10])
    w.abort()
    w.abort()  # idempotent
    with pytest.raises(StoreError):
        w.commit()
    with store.writer(pid, len(data)) as w2:
        w2.write(data)  # leaving without commit discards
    assert not store.has(pid)
    assert tmp_files(tmp_path) == []


def test_streaming_writer_rejects_bad_size(store: PieceStore):
    pid, _ = make_piece(10)
    for size in (-1, 1.5, "10"):
        with pytest.raises(StoreError, match="non-negative int"):
            store.writer(pid, size)


# -- corruption on disk ------------------------------------------------------------------


def flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x40
    os.chmod(path, 0o644)
    path.write_bytes(raw)


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [lambda p: flip_byte(p, 0), lambda p: flip_byte(p, -1), truncate])
@pytest.mark.parametrize("check", ["read", "verify"])
def test_corrupt_piece_is_quarantined(store: PieceStore, tmp_path: Path, damage, check: str):
    pid, data = make_piece(50_000)
    (keep, keep_data) = make_piece(100, seed=9)
    store.write(pid, data)
    store.write(keep, keep_data)
    damage(store.path_of(pid))
    if check == "read":
        with pytest.raises(CorruptPieceError, match="quarantine"):
            store.read(pid)
    else:
        assert store.verify(pid) is False
    assert not store.has(pid)
    assert store.inventory() == frozenset({keep})
    assert store.stats() == (1, 100)
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and pid.hex() in quarantined[0].name
    assert piece_files(tmp_path) == [store.path_of(keep)]
    assert store.write(pid, data) is True  # a good copy can be fetched again
    assert store.read(pid) == data


def test_piece_removed_behind_our_back_is_forgotten(store: PieceStore):
    pid, data = make_piece(100)
    store.write(pid, data)
    os.unlink(store.path_of(pid))
    with pytest.raises(PieceNotFoundError, match="vanished"):
        store.read(pid)
    assert not store.has(pid)


# -- restart -----------------------------------------------------------------------------


def test_restart_cleans_temps_rebuilds_inventory_and_ignores_junk(tmp_path: Path):
    first = PieceStore(tmp_path)
    held = dict(make_piece(size, seed=size) for size in (0, 10, 5000, 70_000))
    for pid, data in held.items():
        first.write(pid, data)
    (tmp_path / "tmp" / "half-written.tmp").write_bytes(b"partial")
    (tmp_path / "tmp" / "leftover-dir").mkdir()
    (tmp_path / "tmp" / "leftover-dir" / "x").write_bytes(b"x")
    pieces = tmp_path / "pieces"
    stray_id, _ = make_piece(1, seed=77)
    wrong_prefix = "00" if stray_id.hex()[:2] != "00" else "01"
    junk = [
        pieces / "README",
        pieces / "ab" / "notapiece",
        pieces / "ab" / ("a" * 63),
        pieces / "ab" / ("AB" + "0" * 62),
        pieces / wrong_prefix / stray_id.hex(),
        pieces / "abc" / ("abc" + "0" * 61),
    ]
    for path in junk:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"junk")
    (pieces / "cd" / ("cd" + "1" * 62)).mkdir(parents=True)

    second = PieceStore(tmp_path)
    assert tmp_files(tmp_path) == []
    assert second.inventory() == frozenset(held)
    assert second.stats() == (len(held), sum(map(len, held.values())))
    for pid, data in held.items():
        assert second.read(pid) == data


# -- capacity ----------------------------------------------------------------------------


def test_capacity_cap_refuses_cleanly_and_store_stays_usable(tmp_path: Path):
    store = PieceStore(tmp_path, capacity_bytes=10_000)
    (a, da), (b, db), (c, dc) = make_piece(6000, 1), make_piece(6000, 2), make_piece(4000, 3)
    assert store.write(a, da)
    assert store.free_bytes() == 4000
    with pytest.raises(DiskFullError, match="need 6000 bytes, 4000 free"):
        store.write(b, db)
    assert not store.has(b)
    assert piece_files(tmp_path) == [store.path_of(a)]
    assert tmp_files(tmp_path) == []
    assert store.write(c, dc)
    assert store.free_bytes() == 0
    with pytest.raises(DiskFullError):
        store.writer(b, len(db))
    store.delete(a)
    assert store.write(b, db)
    assert store.stats() == (2, 10_000)


def test_writer_reserves_capacity_until_done(tmp_path: Path):
    store = PieceStore(tmp_path, capacity_bytes=10_000)
    (a, da), (b, db) = make_piece(6000, 1), make_piece(6000, 2)
    wa = store.writer(a, len(da))
    assert store.free_bytes() == 4000
    with pytest.raises(DiskFullError, match="need 6000 bytes, 4000 free"):
        store.writer(b, len(db))
    wa.abort()
    assert store.free_bytes() == 10_000
    with store.writer(b, len(db)) as wb:
        wb.write(db)
        assert wb.commit()
    assert store.free_bytes() == 4000


def test_negative_capacity_is_refused(tmp_path: Path):
    with pytest.raises(StoreError, match="capacity_bytes"):
        PieceStore(tmp_path, capacity_bytes=-1)


def test_free_bytes_without_cap_is_the_disk(store: PieceStore, tmp_path: Path):
    assert abs(store.free_bytes() - shutil.disk_usage(tmp_path).free) < (64 << 20)


# -- failures during the durable steps ----------------------------------------------------


@pytest.mark.parametrize(
    "code,expected", [(errno.EIO, DiskIOError), (errno.ENOSPC, DiskFullError), (errno.EDQUOT, DiskFullError)]
)
@pytest.mark.parametrize("step", ["fsync_file", "fsync_dir"])
@pytest.mark.parametrize("prefix_dir_exists", [False, True])
def test_failed_durable_step_leaves_nothing(
    tmp_path: Path, monkeypatch, step: str, code: int, expected, prefix_dir_exists: bool
):
    store = PieceStore(tmp_path, capacity_bytes=1 << 20)
    pid, data = make_piece(1000)
    if prefix_dir_exists:
        (tmp_path / "pieces" / pid.hex()[:2]).mkdir()

    def fail(_target):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(f"peerstore.shell.store.pieces.{step}", fail)
    with pytest.raises(expected):
        store.write(pid, data)
    assert not store.has(pid)
    assert piece_files(tmp_path) == []
    assert tmp_files(tmp_path) == []
    assert store.free_bytes() == 1 << 20
    monkeypatch.undo()
    assert store.write(pid, data)


# -- threads -----------------------------------------------------------------------------


def run_threads(count: int, target) -> list:
    results: list = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = target(i)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return results


@pytest.mark.parametrize("streaming", [False, True])
def test_concurrent_writers_of_the_same_piece(tmp_path: Path, streaming: bool):
    store = PieceStore(tmp_path, capacity_bytes=8 << 20)
    pid, data = make_piece(256 << 10)

    def write(_i: int) -> bool:
        if not streaming:
            return store.write(pid, data)
        with store.writer(pid, len(data)) as w:
            for start in range(0, len(data), 64 << 10):
                w.write(data[start : start + (64 << 10)])
            return w.commit()

    results = run_threads(8, write)
    assert results.count(True) == 1 and results.count(False) == 7
    assert piece_files(tmp_path) == [store.path_of(pid)]
    assert tmp_files(tmp_path) == []
    assert store.stats() == (1, len(data))
    assert store.free_bytes() == (8 << 20) - len(data)
    assert store.read(pid) == data


def test_concurrent_writers_of_different_pieces(store: PieceStore, tmp_path: Path):
    pieces = [make_piece(20_000, seed=i) for i in range(16)]
    assert run_threads(16, lambda i: store.write(*pieces[i])) == [True] * 16
    assert store.inventory() == frozenset(pid for pid, _ in pieces)
    assert PieceStore(tmp_path).inventory() == store.inventory()
