"""A seeded discrete-event loop with a virtual clock, and the seed tree behind a run.

Events at the same virtual time run in the order they were scheduled, so a run is a
pure function of its master seed. Components leave lines in the trace; the trace digest
identifies a run (two runs with the same seed must have the same digest).
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Callable

import blake3

_TRACE_BATCH = 2048  # lines hashed at once: one blake3 call per batch, not per line


class Seeds:
    """One master seed, one independent ``random.Random`` per purpose.

    ``seeds.rng("node", node_id, boot)`` and ``seeds.rng("fault", "loss")`` never share a
    stream, so adding a node or a fault source does not shift what the others draw.
    String seeding hashes with SHA-512: stable across processes and Python runs.
    """

    def __init__(self, master: int):
        self.master = master

    def rng(self, *purpose: Any) -> random.Random:
        return random.Random(":".join(map(str, (self.master, *purpose))))


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._hash = blake3.blake3()
        self._pending: list[str] = []
        self.trace_lines = 0
        self.events_run = 0
        self.keep_trace: list[str] | None = None  # set to [] to keep lines for debugging

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` at virtual time ``when`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._queue, (when if when > self.now else self.now, self._seq, action, args))

    def after(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, action, *args)

    def trace(self, line: str) -> None:
        self._pending.append(f"{self.now:.9f} {line}")
        self.trace_lines += 1
        if self.keep_trace is not None:
            self.keep_trace.append(self._pending[-1])
        if len(self._pending) >= _TRACE_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._hash.update(("\n".join(self._pending) + "\n").encode())
            self._pending = []

    @property
    def digest(self) -> str:
        self._flush()
        return self._hash.hexdigest()

    def run(self, until: Callable[[], bool] | None = None, *, max_time: float, max_events: int = 50_000_000) -> bool:
        """Run events until ``until()`` is true (returns True), the queue empties, virtual
        time passes ``max_time`` or ``max_events`` ran (returns False). The clock ends at
        ``max_time`` when time ran out, so later scheduling starts from there."""
        queue = self._queue
        pop = heapq.heappop
        budget = max_events
        while queue:
            if until is not None and until():
                return True
            when, _, action, args = queue[0]
            if when > max_time or budget <= 0:
                if when > max_time:
                    self.now = max(self.now, max_time)
                return False
            pop(queue)
            self.now = when
            budget -= 1
            self.events_run += 1
            action(*args)
        if until is not None and until():
            return True
        self.now = max(self.now, max_time) if max_time != float("inf") else self.now
        return False
