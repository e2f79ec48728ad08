"""What garbage collection asks of the stores: remove a piece (bytes freed, or still held
if the file cannot go), every piece's size at boot, and remove a manifest file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest

from peerstore.errors import StoreError
from peerstore.shell.store import MetaStore, PieceStore


def piece(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3.blake3(data).digest(), data


def test_remove_frees_the_bytes_and_the_file_and_says_when_nothing_was_held(tmp_path):
    store = PieceStore(tmp_path)
    a, data = piece(1000, 1)
    b, other = piece(300, 2)
    store.write(a, data)
    store.write(b, other)
    assert store.sizes() == {a: 1000, b: 300}
    assert store.remove(a) == 1000
    assert not (tmp_path / "pieces" / a.hex()[:2] / a.hex()).exists()
    assert store.sizes() == {b: 300} and store.stats() == (1, 300)
    assert store.remove(a) is None
    assert PieceStore(tmp_path).sizes() == {b: 300}  # what a restarted node finds


def test_a_piece_whose_file_cannot_be_removed_is_still_held(tmp_path, monkeypatch):
    store = PieceStore(tmp_path)
    a, data = piece(500, 4)
    store.write(a, data)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "read-only file system", str(path))

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises((OSError, StoreError)):
        store.remove(a)
    monkeypatch.undo()
    assert store.has(a) and store.read(a) == data


def test_delete_manifest_removes_the_file_and_forgets_it(tmp_path: Path):
    meta = MetaStore(tmp_path)
    blob = b"a manifest"
    mid = blake3.blake3(blob).digest()
    meta.put_manifest(mid, blob)
    assert meta.delete_manifest(mid) is True
    assert not meta.has_manifest(mid) and meta.get_manifest(mid) is None
    assert meta.delete_manifest(mid) is False
    assert mid not in MetaStore(tmp_path).manifest_ids()
