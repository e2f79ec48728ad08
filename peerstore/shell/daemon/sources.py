"""Where a put's bytes come from: files the node can open, or the client's stream.

Either way the coordinator reads each file front to back (stripes are requested in
order), hashing the whole file as it goes, and hands each stripe to a worker thread that
hashes its shards and computes parity.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import trio

from peerstore.ec import encode_parity, piece_id
from peerstore.errors import CHANGED_DURING_PUT
from peerstore.wire import client_protocol as cp


class SourceError(Exception):
    """The put's source could not supply the bytes asked for."""


# Opening never follows a symlink inside the root and never blocks (a FIFO, a device).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def check_local_request(root: Path, paths: list[str], single: bool) -> None:
    """The node's own checks of a local put's names (SourceError saying what is wrong): an
    absolute, normalised ``root`` and plain relative paths (no "", "." or ".." segments)."""
    text = os.fspath(root)
    if "\0" in text or not os.path.isabs(text) or os.path.normpath(text) != text:
        raise SourceError(f"local_root {text!r} must be an absolute path without '.' or '..' segments")
    if single and len(paths) != 1:
        raise SourceError(f"a single-file put names exactly one file, got {len(paths)}")
    for path in paths if not single else ():
        if "\0" in path or any(part in ("", ".", "..") for part in path.split("/")):
            raise SourceError(f"file path {path!r} must be relative, without empty, '.' or '..' segments")


class LocalFiles:
    """A file or directory on this machine, named by a client of the node's own user on its
    Unix socket (clients.py), or by the node's watcher.

    The node does its own checks, whatever the client checked: ``root`` is absolute and
    normalised, paths are plain relative paths (``check_local_request``); a file inside a
    directory root is reached one segment at a time from the root with ``O_NOFOLLOW``, so no
    symlink inside the root is followed (the root's own path is the client's choice); a
    single-file root is opened ``O_NOFOLLOW`` too. Every open is ``O_NONBLOCK`` (a FIFO or
    a device never wedges a worker thread) and ``fstat`` must show a regular file of the
    size the request declared, or the put fails.

    Each file is opened once, at its first read, and kept open until its last stripe was
    read (the core asks for one file's stripes in order, then ``finish_file``). At open its
    stat must match the request: the size, and the (mtime_ns, inode) the client saw when it
    gives them. After the last read ``finish_file`` stats the open file and its path again
    and refuses any change of size, mtime, ctime or inode, so a file modified in place or
    appended to during the put fails it (the reason contains ``CHANGED_DURING_PUT``)
    instead of being stored torn.
    """

    def __init__(self, root: Path, paths: list[str], single: bool, sizes: list[int] | None = None,
                 expect: list[tuple[int, int] | None] | None = None):
        check_local_request(root, paths, single)
        self.root = root
        self.paths = paths
        self.single = single
        self.sizes = sizes
        self.expect = expect
        self._open: dict[int, tuple[BinaryIO, os.stat_result]] = {}
        self._root_fd: int | None = None  # a directory root, opened once: files are found from it

    def _path(self, file_index: int) -> Path:
        if self.single:
            return self.root
        return self.root.joinpath(*self.paths[file_index].split("/"))

    def _opened(self, file_index: int) -> tuple[BinaryIO, os.stat_result]:
        """The file's handle and its stat at open (opening it on first use); in a thread."""
        if file_index in self._open:
            return self._open[file_index]
        path = self._path(file_index)
        handle = os.fdopen(self._open_fd(file_index), "rb")
        try:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{path} is not a regular file")
            problem = self._differs_from_request(file_index, st)
            if problem:
                raise SourceError(f"{path} {CHANGED_DURING_PUT}: {problem}; store it again once it is completely written")
        except BaseException:
            handle.close()
            raise
        self._open[file_index] = (handle, st)
        return handle, st

    def _open_fd(self, file_index: int) -> int:
        """The file, opened without following symlinks below the root or blocking."""
        path = self._path(file_index)
        try:
            if self.single:
                return os.open(self.root, _FILE_FLAGS)
            if self._root_fd is None:
                self._root_fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
            *dirs, name = self.paths[file_index].split("/")
            parent = self._root_fd
            try:
                for part in dirs:
                    below = os.open(part, _DIR_FLAGS, dir_fd=parent)
                    if parent != self._root_fd:
                        os.close(parent)
                    parent = below
                return os.open(name, _FILE_FLAGS, dir_fd=parent)
            finally:
                if parent != self._root_fd:
                    os.close(parent)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):  # EMLINK: FreeBSD's O_NOFOLLOW
                raise SourceError(f"{path} is a symlink, or below one, or not a regular file; the node reads "
                                  "only regular files inside the put's directory") from None
            raise

    def _differs_from_request(self, file_index: int, st: os.stat_result) -> str | None:
        if self.sizes is not None and st.st_size != self.sizes[file_index]:
            return f"it is {st.st_size} bytes, the put was planned for {self.sizes[file_index]}"
        seen = self.expect[file_index] if self.expect is not None else None
        if seen is not None and (st.st_mtime_ns, st.st_ino) != seen:
            return (f"mtime_ns {st.st_mtime_ns} and inode {st.st_ino} at open, the client saw "
                    f"mtime_ns {seen[0]} and inode {seen[1]}")
        return None

    async def read(self, file_index: int, offset: int, buffers: list[memoryview]) -> None:
        """Fill ``buffers`` (one per shard) from the file, starting at ``offset``."""

        def read() -> None:
            handle, _ = self._opened(file_index)
            if offset == 0 and hasattr(os, "posix_fadvise"):  # Linux: read ahead aggressively
                try:
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                except OSError:
                    pass
            handle.seek(offset)
            for buffer in buffers:
                if handle.readinto(buffer) != len(buffer):
                    raise SourceError(f"{self._path(file_index)} {CHANGED_DURING_PUT}: it is shorter than when "
                                      "the put started; store it again once it is completely written")

        try:
            await trio.to_thread.run_sync(read)
        except OSError as err:
            raise SourceError(f"cannot read {self._path(file_index)}: {err.strerror}") from err

    async def finish_file(self, file_index: int) -> str | None:
        """After the file's last read: None if it is unchanged since it was opened, else why
        not. Closes it."""

        def check() -> str | None:
            handle, before = self._opened(file_index)  # a 0-byte file is opened only now
            try:
                after = os.fstat(handle.fileno())
                try:
                    named = os.lstat(self._path(file_index))
                except FileNotFoundError:
                    named = None
            finally:
                self._open.pop(file_index, None)
                handle.close()
            change = stat_change(before, after)
            if change is None and named is None:
                change = "it was deleted"
            elif change is None and (named.st_dev, named.st_ino) != (before.st_dev, before.st_ino):
                change = "another file was renamed over it"
            if change is None:
                return None
            return (f"{self._path(file_index)} {CHANGED_DURING_PUT} ({change}); "
                    "store it again once it is completely written")

        try:
            return await trio.to_thread.run_sync(check)
        except SourceError as err:
            return str(err)
        except OSError as err:
            return f"cannot read {self._path(file_index)}: {err.strerror}"

    def close(self) -> None:
        """Close whatever is still open (a put that failed or was cancelled midway)."""
        for handle, _ in self._open.values():
            handle.close()
        self._open.clear()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None


