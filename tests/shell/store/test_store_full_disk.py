"""A really full file system: a 1 MiB tmpfs, so ENOSPC comes from the kernel, not from a cap."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path

import blake3
import pytest

from peerstore.errors import DiskFullError
from peerstore.shell.store import MetaStore, PieceStore

pytestmark = pytest.mark.needs_real  # in CI as root, a skip fails the run (tests/conftest.py)

PIECE = 150 << 10  # seven fit in 1 MiB; the eighth cannot


def make_piece(size: int, seed: int) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3.blake3(data).digest(), data


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A freshly mounted 1 MiB tmpfs, or a skip saying why it could not be had."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs to fill a real file system needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=10, check=True)


def pieces_on_disk(root: Path) -> list[Path]:
    return sorted(p for p in (root / "pieces").rglob("*") if p.is_file())


def test_write_until_enospc_leaves_no_partial_piece(tiny_fs: Path):
    store = PieceStore(tiny_fs)
    stored: dict[bytes, bytes] = {}
    refused = None
    for seed in range(20):  # 20 x 150 KiB is far beyond 1 MiB
        pid, data = make_piece(PIECE, seed)
        try:
            store.write(pid, data)
        except DiskFullError as exc:
            assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC
            refused = (pid, data, str(exc))
            break
        stored[pid] = data
    assert refused is not None, "a 1 MiB file system accepted 3 MiB"
    pid, data, message = refused
    assert f"need {PIECE} bytes" in message and "free" in message
    assert len(stored) >= 5
    assert not store.has(pid)
    assert list((tiny_fs / "tmp").iterdir()) == []
    assert pieces_on_disk(tiny_fs) == sorted(store.path_of(p) for p in stored)
    for held, held_data in stored.items():
        assert store.read(held) == held_data

    store.delete(next(iter(stored)))  # make room: the store is still usable
    assert store.write(pid, data) is True
    assert store.read(pid) == data
    assert PieceStore(tiny_fs).inventory() == store.inventory()


def test_streaming_writer_on_a_full_file_system(tiny_fs: Path):
    store = PieceStore(tiny_fs)
    pid, data = make_piece(PIECE, seed=1)
    with pytest.raises(DiskFullError, match="need 2097152 bytes"):
        store.writer(pid, 2 << 20)  # refused before any byte arrives

    writer = store.writer(pid, len(data))  # fits now...
    (tiny_fs / "filler").write_bytes(b"\0" * store.free_bytes())  # ...then something else fills the disk
    with pytest.raises(DiskFullError, match=pid.hex()):
        for start in range(0, len(data), 16 << 10):
            writer.write(data[start : start + (16 << 10)])
    assert list((tiny_fs / "tmp").iterdir()) == []
    assert not store.has(pid) and pieces_on_disk(tiny_fs) == []

    (tiny_fs / "filler").unlink()
    with store.writer(pid, len(data)) as w:
        w.write(data)
        assert w.commit() is True


def test_manifest_and_catalog_on_a_full_file_system(tiny_fs: Path):
    meta = MetaStore(tiny_fs)
    meta.save_catalog(b"old catalog")
    big = random.Random(3).randbytes(2 << 20)
    with pytest.raises(DiskFullError):
        meta.put_manifest(blake3.blake3(big).digest(), big)
    with pytest.raises(DiskFullError):
        meta.save_catalog(big)
    assert meta.load_catalog() == b"old catalog"
    assert meta.manifest_ids() == frozenset()
    leftovers = [p.name for p in tiny_fs.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
