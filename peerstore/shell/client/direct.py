"""A get the node writes itself: the CLI creates the files, the node fills them.

On the node's Unix socket the CLI creates every output file under the usual
``.peerstore-tmp-*`` name (so they are the user's, with the user's permissions), passes
their descriptors to the node (``shell/fdpass.py``), and the node writes each verified
stripe at its offset. As the node reports how far it has written (a prefix of the stripe
order), :class:`DirectWriter` reads that prefix back and hashes it; a file whose whole-file
BLAKE3, or size, differs from the manifest fails the get, and nothing is installed. Each
file is fsynced once verified; the result is renamed into place as a streamed get is.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import blake3

from peerstore.errors import CodecError, PeerstoreError
from peerstore.model.manifest import Manifest
from peerstore.shell.client.writer import CheckpointWriter, write_all
from peerstore.shell.durable import fsync_dir, fsync_file
from peerstore.wire.client_protocol import MAX_FD_FILES  # more files, and the get streams

READ_CHUNK = 4 * 1024 * 1024  # bytes read back per call while verifying
WRITEBACK_CHUNK = 32 * 1024 * 1024  # verified bytes handed to the disk at a time (Linux)


@functools.cache
def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """Linux: sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE), which starts writing
    a range to disk without waiting, so the final fsync finds little left to do (the
    kernel would otherwise hold the dirty pages for up to 30 s). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only here: it costs start-up time

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int
    return lambda fd, offset, n: function(fd, offset, n, 2)  # SYNC_FILE_RANGE_WRITE; a failure is harmless


