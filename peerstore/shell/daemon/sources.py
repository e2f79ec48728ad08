"""Where a put's bytes come from: files the node can open, or the client's stream.

Either way the coordinator reads each file front to back (stripes are requested in
order), hashing the whole file as it goes, and hands each stripe to a worker thread that
hashes its shards and computes parity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import blake3
import trio

from peerstore.ec import encode_parity, piece_id
from peerstore.wire import client_protocol as cp


class SourceError(Exception):
    """The put's source could not supply the bytes asked for."""


class LocalFiles:
    """A file or directory on this machine, named by the client (same host)."""

    def __init__(self, root: Path, paths: list[str], single: bool):
        self.root = root
        self.paths = paths
        self.single = single

    def _path(self, file_index: int) -> Path:
        if self.single:
            return self.root
        return self.root.joinpath(*self.paths[file_index].split("/"))

    async def read(self, file_index: int, offset: int, buffers: list[memoryview]) -> None:
        """Fill ``buffers`` (one per shard) from the file, starting at ``offset``."""
        path = self._path(file_index)
        length = sum(len(b) for b in buffers)

        def read() -> None:
            with open(path, "rb") as handle:
                if hasattr(os, "posix_fadvise"):  # Linux: read ahead aggressively
                    try:
                        os.posix_fadvise(handle.fileno(), offset, length, os.POSIX_FADV_SEQUENTIAL)
                    except OSError:
                        pass
                handle.seek(offset)
                for buffer in buffers:
                    if handle.readinto(buffer) != len(buffer):
                        raise SourceError(f"{path} is shorter than when the put started (changed while reading?)")

        try:
            await trio.to_thread.run_sync(read)
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err.strerror}") from err


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
