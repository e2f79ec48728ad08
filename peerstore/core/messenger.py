"""A node's requests to its peers and to its own shell, with their deadlines and
completions: the layer every coordinated step is built on (pure, no I/O).

Two rules here keep a slow link from looking like a dead peer (issue 14):

- **A request times out on the peer's silence, not on our queue.** The shell reports,
  every ``PROGRESS_INTERVAL`` seconds, the peers that bytes moved to or from
  (``ev.BytesMoved``). A request with the default timeout fails once nothing has moved
  to or from its peer for ``request_timeout`` (and never before ``request_timeout`` after
  it was made). A caller that passes its own ``timeout`` gets a fixed deadline instead.
- **Bytes in flight per peer follow the measured link rate** (``LinkRate``): about
  ``WINDOW_SECONDS`` of what the peer acknowledged per second while busy (and of its share
  of what all peers together did: they share this node's NIC), between two shards and
  ``max_inflight_bytes_per_peer``. On a 100 Mbit link the queue stays a few seconds deep;
  on a fast one it opens to the configured maximum.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.wire import messages as msg

if TYPE_CHECKING:
    from random import Random

SELF_TAG = "self"
REQUEST_ID_BITS_PER_BOOT = 32
PROGRESS_INTERVAL = 0.5  # seconds between two ev.BytesMoved reports of a shell (both shells)
WINDOW_SECONDS = 2.0  # queue depth per peer aimed at, in seconds of its measured rate
RATE_MEMORY = 5.0  # seconds of busy time the rate estimate remembers
# A peer that keeps moving other bytes (its own requests, other replies) but never answers
# one request must not hold it forever: it fails at the latest this many request_timeouts
# after it was made, or after its payload at MIN_PAYLOAD_RATE, whichever is longer.
MAX_PATIENCE = 12
MIN_PAYLOAD_RATE = 1 << 20  # bytes per second
FORWARD_PATIENCE = 3  # request_timeouts a forwarded copy's acknowledgement is waited for at most
MiB = 1 << 20


@dataclass
class PendingRequest:
    """A request sent to a peer, waiting for its reply or its deadline."""

    req: int
    peer: str
    deadline: float  # the earliest it may time out (fixed: the latest too)
    on_reply: Callable[[float, msg.Message, Any], None]
    on_failure: Callable[[float, str], None]
    inflight_bytes: int = 0
    patience: float | None = None  # None: fixed deadline; else the peer's silence it waits out
    started: float = 0.0
    via: str = ""  # a forwarded store's relay: it may report the request failed, never answered
    limit: float | None = None  # the longest it may wait, whatever moves (None: MAX_PATIENCE)


@dataclass
class LinkRate:
    """Bytes per second a peer acknowledged while it had requests outstanding.

    Only busy time counts (from the first byte in flight to the ack that empties the
    window), so an idle link is not mistaken for a slow one; old samples fade after
    ``RATE_MEMORY`` seconds of busy time."""

    bytes: float = 0.0
    seconds: float = 0.0
    busy_since: float | None = None

    def sent(self, now: float) -> None:
        if self.busy_since is None:
            self.busy_since = now

    def answered(self, now: float, size: int, idle: bool) -> None:
        if self.busy_since is not None:
            self.seconds += max(0.0, now - self.busy_since)
            self.bytes += size
        self.busy_since = None if idle else now
        if self.seconds > RATE_MEMORY:
            self.bytes *= RATE_MEMORY / self.seconds
            self.seconds = RATE_MEMORY

    @property
    def rate(self) -> float | None:
        return self.bytes / self.seconds if self.seconds > 0 and self.bytes > 0 else None

    def busy_seconds(self, now: float) -> float:
        """Busy time remembered, counting the wait for an answer still outstanding."""
        return self.seconds + (max(0.0, now - self.busy_since) if self.busy_since is not None else 0.0)

    def rate_at(self, now: float) -> float | None:
        """``rate``, counting the time since the last answer as busy with nothing done
        (a peer that stopped answering slows down now, not at its next answer)."""
        seconds = self.busy_seconds(now)
        return self.bytes / seconds if seconds > 0 and self.bytes > 0 else None


class Messenger:
    """Sends requests and local effects, and routes each answer to its callback.

    Exactly one of a request's callbacks runs: its reply, or its failure (a deadline,
    an unreachable peer). Effects accumulate until the node drains them."""

    def __init__(self, node_id: str, settings: CoreSettings, rng: Random, alive: frozenset[str] | None,
                 boot_epoch: int = 0):
        self.node_id = node_id
        self.settings = settings
        self.rng = rng
        self.alive: frozenset[str] = (alive or frozenset()) | {node_id}
        self.stats: Counter[str] = Counter()  # events worth a metric: retries, timeouts, ...
        self.inflight: dict[str, int] = {}
        self.progress_at: dict[str, float] = {}  # last time bytes moved to or from each peer
        self.rates: dict[str, LinkRate] = {}
        self.total_rate = LinkRate()  # all peers together
        self.last_timeout: dict[str, str] = {}  # per peer: what its last timeout was, in words
        self._effects: list[ev.Effect] = []
        # Ids never repeat across boots, so a late reply to a request of this node's
        # previous process can never answer a request of this one.
        self._next_id = (boot_epoch << REQUEST_ID_BITS_PER_BOOT) + 1
        self._pending: dict[int, PendingRequest] = {}
        self._waiters: dict[Any, Callable[[float, Any], None]] = {}

    def emit(self, effect: ev.Effect) -> None:
        self._effects.append(effect)

    def new_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def request(
        self,
        now: float,
        peer: str,
        make: Callable[[int], msg.Message],
        on_reply: Callable[[float, msg.Message, Any], None],
        on_failure: Callable[[float, str], None],
        *,
        payload: ev.Handle | None = None,
        inflight_bytes: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Send a request to ``peer``; exactly one of the callbacks runs later.

        Without ``timeout`` it fails ("timeout") once the peer has been silent for
        ``request_timeout``; with one, ``timeout`` seconds after now, whatever moves."""
        req = self.new_id()
        patience = None if timeout is not None else self.settings.request_timeout
        deadline = now + (timeout if timeout is not None else self.settings.request_timeout)
        self._pending[req] = PendingRequest(req, peer, deadline, on_reply, on_failure, inflight_bytes,
                                            patience, now)
        if inflight_bytes:
            self.inflight[peer] = self.inflight.get(peer, 0) + inflight_bytes
            self.rates.setdefault(peer, LinkRate()).sent(now)
            self.total_rate.sent(now)
        self.emit(ev.Send(peer, make(req), payload=payload))
        return req

    def expect(self, now: float, peer: str, via: str,
               on_reply: Callable[[float, msg.Message, Any], None],
               on_failure: Callable[[float, str], None]) -> int:
        """A request id whose reply ``peer`` will send although we send it nothing: the
        request goes to ``via``, which passes it on (forwarded replication). ``via`` may
        only fail it (``relay_failed``). Times out once both have been silent for
        ``request_timeout``, and at the latest after FORWARD_PATIENCE of them (a relay that
        restarted lost the forward without a word; the caller then sends it itself)."""
        req = self.new_id()
        timeout = self.settings.request_timeout
        self._pending[req] = PendingRequest(req, peer, now + timeout, on_reply, on_failure, 0, timeout, now, via,
                                            limit=FORWARD_PATIENCE * timeout)
        return req

    def relay_failed(self, now: float, req: int, relay: str, why: str) -> None:
        """``relay`` says it could not pass request ``req`` on: fail it (only if it was
        the request's relay)."""
        pending = self._pending.get(req)
        if pending is not None and pending.via and pending.via == relay:
            self.stats["forwards_failed"] += 1
            self._pending.pop(req)
            pending.on_failure(now, why)

    def cancel_request(self, now: float, req: int) -> None:
        """Forget a request without running either callback (its answer, if any comes,
        is ignored like any late reply)."""
        pending = self._pending.pop(req, None)
        if pending is not None:
            self._release_inflight(now, pending, answered=False)

    def local(self, make: Callable[[Any], ev.Effect], on_done: Callable[[float, Any], None]) -> None:
        """Ask the shell for a local effect; ``on_done`` gets its completion."""
        tag = (SELF_TAG, self.new_id())
        self._waiters[tag] = on_done
        self.emit(make(tag))

    # -- flow control ------------------------------------------------------------------

    def window(self, peer: str) -> int:
        """Bytes that may be in flight to ``peer``: ``WINDOW_SECONDS`` of its measured
        rate, at least two shards, at most ``max_inflight_bytes_per_peer``."""
        ceiling = self.settings.max_inflight_bytes_per_peer
        floor = min(ceiling, 2 * self.settings.policy.shard_size)
        estimate = self.rates.get(peer)
        rate = estimate.rate if estimate is not None else None
        if rate is None:
            return floor
        total = self.total_rate.rate
        if total is not None:  # its share of the NIC: a lone early sample is not the link
            busy = len(self.inflight) + (peer not in self.inflight)
            rate = min(rate, total / busy)
        target = min(WINDOW_SECONDS, self.settings.request_timeout / 4)
        return max(floor, min(ceiling, int(rate * target)))

    def can_send(self, peer: str, size: int) -> bool:
        """Per-peer flow control: bounded bytes in flight (one piece always allowed)."""
        used = self.inflight.get(peer, 0)
        return used == 0 or used + size <= self.window(peer)

    # -- progress and deadlines --------------------------------------------------------

    def bytes_moved(self, now: float, peers: Any) -> None:
        """The shell saw bytes move to or from ``peers`` since its last report."""
        for peer in peers:
            self.progress_at[peer] = now

    def due(self, pending: PendingRequest) -> float:
        """When ``pending`` times out if nothing more moves."""
        if pending.patience is None:
            return pending.deadline
        latest = pending.started + (pending.limit if pending.limit is not None else
                                    max(MAX_PATIENCE * pending.patience, pending.inflight_bytes / MIN_PAYLOAD_RATE))
        heard = self.progress_at.get(pending.peer, pending.started)
        if pending.via:
            heard = max(heard, self.progress_at.get(pending.via, pending.started))
        return min(latest, max(pending.deadline, heard + pending.patience))

    def expire(self, now: float) -> None:
        """Fail every request whose deadline passed."""
        for pending in [p for p in self._pending.values() if self.due(p) <= now]:
            self.last_timeout[pending.peer] = self._silence(now, pending)
            self._fail_request(now, pending.req, "timeout")

    def request_deadline(self) -> float | None:
        return min((self.due(p) for p in self._pending.values()), default=None)

    def _silence(self, now: float, pending: PendingRequest) -> str:
        queued = self.inflight.get(pending.peer, 0)
        outstanding = f"{queued / MiB:.1f} MiB of requests outstanding to it" if queued else \
            "no bulk bytes outstanding to it"
        if pending.patience is None:
            return (f"node {pending.peer} did not answer within {now - pending.started:.1f} s "
                    f"({outstanding})")
        quiet = now - max(pending.started, self.progress_at.get(pending.peer, pending.started))
        if quiet < pending.patience:
            return (f"node {pending.peer} did not answer within {now - pending.started:.1f} s although bytes "
                    f"kept moving to and from it ({outstanding})")
        return (f"node {pending.peer} went silent: nothing moved to or from it for {quiet:.1f} s "
                f"({outstanding}; the request waited {now - pending.started:.1f} s)")

    def failure_detail(self, peer: str, why: str) -> str:
        """``why`` in words for a message to a user: a timeout says who went silent for
        how long and what was queued to it."""
        if why == "timeout":
            return self.last_timeout.get(peer, f"node {peer} timed out")
        return f"node {peer}: {why}"

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * (2 ** attempt))
        return self.rng.uniform(ceiling / 2, ceiling)

    def is_alive(self, peer: str) -> bool:
        return peer in self.alive

    def _drain(self) -> list[ev.Effect]:
        effects, self._effects = self._effects, []
        return effects

    def _fail_request(self, now: float, req: int, why: str) -> None:
        pending = self._pending.pop(req, None)
        if pending is None:
            return
        self._release_inflight(now, pending, answered=False)
        self.stats[f"request_{why}"] += 1
        pending.on_failure(now, why)

    def _release_inflight(self, now: float, pending: PendingRequest, answered: bool = True) -> None:
        if pending.inflight_bytes:
            left = self.inflight.get(pending.peer, 0) - pending.inflight_bytes
            if left > 0:
                self.inflight[pending.peer] = left
            else:
                self.inflight.pop(pending.peer, None)
            size = pending.inflight_bytes if answered else 0
            rate = self.rates.get(pending.peer)
            if rate is not None:
                rate.answered(now, size, idle=left <= 0)
            self.total_rate.answered(now, size, idle=not self.inflight)
