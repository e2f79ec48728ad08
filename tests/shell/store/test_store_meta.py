"""MetaStore: manifests and the catalog on real files under tmp_path."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import blake3
import pytest

from peerstore.errors import DiskIOError, CorruptPieceError, StoreError
from peerstore.shell.store import MetaStore


def make_manifest(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3.blake3(data).digest(), data


@pytest.fixture
def meta(tmp_path: Path) -> MetaStore:
    return MetaStore(tmp_path)


@pytest.mark.parametrize("size", [0, 1, 300, 100_000])
def test_manifest_round_trip(meta: MetaStore, tmp_path: Path, size: int):
    mid, data = make_manifest(size, seed=size)
    assert not meta.has_manifest(mid)
    assert meta.get_manifest(mid) is None
    assert meta.put_manifest(mid, data) is True
    assert meta.put_manifest(mid, data) is False
    assert meta.has_manifest(mid)
    assert meta.get_manifest(mid) == data
    assert meta.manifest_ids() == frozenset({mid})
    path = tmp_path / "manifests" / mid.hex()
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_manifest_with_wrong_hash_is_refused(meta: MetaStore, tmp_path: Path):
    mid, _ = make_manifest(100, seed=1)
    _, other = make_manifest(100, seed=2)
    with pytest.raises(CorruptPieceError, match=mid.hex()):
        meta.put_manifest(mid, other)
    assert not meta.has_manifest(mid)
    assert list((tmp_path / "manifests").iterdir()) == []


@pytest.mark.parametrize("bad_id", [b"", b"y" * 31, b"y" * 64, "z" * 32, None])
@pytest.mark.parametrize("call", ["has_manifest", "get_manifest", "put_manifest"])
def test_malformed_manifest_ids_raise_store_error(meta: MetaStore, bad_id, call: str):
    args = (bad_id, b"m") if call == "put_manifest" else (bad_id,)
    with pytest.raises(StoreError, match="manifest id must be 32 bytes"):
        getattr(meta, call)(*args)


def test_corrupt_manifest_is_quarantined_and_can_be_fetched_again(meta: MetaStore, tmp_path: Path):
    mid, data = make_manifest(500)
    meta.put_manifest(mid, data)
    path = tmp_path / "manifests" / mid.hex()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CorruptPieceError, match="quarantine"):
        meta.get_manifest(mid)
    assert not meta.has_manifest(mid)
    assert not path.exists()
    assert [p.name.startswith(f"manifest-{mid.hex()}") for p in (tmp_path / "quarantine").iterdir()] == [True]
    assert meta.put_manifest(mid, data) is True
    assert meta.get_manifest(mid) == data


def test_restart_rebuilds_ids_removes_stale_temps_and_ignores_junk(tmp_path: Path):
    first = MetaStore(tmp_path)
    held = dict(make_manifest(50, seed=i) for i in range(3))
    for mid, data in held.items():
        first.put_manifest(mid, data)
    first.save_catalog(b"catalog v1")
    stale = [tmp_path / ".catalog.bin.tmp-0123456789ab", tmp_path / "manifests" / f".{'a' * 64}.tmp-abcdef"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / "manifests" / "notes.txt").write_bytes(b"junk")
    (tmp_path / "manifests" / ("F" * 64)).write_bytes(b"junk")

    second = MetaStore(tmp_path)
    assert not any(p.exists() for p in stale)
    assert second.manifest_ids() == frozenset(held)
    assert second.load_catalog() == b"catalog v1"


def test_catalog_save_and_load(meta: MetaStore, tmp_path: Path):
    assert meta.load_catalog() is None
    for version in (b"v1", b"", b"v3" * 10_000):
        meta.save_catalog(version)
        assert meta.load_catalog() == version
        assert MetaStore(tmp_path).load_catalog() == version


@pytest.mark.parametrize("failing", ["fsync_file", "replace"])
def test_catalog_save_is_atomic_when_it_fails_midway(meta: MetaStore, tmp_path: Path, monkeypatch, failing):
    meta.save_catalog(b"old")

    def fail(*_args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    target = "peerstore.shell.durable.fsync_file" if failing == "fsync_file" else "peerstore.shell.durable.os.replace"
    monkeypatch.setattr(target, fail)
    with pytest.raises(DiskIOError, match="catalog.bin failed: .Errno 5 EIO"):
        meta.save_catalog(b"new")
    monkeypatch.undo()
    assert meta.load_catalog() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.bin", "manifests"]


def test_storing_a_held_manifest_again_replaces_a_rotten_copy(meta: MetaStore, tmp_path: Path):
    """A manifest acknowledged as stored counts towards tolerance + 1 copies: a held copy
    is read again, never trusted."""
    mid, data = make_manifest(500)
    assert meta.put_manifest(mid, data) is True
    assert meta.put_manifest(mid, data) is False  # genuine: nothing to write
    path = tmp_path / "manifests" / mid.hex()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert meta.put_manifest(mid, data) is True
    assert path.read_bytes() == data
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_reserved_counters_save_and_load(meta: MetaStore, tmp_path: Path):
    assert meta.load_counters() is None
    meta.save_counters(b"c1")
    assert MetaStore(tmp_path).load_counters() == b"c1"
