"""A small in-memory cluster of Swim machines on a virtual clock, for the gossip tests.

Not the simulator (that lives in sim/): just enough network to test membership end to
end. Datagrams go through msgpack (so tuples come back as lists, as on the real wire)
and must fit the size budget; each one is delayed by a random latency and may be lost
or blocked by a partition. Streams (TCP) deliver a request and its reply, or report a
failure after ``stream_timeout``. Everything random comes from seeded generators, so a
seed fixes the whole run.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from peerstore.shell.config import GossipSettings
from peerstore.gossip import (
    AppMessage,
    AppState,
    MemberChanged,
    MemberRemoved,
    MemberState,
    NeedSeeds,
    SendDatagram,
    SendStream,
    Swim,
)

Addr = tuple[str, int]
INCARNATIONS_PER_BOOT = 2**32  # what we advise the daemon: boot epoch << 32


@dataclass
class Node:
    node_id: str
    addr: Addr
    boot: int
    swim: Swim
    up: bool = True
    tick_at: float = float("inf")
    inbox: list[AppMessage | AppState] = field(default_factory=list)
    need_seeds: int = 0


@dataclass(frozen=True)
class Change:
    """One MemberChanged seen by ``observer`` at ``time``."""

    time: float
    observer: str
    node_id: str
    old: MemberState | None
    new: MemberState
    incarnation: int


class Cluster:
    def __init__(
        self,
        seed: int,
        *,
        settings: GossipSettings | None = None,
        latency: tuple[float, float] = (0.0005, 0.003),
        loss: float = 0.0,
        stream_timeout: float = 1.0,
        max_message_bytes: int = 1200,
        mdns: bool = False,
    ) -> None:
        self.seed = seed
        self.settings = settings or GossipSettings()
        self.latency = latency
        self.loss = loss
        self.stream_timeout = stream_timeout
        self.max_message_bytes = max_message_bytes
        self.mdns = mdns
        self.net_rng = random.Random(f"net:{seed}")
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.by_addr: dict[Addr, str] = {}
        self.groups: dict[str, int] = {}
        self.changes: list[Change] = []
        self.largest_datagram = 0
        self.datagrams_sent = 0
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._next_port = itertools.count(7000)

    # Scenario controls -----------------------------------------------------------------

    def add_node(self, node_id: str, seeds: Iterable[str] = (), *, meta: dict[str, Any] | None = None) -> Node:
        addr = ("10.0.0.1", next(self._next_port))
        return self._boot(node_id, addr, 1, [self.nodes[s].addr for s in seeds], meta)

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].up = False

    def restart(
        self, node_id: str, seeds: Iterable[str], *, new_addr: bool = False, incarnation: int | None = None
    ) -> Node:
        """Boot ``node_id`` again; its incarnation is the next boot's unless given."""
        old = self.nodes[node_id]
        assert not old.up, "crash the node first"
        addr = ("10.0.0.2", next(self._next_port)) if new_addr else old.addr
        if self.by_addr.get(old.addr) == node_id:
            del self.by_addr[old.addr]
        return self._boot(node_id, addr, old.boot + 1, [self.nodes[s].addr for s in seeds], None, incarnation)

    def leave(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._handle(node, node.swim.leave(self.now))

    def partition(self, *sides: Iterable[str]) -> None:
        self.groups = {node_id: i for i, side in enumerate(sides) for node_id in side}

    def heal(self) -> None:
        self.groups = {}

    def run_until(self, until: float) -> None:
        events = self._events
        while events and events[0][0] <= until:
            when, _, action, args = heapq.heappop(events)
            self.now = when
            action(*args)
        self.now = until

    def run_until_true(self, predicate: Callable[[], bool], limit: float, step: float = 0.1) -> float | None:
        """Advance in small steps until ``predicate()``; the time it became true, or None."""
        while self.now < limit:
            if predicate():
                return self.now
            self.run_until(min(limit, self.now + step))
        return self.now if predicate() else None

    # Views -----------------------------------------------------------------------------

    def up_ids(self) -> list[str]:
        return [k for k, n in self.nodes.items() if n.up]

    def state_of(self, observer: str, node_id: str) -> MemberState | None:
        member = self.nodes[observer].swim.member(node_id)
        return member.state if member else None

    def everyone_sees(self, node_id: str, state: MemberState, observers: Iterable[str] | None = None) -> bool:
        observers = [o for o in (observers or self.up_ids()) if o != node_id]
        return all(self.state_of(o, node_id) is state for o in observers)

    def converged(self) -> bool:
        """Every up node sees every other up node alive."""
        up = self.up_ids()
        return all(self.state_of(o, n) is MemberState.ALIVE for o in up for n in up if o != n)

    def first_change(self, node_id: str, new: MemberState, after: float = 0.0) -> Change | None:
        return next((c for c in self.changes if c.node_id == node_id and c.new is new and c.time >= after), None)

    def trace(self) -> list[tuple[float, str, str, str, int]]:
        return [(round(c.time, 9), c.observer, c.node_id, c.new.value, c.incarnation) for c in self.changes]

    # Internals -------------------------------------------------------------------------

    def _boot(
        self,
        node_id: str,
        addr: Addr,
        boot: int,
        seeds: list[Addr],
        meta: dict[str, Any] | None,
        incarnation: int | None = None,
    ) -> Node:
        swim = Swim(
            node_id=node_id,
            addr=addr,
            incarnation=boot * INCARNATIONS_PER_BOOT if incarnation is None else incarnation,
            settings=self.settings,
            rng=random.Random(f"swim:{self.seed}:{node_id}:{boot}"),
            now=self.now,
            meta=meta,
            max_message_bytes=self.max_message_bytes,
        )
        node = Node(node_id, addr, boot, swim)
        self.nodes[node_id] = node
        self.by_addr[addr] = node_id
        self._handle(node, swim.start(self.now, seeds))
        return node

    def _at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._order), action, args))

    def _current(self, node: Node) -> bool:
        return node.up and self.nodes.get(node.node_id) is node

    def _reachable(self, src: str, dst: str) -> bool:
        return not self.groups or self.groups.get(src, -1) == self.groups.get(dst, -2)

    def _delay(self) -> float:
        return self.net_rng.uniform(*self.latency)

    def _handle(self, node: Node, effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, SendDatagram):
                self._send_datagram(node, effect)
            elif isinstance(effect, SendStream):
                self._send_stream(node, effect)
            elif isinstance(effect, MemberChanged):
                self.changes.append(
                    Change(self.now, node.node_id, effect.node_id, effect.old, effect.new, effect.member.incarnation)
                )
            elif isinstance(effect, (AppMessage, AppState)):
                node.inbox.append(effect)
            elif isinstance(effect, NeedSeeds):
                node.need_seeds += 1
                if self.mdns:
                    seen = [n.addr for n in self.nodes.values() if n.up and self._reachable(node.node_id, n.node_id)]
                    self._handle(node, node.swim.add_seeds(self.now, seen))
            else:
                assert isinstance(effect, MemberRemoved), effect
        self._schedule_tick(node)

    def _schedule_tick(self, node: Node) -> None:
        deadline = max(node.swim.next_deadline(), self.now)
        if deadline < node.tick_at:
            node.tick_at = deadline
            self._at(deadline, self._tick, node, deadline)

    def _tick(self, node: Node, when: float) -> None:
        if not self._current(node) or node.tick_at != when:
            return
        node.tick_at = float("inf")
        self._handle(node, node.swim.tick(self.now))
        assert node.swim.next_deadline() > self.now, "tick left a timer due"

    def _send_datagram(self, node: Node, effect: SendDatagram) -> None:
        data = msgpack.packb(effect.message)
        assert len(data) <= self.max_message_bytes, (len(data), effect.message)
        self.largest_datagram = max(self.largest_datagram, len(data))
        self.datagrams_sent += 1
        if self.net_rng.random() < self.loss:
            return
        self._at(self.now + self._delay(), self._deliver_datagram, node, effect.addr, data)

    def _deliver_datagram(self, sender: Node, addr: Addr, data: bytes) -> None:
        target_id = self.by_addr.get(addr)
        target = self.nodes.get(target_id) if target_id else None
        if target is None or not self._current(target) or not self._reachable(sender.node_id, target.node_id):
            return
        message = msgpack.unpackb(data)
        self._handle(target, target.swim.on_datagram(self.now, sender.addr, message, size=len(data)))

    def _send_stream(self, node: Node, effect: SendStream) -> None:
        self._at(self.now + self._delay(), self._deliver_stream, node, effect.addr, msgpack.packb(effect.message),
                 effect.request_id)

    def _deliver_stream(self, sender: Node, addr: Addr, data: bytes, request_id: int) -> None:
        target_id = self.by_addr.get(addr)
        target = self.nodes.get(target_id) if target_id else None
        if target is None or not self._current(target) or not self._reachable(sender.node_id, target.node_id):
            self._at(self.now + self.stream_timeout, self._stream_reply, sender, request_id, None)
            return
        reply, effects = target.swim.on_stream_request(self.now, sender.addr, msgpack.unpackb(data))
        self._handle(target, effects)
        self._at(self.now + self._delay(), self._stream_reply, sender, request_id, msgpack.packb(reply))

    def _stream_reply(self, node: Node, request_id: int, data: bytes | None) -> None:
        if not self._current(node):
            return
        reply = msgpack.unpackb(data) if data is not None else None
        self._handle(node, node.swim.on_stream_reply(self.now, request_id, reply))


def grow(cluster: Cluster, count: int, *, prefix: str = "n", join_gap: float = 0.05) -> list[str]:
    """Add ``count`` nodes, each joining through the first one, ``join_gap`` apart."""
    ids = [f"{prefix}{i:02d}" for i in range(count)]
    for i, node_id in enumerate(ids):
        cluster.add_node(node_id, seeds=ids[:1] if i else ())
        cluster.run_until(cluster.now + join_gap)
    return ids
