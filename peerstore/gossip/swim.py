"""SWIM membership with the Lifeguard refinements, as a sans-IO state machine.

Modelled on HashiCorp memberlist (state.go). The shell feeds in time, datagrams, stream
requests and stream replies; every call returns the effects to carry out. The machine
never reads a clock, touches a socket or draws randomness of its own.

One probe round (every ``probe_interval``, stretched by local health):

1. ping the next member of a shuffled round-robin list;
2. no ack after ``probe_timeout`` (stretched too): ask ``indirect_checks`` random live
   helpers to ping it for us (ping-req, with nacks), plus a TCP ping when fewer than two
   helpers exist;
3. still no ack when the round ends: suspect it. Missing nacks mean *we* are probably the
   slow one, which raises our local health score and stretches our timeouts.

A suspicion becomes a death when its Lifeguard timer expires; independent confirmations
shorten the timer. A node suspected or declared dead refutes with a higher incarnation.

Implausible incarnations. Any holder of the cluster key can forge updates, and a claim
about a member at the largest incarnation would leave it nothing to refute with: it would
stay dead for good. So a claim is capped (not refused) before it is applied: a known
member's incarnation may rise by at most ``INCARNATION_STEP`` per ``INCARNATION_WINDOW``
probe intervals (a real member that restarted more often than that while unseen is seen
at the capped number, alive, and catches up window by window), and a member first heard
of starts at most at ``FIRST_SIGHT_CEILING``. One above what we hold is always accepted:
that is how a member refutes a claim capped to the top of its window. Accusations about
ourselves are capped the same way before we refute them. Climbing to the top then takes
an insider decades of forging; the real member can always refute above what the others
accepted.
Updates ride on pings and acks, on gossip to a few random members every
``gossip_interval``, and a full state exchange (push-pull) runs every
``pushpull_interval`` with one live member and one dead one (which re-merges healed
partitions).

Re-seeding is decided here too, so every shell re-seeds alike. The machine remembers the
seed addresses it is given (config ``seeds:`` at ``start``, mDNS finds via ``add_seeds``).
While it sees no other live member it push-pulls, every ``RESEED_PROBES`` probe intervals,
with those seeds and every member it ever knew (a cable was out: rejoin in seconds, not a
push-pull period), and emits ``NeedSeeds`` with backoff. Even when not alone, each
push-pull period it contacts the remembered seeds that are not live members: two groups
that restarted apart (an island) would otherwise never meet.

One module, though long: probes, suspicion, dissemination and push-pull all read and write
the one member table, as memberlist's state.go does; splitting it would spread that state.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from peerstore.errors import CodecError

from . import messages as m
from .awareness import Awareness
from .broadcast import BroadcastQueue, retransmit_limit
from .effects import (
    AppMessage,
    AppState,
    Effect,
    MemberChanged,
    MemberRemoved,
    NeedSeeds,
    SendDatagram,
    SendStream,
)
from .state import Member, MemberState, alive_wins, dead_wins, left_wins, suspect_wins
from .suspicion import Suspicion, expected_confirmations, suspicion_min_timeout

if TYPE_CHECKING:
    from peerstore.gossip.settings import GossipSettings

Addr = tuple[str, int]
T = TypeVar("T")


class Rng(Protocol):
    """The parts of a seeded ``random.Random`` the machine uses (all its randomness)."""

    def random(self) -> float: ...
    def randint(self, a: int, b: int) -> int: ...
    def getrandbits(self, k: int) -> int: ...
    def shuffle(self, x: list[Any]) -> None: ...
    def sample(self, population: Sequence[T], k: int) -> list[T]: ...
    def choice(self, seq: Sequence[T]) -> T: ...


MAX_MEMBERS = 1024
MAX_HELPING = 64  # ping-reqs we are serving at once
MAX_PENDING_STREAMS = 64
MAX_SEEDS_PER_CALL = 16  # push-pulls one seeding call starts
MAX_REMEMBERED_SEEDS = 256  # seed addresses kept for re-seeding (config allows 256 seeds)
MAX_APP_SEEN = 4096
LEAVE_FANOUT = 16
STREAM_FORGET_AFTER = 60.0  # seconds; the shell should time streams out long before
GOSSIP_TO_THE_DEAD_PROBES = 30  # memberlist LAN: 30 s of gossip to the dead at 1 s probes
NACK_TIMEOUT_FRACTION = 0.8  # Lifeguard: a helper nacks before the requester gives up
ISOLATION_PROBES = 5  # probe intervals alone before asking for seeds
RESEED_PROBES = 2  # while alone, re-contact seeds and known members this often (probe intervals)
ARRAY_HEADER_SLACK = 2  # msgpack array header grows from 1 to 3 bytes past 15 items
# Plausible incarnations (module docstring). A boot adds 2**32 (core/membership.py), so a
# step is 64 unseen restarts; at one step a minute (1 s probes), forging from the first-sight
# ceiling up to 2**63 takes 2**24 minutes, about 30 years.
INCARNATION_STEP = 1 << 38
INCARNATION_WINDOW = 60  # probe intervals
FIRST_SIGHT_CEILING = 1 << 62
MIN_MESSAGE_BYTES = 768  # room for the largest member update beside the largest header

STATS_KEYS = (
    "probes_sent",
    "probes_failed",
    "indirect_probes_sent",
    "stream_probes_sent",
    "suspicions_raised",
    "suspicions_refuted",
    "refutations_sent",
    "suspicion_timeouts",
    "push_pulls_sent",
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "dropped_messages",
    "incarnations_capped",
)


@dataclass
class _Probe:
    target: str
    seq: int
    ack_deadline: float
    end: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass
class _Helping:
    """A ping-req we serve: forward the target's ack, or nack at the deadline."""

    requester: Addr
    requester_seq: int
    want_nack: bool
    deadline: float
    requester_id: str = ""


