"""A node's requests to its peers and to its own shell, with their deadlines and
completions: the layer every coordinated step is built on (pure, no I/O)."""

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


@dataclass
class PendingRequest:
    """A request sent to a peer, waiting for its reply or its deadline."""

    req: int
    peer: str
    deadline: float
    on_reply: Callable[[float, msg.Message, Any], None]
    on_failure: Callable[[float, str], None]
    inflight_bytes: int = 0


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
        """Send a request to ``peer``; exactly one of the callbacks runs later."""
        req = self.new_id()
        deadline = now + (timeout if timeout is not None else self.settings.request_timeout)
        self._pending[req] = PendingRequest(req, peer, deadline, on_reply, on_failure, inflight_bytes)
        self.inflight[peer] = self.inflight.get(peer, 0) + inflight_bytes
        self.emit(ev.Send(peer, make(req), payload=payload))
        return req

    def local(self, make: Callable[[Any], ev.Effect], on_done: Callable[[float, Any], None]) -> None:
        """Ask the shell for a local effect; ``on_done`` gets its completion."""
        tag = (SELF_TAG, self.new_id())
        self._waiters[tag] = on_done
        self.emit(make(tag))

    def can_send(self, peer: str, size: int) -> bool:
        """Per-peer flow control: bounded bytes in flight (one piece always allowed)."""
        used = self.inflight.get(peer, 0)
        return used == 0 or used + size <= self.settings.max_inflight_bytes_per_peer

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
        self._release_inflight(pending)
        self.stats[f"request_{why}"] += 1
        pending.on_failure(now, why)

    def _release_inflight(self, pending: PendingRequest) -> None:
        if pending.inflight_bytes:
            left = self.inflight.get(pending.peer, 0) - pending.inflight_bytes
            if left > 0:
                self.inflight[pending.peer] = left
            else:
                self.inflight.pop(pending.peer, None)

