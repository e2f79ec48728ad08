"""Lifeguard's local health awareness (memberlist awareness.go).

A score in ``0 .. max_multiplier - 1``: raised when this node has evidence that it is
the slow one (failed probes with missing nacks, having to refute a suspicion about
itself), lowered by each successful probe. Timeouts are scaled by ``score + 1`` so a
struggling node waits longer before accusing others.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(f"awareness_max_multiplier must be >= 1, got {max_multiplier}")
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(self.max_multiplier - 1, max(0, self.score + delta))

    @property
    def multiplier(self) -> int:
        return self.score + 1

    def scale(self, timeout: float) -> float:
        return timeout * self.multiplier