def stat_change(before: os.stat_result, after: os.stat_result) -> str | None:
    """How a file's stat changed (size, mtime, ctime, inode), or None."""
    for what, attr in (("size", "st_size"), ("mtime_ns", "st_mtime_ns"), ("ctime_ns", "st_ctime_ns"),
                       ("inode", "st_ino")):
        a, b = getattr(before, attr), getattr(after, attr)
        if a != b:
            return f"{what} changed from {a} to {b}"
    return None


class ClientStream:
    """File bytes pushed by the client as ``data`` frames, in order."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[int, int, Any]](4)
        self.pending: tuple[int, int, memoryview] | None = None

    async def read(self, file_index: int, offset: int, buffers: list[memoryview]) -> None:
        """Fill ``buffers`` (one per shard) from the stream, which must be at ``offset``."""
        for buffer in buffers:
            await self._read_into(file_index, offset, buffer)
            offset += len(buffer)

    async def _read_into(self, file_index: int, offset: int, buffer: memoryview) -> None:
        length = len(buffer)
        got = 0
        while got < length:
            if self.pending is None:
                try:
                    f, o, data = await self.receive.receive()
                except trio.EndOfChannel:
                    raise SourceError("the client stopped sending file data") from None
                self.pending = (f, o, memoryview(data))
            f, o, view = self.pending
            if (f, o) != (file_index, offset + got):
                raise SourceError(
                    f"client sent file {f} offset {o}, expected file {file_index} offset {offset + got}"
                )
            take = min(len(view), length - got)
            buffer[got: got + take] = view[:take]
            got += take
            self.pending = (f, o + take, view[take:]) if take < len(view) else None

    async def feed(self, header: dict[str, Any], payload: Any) -> None:
        f, o = cp.parse_position(header)
        await self.send.send((f, o, payload or b""))

    async def finish_file(self, file_index: int) -> str | None:
        """The client checks its own files for changes (it stops before sending the end)."""
        return None

    def close(self) -> None:
        pass


class FileHasher:
    """Whole-file BLAKE3 per file, updated in order as stripes are read."""

    def __init__(self) -> None:
        self._hashers: dict[int, Any] = {}

    def update(self, file_index: int, data: Any) -> None:
        self._hashers.setdefault(file_index, blake3.blake3(max_threads=1)).update(data)

    def update_all(self, file_index: int, parts: list[Any]) -> None:
        for part in parts:
            self.update(file_index, part)

    def digest(self, file_index: int) -> bytes:
        return self._hashers.pop(file_index, blake3.blake3()).digest()


def encode_stripe(shards: list[memoryview], parity: int) -> tuple[list[Any], list[bytes], list[bytes]]:
    """Hash the shards, compute and hash parity. Runs in a worker thread."""
    parity_chunks = encode_parity(shards, parity) if parity else []
    data_ids = [piece_id(s) for s in shards]
    parity_ids = [piece_id(c) for c in parity_chunks]
    return shards + parity_chunks, data_ids, parity_ids
