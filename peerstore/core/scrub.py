"""Scrub: a node re-reads its own pieces in the background, paced, and checks each one
against its BLAKE3 id.

Pure decisions only. :class:`Scrubber` says which piece to read next and when; the shell
reads and hashes it (``VerifyHeldPiece``: a copy that no longer matches is moved to
quarantine) and reports back with :meth:`Scrubber.finished`. What happens to a corrupt
piece (re-create it from a replica or parity) is the node's business, not the scrubber's.

Pacing: every piece once per ``period``. The rate in bytes per second is derived from
what the node holds (pieces held x their mean size / period), capped by
``max_bytes_per_second`` so a big store on a slow disk never hogs it (its pass then takes
longer than the period, and the summary says so). A token bucket (``core/pacing.py``)
turns that rate into waits: each read takes the mean piece size from it up front.

A pass goes through a snapshot of the inventory in id order, starting at a point in the
id space drawn once per boot from the injected RNG. Every pass uses the same order, so
one piece is re-read about one period after the last time (not up to two, as a fresh
shuffle per pass would allow); a node restarted more often than once a period still
reaches every piece in time on average, not just the low ids. Pieces stored during a pass
are read at its end (before the next pass begins), so a piece stored mid-pass is read
within a period too, not up to two later. One read at a time, and none right at start:
the first waits one interval, like every other.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection

from peerstore.core.pacing import TokenBucket

if TYPE_CHECKING:
    from random import Random

WEEK = 7 * 86400.0
DEFAULT_PERIOD = WEEK
DEFAULT_MAX_BYTES_PER_SECOND = 16 * 1024 * 1024  # a quarter of a Pi's SD card read rate
MIN_RATE = 1.0  # bytes per second: a tiny store still makes progress
MIN_WAIT = 0.001  # seconds: a paced wait is never zero (no tick storm at one instant)
RECENT_CORRUPT = 16  # ids of the latest corrupt pieces kept for status


@dataclass(frozen=True)
class PassResult:
    """One completed pass over every piece the node held when it began."""

    started: float
    finished: float
    pieces: int
    bytes: int
    corrupt: int


@dataclass(frozen=True)
class ScrubSummary:
    """What scrub has done on one node, for status and metrics. Times are in the
    caller's clock (the core's ``now``); ``age`` fields are seconds before ``at``."""

    at: float
    enabled: bool
    period: float
    rate: float  # bytes per second now
    passes: int
    pieces_checked: int  # since the node started
    bytes_checked: int
    corrupt_found: int
    pass_done: int  # pieces of the current pass checked so far
    pass_total: int
    last_pass: PassResult | None
    recent_corrupt: tuple[bytes, ...]
    first_pass_started: float | None = None  # None: no piece read yet

    @property
    def last_pass_age(self) -> float | None:
        return None if self.last_pass is None else self.at - self.last_pass.finished

    @property
    def overdue_age(self) -> float:
        """Seconds since the last pass ended, or since the first began (0 before any):
        what an alert compares with the period."""
        if self.last_pass is not None:
            return self.at - self.last_pass.finished
        return 0.0 if self.first_pass_started is None else self.at - self.first_pass_started

    @property
    def behind(self) -> bool:
        """Is a full pass at the capped rate slower than the period asks?"""
        if not self.enabled or not self.pass_total or self.rate <= 0:
            return False
        return self.pass_seconds_estimate > self.period * 1.01

    @property
    def pass_seconds_estimate(self) -> float:
        mean = self.bytes_checked / self.pieces_checked if self.pieces_checked else 0.0
        return self.pass_total * mean / self.rate if self.rate > 0 else 0.0


class Scrubber:
    """Which piece to re-read next, and when.

    ``poll(now, inventory)`` returns a piece id to verify now, or None; the caller
    reports each outcome with ``finished``. ``next_deadline()`` is when ``poll`` may next
    return a piece (None: only after the caller's state changes, e.g. a piece is stored).
    ``period`` 0 turns scrub off."""

    def __init__(self, period: float, max_bytes_per_second: float, rng: Random, *,
                 size_estimate: int, now: float = 0.0):
        if period < 0 or max_bytes_per_second <= 0 or size_estimate <= 0:
            raise ValueError("scrub needs period >= 0, max_bytes_per_second > 0 and size_estimate > 0")
        self.period = period
        self.max_rate = float(max_bytes_per_second)
        self.rng = rng
        self.size_estimate = size_estimate  # mean piece size until reads tell better
        self.bucket: TokenBucket | None = None  # made empty at the first poll: paced from the start
        self.wake_at: float | None = None  # when the bucket allows the next read
        self.order: list[bytes] = []
        self.in_pass: set[bytes] = set()  # every piece this pass reads (order, as a set)
        self.start_point: bytes | None = None  # where in the id space every pass begins
        self.first_pass_started: float | None = None
        self.cursor = 0
        self.pass_started = now
        self.pass_bytes = 0
        self.pass_corrupt = 0
        self.in_flight: bytes | None = None
        self.idle = True  # nothing to read: no deadline until poll is called again
        self.passes = 0
        self.pieces_checked = 0
        self.bytes_checked = 0
        self.corrupt_found = 0
        self.last_pass: PassResult | None = None
        self.recent_corrupt: deque[bytes] = deque(maxlen=RECENT_CORRUPT)

    @property
    def enabled(self) -> bool:
        return self.period > 0

    def mean_size(self) -> float:
        """Mean bytes per piece read so far (the estimate until a read reported a size)."""
        if self.bytes_checked <= 0:
            return float(self.size_estimate)
        return self.bytes_checked / self.pieces_checked

    def target_rate(self, held: int) -> float:
        """Bytes per second that read ``held`` pieces once per period, within the cap."""
        if not self.enabled or held == 0:
            return MIN_RATE
        return max(MIN_RATE, min(self.max_rate, held * self.mean_size() / self.period))

    def _catch_up_rate(self, now: float) -> float:
        """The rate that still ends this pass one period after it began. The inventory can
        shrink mid-pass (rebalance drops surplus copies, GC deletes), which lowers the
        inventory-based rate while the pass's order still has most of its pieces to read."""
        if not self.order or self.cursor >= len(self.order):
            return MIN_RATE
        left = (len(self.order) - self.cursor) * self.mean_size()  # pieces gone since count: cheap, errs fast
        remaining = max(self.pass_started + self.period - now, self.period / 20)
        return max(MIN_RATE, min(self.max_rate, left / remaining))

    def poll(self, now: float, inventory: Collection[bytes]) -> bytes | None:
        """The next piece to verify now, or None (one in flight, paced, or nothing held)."""
        if not self.enabled or self.in_flight is not None:
            return None
        if self.bucket is None:
            self.bucket = TokenBucket(MIN_RATE, burst=self.size_estimate, now=now)
            self.bucket.tokens = 0.0
        self.bucket.ready_at(now, 0)  # accrue at the old rate up to now, then change it
        self.bucket.rate = max(self.target_rate(len(inventory)), self._catch_up_rate(now))
        if not inventory:
            self.idle = True
            return None
        cost = self.mean_size()
        if not self.bucket.try_take(now, cost):
            self.idle = False
            # ready_at can round to ``now`` when the bucket is short by a float's error
            self.wake_at = max(self.bucket.ready_at(now, cost), now + MIN_WAIT)
            return None
        piece = self._next_in_pass(now, inventory)
        if piece is None:
            self.bucket.tokens += cost  # nothing read: give it back
        self.idle = piece is None
        self.in_flight = piece
        return piece

    def _next_in_pass(self, now: float, inventory: Collection[bytes]) -> bytes | None:
        for _ in range(2):  # the rest of this pass, then (if it ends) a fresh one
            while self.cursor < len(self.order):
                piece = self.order[self.cursor]
                self.cursor += 1
                if piece in inventory:  # gone since the pass began: removed, or quarantined
                    return piece
            if self.order and self._add_arrivals(inventory):
                continue  # pieces stored during the pass: read them before it ends
            if self.order:
                self._end_pass(now)
            if not inventory:
                return None
            self._begin_pass(now, inventory)
        return None

    def _add_arrivals(self, inventory: Collection[bytes]) -> bool:
        """Append the pieces held now that this pass did not start with; any?"""
        arrived = sorted(set(inventory) - self.in_pass)
        self.order.extend(arrived)
        self.in_pass.update(arrived)
        return bool(arrived)

    def _begin_pass(self, now: float, inventory: Collection[bytes]) -> None:
        if self.start_point is None:
            self.start_point = self.rng.getrandbits(256).to_bytes(32, "big")
            self.first_pass_started = now
        order = sorted(inventory)
        start = bisect.bisect_left(order, self.start_point)
        self.order = order[start:] + order[:start]
        self.in_pass = set(order)
        self.cursor = 0
        self.pass_started = now
        self.pass_bytes = 0
        self.pass_corrupt = 0

    def _end_pass(self, now: float) -> None:
        self.passes += 1
        self.last_pass = PassResult(self.pass_started, now, len(self.order), self.pass_bytes, self.pass_corrupt)
        self.order = []
        self.in_pass = set()
        self.cursor = 0

    def finished(self, now: float, piece: bytes, ok: bool, size: int, *, missing: bool = False) -> None:
        """The shell re-read ``piece``: ``ok`` if it still hashes to its id. ``missing``:
        it was no longer there to read (removed meanwhile), which is not corruption."""
        if piece != self.in_flight:
            return  # not ours (a stale completion after a restart of the pass)
        self.in_flight = None
        self.wake_at = now  # look again at once (the bucket decides)
        if missing:
            return
        self.pieces_checked += 1
        self.bytes_checked += max(size, 0)
        self.pass_bytes += max(size, 0)
        if not ok:
            self.corrupt_found += 1
            self.pass_corrupt += 1
            self.recent_corrupt.append(piece)

    def next_deadline(self) -> float | None:
        if not self.enabled or self.in_flight is not None or self.idle:
            return None
        return self.wake_at

    def summary(self, now: float, held: int) -> ScrubSummary:
        return ScrubSummary(
            at=now, enabled=self.enabled, period=self.period, rate=self.target_rate(held),
            passes=self.passes, pieces_checked=self.pieces_checked, bytes_checked=self.bytes_checked,
            corrupt_found=self.corrupt_found, pass_done=self.cursor, pass_total=len(self.order),
            last_pass=self.last_pass, recent_corrupt=tuple(self.recent_corrupt),
            first_pass_started=self.first_pass_started,
        )
