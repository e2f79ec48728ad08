"""A seeded discrete-event loop with a virtual clock.

Events at the same virtual time run in the order they were scheduled, so a run is a
pure function of its seed. Every event can leave a line in the trace; the trace digest
identifies a run (two runs with the same seed must have the same digest).
"""

from __future__ import annotations

import heapq
from typing import Any, Callable

import blake3


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._trace = blake3.blake3()
        self.trace_lines = 0
        self.events_run = 0
        self.keep_trace: list[str] | None = None  # set to [] to keep lines for debugging

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` at virtual time ``when`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, action, args))

    def after(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, action, *args)

    def trace(self, line: str) -> None:
        self._trace.update(f"{self.now:.9f} {line}\n".encode())
        self.trace_lines += 1
        if self.keep_trace is not None:
            self.keep_trace.append(f"{self.now:.6f} {line}")

    @property
    def digest(self) -> str:
        return self._trace.hexdigest()

    def run(self, until: Callable[[], bool] | None = None, *, max_time: float, max_events: int = 10_000_000) -> bool:
        """Run events until ``until()`` is true (returns True), the queue empties, virtual
        time passes ``max_time`` or ``max_events`` ran (returns False)."""
        budget = max_events
        while self._queue:
            if until is not None and until():
                return True
            when, _, action, args = self._queue[0]
            if when > max_time or budget <= 0:
                return False
            heapq.heappop(self._queue)
            self.now = when
            self.events_run += 1
            budget -= 1
            action(*args)
        return until is not None and until()
