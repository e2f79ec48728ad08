"""Disk errors other than "full" surface from the store as DiskIOError, naming the path
and the errno, never as a raw OSError, and leave nothing partial behind: EFBIG and EMFILE
from real process limits, EROFS from a tmpfs remounted read-only (root on Linux), EIO on
reads (injected)."""

from __future__ import annotations

import errno
import os
import random
import resource
import subprocess
from pathlib import Path

import blake3
import pytest

from peerstore.errors import DiskIOError
from peerstore.shell.store import MetaStore, PieceStore


def make_piece(size: int, seed: int = 1) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3.blake3(data).digest(), data


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir())


def test_efbig_from_the_file_size_limit(tmp_path: Path):
    store = PieceStore(tmp_path)
    pid, data = make_piece(300_000)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # Python ignores SIGXFSZ: EFBIG
    try:
        with pytest.raises(DiskIOError) as caught:
            store.write(pid, data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = caught.value
    assert err.errno == errno.EFBIG and not err.read_only
    assert str(tmp_path / "tmp") in str(err) and "[Errno 27 EFBIG]" in str(err) and "ulimit -f" in str(err)
    assert not store.has(pid) and leftovers(tmp_path) == []
    assert store.write(pid, data)  # the limit lifted: the store works


def test_emfile_from_the_open_file_limit(tmp_path: Path):
    store = PieceStore(tmp_path)
    pid, data = make_piece(1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
    try:
        while True:  # take every descriptor left, so the store cannot open one
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        with pytest.raises(DiskIOError) as caught:
            store.write(pid, data)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert caught.value.errno == errno.EMFILE and "open-file limit" in str(caught.value)
    assert not store.has(pid) and store.stats() == (0, 0)
    assert store.write(pid, data)


def test_eio_on_reads_names_the_piece_file(tmp_path: Path, monkeypatch):
    store = PieceStore(tmp_path)
    pid, data = make_piece(5000)
    store.write(pid, data)

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("peerstore.shell.store.pieces.os.pread", broken)
    with pytest.raises(DiskIOError, match=r"\[Errno 5 EIO\]") as caught:
        store.read_range(pid, 0, 10)
    assert str(store.path_of(pid)) in str(caught.value)
    assert store.has(pid)  # unreadable now is not "gone": nothing was forgotten


def test_meta_loads_report_the_file_and_errno(tmp_path: Path, monkeypatch):
    meta = MetaStore(tmp_path)
    meta.save_catalog(b"catalog")

    def broken(self):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Path, "read_bytes", broken)
    with pytest.raises(DiskIOError, match=r"catalog\.bin failed: \[Errno 5 EIO\]"):
        meta.load_catalog()
    with pytest.raises(DiskIOError, match="counters.bin"):
        meta.load_counters()


@pytest.fixture
def read_only_fs(tmp_path: Path):
    """A tmpfs the test can remount read-only: (mount point, remount function)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True, timeout=10)

    try:
        yield mount_point, remount
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10)


@pytest.mark.needs_real
def test_a_read_only_file_system_fails_writes_keeps_reads_and_recovers(read_only_fs):
    root, remount = read_only_fs
    store, meta = PieceStore(root), MetaStore(root)
    held, held_data = make_piece(4000, seed=1)
    store.write(held, held_data)
    meta.save_catalog(b"old")
    remount("ro")

    pid, data = make_piece(4000, seed=2)
    with pytest.raises(DiskIOError) as caught:
        store.write(pid, data)
    assert caught.value.read_only and caught.value.errno == errno.EROFS
    assert str(root) in str(caught.value) and "[Errno 30 EROFS]" in str(caught.value)
    with pytest.raises(DiskIOError) as streaming:
        store.writer(pid, len(data))
    assert streaming.value.read_only
    for write in (lambda: meta.save_catalog(b"new"), lambda: meta.put_manifest(pid, data)):
        with pytest.raises(DiskIOError, match="EROFS"):
            write()
    with pytest.raises(DiskIOError, match="EROFS"):
        store.probe_writable()
    assert store.read(held) == held_data and meta.load_catalog() == b"old"  # reads still work
    assert not store.has(pid) and store.stats() == (1, len(held_data))

    remount("rw")
    store.probe_writable()
    assert store.write(pid, data) and store.read(pid) == data
    assert leftovers(root) == []
