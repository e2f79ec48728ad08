import errno
import fcntl
import os

import pytest

from peerstore.shell import durable
from peerstore.shell.durable import fsync_dir, fsync_file, write_file_atomic
from peerstore.errors import DiskFullError, DiskIOError


def leftovers(directory):
    return [name for name in os.listdir(directory) if ".tmp-" in name]


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_write_creates_and_replaces_with_mode(tmp_path, mode):
    path = tmp_path / "f"
    write_file_atomic(path, b"old")
    write_file_atomic(path, b"new" * 1000, mode=mode)
    assert path.read_bytes() == b"new" * 1000
    assert path.stat().st_mode & 0o777 == mode
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("err,raised", [(errno.ENOSPC, DiskFullError), (errno.EIO, DiskIOError)])
def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch, err, raised):
    path = tmp_path / "f"
    write_file_atomic(path, b"old")

    def failing_write(fd, data):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(durable.os, "write", failing_write)
    with pytest.raises(raised) as exc:
        write_file_atomic(path, b"new")
    if raised is DiskFullError:
        assert str(path) in str(exc.value) and "free space" in str(exc.value)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_failed_rename_removes_the_temp(tmp_path):
    (tmp_path / "d").mkdir()  # renaming a file over a directory fails
    with pytest.raises(DiskIOError, match="EISDIR"):
        write_file_atomic(tmp_path / "d", b"x")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EBADF])
def test_fsync_dir_tolerates_unsupported_platforms(tmp_path, monkeypatch, err):
    def refuse(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(durable.os, "fsync", refuse)
    fsync_dir(tmp_path)  # no error


def test_fsync_dir_reports_real_errors(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(durable.os, "fsync", broken)
    with pytest.raises(OSError):
        fsync_dir(tmp_path)


@pytest.mark.parametrize("full_fsync_works", [True, False])
def test_macos_uses_full_fsync_and_falls_back(tmp_path, monkeypatch, full_fsync_works):
    calls = []

    def fake_fcntl(fd, cmd, *args):
        calls.append("F_FULLFSYNC")
        if not full_fsync_works:
            raise OSError(errno.ENOTSUP, "not supported")

    monkeypatch.setattr(durable.sys, "platform", "darwin")
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", fake_fcntl)
    monkeypatch.setattr(durable.os, "fsync", lambda fd: calls.append("fsync"))
    with open(tmp_path / "f", "wb") as f:
        fsync_file(f.fileno())
    assert calls == (["F_FULLFSYNC"] if full_fsync_works else ["F_FULLFSYNC", "fsync"])
