"""The dissemination queue (memberlist queue.go's TransmitLimitedQueue).

Each queued update is sent a bounded number of times, fewest-transmitted first (newest
first among equals), piggybacked on whatever datagram has room. A newer update with the
same key replaces the older one: a member's latest state, an app broadcast's latest
payload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_QUEUED = 1024


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How often each update is sent: ``mult * ceil(log10(n + 1))`` for n members."""
    return retransmit_mult * math.ceil(math.log10(max(1, n) + 1))


@dataclass
class _Queued(Generic[T]):
    item: T
    size: int
    transmits: int
    order: int


class BroadcastQueue(Generic[T]):
    """Updates waiting to be piggybacked, at most ``max_queued`` of them."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self._items: dict[str, _Queued[T]] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, item: T, size: int) -> None:
        """Queue ``item`` (``size`` bytes encoded), replacing any update with this key."""
        self._items.pop(key, None)
        self._order += 1
        self._items[key] = _Queued(item, size, 0, self._order)
        if len(self._items) > self.max_queued:
            # Drop what has been sent most (and is oldest): it has had its chance.
            worst = max(self._items, key=lambda k: (self._items[k].transmits, -self._items[k].order))
            del self._items[worst]

    def keys(self) -> list[str]:
        return list(self._items)

    def take(self, budget: int, limit: int) -> list[T]:
        """Updates whose sizes add up to at most ``budget`` bytes; each counts one send.

        Updates that reach ``limit`` sends leave the queue.
        """
        chosen: list[T] = []
        if budget <= 0 or not self._items:
            return chosen
        ranked = sorted(self._items.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        for key, queued in ranked:
            if queued.size > budget:
                continue
            budget -= queued.size
            chosen.append(queued.item)
            queued.transmits += 1
            if queued.transmits >= limit:
                del self._items[key]
            if budget <= 0:
                break
        return chosen
