"""Payload buffers the daemon holds on behalf of the core, named by integer handles.

Big buffers (shards, received pieces) come from a small pool and go back to it when the
core releases their handle: reusing them avoids both a fresh zeroed mapping per piece
(slow) and a fragmented heap that never shrinks (the node's RSS creeping up).
"""

from __future__ import annotations

from typing import Any

POOLED_MIN = 1024 * 1024  # smaller buffers are cheap to allocate


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
    __slots__ = ("data", "owner", "pins", "released")

    def __init__(self, data: Any, owner: bytearray | None):
        self.data, self.owner, self.pins, self.released = data, owner, 0, False


class Buffers:
    """handle -> bytes-like. The core refers to payloads only by these handles.

    A buffer is freed (its pooled owner reused) once the core has released its handle
    AND nobody still borrows it: a worker thread may still be sending from a buffer the
    core has given up on (a timed-out transfer), and reusing it under that send would
    put other bytes on the wire. ``bytes`` is the total size held."""

    def __init__(self, pool: SlabPool | None = None) -> None:
        self._items: dict[int, _Entry] = {}
        self._next = 0
        self.bytes = 0
        self.pool = pool or SlabPool()

    def take(self, size: int) -> bytearray:
        """A buffer to fill; hand it back through ``add(..., owner=buffer)``."""
        return self.pool.take(size) if size >= POOLED_MIN else bytearray(size)

    def add(self, data: Any, owner: bytearray | None = None) -> int:
        """Name ``data``; ``owner`` (the pooled buffer ``data`` lives in) goes back to
        the pool when the handle is released and no longer borrowed."""
        self._next += 1
        self._items[self._next] = _Entry(data, owner)
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

    def __len__(self) -> int:
        return len(self._items)  # buffers still held (released but borrowed ones too)
