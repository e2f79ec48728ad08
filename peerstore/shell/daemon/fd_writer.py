"""A get written by the node into descriptors its local CLI passed (see ``shell/fdpass.py``).

The core hands over each stripe's verified pieces in order (``DeliverStripe``); here one
worker thread per stripe rebuilds it from parity when a data shard is missing and writes
its data shards with one ``pwritev`` at the stripe's offset in its file. Nothing else is
copied: no frame, no second hash (the CLI reads the file back and checks the whole-file
BLAKE3). The descriptors were checked when they arrived (regular files, open for writing,
not append-only) and only ranges the manifest defines are written.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import trio

from peerstore.core import events as ev
from peerstore.ec import decode_data
from peerstore.errors import FormatError
from peerstore.shell.daemon.buffers import Buffers
from peerstore.shell.fdpass import close_all


class FdWriteError(Exception):
    """A stripe cannot go to a passed descriptor; the message says why."""


class FdWriteFailed(Exception):
    """The write itself failed (EFBIG under our RLIMIT_FSIZE, ENOSPC, EIO, ...): the
    stripe's pieces are still held, so the caller can stream it (and the rest) instead."""


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    views = [v for v in views if len(v)]
    while views:
        if hasattr(os, "pwritev"):
            n = os.pwritev(fd, views, offset)
        else:  # pragma: no cover - platforms without pwritev
            n = os.pwrite(fd, views[0], offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


class FdWriter:
    """Writes stripes into ``fds`` (file index -> descriptor) of files of ``sizes`` bytes;
    owns the descriptors and closes them in :meth:`close`. ``written`` counts bytes
    written, a prefix of the stripe order."""

    def __init__(self, buffers: Buffers, fds: dict[int, int], sizes: list[int]):
        self.buffers = buffers
        self.fds = fds
        self.sizes = sizes
        self.written = 0

    async def deliver(self, effect: ev.DeliverStripe) -> str:
        """Write one stripe; "" when done, else why not, and its pieces are released; or
        FdWriteFailed, and they are not."""
        pieces = {pos: self.buffers.borrow(handle) for pos, handle in effect.pieces}
        release = True
        try:
            fd = self.fds.get(effect.file_index)
            length = sum(effect.shard_lengths)
            if fd is None:
                raise FdWriteError(f"no descriptor was passed for file {effect.file_index}")
            if effect.offset + length > self.sizes[effect.file_index]:
                raise FdWriteError(f"stripe {effect.stripe} ends past its file's size")
            if any(data is None for data in pieces.values()):
                raise FdWriteError("a piece of the stripe was released before it was written")
            await trio.to_thread.run_sync(self._write, fd, effect, pieces)
            self.written += length
            return ""
        except OSError as err:
            release = False
            raise FdWriteFailed(f"[Errno {err.errno} {errno.errorcode.get(err.errno or 0, '?')}] "
                                f"{err.strerror or err}") from None
        except (FdWriteError, FormatError, ValueError) as err:
            return str(err)
        finally:
            for _, handle in effect.pieces:
                self.buffers.give_back(handle)
                if release:
                    self.buffers.release(handle)

    @staticmethod
    def _write(fd: int, effect: ev.DeliverStripe, pieces: dict[int, Any]) -> None:
        if effect.needs_decode:
            shards: list[Any] = decode_data(pieces, effect.k, effect.p, effect.shard_lengths)
        else:
            shards = [pieces[i] for i in range(effect.k)]
        views = []
        for shard, want in zip(shards, effect.shard_lengths):
            view = memoryview(shard).cast("B")
            if len(view) < want:
                raise FdWriteError(f"a shard of stripe {effect.stripe} is {len(view)} bytes, not {want}")
            views.append(view[:want])
        _pwrite_all(fd, views, effect.offset)

    def close(self) -> None:
        close_all(list(self.fds.values()))
        self.fds = {}