def fits(manifest: Manifest) -> bool:
    """Can this checkpoint's files be held open here at once (count, descriptor limit)?
    Every file is created and held open up front, empty ones too."""
    count = len(manifest.files)
    if count > MAX_FD_FILES:
        return False
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return True
    return soft == resource.RLIM_INFINITY or count + 64 <= soft


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` as far as the file goes; the bytes read."""
    got = 0
    while got < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[got:]], offset + got)
        else:  # pragma: no cover - platforms without preadv
            chunk = os.pread(fd, len(view) - got, offset + got)
            view[got:got + len(chunk)] = chunk
            n = len(chunk)
        if n == 0:
            break
        got += n
    return got


class DirectWriter(CheckpointWriter):
    """Creates every file of the checkpoint at :meth:`open` (read-write, so it can read
    back what the node wrote); :meth:`passed` lists the descriptors to hand to the node,
    :meth:`advance` verifies what the node reported written, :meth:`commit` the rest and
    installs. :meth:`abort` removes everything it made."""

    def __init__(self, manifest: Manifest, out: Path, force: bool = False, into_dir: bool = False):
        super().__init__(manifest, out, force, into_dir)
        self.fds: dict[int, int] = {}
        self._sizes = [f.size for f in manifest.files]
        self._verified = 0  # bytes of the stripe order read back and hashed
        self._flushed = 0  # offset in the current file up to which writeback was started
        self._at = 0  # file being read back
        self._offset = 0
        self._buffer = bytearray(min(READ_CHUNK, max(self._sizes, default=0)) or 1)
        self.early_writeback = True
        starts, at = {}, 0
        for number, (_, _, length) in enumerate(self._layout):
            starts[at] = number
            at += length
        self._stripe_starts = starts  # bytes of the stripe order before a stripe -> its number
        self._stream_fd = -1
        self._stream_at = 0
        self._stream_length = 0
        self.streamed = 0  # bytes the node streamed to us after it could not write them itself

    def open(self) -> None:
        self._prepare()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            if self.manifest.is_dir:
                os.mkdir(self.temp)
            self._created = True
            for index in range(len(self.manifest.files)):
                path = self._file_path(index)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.fds[index] = os.open(path, flags, 0o600)
        except OSError as err:
            raise PeerstoreError(f"cannot create the output in {self.parent}: {err.strerror or err}") from None
        self._skip_empty()

    def passed(self) -> list[tuple[int, int]]:
        """(file index, descriptor) of every file the node must write (the non-empty ones)."""
        return [(index, fd) for index, fd in sorted(self.fds.items()) if self._sizes[index]]

    def advance(self, written: int) -> None:
        """The node wrote the first ``written`` bytes of the stripe order: read them back
        and hash them; a finished file is checked, fsynced and closed. Blocking (call it in
        a worker thread)."""
        if not 0 <= written <= self.total_size:
            raise CodecError(f"the node reported {written} bytes written of {self.total_size}")
        while self._verified < written:
            size = self._sizes[self._at]
            n = min(len(self._buffer), size - self._offset, written - self._verified)
            view = memoryview(self._buffer)[:n]
            got = _read_at(self.fds[self._at], view, self._offset) if n else 0
            if got != n:
                raise PeerstoreError(f"{self.manifest.files[self._at].path}: the node reported {n} more bytes "
                                     f"written at offset {self._offset} but only {got} are there; nothing was written")
            self._hasher.update(view)
            self._offset += n
            self._verified += n
            start_writeback = _writeback_starter() if self.early_writeback else None
            if start_writeback is not None and self._offset - self._flushed >= WRITEBACK_CHUNK:
                start_writeback(self.fds[self._at], self._flushed, self._offset - self._flushed)
                self._flushed = self._offset
            if self._offset == size:
                self._finish(self._at)
                self._at += 1
                self._offset = self._flushed = 0
                self._skip_empty()

    # A node whose write failed (its own file size limit, say) streams the rest instead:
    # the stripes after what it wrote, which we write into the same files.

    def begin_stripe(self, file_index: int, offset: int, length: int) -> None:
        if self._stripe_left:
            raise CodecError("the node started a stripe before finishing the previous one")
        number = self._stripe_starts.get(self._verified)
        if number is None or self._layout[number] != (file_index, offset, length):
            raise CodecError(f"the node streamed stripe (file {file_index}, offset {offset}, {length} bytes) "
                             f"where it had written {self._verified} bytes")
        self._stream_fd, self._stream_at = self.fds[file_index], offset
        self._stripe_left = self._stream_length = length

    def write(self, data: memoryview | bytes) -> None:
        if len(data) > self._stripe_left:
            raise CodecError("the node sent more stripe bytes than it announced")
        write_all(self._stream_fd, data, self._stream_at, self.parent, self.temp)
        self._stream_at += len(data)
        self._stripe_left -= len(data)
        self.bytes_written += len(data)
        self.streamed += len(data)

    def end_stripe(self) -> None:
        if self._stripe_left:
            raise CodecError(f"a stripe ended {self._stripe_left} bytes short")
        self.advance(self._verified + self._stream_length)

    def commit(self) -> Path:
        """Verify what is left, then install (like :meth:`CheckpointWriter.commit`).
        Blocking."""
        self.advance(self.total_size)
        self._skip_empty()
        if self.fds:
            raise PeerstoreError("the get ended before every file was written; nothing was written")
        if self.manifest.is_dir:
            for dirpath, _, _ in os.walk(self.temp, topdown=False):
                fsync_dir(dirpath)
        self._install()
        self._committed = True
        fsync_dir(self.parent)
        return self.target

    def abort(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        super().abort()

    # -- internals

    def _skip_empty(self) -> None:
        while self._at < len(self._sizes) and self._sizes[self._at] == 0:
            self._finish(self._at)
            self._at += 1

    def _finish(self, index: int) -> None:
        """Check file ``index`` (read back whole) against the manifest, set its mode,
        fsync and close it."""
        entry = self.manifest.files[index]
        fd = self.fds[index]
        actual = os.fstat(fd).st_size
        if actual != entry.size:
            raise PeerstoreError(f"{entry.path}: the node left {actual} bytes where the checkpoint has {entry.size}; "
                                 "nothing was written")
        if self._hasher.digest() != entry.blake3:
            raise PeerstoreError(
                f"{entry.path}: the bytes the node wrote do not match the checkpoint's BLAKE3 hash; "
                "nothing was written (a node may hold corrupt data: run 'peerstore status')"
            )
        os.fchmod(fd, entry.mode & 0o777)  # never restore setuid/setgid bits from a manifest
        fsync_file(fd)
        os.close(fd)
        del self.fds[index]
        self._hasher = blake3.blake3()
