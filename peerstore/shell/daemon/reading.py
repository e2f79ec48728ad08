"""Reading a put's source: stripes in order, each file hashed whole, parity in worker threads.

Shared by client sessions (a CLI's put) and the watcher's puts inside the daemon. The core
asks for one file's stripes in order and then for the file's end (``FinishFileRead``); at
the end the source checks the file did not change while it was read.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from peerstore.core import events as ev
from peerstore.shell.daemon.buffers import Buffers
from peerstore.shell.daemon.sources import ClientStream, FileHasher, LocalFiles, SourceError, encode_stripe


class ReaderHost(Protocol):
    """What the reader needs of the daemon."""

    buffers: Buffers

    def feed(self, event: Any) -> None: ...


class StripeReader:
    """Carries out a put's EncodeStripe and FinishFileRead effects against ``source``.
    ``digests`` holds each finished file's whole-file BLAKE3 by file index."""

    def __init__(self, host: ReaderHost, source: LocalFiles | ClientStream):
        self.host = host
        self.source = source
        self.hasher = FileHasher()
        self.digests: dict[int, bytes] = {}

    async def run(self, reads: trio.MemoryReceiveChannel) -> None:
        """Until ``reads`` closes (or the caller cancels)."""
        try:
            async with trio.open_nursery() as encoders:
                async for effect in reads:
                    if isinstance(effect, ev.FinishFileRead):
                        error = await self.source.finish_file(effect.file_index)
                        digest = self.hasher.digest(effect.file_index)
                        self.digests[effect.file_index] = digest
                        self.host.feed(ev.FileRead(effect.op, effect.file_index, digest, error=error or ""))
                        continue
                    buffers = self.host.buffers
                    slabs = [buffers.take(effect.shard_lengths[0]) for _ in effect.shard_lengths]
                    shards = [memoryview(slab)[:length] for slab, length in zip(slabs, effect.shard_lengths)]
                    try:
                        await self.source.read(effect.file_index, effect.offset, shards)
                    except SourceError as err:
                        self.host.feed(ev.StripeEncoded(effect.op, effect.stripe, (), (), (), (), error=str(err)))
                        continue
                    # the whole-file hash must see stripes in order; encoding may overlap the next read
                    await trio.to_thread.run_sync(self.hasher.update_all, effect.file_index, shards)
                    encoders.start_soon(self._encode, effect, slabs, shards)
        finally:
            self.source.close()

    async def _encode(self, effect: ev.EncodeStripe, slabs: list[bytearray], shards: list[memoryview]) -> None:
        pieces, data_ids, parity_ids = await trio.to_thread.run_sync(encode_stripe, shards, effect.parity)
        owners = slabs + [None] * len(parity_ids)
        handles = tuple(self.host.buffers.add(p, owner) for p, owner in zip(pieces, owners))
        self.host.feed(ev.StripeEncoded(
            effect.op, effect.stripe, tuple(data_ids), tuple(effect.shard_lengths), tuple(parity_ids), handles,
        ))

    def blake3_list(self, count: int) -> list[bytes] | None:
        """The whole-file BLAKE3 of files 0..count-1, or None if one is missing."""
        if any(i not in self.digests for i in range(count)):
            return None
        return [self.digests[i] for i in range(count)]
