"""Payload buffers the daemon holds on behalf of the core, named by integer handles."""

from __future__ import annotations

from typing import Any


class Buffers:
    """handle -> bytes-like. The core refers to payloads only by these handles; the
    daemon frees a buffer when the core releases its handle. ``bytes`` is the total
    size held, for metrics and for checking the memory budget in tests."""

    def __init__(self) -> None:
        self._items: dict[int, Any] = {}
        self._next = 0
        self.bytes = 0

    def add(self, data: Any) -> int:
        self._next += 1
        self._items[self._next] = data
        self.bytes += len(data)
        return self._next

    def get(self, handle: int) -> Any:
        return self._items.get(handle)

    def release(self, handle: int) -> None:
        data = self._items.pop(handle, None)
        if data is not None:
            self.bytes -= len(data)

    def __len__(self) -> int:
        return len(self._items)
