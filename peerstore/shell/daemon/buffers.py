"""Payload buffers the daemon holds on behalf of the core, named by integer handles.

Big buffers (shards, received pieces) come from a small pool and go back to it when the
core releases their handle: reusing them avoids both a fresh zeroed mapping per piece
(slow) and a fragmented heap that never shrinks (the node's RSS creeping up).
"""

from __future__ import annotations

from typing import Any

import trio

POOLED_MIN = 1024 * 1024  # smaller buffers are cheap to allocate


class PayloadBudget:
    """Bytes of received frame payloads held at once, node-wide (``transfer.memory_budget``).

    A frame declares its payload length (up to 80 MiB) before a byte of it arrives; the
    receiver admits that many bytes here *before* allocating the buffer, and gives them
    back when the buffer is freed. Without it, every connection of a key holder could
    make the node allocate 80 MiB at once. One payload is always admitted when nothing
    is held, so any frame size makes progress; a payload that cannot be admitted within
    ``timeout`` seconds fails its connection (the sender retries later)."""

    def __init__(self, limit: int, timeout: float) -> None:
        if limit < 1 or timeout <= 0:
            raise ValueError("a payload budget needs a positive limit and timeout")
        self.limit = limit
        self.timeout = timeout
        self.used = 0
        self.waited = 0  # admissions that had to wait (a metric)
        self._freed = trio.Event()

    async def admit(self, size: int) -> None:
        """Count ``size`` bytes as held; wait (at most ``timeout``) until they fit.
        trio.TooSlowError if they never do."""
        if self.used and self.used + size > self.limit:
            self.waited += 1
            with trio.fail_after(self.timeout):
                while self.used and self.used + size > self.limit:
                    await self._freed.wait()
        self.used += size

    def release(self, size: int) -> None:
        """Give back bytes admitted earlier (their buffer is freed or handed on)."""
        self.used = max(0, self.used - size)
        self._freed.set()
        self._freed = trio.Event()


class SlabPool:
    """Free lists of bytearrays by exact size, holding at most ``max_cached`` bytes."""

    def __init__(self, max_cached: int = 32 * 1024 * 1024):
        self.max_cached = max_cached
        self.cached = 0
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        if free:
            self.cached -= size
            return free.pop()
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        size = len(buffer)
        if size >= POOLED_MIN and self.cached + size <= self.max_cached:
            self._free.setdefault(size, []).append(buffer)
            self.cached += size


class _Entry:
    __slots__ = ("data", "owner", "pins", "released", "charged")

    def __init__(self, data: Any, owner: bytearray | None, charged: int = 0):
        self.data, self.owner, self.pins, self.released, self.charged = data, owner, 0, False, charged


class Buffers:
    """handle -> bytes-like. The core refers to payloads only by these handles.

    A buffer is freed (its pooled owner reused) once the core has released its handle
    AND nobody still borrows it: a worker thread may still be sending from a buffer the
    core has given up on (a timed-out transfer), and reusing it under that send would
    put other bytes on the wire. ``bytes`` is the total size held."""

    def __init__(self, pool: SlabPool | None = None, budget: PayloadBudget | None = None) -> None:
        self._items: dict[int, _Entry] = {}
        self._next = 0
        self.bytes = 0
        self.pool = pool or SlabPool()
        self.budget = budget  # received payloads are charged to it until freed

    def take(self, size: int) -> bytearray:
        """A buffer to fill; hand it back through ``add(..., owner=buffer)``."""
        return self.pool.take(size) if size >= POOLED_MIN else bytearray(size)

    def add(self, data: Any, owner: bytearray | None = None, *, charged: int = 0) -> int:
        """Name ``data``; ``owner`` (the pooled buffer ``data`` lives in) goes back to
        the pool when the handle is released and no longer borrowed; ``charged`` bytes
        admitted to the payload budget for it are given back then too."""
        self._next += 1
        self._items[self._next] = _Entry(data, owner, charged)
        self.bytes += len(data)
        return self._next

    def borrow(self, handle: int) -> Any:
        """The data, kept alive until ``give_back``; None if it was released."""
        entry = self._items.get(handle)
        if entry is None or entry.released:
            return None
        entry.pins += 1
        return entry.data

    def give_back(self, handle: int) -> None:
        entry = self._items.get(handle)
        if entry is not None:
            entry.pins -= 1
            self._maybe_free(handle, entry)

    def release(self, handle: int) -> None:
        entry = self._items.get(handle)
        if entry is not None:
            entry.released = True
            self._maybe_free(handle, entry)

    def _maybe_free(self, handle: int, entry: _Entry) -> None:
        if entry.released and entry.pins <= 0:
            del self._items[handle]
            self.bytes -= len(entry.data)
            owner = entry.owner
            entry.data = entry.owner = None
            if owner is not None:
                self.pool.give(owner)
            if entry.charged and self.budget is not None:
                self.budget.release(entry.charged)

    def __len__(self) -> int:
        return len(self._items)  # buffers still held (released but borrowed ones too)
