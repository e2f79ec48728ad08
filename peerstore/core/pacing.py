"""A token bucket driven by the caller's clock (pure: ``now`` comes in)."""

from __future__ import annotations


class TokenBucket:
    """At most ``rate`` units per second on average, in bursts of up to ``burst`` units.

    A request bigger than the burst is granted once the bucket is full and leaves it in
    debt, so the average rate holds for any request size. ``rate <= 0`` means unlimited.
    """

    def __init__(self, rate: float, burst: float, now: float = 0.0):
        self.rate = float(rate)
        self.burst = max(float(burst), 1.0)
        self.tokens = self.burst
        self.stamp = now

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def try_take(self, now: float, amount: float) -> bool:
        """Take ``amount`` units if they are available now; False (nothing taken) if not."""
        if self.unlimited:
            return True
        self._refill(now)
        if self.tokens < min(amount, self.burst):
            return False
        self.tokens -= amount
        return True

    def ready_at(self, now: float, amount: float) -> float:
        """The earliest time ``try_take(amount)`` succeeds if nothing else takes meanwhile."""
        if self.unlimited:
            return now
        self._refill(now)
        missing = min(amount, self.burst) - self.tokens
        return now if missing <= 0 else now + missing / self.rate
