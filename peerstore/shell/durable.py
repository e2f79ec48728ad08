"""Making bytes survive a power cut: fsync helpers and atomic whole-file writes.

A write is durable only once the file's data is flushed *and* the directory entry that
names it is flushed; macOS needs ``F_FULLFSYNC`` because its plain ``fsync`` stops at the
drive's volatile cache.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from pathlib import Path

from peerstore.errors import DiskFullError, DiskIOError, StoreError

_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EACCES}
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_WHAT_TO_DO = {
    errno.EROFS: "the file system turned read-only (what a failing disk or SD card does): this node "
                 "accepts no pieces until it is writable again; check the system log (dmesg), then "
                 "repair or replace the disk",
    errno.EIO: "the disk reported an I/O error: check the system log (dmesg) and the disk's health",
    errno.EFBIG: "the file is over the size limit of this process or file system (ulimit -f)",
    errno.EMFILE: "this process has too many files open: raise its open-file limit (ulimit -n, LimitNOFILE=)",
    errno.ENFILE: "the system has too many files open: raise fs.file-max or stop other programs",
    errno.EACCES: "check the permissions of the data directory",
    errno.EPERM: "check the permissions of the data directory",
}


def disk_error(exc: OSError, path: str | os.PathLike, doing: str) -> StoreError:
    """The peerstore error for an OS error ``doing`` something to ``path``: DiskFullError
    for a full disk or quota, else DiskIOError naming the path, the errno and what to do."""
    if exc.errno in DISK_FULL_ERRNOS:
        return DiskFullError(f"no space left {doing} {path}; free space on its disk and retry")
    code = errno.errorcode.get(exc.errno or 0, "?")
    reason = exc.strerror or str(exc)
    hint = _WHAT_TO_DO.get(exc.errno or 0, "check the disk and the system log")
    return DiskIOError(f"{doing} {path} failed: [Errno {exc.errno} {code}] {reason}; {hint}",
                       path=str(path), errno=exc.errno)


def fsync_file(fd: int) -> None:
    """Flush an open file's data and metadata to stable storage."""
    if sys.platform == "darwin":
        import fcntl

        full_fsync = getattr(fcntl, "F_FULLFSYNC", None)
        if full_fsync is not None:
            try:
                fcntl.fcntl(fd, full_fsync)
                return
            except OSError:
                pass  # some file systems (network, FUSE) refuse F_FULLFSYNC; fsync is the best left
    os.fsync(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory so that entries created or renamed in it survive a crash.

    Platforms that cannot fsync a directory (EINVAL/EBADF and the like) are tolerated.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        fsync_file(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def write_file_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    Writes ``.<name>.tmp-<random>`` beside the target, fsyncs it, renames it over the
    target and fsyncs the directory. On failure the temp file is removed; a full disk
    raises DiskFullError, any other OS error DiskIOError (path and errno named).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open
            fsync_file(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(
                f"no space left to write {target} ({len(data)} bytes); free space on its disk and retry"
            ) from exc
        if isinstance(exc, OSError):
            raise disk_error(exc, target, "writing") from exc
        raise
