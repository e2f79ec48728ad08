"""The simulated network between nodes: datagrams, streams, partitions, clogs.

Datagrams (gossip's UDP) are delayed by the link's latency distribution and may be lost,
duplicated or reordered; they skip the bulk queues, as fq_codel lets small flows do.

Streams (the data path's TCP) are reliable and in order per connection. Each host's NIC
serialises what it sends and receives (1 GbE, a Raspberry Pi's 100 Mbit), so a 4 MiB
piece costs 33 ms at 1 GbE and bulk traffic queues behind itself. A connection can break:

- loudly (reset): a process crash while its host stays up, an injected break, or a peer
  coming back after a partition or power loss. Both ends learn it (``on_break``) and the
  cluster fails their outstanding requests with PeerUnreachable;
- silently (zombie): a partition or a host losing power. Messages vanish and nobody is
  told; requests wait for their own timeouts, as they do on a real LAN.

Sending where no connection exists connects first: refused at once by a host whose
process is down, timing out after ``connect_timeout`` when the host is unreachable.

Stream faults (all off by default):

- ``LinkModel.stream_loss``: TCP segment loss. A message with a lost segment is not lost
  but late by a retransmission timeout (``rto``, doubling while the retransmission is lost
  too), and holds back what follows it on its connection; a lost SYN costs 1 s, 2 s, ...
  and the connect fails past ``connect_timeout``.
- ``Network.straggle``: when a connection breaks, each message whose bytes had already
  left the sender may still arrive (the kernel flushes its send buffer after a close or a
  process crash), after both ends were told of the break and possibly after messages on
  the new connection: late replies, requests served after their sender gave up, and
  reordering across connections.
- ``Network.redeliver``: when a connection breaks, each message delivered on it shortly
  before may be delivered again on a new connection, as an at-least-once resend would
  (the same request id twice; never from a process that died since).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from sim.loop import EventLoop

NIC_1GBE = 125e6  # bytes/s
NIC_100MBIT = 12.5e6  # a Raspberry Pi 3 / a cheap switch port
MSS = 1448  # TCP payload bytes per segment on Ethernet
SYN_RTO = 1.0  # Linux's initial retransmission timeout for a SYN
MAX_BACKOFFS = 6  # retransmissions modelled per loss (200 ms doubles to 12.8 s)
RECENT = 4  # messages per connection that a redelivery may repeat
MOVING_MEMORY = 2.0  # seconds a finished transmission is remembered for ``moved``


@dataclass(frozen=True)
class LinkModel:
    """One direction of a link. Latency is ``latency`` plus an exponential with mean
    ``jitter``; datagrams may be lost, duplicated or held back (reordered). Stream
    segments are lost with ``stream_loss`` and retransmitted after ``rto``."""

    latency: float = 0.0002
    jitter: float = 0.0001
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.01
    stream_loss: float = 0.0
    rto: float = 0.2  # Linux's minimum retransmission timeout


@dataclass(frozen=True)
class Clog:
    """A congested link: extra delay, and bandwidth scaled by ``bandwidth_factor``."""

    delay: float
    bandwidth_factor: float = 1.0


@dataclass
class Host:
    nic: float = NIC_1GBE
    powered: bool = True
    listening: bool = True  # the node's process is running
    egress_free: float = 0.0
    ingress_free: float = 0.0
    process: int = 0  # raised whenever the process or host goes down


@dataclass
class InFlight:
    """A stream message on its way: enough to deliver it late or again."""

    src: str
    dst: str
    size: int
    sent: float  # when its last byte left the sender's NIC
    arrive: float
    process: int  # the sender's process generation when it was sent
    on_arrive: Callable[..., None]
    args: tuple[Any, ...]


@dataclass
class Connection:
    gen: int
    zombie: bool = False
    last_arrival: dict[str, float] = field(default_factory=dict)  # per sending side
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    recent: deque[InFlight] = field(default_factory=lambda: deque(maxlen=RECENT))


def conn_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class Network:
    def __init__(self, loop: EventLoop, rng: random.Random, *, link: LinkModel | None = None,
                 connect_timeout: float = 3.0):
        self.loop = loop
        self.rng = rng
        self.default_link = link or LinkModel()
        self.connect_timeout = connect_timeout
        self.hosts: dict[str, Host] = {}
        self.links: dict[tuple[str, str], LinkModel] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.clogs: dict[tuple[str, str], Clog] = {}
        self.conns: dict[tuple[str, str], Connection] = {}
        # Per sending direction, when recent messages' bytes were on the wire: (first, last).
        self.moving: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._gen = 0
        self._seq = 0
        self.straggle = 0.0  # see the module docstring: stream faults
        self.redeliver = 0.0
        self.on_break: Callable[[str, str, int], None] = lambda a, b, gen: None
        self.stats: Counter[str] = Counter()

    # -- topology ------------------------------------------------------------------------

    def add_host(self, node_id: str, nic: float = NIC_1GBE) -> None:
        self.hosts[node_id] = Host(nic)

    def link(self, src: str, dst: str) -> LinkModel:
        return self.links.get((src, dst), self.default_link)

    def set_link(self, src: str, dst: str, model: LinkModel) -> None:
        self.links[(src, dst)] = model

    def reachable(self, src: str, dst: str) -> bool:
        """Can a packet from ``src`` reach ``dst``'s host right now?"""
        hosts = self.hosts
        return hosts[src].powered and hosts[dst].powered and (src, dst) not in self.blocked

    # -- host lifecycle (the cluster calls these) ----------------------------------------

    def process_down(self, node_id: str) -> None:
        """The process died but the host is up: its kernel resets every connection."""
        host = self.hosts[node_id]
        host.listening = False
        host.process += 1
        for key in [k for k in self.conns if node_id in k]:
            self._break(key)

    def power_off(self, node_id: str) -> None:
        """The host vanished: its connections go silent; peers find out by timeouts."""
        host = self.hosts[node_id]
        host.powered = host.listening = False
        host.process += 1
        for key, conn in self.conns.items():
            if node_id in key:
                conn.zombie = True
                self._stop_moving(*key)

    def process_up(self, node_id: str) -> None:
        host = self.hosts[node_id]
        host.powered = host.listening = True
        self._reset_zombies()

    # -- partitions and clogs ------------------------------------------------------------

    def block(self, src: str, dst: str) -> None:
        """Drop everything from ``src`` to ``dst`` (one direction: asymmetric partitions)."""
        self.blocked.add((src, dst))
        conn = self.conns.get(conn_key(src, dst))
        if conn is not None:
            conn.zombie = True  # TCP needs both directions
            self._stop_moving(src, dst)

    def isolate(self, node_id: str) -> None:
        for other in self.hosts:
            if other != node_id:
                self.block(node_id, other)
                self.block(other, node_id)

    def split(self, *sides: list[str]) -> None:
        """Partition into ``sides``; hosts in no side keep talking to everyone."""
        for i, side in enumerate(sides):
            for j, other in enumerate(sides):
                if i != j:
                    for a in side:
                        for b in other:
                            self.block(a, b)

    def heal(self, pairs: list[tuple[str, str]] | None = None) -> None:
        """Lift every block (or the given directed pairs); stale connections reset."""
        if pairs is None:
            self.blocked.clear()
        else:
            self.blocked.difference_update(pairs)
        self._reset_zombies()

    def clog(self, src: str, dst: str, clog: Clog) -> None:
        self.clogs[(src, dst)] = clog

    def unclog(self, src: str | None = None, dst: str | None = None) -> None:
        if src is None:
            self.clogs.clear()
        else:
            self.clogs.pop((src, dst or ""), None)

    def break_connection(self, a: str, b: str) -> bool:
        """Reset the connection between ``a`` and ``b`` mid-transfer (both ends notice)."""
        key = conn_key(a, b)
        if key in self.conns:
            self._break(key)
            return True
        return False

    # -- datagrams -----------------------------------------------------------------------

    def send_datagram(self, src: str, dst: str, deliver: Callable[..., None], *args: Any) -> None:
        """Deliver ``deliver(*args)`` at ``dst`` after the link's delay, unless lost."""
        stats = self.stats
        stats["datagrams_sent"] += 1
        if not self.reachable(src, dst):
            stats["datagrams_blocked"] += 1
            return
        link = self.links.get((src, dst), self.default_link)
        rng = self.rng
        if link.loss and rng.random() < link.loss:
            stats["datagrams_lost"] += 1
            return
        copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
        for _ in range(copies):
            delay = link.latency + (rng.expovariate(1.0 / link.jitter) if link.jitter else 0.0)
            if link.reorder and rng.random() < link.reorder:
                delay += rng.uniform(0.0, link.reorder_delay)
            if self.clogs:
                clog = self.clogs.get((src, dst))
                if clog is not None:
                    delay += clog.delay
            self.loop.at(self.loop.now + delay, self._land_datagram, src, dst, deliver, args)
        stats["datagrams_duplicated"] += copies - 1

    def _land_datagram(self, src: str, dst: str, deliver: Callable[..., None], args: tuple[Any, ...]) -> None:
        if (src, dst) in self.blocked or not self.hosts[dst].powered:
            self.stats["datagrams_blocked"] += 1
            return
        deliver(*args)

    # -- streams -------------------------------------------------------------------------

    def send_stream(self, src: str, dst: str, size: int, on_arrive: Callable[..., None], *args: Any,
                    on_fail: Callable[[str], None] | None = None) -> int:
        """Send ``size`` bytes on the ``src``-``dst`` connection; ``on_arrive(*args)`` runs at
        ``dst`` when the last byte is in. Returns the connection generation the message
        rides on (its outstanding requests fail together when it breaks); 0 when the
        send failed at once (``on_fail(reason)`` runs after the connect attempt)."""
        loop = self.loop
        now = loop.now
        key = conn_key(src, dst)
        conn = self.conns.get(key)
        self.stats["stream_messages"] += 1
        self.stats["stream_bytes"] += size
        if conn is not None and conn.zombie:
            return conn.gen  # swallowed; the sender's own timeout fires
        link = self.links.get((src, dst), self.default_link)
        if not (self.reachable(src, dst) and self.reachable(dst, src)):
            if on_fail is not None:
                loop.at(now + self.connect_timeout, on_fail, "unreachable: connect timed out")
            return 0
        if not self.hosts[dst].listening:
            if on_fail is not None:
                loop.at(now + 2 * link.latency, on_fail, "connection refused")
            return 0
        setup = 0.0
        if conn is None:
            setup = 4 * link.latency + self._syn_delay(link)  # TCP handshake + the mutual key proof
            if setup > self.connect_timeout:
                if on_fail is not None:
                    loop.at(now + self.connect_timeout, on_fail, "unreachable: connect timed out (SYNs lost)")
                return 0
            self._gen += 1
            conn = self.conns[key] = Connection(self._gen)
        hosts = self.hosts
        sender, receiver = hosts[src], hosts[dst]
        factor = 1.0
        delay = link.latency + (self.rng.expovariate(1.0 / link.jitter) if link.jitter else 0.0)
        if link.stream_loss:
            delay += self._retransmit_delay(link, size)
        if self.clogs:
            clog = self.clogs.get((src, dst))
            if clog is not None:
                delay += clog.delay
                factor = clog.bandwidth_factor
        start = max(now + setup, sender.egress_free)
        sent = start + size / (sender.nic * factor)
        sender.egress_free = sent
        # The receiver's NIC takes one message at a time; propagation delays (latency,
        # clogs, retransmissions) are per path and hold back no other sender's bytes.
        received = max(sent, receiver.ingress_free + size / receiver.nic)
        receiver.ingress_free = received
        arrive = max(received + delay, conn.last_arrival.get(src, 0.0))  # in order per connection
        conn.last_arrival[src] = arrive
        self._note_moving(src, dst, start, arrive)
        self._seq += 1
        conn.in_flight[self._seq] = InFlight(src, dst, size, sent, arrive, sender.process, on_arrive, args)
        loop.at(arrive, self._land_stream, key, conn.gen, self._seq)
        return conn.gen

    def _note_moving(self, src: str, dst: str, start: float, end: float) -> None:
        spans = self.moving.setdefault((src, dst), deque())
        while spans and spans[0][1] < self.loop.now - MOVING_MEMORY:
            spans.popleft()
        spans.append((start, end))

    def _stop_moving(self, a: str, b: str) -> None:
        """A connection went silent: bytes still queued on it never move."""
        now = self.loop.now
        for key in ((a, b), (b, a)):
            spans = self.moving.get(key)
            if spans:
                self.moving[key] = deque((start, min(end, now)) for start, end in spans if start < now)

    def moved(self, a: str, b: str, since: float, until: float) -> bool:
        """Did bytes of a stream message move between ``a`` and ``b`` (either way) in
        (``since``, ``until``]? What a shell's byte counters on the connection would show:
        a message queued behind others in the sender's NIC has not started moving; one
        swallowed by a silent (zombie) connection never does."""
        for key in ((a, b), (b, a)):
            for start, end in self.moving.get(key, ()):
                if start < until and end > since:
                    return True
        return False

    def _syn_delay(self, link: LinkModel) -> float:
        """Extra connect time when the SYN or the SYN-ACK is lost: 1 s, then 2 s, ..."""
        delay, rto = 0.0, SYN_RTO
        p = 1 - (1 - link.stream_loss) ** 2
        while link.stream_loss and self.rng.random() < p and delay <= self.connect_timeout:
            self.stats["stream_syn_retransmits"] += 1
            delay += rto
            rto *= 2
        return delay

    def _retransmit_delay(self, link: LinkModel, size: int) -> float:
        """How late a message of ``size`` bytes is when one of its segments is lost: an RTO,
        doubled for every retransmission lost as well."""
        segments = 1 + size // MSS
        if self.rng.random() >= 1 - (1 - link.stream_loss) ** segments:
            return 0.0
        self.stats["stream_retransmits"] += 1
        delay = rto = max(link.rto, 2 * link.latency)
        for _ in range(MAX_BACKOFFS):
            if self.rng.random() >= link.stream_loss:
                break
            rto *= 2
            delay += rto
        return delay

    def _land_stream(self, key: tuple[str, str], gen: int, seq: int) -> None:
        conn = self.conns.get(key)
        if conn is None or conn.gen != gen or conn.zombie:
            return  # broken: _break already counted it (and maybe let it straggle)
        message = conn.in_flight.pop(seq)
        conn.recent.append(message)
        message.on_arrive(*message.args)

    def _straggler_lands(self, message: InFlight, dst_process: int) -> None:
        host = self.hosts[message.dst]
        if (message.src, message.dst) in self.blocked or not host.listening or host.process != dst_process:
            self.stats["stream_messages_lost"] += 1  # the receiving socket is gone
            return
        self.stats["stream_stragglers"] += 1
        message.on_arrive(*message.args)

    def _redeliver(self, message: InFlight) -> None:
        if self.hosts[message.src].process != message.process:
            return  # the process that would resend it is gone
        self.stats["stream_redeliveries"] += 1
        self.send_stream(message.src, message.dst, message.size, message.on_arrive, *message.args)

    def reset_if_stale(self, a: str, b: str) -> None:
        """Replace a silent connection between two hosts that can reach each other."""
        key = conn_key(a, b)
        conn = self.conns.get(key)
        if conn is not None and conn.zombie and self.reachable(a, b) and self.reachable(b, a):
            self._break(key)

    def _break(self, key: tuple[str, str]) -> None:
        conn = self.conns.pop(key)
        self.stats["connections_reset"] += 1
        a, b = key
        now = self.loop.now
        notice = self.link(a, b).latency
        self.loop.at(now + notice, self.on_break, a, b, conn.gen)
        open_path = self.reachable(a, b) and self.reachable(b, a)
        for message in conn.in_flight.values():
            receiver = self.hosts[message.dst]
            if (self.straggle and open_path and not conn.zombie and receiver.listening and message.sent <= now
                    and self.rng.random() < self.straggle):
                self.loop.at(max(message.arrive, now + notice), self._straggler_lands, message, receiver.process)
            else:
                self.stats["stream_messages_lost"] += 1
        if self.redeliver and open_path:
            for message in conn.recent:
                if self.rng.random() < self.redeliver:
                    self.loop.at(now + notice + self.rng.uniform(0, 0.05), self._redeliver, message)

    def _reset_zombies(self) -> None:
        for key in [k for k, c in self.conns.items() if c.zombie]:
            a, b = key
            if self.reachable(a, b) and self.reachable(b, a):
                self._break(key)