@dataclass
class _PendingStream:
    kind: str  # "pp" (push-pull) or "ping"
    addr: Addr
    forget_at: float
    probe_seq: int = 0


class Swim:
    """The membership state machine of one node. See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        addr: Addr,
        incarnation: int,
        settings: GossipSettings,
        rng: Rng,
        now: float,
        meta: dict[str, Any] | None = None,
        max_message_bytes: int = 1200,
    ) -> None:
        try:
            node_id = m.check_node_id(node_id)
            addr = m.check_addr(addr)
            meta = m.parse_meta(meta or {})
        except CodecError as err:
            raise ValueError(f"Swim: {err}") from None
        if type(incarnation) is not int or not 0 <= incarnation <= m.MAX_INT:
            raise ValueError(f"incarnation must be an integer in 0..2**63-1, got {incarnation!r}")
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(
                f"max_message_bytes must be at least {MIN_MESSAGE_BYTES} (a ping carrying the largest "
                f"member update), got {max_message_bytes}"
            )
        self.node_id = node_id
        self.settings = settings
        self.rng = rng
        self.max_message_bytes = max_message_bytes
        self._me = Member(node_id, addr, incarnation, MemberState.ALIVE, now, now, meta)
        self._members: dict[str, Member] = {node_id: self._me}
        self._size_cache: tuple[float, int] | None = None  # (when counted, count)
        self._awareness = Awareness(settings.awareness_max_multiplier)
        self._queue: BroadcastQueue[dict[str, Any]] = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._helping: dict[int, _Helping] = {}
        self._streams: dict[int, _PendingStream] = {}
        self._app_seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._app_seq = 0
        self._app_state: bytes | None = None
        self._seq = rng.getrandbits(31)
        self._request_id = 0
        self._started = False
        self._left = False
        inf = math.inf
        self._next_probe_at = inf
        self._gossip_at = inf
        self._push_pull_at = inf
        self._isolated_since: float | None = None
        self._need_seeds_at = inf
        self._need_seeds_backoff = 0.0
        self._reseed_at = inf
        self._seeds: dict[Addr, None] = {}  # remembered seed addresses, oldest first
        self._inc_base: dict[str, tuple[int, float]] = {}  # member -> (incarnation, since): the cap's base
        self._now = now
        self.stats: dict[str, int] = dict.fromkeys(STATS_KEYS, 0)

    # Public queries --------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        """Our current incarnation; refutations raise it (the shell may persist it)."""
        return self._me.incarnation

    @property
    def addr(self) -> Addr:
        return self._me.addr

    @property
    def local_health(self) -> int:
        """Lifeguard awareness score, 0 (healthy) .. awareness_max_multiplier - 1."""
        return self._awareness.score

    @property
    def left(self) -> bool:
        return self._left

    @property
    def broadcasts_pending(self) -> int:
        """Updates still waiting to be gossiped (after ``leave``, wait for 0 or a timeout)."""
        return len(self._queue)

    def members(self) -> list[Member]:
        """Snapshots of every known member, ourselves included, sorted by node id."""
        return [self._members[k].snapshot() for k in sorted(self._members)]

    def member(self, node_id: str) -> Member | None:
        found = self._members.get(node_id)
        return found.snapshot() if found else None

    def alive_ids(self) -> list[str]:
        """Ids of members not (yet) declared dead or left: alive or suspect, us included."""
        return sorted(k for k, v in self._members.items() if not v.state.gone)

    def seeds(self) -> list[Addr]:
        """The remembered seed addresses (config and discovery), oldest first."""
        return list(self._seeds)

    # Lifecycle -------------------------------------------------------------------------

    def start(self, now: float, seeds: Sequence[Addr]) -> list[Effect]:
        """Announce ourselves and join through ``seeds`` (push-pull with each)."""
        self._now = now
        if self._started:
            return self.add_seeds(now, seeds)
        self._started = True
        s = self.settings
        self._next_probe_at = now + self.rng.random() * s.probe_interval
        self._gossip_at = now + self.rng.random() * s.gossip_interval
        self._push_pull_at = now + self.rng.random() * s.pushpull_interval
        self._broadcast_alive_me()
        effects: list[Effect] = [MemberChanged(self.node_id, None, MemberState.ALIVE, self._me.snapshot())]
        effects += self.add_seeds(now, seeds)
        return effects

    def add_seeds(self, now: float, addrs: Iterable[Addr]) -> list[Effect]:
        """Push-pull with addresses found by mDNS or config, unless already in touch.

        The machine remembers them and re-seeds from them by itself (module docstring):
        a shell only passes on what its config and discovery find."""
        self._now = now
        valid: list[Addr] = []
        for raw in itertools.islice(addrs, MAX_REMEMBERED_SEEDS):
            try:
                addr = m.check_addr(raw)
            except CodecError:
                self.stats["dropped_messages"] += 1
                continue
            valid.append(addr)
            if addr != self._me.addr:
                self._seeds.pop(addr, None)
                self._seeds[addr] = None
                if len(self._seeds) > MAX_REMEMBERED_SEEDS:
                    del self._seeds[next(iter(self._seeds))]
        if not self._started or self._left:
            return []
        effects: list[Effect] = []
        for addr in self._uncontacted(valid)[:MAX_SEEDS_PER_CALL]:
            effects += self._start_push_pull(now, addr, join=True)
        return effects

    def load_members(self, now: float, members: Iterable[Member]) -> None:
        """Warm start: adopt ``members`` as alive, known since ``now``, with nothing left to
        gossip about them, as in a cluster that has been up for hours. For simulations and
        tests that measure a steady cluster without first paying for it to form; call it
        right after ``start``. Emits no ``MemberChanged``: tell the core yourself.

        A member we know at an equal or higher incarnation is kept; ourselves are skipped.
        The push-pull timer is spread over the whole (size-scaled) period, not bunched in
        the first interval as right after a start."""
        if not self._started or self._left:
            raise ValueError("load_members: call it after start() and before leave()")
        for given in members:
            try:
                node_id, addr = m.check_node_id(given.node_id), m.check_addr(given.addr)
                meta = m.parse_meta(given.meta) if given.meta else {}
            except CodecError as err:
                raise ValueError(f"load_members: {err}") from None
            if type(given.incarnation) is not int or not 0 <= given.incarnation <= m.MAX_INT:
                raise ValueError(f"load_members: bad incarnation {given.incarnation!r} for {node_id}")
            if node_id == self.node_id or not alive_wins(self._members.get(node_id), given.incarnation):
                continue
            if node_id not in self._members and len(self._members) >= MAX_MEMBERS:
                raise ValueError(f"load_members: more than {MAX_MEMBERS} members")
            self._members[node_id] = Member(node_id, addr, given.incarnation, MemberState.ALIVE, now, now, meta)
            self._suspicions.pop(node_id, None)
        self._probe_order, self._probe_index = [], 0  # the next probe reshuffles them all in
        self._queue = BroadcastQueue()
        self._size_cache = None
        self._push_pull_at = now + self.rng.random() * self._push_pull_period()

    def leave(self, now: float) -> list[Effect]:
        """Leave gracefully: announce LEFT at a raised incarnation and stop probing.

        Keep calling ``tick`` for a little while (until ``broadcasts_pending`` is 0 or a
        second has passed) so the news spreads; then stop the node.
        """
        self._now = now
        if self._left or not self._started:
            self._left = True
            return []
        self._left = True
        me = self._me
        old = me.state
        me.incarnation += 1
        me.state, me.state_since = MemberState.LEFT, now
        self._probe = None
        self._next_probe_at = self._push_pull_at = self._need_seeds_at = self._reseed_at = math.inf
        left = m.Left(self.node_id, me.incarnation)
        self._enqueue(left)
        effects: list[Effect] = [MemberChanged(self.node_id, old, MemberState.LEFT, me.snapshot())]
        targets = [v for v in self._members.values() if v is not me and not v.state.gone]
        for target in self.rng.sample(targets, min(LEAVE_FANOUT, len(targets))):
            gossip = m.datagram("gossip", self.node_id)
            effects.append(self._datagram(target.node_id, target.addr, gossip, first=left))
        return effects

    def set_addr(self, now: float, addr: Addr) -> list[Effect]:
        """Our address changed (DHCP): re-announce it under a raised incarnation."""
        self._now = now
        try:
            addr = m.check_addr(addr)
        except CodecError as err:
            raise ValueError(f"set_addr: {err}") from None
        me = self._me
        if addr == me.addr:
            return []
        me.addr = addr
        if self._left:
            return []
        me.incarnation += 1
        self._broadcast_alive_me()
        effects: list[Effect] = [MemberChanged(self.node_id, me.state, me.state, me.snapshot())]
        effects += self._gossip_round(now)
        return effects

    # App payloads ----------------------------------------------------------------------

    def broadcast_app(self, key: str, payload: bytes) -> None:
        """Gossip ``payload`` to every member; a newer broadcast with ``key`` replaces it.

        Receivers get ``AppMessage`` once per version and re-gossip it. The payload must
        fit in one datagram next to a gossip header.
        """
        try:
            key = m.check_app_key(key)
        except CodecError as err:
            raise ValueError(f"broadcast_app: {err}") from None
        if not isinstance(payload, bytes):
            raise ValueError("broadcast_app: payload must be bytes")
        self._app_seq += 1
        update = m.AppUpdate(self.node_id, key, self._me.incarnation, self._app_seq, payload)
        header = m.datagram("gossip", self.node_id, g=[])
        room = self.max_message_bytes - m.encoded_size(header)
        size = m.encoded_size(update.to_wire())
        if size > room - ARRAY_HEADER_SLACK:
            raise ValueError(
                f"broadcast_app: {len(payload)}-byte payload does not fit a gossip datagram "
                f"(at most about {room - ARRAY_HEADER_SLACK - (size - len(payload))} bytes): "
                "send a small notice and fetch the data over a stream"
            )
        self._enqueue(update)

    def set_app_state(self, payload: bytes | None) -> None:
        """State sent with every push-pull; peers receive it as ``AppState`` (anti-entropy)."""
        if payload is not None and (not isinstance(payload, bytes) or len(payload) > m.MAX_APP_STATE_BYTES):
            raise ValueError(
                f"set_app_state: payload must be None or bytes, at most {m.MAX_APP_STATE_BYTES} of them"
            )
        self._app_state = payload

    # Inputs ----------------------------------------------------------------------------

    def on_datagram(self, now: float, from_addr: Addr, message: Any, size: int | None = None) -> list[Effect]:
        """Handle one received datagram; malformed ones are dropped and counted."""
        self._now = now
        try:
            dg = m.parse_datagram(message)
            from_addr = m.check_addr(from_addr)
        except CodecError:
            self.stats["dropped_messages"] += 1
            return []
        if dg.sender == self.node_id:
            self.stats["dropped_messages"] += 1
            return []
        self.stats["messages_in"] += 1
        self.stats["bytes_in"] += size if size is not None else m.encoded_size(message)
        effects: list[Effect] = []
        self._touch(dg.sender, now)
        for update in dg.updates:
            self._apply(now, update, effects)
        handler = getattr(self, f"_on_{dg.kind}")
        handler(now, from_addr, dg, effects)
        return effects

    def on_stream_request(
        self, now: float, from_addr: Addr, message: Any
    ) -> tuple[dict[str, Any], list[Effect]]:
        """Answer a TCP request (push-pull or fallback ping): returns (reply, effects)."""
        self._now = now
        effects: list[Effect] = []
        kind = message.get("t") if isinstance(message, Mapping) else None
        try:
            if kind == "pp":
                pp = m.parse_push_pull(message)
                self._touch(pp.sender, now)
                # Merge before replying, so the reply already carries any refutation
                # (this is what lets two sides of a healed partition revive each other).
                self._merge(now, pp, effects)
                return self._push_pull_message(join=False), effects
            if kind == "ping":
                dg = m.parse_datagram(message)
                if dg.target != self.node_id:
                    return m.error_reply(f"this is node {self.node_id}, not {dg.target}"), effects
                for update in dg.updates:
                    self._apply(now, update, effects)
                return m.datagram("ack", self.node_id, s=dg.seq), effects
            raise CodecError(f"unknown stream request type {kind!r}")
        except CodecError as err:
            self.stats["dropped_messages"] += 1
            return m.error_reply(str(err)), effects

    def on_stream_reply(self, now: float, request_id: int, message: Any | None) -> list[Effect]:
        """The reply to a ``SendStream`` request, or ``None`` if it failed or timed out."""
        self._now = now
        effects: list[Effect] = []
        pending = self._streams.pop(request_id, None)
        if pending is None or message is None:
            return effects
        try:
            if pending.kind == "pp":
                pp = m.parse_push_pull(message)
                self._touch(pp.sender, now)
                self._merge(now, pp, effects)
            else:
                dg = m.parse_datagram(message)
                if dg.kind == "ack" and dg.seq == pending.probe_seq:
                    self._probe_acked(now, dg.seq)
        except CodecError:
            self.stats["dropped_messages"] += 1
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Run every timer that is due at ``now``."""
        self._now = now
        effects: list[Effect] = []
        if not self._started:
            return effects
        self._expire_helping(now, effects)
        self._expire_streams(now)
        probe = self._probe
        if probe and not probe.acked and not probe.indirect_sent and now >= probe.ack_deadline:
            self._send_indirect(now, probe, effects)
        if probe and now >= probe.end:
            self._finish_probe(now, probe, effects)
        if now >= self._next_probe_at:
            self._reap(now, effects)
            self._start_probe(now, effects)
        for node_id in [k for k, s in self._suspicions.items() if now >= s.deadline]:
            self._suspicion_expired(now, node_id, effects)
        if now >= self._gossip_at:
            self._gossip_at = now + self.settings.gossip_interval
            effects += self._gossip_round(now)
        if now >= self._push_pull_at:
            self._push_pull_at = now + self._push_pull_period()
            effects += self._periodic_push_pull(now)
        self._check_isolation(now, effects)
        return effects

    def next_deadline(self) -> float:
        """When ``tick`` must next be called (``math.inf``: only on input)."""
        if not self._started:
            return math.inf
        times = [self._next_probe_at, self._push_pull_at, self._need_seeds_at, self._reseed_at]
        probe = self._probe
        if probe:
            times.append(probe.end)
            if not probe.acked and not probe.indirect_sent:
                times.append(probe.ack_deadline)
        if self._queue:
            times.append(self._gossip_at)
        times.extend(s.deadline for s in self._suspicions.values())
        times.extend(h.deadline for h in self._helping.values())
        times.extend(p.forget_at for p in self._streams.values())
        return min(times)

    # Datagram handlers -----------------------------------------------------------------

    def _on_ping(self, now: float, from_addr: Addr, dg: m.Datagram, effects: list[Effect]) -> None:
        if dg.target != self.node_id:
            # Meant for whoever had this address before us: stay silent so they are
            # not mistaken for alive.
            self.stats["dropped_messages"] += 1
            return
        effects.append(self._datagram(dg.sender, from_addr, m.datagram("ack", self.node_id, s=dg.seq)))

    def _on_ack(self, now: float, from_addr: Addr, dg: m.Datagram, effects: list[Effect]) -> None:
        helping = self._helping.pop(dg.seq, None)
        if helping is not None:
            ack = m.datagram("ack", self.node_id, s=helping.requester_seq)
            effects.append(self._datagram(helping.requester_id, helping.requester, ack))
            return
        self._probe_acked(now, dg.seq)

    def _on_nack(self, now: float, from_addr: Addr, dg: m.Datagram, effects: list[Effect]) -> None:
        probe = self._probe
        if probe and probe.seq == dg.seq and probe.nacks < probe.expected_nacks:
            probe.nacks += 1

    def _on_preq(self, now: float, from_addr: Addr, dg: m.Datagram, effects: list[Effect]) -> None:
        if dg.target == self.node_id:
            effects.append(self._datagram(dg.sender, from_addr, m.datagram("ack", self.node_id, s=dg.seq)))
            return
        if len(self._helping) >= MAX_HELPING or dg.target_addr is None:
            self.stats["dropped_messages"] += 1
            return
        seq = self._next_seq()
        # The requester waits (probe_interval - probe_timeout) after asking us; answering
        # at the full probe_timeout would land our nack just after it stopped counting.
        deadline = now + NACK_TIMEOUT_FRACTION * self.settings.probe_timeout
        self._helping[seq] = _Helping(from_addr, dg.seq, dg.want_nack, deadline, dg.sender)
        effects.append(self._datagram(
            dg.target, dg.target_addr, m.datagram("ping", self.node_id, s=seq, to=dg.target)))

    def _on_gossip(self, now: float, from_addr: Addr, dg: m.Datagram, effects: list[Effect]) -> None:
        pass  # its updates were applied already

    # Probing ---------------------------------------------------------------------------

    def _start_probe(self, now: float, effects: list[Effect]) -> None:
        s = self.settings
        self._next_probe_at = now + self._awareness.scale(s.probe_interval)
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(
            target=target.node_id,
            seq=seq,
            ack_deadline=now + self._awareness.scale(s.probe_timeout),
            end=self._next_probe_at,
        )
        buddy = None
        if target.state is MemberState.SUSPECT:
            # Lifeguard's buddy rule: tell the suspect directly so it can refute at once.
            buddy = m.Suspect(target.node_id, target.incarnation, self.node_id)
        ping = m.datagram("ping", self.node_id, s=seq, to=target.node_id)
        effects.append(self._datagram(target.node_id, target.addr, ping, first=buddy))
        self.stats["probes_sent"] += 1

    def _next_probe_target(self) -> Member | None:
        reshuffled = False
        while True:
            if self._probe_index >= len(self._probe_order):
                if reshuffled:
                    return None
                self._probe_order = [
                    k for k, v in self._members.items() if v is not self._me and not v.state.gone
                ]
                self.rng.shuffle(self._probe_order)
                self._probe_index = 0
                reshuffled = True
                continue
            node_id = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(node_id)
            if member is not None and member is not self._me and not member.state.gone:
                return member

    def _add_to_probe_order(self, node_id: str) -> None:
        if node_id not in self._probe_order:
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), node_id)

    def _send_indirect(self, now: float, probe: _Probe, effects: list[Effect]) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target)
        if target is None or target.state.gone:
            return
        helpers = [
            v
            for v in self._members.values()
            if v is not self._me and v is not target and v.state is MemberState.ALIVE
        ]
        helpers = self.rng.sample(helpers, min(self.settings.indirect_checks, len(helpers)))
        for helper in helpers:
            preq = m.datagram(
                "preq", self.node_id, s=probe.seq, to=target.node_id, ad=list(target.addr), nk=True
            )
            effects.append(self._datagram(helper.node_id, helper.addr, preq))
        probe.expected_nacks = len(helpers)
        self.stats["indirect_probes_sent"] += len(helpers)
        if len(helpers) < 2 and len(self._streams) < MAX_PENDING_STREAMS:
            # Too few helpers to trust: also try TCP, which gets through where UDP is lossy.
            request_id = self._next_request_id()
            forget_at = now + STREAM_FORGET_AFTER
            self._streams[request_id] = _PendingStream("ping", target.addr, forget_at, probe.seq)
            ping = m.datagram("ping", self.node_id, s=probe.seq, to=target.node_id)
            effects.append(SendStream(target.addr, ping, request_id))
            self.stats["stream_probes_sent"] += 1

    def _probe_acked(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq or probe.acked:
            return
        probe.acked = True
        self._awareness.apply_delta(-1)
        target = self._members.get(probe.target)
        if target is not None:
            target.last_contact = now

    def _finish_probe(self, now: float, probe: _Probe, effects: list[Effect]) -> None:
        self._probe = None
        if probe.acked:
            return
        self.stats["probes_failed"] += 1
        # Lifeguard: helpers that could not reach the target say so (nack). Nacks that
        # never came suggest our own network or CPU is the problem.
        if probe.expected_nacks > 0:
            self._awareness.apply_delta(probe.expected_nacks - probe.nacks)
        else:
            self._awareness.apply_delta(1)
        target = self._members.get(probe.target)
        if target is not None and not target.state.gone:
            self._apply(now, m.Suspect(target.node_id, target.incarnation, self.node_id), effects)

    def _suspicion_expired(self, now: float, node_id: str, effects: list[Effect]) -> None:
        self._suspicions.pop(node_id, None)
        member = self._members.get(node_id)
        if member is None or member.state is not MemberState.SUSPECT:
            return
        self.stats["suspicion_timeouts"] += 1
        self._apply(now, m.Dead(node_id, member.incarnation, self.node_id), effects)

    def _expire_helping(self, now: float, effects: list[Effect]) -> None:
        for seq in [k for k, h in self._helping.items() if now >= h.deadline]:
            helping = self._helping.pop(seq)
            if helping.want_nack:
                nack = m.datagram("nack", self.node_id, s=helping.requester_seq)
                effects.append(self._datagram(helping.requester_id, helping.requester, nack))

    def _expire_streams(self, now: float) -> None:
        for request_id in [k for k, p in self._streams.items() if now >= p.forget_at]:
            del self._streams[request_id]

    # Applying updates ------------------------------------------------------------------

    def _apply(self, now: float, update: m.Update, effects: list[Effect]) -> None:
        if not isinstance(update, m.AppUpdate):
            capped = self._plausible(now, update.node, update.incarnation)
            if capped != update.incarnation:
                self.stats["incarnations_capped"] += 1
                update = dataclasses.replace(update, incarnation=capped)
        if isinstance(update, m.Alive):
            self._apply_alive(now, update, effects)
        elif isinstance(update, m.Suspect):
            self._apply_suspect(now, update, effects)
        elif isinstance(update, m.Dead):
            self._apply_dead(now, update, effects)
        elif isinstance(update, m.Left):
            self._apply_left(now, update, effects)
        else:
            self._apply_app(update, effects)

    def _apply_alive(self, now: float, a: m.Alive, effects: list[Effect]) -> None:
        member = self._members.get(a.node)
        if member is self._me:
            stale = a.incarnation < member.incarnation or (
                a.incarnation == member.incarnation and a.addr == member.addr and a.meta == member.meta
            )
            if not stale and not self._left:
                self._refute(a.incarnation)  # someone claims a newer "us" than we are
            return
        if not alive_wins(member, a.incarnation):
            return
        if member is None:
            if len(self._members) >= MAX_MEMBERS:
                self.stats["dropped_messages"] += 1
                return
            member = Member(a.node, a.addr, a.incarnation, MemberState.ALIVE, now, None, dict(a.meta))
            self._members[a.node] = member
            self._add_to_probe_order(a.node)
            effects.append(MemberChanged(a.node, None, MemberState.ALIVE, member.snapshot()))
        else:
            old = member.state
            changed = old is not MemberState.ALIVE or member.addr != a.addr or member.meta != a.meta
            self._suspicions.pop(a.node, None)
            if old is MemberState.SUSPECT:
                self.stats["suspicions_refuted"] += 1
            if old.gone:
                self._add_to_probe_order(a.node)
            member.incarnation, member.addr, member.meta = a.incarnation, a.addr, dict(a.meta)
            if old is not MemberState.ALIVE:
                member.state, member.state_since = MemberState.ALIVE, now
            if changed:
                effects.append(MemberChanged(a.node, old, MemberState.ALIVE, member.snapshot()))
        self._enqueue(a)

    def _apply_suspect(self, now: float, s: m.Suspect, effects: list[Effect]) -> None:
        member = self._members.get(s.node)
        suspicion = self._suspicions.get(s.node)
        if suspicion is not None and member is not None and s.incarnation >= member.incarnation:
            # Already suspect: an independent accuser shortens the timer, and passing
            # the news on lets others count it too.
            if suspicion.confirm(s.accuser):
                self._enqueue(s)
            return
        if not suspect_wins(member, s.incarnation):
            return
        assert member is not None
        if member is self._me:
            if not self._left:
                self._refute(s.incarnation)
            return
        self._enqueue(s)
        member.incarnation, member.state, member.state_since = s.incarnation, MemberState.SUSPECT, now
        self.stats["suspicions_raised"] += 1
        n = self._estimated_size()
        st = self.settings
        min_timeout = suspicion_min_timeout(st.suspicion_mult, n, st.probe_interval)
        self._suspicions[s.node] = Suspicion(
            accuser=s.accuser,
            k=expected_confirmations(st.suspicion_mult, n),
            min_timeout=min_timeout,
            max_timeout=st.suspicion_max_timeout_mult * min_timeout,
            start=now,
        )
        effects.append(MemberChanged(s.node, MemberState.ALIVE, MemberState.SUSPECT, member.snapshot()))

    def _apply_dead(self, now: float, d: m.Dead, effects: list[Effect]) -> None:
        member = self._members.get(d.node)
        if not dead_wins(member, d.incarnation):
            return
        assert member is not None
        self._suspicions.pop(d.node, None)
        if member is self._me:
            if not self._left:
                self._refute(d.incarnation)
            return
        self._enqueue(d)
        old = member.state
        member.incarnation, member.state, member.state_since = d.incarnation, MemberState.DEAD, now
        effects.append(MemberChanged(d.node, old, MemberState.DEAD, member.snapshot()))

    def _apply_left(self, now: float, lft: m.Left, effects: list[Effect]) -> None:
        member = self._members.get(lft.node)
        if not left_wins(member, lft.incarnation):
            return
        assert member is not None
        if member is self._me:
            # A leave from an earlier life of ours; we are back.
            self._refute(lft.incarnation)
            return
        self._suspicions.pop(lft.node, None)
        self._enqueue(lft)
        old = member.state
        member.incarnation, member.state, member.state_since = lft.incarnation, MemberState.LEFT, now
        effects.append(MemberChanged(lft.node, old, MemberState.LEFT, member.snapshot()))

    def _apply_app(self, u: m.AppUpdate, effects: list[Effect]) -> None:
        if u.origin == self.node_id:
            return
        slot = (u.origin, u.key)
        version = (u.incarnation, u.seq)
        seen = self._app_seen.pop(slot, None)
        if seen is not None and seen >= version:
            self._app_seen[slot] = seen
            return
        self._app_seen[slot] = version
        if len(self._app_seen) > MAX_APP_SEEN:
            del self._app_seen[next(iter(self._app_seen))]
        effects.append(AppMessage(u.origin, u.key, u.payload))
        self._enqueue(u)

    def _plausible(self, now: float, node_id: str, incarnation: int) -> int:
        """``incarnation`` capped to what a claim about ``node_id`` may plausibly carry now
        (module docstring); our own entry is capped the same way."""
        member = self._members.get(node_id)
        if member is None:
            return min(incarnation, FIRST_SIGHT_CEILING)
        base, since = self._inc_base.get(node_id, (member.incarnation, now))
        if now - since >= INCARNATION_WINDOW * self.settings.probe_interval or base > member.incarnation:
            base, since = member.incarnation, now
        self._inc_base[node_id] = (base, since)
        # One above what we hold is always plausible: it is how the member refutes.
        return min(incarnation, max(base + INCARNATION_STEP, member.incarnation + 1))

    def _refute(self, accused_incarnation: int) -> None:
        me = self._me
        me.incarnation = max(me.incarnation, accused_incarnation) + 1
        self._awareness.apply_delta(1)  # being accused hints that we are the slow one
        self.stats["refutations_sent"] += 1
        self._broadcast_alive_me()

    def _broadcast_alive_me(self) -> None:
        me = self._me
        self._enqueue(m.Alive(me.node_id, me.incarnation, me.addr, dict(me.meta)))

    def _touch(self, node_id: str, now: float) -> None:
        member = self._members.get(node_id)
        if member is not None and member is not self._me:
            member.last_contact = now

    # Dissemination ---------------------------------------------------------------------

    def _enqueue(self, update: m.Update) -> None:
        if isinstance(update, m.AppUpdate):
            key = f"u:{update.origin}:{update.key}"
        else:
            key = f"m:{update.node}"
        wire = update.to_wire()
        self._queue.put(key, wire, m.encoded_size(wire))

    def _with_updates(self, message: dict[str, Any], updates: list[dict[str, Any]]) -> dict[str, Any]:
        if updates or message["t"] == "gossip":
            message["g"] = updates
        return message

    def _datagram(
        self, to: str, addr: Addr, message: dict[str, Any], *, first: m.Update | None = None
    ) -> SendDatagram:
        """A datagram for node ``to`` at ``addr``, carrying as many queued updates as fit
        the size budget (the shell binds ``to`` into the datagram's MAC)."""
        updates: list[dict[str, Any]] = []
        if message["t"] != "nack":
            room = self.max_message_bytes - m.encoded_size({**message, "g": []}) - ARRAY_HEADER_SLACK
            if first is not None:
                wire = first.to_wire()
                room -= m.encoded_size(wire)
                updates.append(wire)
            limit = retransmit_limit(self.settings.retransmit_mult, self._estimated_size())
            updates += self._queue.take(room, limit)
        message = self._with_updates(message, updates)
        self.stats["messages_out"] += 1
        self.stats["bytes_out"] += m.encoded_size(message)
        return SendDatagram(addr, message, to)

    def _gossip_round(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if not self._queue:
            return effects
        to_the_dead = GOSSIP_TO_THE_DEAD_PROBES * self.settings.probe_interval
        candidates = [
            v
            for v in self._members.values()
            if v is not self._me
            and (not v.state.gone or (v.state is MemberState.DEAD and now - v.state_since <= to_the_dead))
        ]
        for target in self.rng.sample(candidates, min(self.settings.gossip_nodes, len(candidates))):
            if not self._queue:
                break
            effects.append(self._datagram(target.node_id, target.addr, m.datagram("gossip", self.node_id)))
        return effects

    def _estimated_size(self) -> int:
        """memberlist's node count: members not gone, plus the recently gone.

        Counted at most once per half probe interval: it only feeds log10(n) (retransmit
        counts, suspicion timeouts), and counting every member for every datagram made
        each gossip round quadratic in the cluster size."""
        now = self._now
        if self._size_cache is not None and now - self._size_cache[0] < self.settings.probe_interval / 2:
            return self._size_cache[1]
        to_the_dead = GOSSIP_TO_THE_DEAD_PROBES * self.settings.probe_interval
        size = sum(
            1 for v in self._members.values() if not v.state.gone or now - v.state_since <= to_the_dead
        )
        self._size_cache = (now, size)
        return size

    # Push-pull -------------------------------------------------------------------------

    def _push_pull_period(self) -> float:
        """memberlist's pushPullScale: slower beyond 32 members."""
        n = sum(1 for v in self._members.values() if not v.state.gone)
        interval = self.settings.pushpull_interval
        if n <= 32:
            return interval
        return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def _periodic_push_pull(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        live = [v for v in self._members.values() if v is not self._me and not v.state.gone]
        if live:
            effects += self._start_push_pull(now, self.rng.choice(live).addr, join=False)
        # Also try one member we believe dead: if it is alive on the far side of a healed
        # partition, the exchange makes both sides refute and re-merge.
        dead = [v for v in self._members.values() if v.state is MemberState.DEAD]
        if dead:
            effects += self._start_push_pull(now, self.rng.choice(dead).addr, join=False)
        # Island check: seeds that are not live members (add_seeds would skip live ones).
        effects += self._contact_some(now, list(self._seeds))
        return effects

    def _uncontacted(self, addrs: Iterable[Addr]) -> list[Addr]:
        """``addrs`` without duplicates, ours, live members' and those a push-pull is
        already under way with."""
        skip = {v.addr for v in self._members.values() if not v.state.gone}
        skip |= {p.addr for p in self._streams.values() if p.kind == "pp"}
        skip.add(self._me.addr)
        return [a for a in dict.fromkeys(addrs) if a not in skip]

    def _contact_some(self, now: float, addrs: list[Addr]) -> list[Effect]:
        """Join push-pulls with up to MAX_SEEDS_PER_CALL of ``addrs``, picked at random
        when there are more, so successive rounds get round to all of them."""
        fresh = self._uncontacted(addrs)
        if len(fresh) > MAX_SEEDS_PER_CALL:
            fresh = self.rng.sample(fresh, MAX_SEEDS_PER_CALL)
        effects: list[Effect] = []
        for addr in fresh:
            effects += self._start_push_pull(now, addr, join=True)
        return effects

    def _start_push_pull(self, now: float, addr: Addr, *, join: bool) -> list[Effect]:
        if addr == self._me.addr or len(self._streams) >= MAX_PENDING_STREAMS:
            return []
        request_id = self._next_request_id()
        self._streams[request_id] = _PendingStream("pp", addr, now + STREAM_FORGET_AFTER)
        self.stats["push_pulls_sent"] += 1
        return [SendStream(addr, self._push_pull_message(join=join), request_id)]

    def _push_pull_message(self, *, join: bool) -> dict[str, Any]:
        return m.push_pull(self.node_id, join, list(self._members.values()), self._app_state)

    def _merge(self, now: float, pp: m.PushPull, effects: list[Effect]) -> None:
        for remote in pp.members:
            if remote.state is MemberState.ALIVE:
                alive = m.Alive(remote.node_id, remote.incarnation, remote.addr, remote.meta)
                self._apply(now, alive, effects)
            elif remote.state is MemberState.LEFT:
                self._apply(now, m.Left(remote.node_id, remote.incarnation), effects)
            else:
                # memberlist: a peer's "dead" only makes us suspect; our own timer decides.
                self._apply(now, m.Suspect(remote.node_id, remote.incarnation, pp.sender), effects)
        if pp.app_state is not None:
            effects.append(AppState(pp.sender, pp.app_state))

    # Housekeeping ----------------------------------------------------------------------

    def _reap(self, now: float, effects: list[Effect]) -> None:
        s = self.settings
        for node_id, member in list(self._members.items()):
            if (member.state is MemberState.DEAD and now - member.state_since >= s.dead_reclaim_time) or (
                member.state is MemberState.LEFT
                and member is not self._me
                and now - member.state_since >= s.tombstone_lifetime
            ):
                del self._members[node_id]
                self._inc_base.pop(node_id, None)
                effects.append(MemberRemoved(node_id, member.snapshot()))

    def _check_isolation(self, now: float, effects: list[Effect]) -> None:
        """Alone (no other live member): re-seed briskly, and ask the shell with backoff."""
        if self._left:
            return
        if any(v is not self._me and not v.state.gone for v in self._members.values()):
            self._isolated_since = None
            self._need_seeds_at = self._reseed_at = math.inf
            return
        interval = self.settings.probe_interval
        if self._isolated_since is None:
            self._isolated_since = now
            self._need_seeds_backoff = ISOLATION_PROBES * interval
            self._need_seeds_at = now + self._need_seeds_backoff
            self._reseed_at = now + RESEED_PROBES * interval
            return
        if now >= self._reseed_at:
            self._reseed_at = now + RESEED_PROBES * interval
            known = [v.addr for v in self._members.values() if v is not self._me]
            effects += self._contact_some(now, [*self._seeds, *known])
        if now >= self._need_seeds_at:
            effects.append(NeedSeeds())
            ceiling = max(self.settings.pushpull_interval, interval)
            self._need_seeds_backoff = min(2 * self._need_seeds_backoff, ceiling)
            self._need_seeds_at = now + self._need_seeds_backoff

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % (m.MAX_INT + 1)
        return self._seq

    def _next_request_id(self) -> int:
        self._request_id += 1
        return self._request_id
