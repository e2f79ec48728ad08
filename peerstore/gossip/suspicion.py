"""Lifeguard's dynamic suspicion timeout (memberlist suspicion.go), without real timers.

A suspicion starts at ``max_timeout`` and shrinks toward ``min_timeout`` as independent
members confirm it: after ``c`` of the ``k`` expected confirmations the timeout is
``max - (max - min) * log(c + 1) / log(k + 1)``, never below ``min``. The caller asks
:attr:`Suspicion.deadline` and declares the member dead once ``now`` reaches it.
"""

from __future__ import annotations

import math


def suspicion_min_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """memberlist's ``suspicionTimeout``: ``mult * max(1, log10(max(1, n))) * interval``.

    The floor of 1 on the node scale keeps small clusters (n < 10) from suspecting for
    less than ``suspicion_mult`` probe intervals.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    return suspicion_mult * node_scale * probe_interval


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """``k``: confirmations that drive the timeout to its minimum (0 if too few members)."""
    k = suspicion_mult - 2
    return 0 if n - 2 < k else max(0, k)


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """Total timeout (from the start of the suspicion) after ``confirmations``."""
    if k < 1:
        return min_timeout
    fraction = math.log(confirmations + 1) / math.log(k + 1)
    raw = max_timeout - fraction * (max_timeout - min_timeout)
    raw = math.floor(raw * 1000.0) / 1000.0  # memberlist rounds down to milliseconds
    return max(min_timeout, raw)


class Suspicion:
    """One member's suspicion: who has confirmed it and when it expires."""

    def __init__(
        self, *, accuser: str, k: int, min_timeout: float, max_timeout: float, start: float
    ) -> None:
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.start = start
        # The first accuser is not a confirmation, but cannot confirm again either: our
        # own suspicion gossiped back to us must not speed the timer up.
        self._seen: dict[str, None] = {accuser: None}
        self.confirmations = 0

    @property
    def deadline(self) -> float:
        timeout = suspicion_timeout(self.confirmations, self.k, self.min_timeout, self.max_timeout)
        return self.start + timeout

    def confirm(self, accuser: str) -> bool:
        """Count an independent confirmation; False if duplicate or already enough."""
        if self.confirmations >= self.k or accuser in self._seen:
            return False
        self._seen[accuser] = None
        self.confirmations += 1
        return True
