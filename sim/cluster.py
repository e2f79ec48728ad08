"""A seeded simulated cluster that drives the real sans-IO machines.

Every node runs the same ``NodeCore`` and ``Swim`` as the trio daemon; this module is
their shell: it carries out their effects over the simulated network (``network.py``)
and disks (``disk.py``), feeds back completions, runs clients, and injects faults. One
master seed fixes the run: ``cluster.loop.digest`` identifies it.

Membership is either ``"swim"`` (the default: each core learns who is alive from its own
Swim view, as in the daemon) or ``"static"`` (every node believes every node is alive;
``announce()`` tells the truth on demand - for unit tests of the core alone).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from peerstore.shell.config import GossipSettings
from peerstore.core import events as ev
from peerstore.core.membership import MembershipBridge, boot_incarnation
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.errors import CodecError, FormatError, PeerstoreError
from peerstore.gossip import messages as gm
from peerstore.gossip import (
    MemberChanged,
    MemberState,
    NeedSeeds,
    SendDatagram,
    SendStream,
    Swim,
)
from peerstore.core.snapshots import restore_catalog, restore_counters
from peerstore.model.manifest import Manifest
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg
from sim.content import Content, FileModel, model_id, parity_content
from sim.disk import FSYNC_EIO, MANIFEST_OVERHEAD, SSD, DiskModel, SimDisk
from sim.ledger import Ledger
from sim.loop import EventLoop, Seeds
from sim.network import NIC_1GBE, Clog, LinkModel, Network
from sim.node import UDP_BACKLOG, SimNode
from sim.warm import warm_start

Addr = tuple[str, int]
HEADER_BYTES = 96  # frame header + MAC of a data-path message
GOSSIP_PORT = 7420
SMALL_IO = 4096


@dataclass
class ClientRecord:
    """What one client saw: every reply, and for gets, what it received."""

    kind: str
    node: str
    sources: list[FileModel] = field(default_factory=list)
    name: str = ""
    replies: list[Any] = field(default_factory=list)
    final: Any = None
    manifest: Manifest | None = None
    delivered: dict[int, bool] = field(default_factory=dict)  # stripe -> bytes correct
    disconnected: bool = False
    started: float = 0.0
    finished: float | None = None
    client: int = 0
    seen: frozenset[Any] = frozenset()  # gets: versions of the name its node knew when it started
    entry: Any = None  # gets: the catalog entry the node resolved

    @property
    def done(self) -> bool:
        return self.final is not None or self.disconnected

    @property
    def ok(self) -> bool:
        return self.final is not None and not isinstance(self.final, ev.Failed)


class Cluster:
    """N simulated nodes, a network between them, and clients using them."""

    def __init__(
        self,
        n: int = 5,
        seed: int = 0,
        *,
        policy: Policy | None = None,
        settings: CoreSettings | None = None,
        gossip: GossipSettings | None = None,
        link: LinkModel | None = None,
        nic: float = NIC_1GBE,
        disk: DiskModel = SSD,
        core_class: type[NodeCore] = NodeCore,
        membership: str = "swim",
        cores: bool = True,
        seeds_per_node: int = 2,
        incarnation: Callable[[int], int] = boot_incarnation,
        wire_roundtrip: bool = True,
        gossip_stream_timeout: float = 5.0,
        form: bool | str = True,
        form_timeout: float = 60.0,
        booted: int | None = None,
        mdns: bool = True,
    ):
        if membership not in ("swim", "static"):
            raise ValueError(f"membership must be 'swim' or 'static', got {membership!r}")
        self.seed = seed
        self.seeds = Seeds(seed)
        self.loop = EventLoop()
        self.net = Network(self.loop, self.seeds.rng("fault", "network"), link=link)
        self.net.on_break = self._connection_broke
        self.fault_rng = self.seeds.rng("fault", "disk")
        policy = policy or Policy(shard_size=64 * 1024)
        self.settings = settings or CoreSettings(policy=policy)
        self.gossip = gossip or GossipSettings()
        self.core_class = core_class
        self.membership = membership
        self.with_cores = cores
        self.seeds_per_node = seeds_per_node
        self.incarnation = incarnation
        self.wire_roundtrip = wire_roundtrip
        self.gossip_stream_timeout = gossip_stream_timeout
        self.mdns = mdns
        self.mdns_rng = self.seeds.rng("fault", "mdns")
        self.ids = [f"{i + 1:02x}" + model_id("node", seed, i).hex()[:14] for i in range(n)]
        self.nodes: dict[str, SimNode] = {}
        self.addr_owner: dict[Addr, str] = {}
        self._addresses = 0
        self.clients: dict[int, ClientRecord] = {}
        self.sources: dict[bytes, FileModel] = {}  # whole-file hash -> what was put
        self.violations: list[str] = []
        self._violation_keys: set[str] = set()
        self.faults: list[tuple[float, str]] = []
        self.corrupted: set[tuple[str, bytes]] = set()
        self.ledger = Ledger(self)  # what clients were told and what faults excuse: see sim.ledger
        self.retired: set[str] = set()  # ids whose disk was lost for good (the machine got a new id)
        self.member_observers: list[Callable[[float, str, MemberChanged], None]] = []
        self.stats: Counter[str] = Counter()
        self.next_handle = 0
        self.highest_incarnation: dict[str, int] = {}  # announced by each node, any boot
        for index, node_id in enumerate(self.ids):
            node = SimNode(node_id, index, self._new_addr(node_id), SimDisk(model=disk))
            self.nodes[node_id] = node
            self.net.add_host(node_id, nic)
        warm = form == "warm"
        for node in self.nodes.values():
            if booted is not None and node.index >= booted:
                node.running = False  # never started: unknown to everyone until join()
                self.net.hosts[node.node_id].listening = False
                continue
            self._boot(node, [] if warm else self._initial_seeds(node))
        if warm and membership == "swim":
            warm_start(self)
        elif form and membership == "swim" and n > 1:
            if not self.run_until(self.converged, max_time=form_timeout, step=0.1):
                raise AssertionError(f"membership did not form within {form_timeout}s (seed={seed})")

    # -- booting -------------------------------------------------------------------------

    def _new_addr(self, node_id: str) -> Addr:
        self._addresses += 1
        addr = (f"10.{self._addresses // 250}.{self._addresses % 250}.1", GOSSIP_PORT)
        self.addr_owner[addr] = node_id
        return addr

    def _initial_seeds(self, node: SimNode) -> list[Addr]:
        """A couple of earlier nodes, as a static ``seeds:`` list would name."""
        earlier = self.ids[max(0, node.index - self.seeds_per_node): node.index]
        if not earlier and node.index == 0 and len(self.ids) > 1:
            earlier = self.ids[1: 1 + self.seeds_per_node]
        return [self.nodes[i].addr for i in earlier]

    def _boot(self, node: SimNode, seeds: list[Addr]) -> None:
        node.boot += 1
        node.running = True
        node.reset_process()
        node.disk.boot_epoch += 1  # durable before the node announces itself
        now = self.loop.now
        if self.with_cores:
            catalog, problem = restore_catalog(node.disk.catalog)
            if problem:  # as the daemon: the rotten file is moved aside, peers fill the catalog in
                node.disk.catalog = None
                self._fault(f"{node.node_id[:4]} boots with an empty catalog: {problem}")
            counters = restore_counters(node.disk.counters)
            alive = frozenset({node.node_id})
            if self.membership == "static":
                alive = frozenset(i for i in self.ids if self.nodes[i].running)
            node.core = self.core_class(
                node.node_id, self.settings, self.seeds.rng("core", node.node_id, node.boot),
                catalog=catalog, inventory=frozenset(node.disk.durable), alive=alive, counters=counters,
                boot_epoch=node.disk.boot_epoch,
            )
        if self.membership == "swim":
            incarnation = self.incarnation(node.disk.boot_epoch)
            self._check_incarnation(node, incarnation)
            node.swim = Swim(
                node_id=node.node_id, addr=node.addr, incarnation=incarnation, settings=self.gossip,
                rng=self.seeds.rng("swim", node.node_id, node.boot), now=now,
            )
            node.glue = MembershipBridge(node.node_id)
            if node.core is not None:
                node.glue.publish_catalog(node.core, node.swim)
            self._swim_effects(node, node.swim.start(now, seeds))
            if self.mdns and self.loop.now > 0:
                self._announce_mdns(node)
        if node.core is not None:
            self.loop.after(0.0, self.feed, node.node_id, ev.Started(), node.boot)

    def _check_incarnation(self, node: SimNode, incarnation: int) -> None:
        """A node must come back above every incarnation it (or anyone, about it) used,
        or old suspicions and deaths beat its fresh 'alive'."""
        held = [n.swim.member(node.node_id) for n in self.nodes.values() if n.swim is not None and n is not node]
        previous = max([m.incarnation for m in held if m is not None] + [self.highest_incarnation.get(node.node_id, -1)])
        if incarnation <= previous:
            self.violation(
                f"incarnation:{node.node_id}",
                f"node {node.node_id[:4]} restarted with incarnation {incarnation}, not above {previous} "
                "(its own or others' view from before): the incarnation did not survive the restart",
            )
        self.highest_incarnation[node.node_id] = max(incarnation, previous)

    # -- running -------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        self.loop.run(max_time=self.loop.now + seconds)

    def run_until(self, predicate: Callable[[], bool], *, max_time: float, step: float = 0.25) -> bool:
        """Advance in ``step``s until ``predicate()`` (checked between steps); False if
        ``max_time`` more virtual seconds pass first."""
        deadline = self.loop.now + max_time
        while True:
            if predicate():
                return True
            if self.loop.now >= deadline:
                return False
            self.loop.run(max_time=min(deadline, self.loop.now + step))

    def wait(self, *clients: int, max_time: float = 600.0) -> list[ClientRecord]:
        """Run until every client is done; fail loudly (with the seed) if they are not."""
        records = [self.clients[c] for c in clients]
        finished = self.loop.run(lambda: all(r.done for r in records), max_time=self.loop.now + max_time)
        if not finished:
            raise AssertionError(
                f"clients {clients} not done after {max_time}s virtual (seed={self.seed}): "
                f"{[r.replies[-1:] for r in records]}"
            )
        return records

    def violation(self, key: str, message: str) -> None:
        """Record an invariant violation once per ``key``."""
        if key not in self._violation_keys:
            self._violation_keys.add(key)
            self.violations.append(f"t={self.loop.now:.3f} {message}")
            self.loop.trace(f"VIOLATION {message}")

    # -- node inputs ---------------------------------------------------------------------

    def _input(self, node: SimNode, boot: int, handler: Callable[..., None], *args: Any) -> None:
        """Hand something to a node's process: void if it died or restarted since, queued
        while it is frozen."""
        if node.boot != boot or not node.running:
            return
        if node.frozen:
            node.backlog.append((handler, args))
            return
        handler(node, *args)

    def feed(self, node_id: str, event: Any, boot: int | None = None) -> None:
        """Give ``event`` to a node's core (void if the process died or restarted)."""
        node = self.nodes[node_id]
        self._input(node, node.boot if boot is None else boot, self._feed_core, event)

    def _feed_core(self, node: SimNode, event: Any) -> None:
        assert node.core is not None
        self.loop.trace(f"{node.node_id[:4]} <- {type(event).__name__} {_brief(event)}")
        self._core_effects(node, node.core.handle(self.loop.now, event))

    def complete(self, node: SimNode, delay: float, event: Any) -> None:
        self.loop.at(self.loop.now + delay, self.feed, node.node_id, event, node.boot)

    def new_handle(self, node: SimNode, content: Content) -> int:
        self.next_handle += 1
        node.handles[self.next_handle] = content
        return self.next_handle

    # -- timers --------------------------------------------------------------------------

    def _schedule_core_tick(self, node: SimNode) -> None:
        deadline = node.core.next_deadline() if node.core is not None else None
        if deadline is not None and deadline < node.core_tick_at:
            node.core_tick_at = deadline
            self.loop.at(deadline, self._core_tick, node, node.boot, deadline)

    def _core_tick(self, node: SimNode, boot: int, when: float) -> None:
        self._input(node, boot, self._run_core_tick, when)

    def _run_core_tick(self, node: SimNode, when: float) -> None:
        if node.core_tick_at != when:
            return
        node.core_tick_at = math.inf
        assert node.core is not None
        self._core_effects(node, node.core.tick(self.loop.now))

    def _schedule_swim_tick(self, node: SimNode) -> None:
        assert node.swim is not None
        deadline = node.swim.next_deadline()
        if deadline < node.swim_tick_at:
            deadline = max(deadline, self.loop.now)
            node.swim_tick_at = deadline
            self.loop.at(deadline, self._swim_tick, node, node.boot, deadline)

    def _swim_tick(self, node: SimNode, boot: int, when: float) -> None:
        self._input(node, boot, self._run_swim_tick, when)

    def _run_swim_tick(self, node: SimNode, when: float) -> None:
        if node.swim_tick_at != when:
            return
        node.swim_tick_at = math.inf
        assert node.swim is not None
        self._swim_effects(node, node.swim.tick(self.loop.now))

    # -- gossip effects ------------------------------------------------------------------

    def _swim_effects(self, node: SimNode, effects: list[Any]) -> None:
        swim = node.swim
        assert swim is not None
        now = self.loop.now
        for effect in effects:
            kind = type(effect)
            if kind is SendDatagram:
                self._send_datagram(node, effect)
            elif kind is SendStream:
                self._send_gossip_stream(node, effect)
            elif kind is MemberChanged:
                self.loop.trace(f"{node.node_id[:4]} sees {effect.node_id[:4]} {effect.new.value} "
                                f"i={effect.member.incarnation}")
                if effect.new is MemberState.ALIVE and effect.node_id != node.node_id:
                    # As the daemon does: a member heard of again (maybe at a new address)
                    # gets a fresh connection instead of a silent stale one.
                    self.net.reset_if_stale(node.node_id, effect.node_id)
                for observer in self.member_observers:
                    observer(now, node.node_id, effect)
            elif kind is NeedSeeds:
                # As in the daemon: Swim re-contacts its remembered seeds and known members
                # itself; discoveries reach it only through _announce_mdns.
                self.stats["need_seeds"] += 1
                self.loop.trace(f"{node.node_id[:4]} alone: re-seeding from {len(swim.seeds())} address(es)")
        if node.core is not None and node.glue is not None and effects:
            core_effects = node.glue.on_swim_effects(now, node.core, swim, effects)
            if core_effects:
                self._core_effects(node, core_effects)
        if node.swim is swim:
            self._schedule_swim_tick(node)

    def _announce_mdns(self, node: SimNode) -> None:
        """mDNS: a node that starts or changes address is announced on the LAN; every
        node that hears it (its side of any partition) adds it as a seed, and it adds
        every node its own browse finds, as the daemon does with each discovery."""
        delay = self.mdns_rng.uniform(0.05, 1.0)
        self.loop.after(delay, self._mdns_heard, node.node_id, node.boot, node.addr)

    def _mdns_heard(self, node_id: str, boot: int, addr: Addr) -> None:
        node = self.nodes[node_id]
        if node.boot != boot or node.addr != addr or not node.running:
            return
        heard = [n for n in self.nodes.values() if n is not node and n.running and n.swim is not None
                 and self.net.reachable(n.node_id, node_id) and self.net.reachable(node_id, n.node_id)]
        for other in heard:
            self._input(other, other.boot, self._add_seeds, [addr])
        self._input(node, boot, self._add_seeds, [n.addr for n in heard][:16])

    def _add_seeds(self, node: SimNode, addrs: list[Addr]) -> None:
        assert node.swim is not None
        self._swim_effects(node, node.swim.add_seeds(self.loop.now, addrs))

    def _gossip_dropped(self, why: str) -> None:
        self.stats[f"gossip_dropped_{why}"] += 1

    def _send_datagram(self, node: SimNode, effect: SendDatagram) -> None:
        """With ``wire_roundtrip`` the datagram travels as the daemon's bytes: encoded
        with its size limit (too big: dropped by the sender) and decoded on arrival."""
        message: Any = effect.message
        if self.wire_roundtrip:
            try:
                message = gm.encode_datagram(message)
            except CodecError:
                self._gossip_dropped("send")
                return
        dst = self.addr_owner.get(effect.addr)
        if dst is None:
            self.stats["datagrams_to_nowhere"] += 1
            return
        self.net.send_datagram(node.node_id, dst, self._datagram_lands, dst, effect.addr, node.addr,
                               node.node_id, message)

    def _datagram_lands(self, dst_id: str, addr: Addr, from_addr: Addr, sender: str, message: Any) -> None:
        node = self.nodes[dst_id]
        if node.addr != addr or not node.running:
            return
        if node.frozen:
            if node.backlog_datagrams >= UDP_BACKLOG:
                self.stats["datagrams_overflowed"] += 1
                return
            node.backlog_datagrams += 1
        self._input(node, node.boot, self._on_datagram, from_addr, sender, message)

    def _on_datagram(self, node: SimNode, from_addr: Addr, sender: str, message: Any) -> None:
        """``sender`` is the node id the daemon's MAC tag would authenticate."""
        assert node.swim is not None
        if isinstance(message, bytes):
            try:
                message = gm.decode_datagram(message, sender)
            except CodecError as err:
                self._gossip_dropped(type(err).__name__)
                return
        self._swim_effects(node, node.swim.on_datagram(self.loop.now, from_addr, message))

    def _send_gossip_stream(self, node: SimNode, effect: SendStream) -> None:
        rid, boot = effect.request_id, node.boot
        self.loop.at(self.loop.now + self.gossip_stream_timeout, self._gossip_stream_failed, node, boot, rid)
        try:
            data = gm.encode(effect.message)
        except CodecError:
            self._gossip_dropped("send")
            self.loop.after(0.0, self._gossip_stream_failed, node, boot, rid)
            return
        size = len(data) + HEADER_BYTES
        node.gossip_stream_bytes += size
        dst = self.addr_owner.get(effect.addr)
        if dst is None:
            return  # nobody has that address: the connect times out
        gen = self.net.send_stream(
            node.node_id, dst, size, self._gossip_stream_lands, dst, effect.addr, node.node_id, boot,
            node.addr, rid, data if self.wire_roundtrip else effect.message,
            on_fail=lambda why: self._gossip_stream_failed(node, boot, rid),
        )
        if gen:
            node.gossip_streams[rid] = (dst, gen)

    def _gossip_stream_lands(self, dst_id: str, addr: Addr, src_id: str, src_boot: int, src_addr: Addr,
                             rid: int, message: Any) -> None:
        node = self.nodes[dst_id]
        if node.addr == addr:
            self._input(node, node.boot, self._serve_gossip_stream, src_id, src_boot, src_addr, rid, message)

    def _serve_gossip_stream(self, node: SimNode, src_id: str, src_boot: int, src_addr: Addr,
                             rid: int, message: Any) -> None:
        assert node.swim is not None
        src = self.nodes[src_id]
        try:
            if isinstance(message, bytes):
                message = gm.decode(message)
        except CodecError as err:
            # The daemon drops the connection: the requester hears of it at once.
            self._gossip_dropped(type(err).__name__)
            self._gossip_stream_failed(src, src_boot, rid)
            return
        reply, effects = node.swim.on_stream_request(self.loop.now, src_addr, message)
        self._swim_effects(node, effects)
        try:
            data = gm.encode(reply)
        except CodecError as err:
            self._gossip_dropped(type(err).__name__)
            self._gossip_stream_failed(src, src_boot, rid)
            return
        node.gossip_stream_bytes += len(data) + HEADER_BYTES
        self.net.send_stream(node.node_id, src_id, len(data) + HEADER_BYTES, self._input, src, src_boot,
                             self._gossip_reply, rid, data if self.wire_roundtrip else reply)

    def _gossip_reply(self, node: SimNode, rid: int, reply: Any) -> None:
        if isinstance(reply, bytes):
            try:
                reply = gm.decode(reply)
            except CodecError as err:
                self._gossip_dropped(type(err).__name__)
                reply = None  # as the daemon: a reply it cannot read is no reply
        if node.gossip_streams.pop(rid, None) is not None and node.swim is not None:
            self._swim_effects(node, node.swim.on_stream_reply(self.loop.now, rid, reply))

    def _gossip_stream_failed(self, node: SimNode, boot: int, rid: int) -> None:
        """Timed out or could not connect. Swim ignores an answer to a request it has
        already had one for, so a late duplicate is harmless."""
        node.gossip_streams.pop(rid, None)
        self._input(node, boot, self._gossip_no_reply, rid)

    def _gossip_no_reply(self, node: SimNode, rid: int) -> None:
        assert node.swim is not None
        self._swim_effects(node, node.swim.on_stream_reply(self.loop.now, rid, None))

    def _connection_broke(self, a: str, b: str, gen: int) -> None:
        """A connection reset: both ends fail what they were waiting for on it."""
        for here, peer in ((a, b), (b, a)):
            node = self.nodes[here]
            if not node.running:
                continue
            waiting = node.outstanding.get(peer, {})
            for req in [r for r, g in waiting.items() if g == gen]:
                del waiting[req]
                self._input(node, node.boot, self._feed_core, ev.PeerUnreachable(peer, req))
            for rid in [r for r, (p, g) in node.gossip_streams.items() if p == peer and g == gen]:
                del node.gossip_streams[rid]
                self._input(node, node.boot, self._gossip_no_reply, rid)

    # -- core effects --------------------------------------------------------------------

    def _core_effects(self, node: SimNode, effects: list[Any]) -> None:
        for effect in effects:
            self.loop.trace(f"{node.node_id[:4]} -> {type(effect).__name__} {_brief(effect)}")
            getattr(self, "_do_" + type(effect).__name__)(node, effect)
        if node.running and node.core is not None:
            self._check_bounds(node)
            if node.glue is not None and node.swim is not None:
                node.glue.publish_catalog(node.core, node.swim)
            self._schedule_core_tick(node)

    def _check_bounds(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        policy = self.settings.policy
        stripe = policy.shard_size * (policy.stripe_width + policy.parity)
        if not 0 <= core.buffer_bytes <= self.settings.memory_budget + stripe:
            self.violation(f"buffer:{node.node_id}",
                           f"node {node.node_id[:4]} holds {core.buffer_bytes} bytes of stripe buffers; the "
                           f"bound is the memory budget {self.settings.memory_budget} + one stripe {stripe}")
        limit = self.settings.max_inflight_bytes_per_peer + policy.shard_size
        for peer, used in core.inflight.items():
            if not 0 <= used <= limit:
                self.violation(f"inflight:{node.node_id}:{peer}",
                               f"node {node.node_id[:4]} has {used} bytes in flight to {peer[:4]}; the bound is "
                               f"{limit} (limit + one piece)")

    def _do_Send(self, node: SimNode, effect: ev.Send) -> None:
        message = effect.message
        if self.wire_roundtrip:
            message = msg.from_header(message.to_header(), message.payload_blob)  # schema check
        content = None
        ready = self.loop.now
        if effect.payload is not None:
            content = node.handles.get(effect.payload)
        elif effect.payload_piece is not None:
            content = node.disk.durable.get(effect.payload_piece)
            if content is None and isinstance(message, msg.PieceData):
                message = msg.PieceData(message.req, piece_id=message.piece_id, found=False)
            elif content is not None:
                ready = node.disk.schedule_io(ready, content.size, node.disk.model.read_bandwidth)
        size = HEADER_BYTES + len(message.payload_blob or b"") + (content.size if content else 0)
        self.loop.at(ready, self._transmit, node, node.boot, effect.peer, message, content, size)

    def _transmit(self, node: SimNode, boot: int, peer: str, message: msg.Message,
                  content: Content | None, size: int) -> None:
        if node.boot != boot or not node.running:
            return
        is_request = type(message) not in msg.REPLY_TYPES
        if peer not in self.nodes:
            if is_request:
                self.complete(node, 0.001, ev.PeerUnreachable(peer, message.req))
            return
        on_fail = None
        if is_request:
            def on_fail(why: str, req: int = message.req) -> None:
                node.outstanding.get(peer, {}).pop(req, None)
                self.feed(node.node_id, ev.PeerUnreachable(peer, req), boot)
        gen = self.net.send_stream(node.node_id, peer, size, self._message_lands, peer, node.node_id,
                                   message, content, on_fail=on_fail)
        if is_request and gen:
            node.outstanding.setdefault(peer, {})[message.req] = gen

    def _message_lands(self, dst_id: str, src_id: str, message: msg.Message, content: Content | None) -> None:
        node = self.nodes[dst_id]
        self._input(node, node.boot, self._receive, src_id, message, content)

    def _receive(self, node: SimNode, src: str, message: msg.Message, content: Content | None) -> None:
        if type(message) in msg.REPLY_TYPES:
            node.outstanding.get(src, {}).pop(message.req, None)
        handle = self.new_handle(node, content) if content is not None else None
        self._feed_core(node, ev.MessageReceived(src, message, handle))

    # disk --------------------------------------------------------------------------------

    def _do_StorePieceLocal(self, node: SimNode, effect: ev.StorePieceLocal) -> None:
        content = node.handles.get(effect.handle)
        disk = node.disk
        now = self.loop.now
        size = content.size if content else 0
        if content is None or content.true_id != effect.piece_id:
            hashed = now + size / disk.model.hash_rate
            self.loop.at(hashed, self.feed, node.node_id,
                         ev.PieceStoredLocally(effect.tag, effect.piece_id, False, "hash mismatch"), node.boot)
            return
        if effect.piece_id in disk.durable:  # as PieceStore.write: already held, nothing written or read
            self.complete(node, size / disk.model.hash_rate, ev.PieceStoredLocally(effect.tag, effect.piece_id, True))
            return
        if not disk.has_room(size):
            self.complete(node, 0.0005, ev.PieceStoredLocally(
                effect.tag, effect.piece_id, False, f"disk full: {size} bytes do not fit"))
            return
        disk.reserved += size
        written = disk.schedule_io(now, size, disk.model.write_bandwidth)
        self.loop.at(written, self._piece_written, node, node.boot, effect, content)

    def _piece_written(self, node: SimNode, boot: int, effect: ev.StorePieceLocal, content: Content) -> None:
        if node.boot != boot or not node.running:
            return
        disk = node.disk
        disk.reserved -= content.size
        disk.written[effect.piece_id] = content
        if node.crash_when_written:
            self.crash(node.node_id, why="torn write: between write and fsync")
            return
        self.loop.after(disk.fsync_time(self.fault_rng), self._piece_durable, node, boot, effect)

    def _piece_durable(self, node: SimNode, boot: int, effect: ev.StorePieceLocal) -> None:
        if node.boot != boot or not node.running:
            return
        content = node.disk.written.pop(effect.piece_id, None)
        if node.disk.fsync_fails(self.fault_rng):  # the store removes the temp file
            self.feed(node.node_id, ev.PieceStoredLocally(effect.tag, effect.piece_id, False, FSYNC_EIO), boot)
            return
        if content is not None:
            node.disk.durable[effect.piece_id] = content
            self.corrupted.discard((node.node_id, effect.piece_id))
        self.feed(node.node_id, ev.PieceStoredLocally(effect.tag, effect.piece_id, True), boot)

    def _do_LoadPiece(self, node: SimNode, effect: ev.LoadPiece) -> None:
        content = node.disk.durable.get(effect.piece_id)
        done = self.loop.now + 0.0001
        if content is not None:
            done = node.disk.schedule_io(self.loop.now, content.size, node.disk.model.read_bandwidth)
        self.loop.at(done, self._input, node, node.boot, self._piece_loaded, effect, content)

    def _piece_loaded(self, node: SimNode, effect: ev.LoadPiece, content: Content | None) -> None:
        handle = self.new_handle(node, content) if content is not None else None
        self._feed_core(node, ev.PieceLoaded(effect.tag, effect.piece_id, handle))

    def _do_VerifyHeldPiece(self, node: SimNode, effect: ev.VerifyHeldPiece) -> None:
        content = node.disk.durable.get(effect.piece_id)
        done = self.loop.now + 0.0001
        if content is not None:
            done = node.disk.schedule_io(self.loop.now, content.size, node.disk.model.read_bandwidth)
            done += content.size / node.disk.model.hash_rate
        self.loop.at(done, self._input, node, node.boot, self._held_piece_checked, effect)

    def _held_piece_checked(self, node: SimNode, effect: ev.VerifyHeldPiece) -> None:
        """As PieceStore.verify: the copy on disk now is hashed; a rotten one is quarantined."""
        ok = node.disk.genuine(effect.piece_id)
        if not ok and node.disk.durable.pop(effect.piece_id, None) is not None:
            self.corrupted.discard((node.node_id, effect.piece_id))
        self._feed_core(node, ev.HeldPieceVerified(effect.tag, effect.piece_id, ok))

    def _do_VerifyPiece(self, node: SimNode, effect: ev.VerifyPiece) -> None:
        content = node.handles.get(effect.handle)
        ok = content is not None and content.true_id == effect.piece_id
        cost = (content.size if content else 0) / node.disk.model.hash_rate
        self.complete(node, cost, ev.PieceVerified(effect.tag, ok))

    def _do_ReleaseHandles(self, node: SimNode, effect: ev.ReleaseHandles) -> None:
        for handle in effect.handles:
            node.handles.pop(handle, None)

    def _small_write(self, node: SimNode, size: int) -> float:
        disk = node.disk
        return disk.schedule_io(self.loop.now, size, disk.model.write_bandwidth) - self.loop.now + disk.fsync_time(
            self.fault_rng)

    def _do_StoreManifestLocal(self, node: SimNode, effect: ev.StoreManifestLocal) -> None:
        size = len(effect.blob) + MANIFEST_OVERHEAD
        if not node.disk.has_room(size):
            self.complete(node, 0.0005, ev.ManifestStoredLocally(effect.tag, False, "disk full"))
            return
        node.disk.reserved += size

        def durable(target: SimNode) -> None:
            target.disk.reserved -= size
            if target.disk.fsync_fails(self.fault_rng):
                self._feed_core(target, ev.ManifestStoredLocally(effect.tag, False, FSYNC_EIO))
                return
            target.disk.manifests[effect.manifest_id] = effect.blob
            self._feed_core(target, ev.ManifestStoredLocally(effect.tag, True))

        self.loop.after(self._small_write(node, size), self._input, node, node.boot, durable)

    def _do_LoadManifest(self, node: SimNode, effect: ev.LoadManifest) -> None:
        blob = node.disk.manifests.get(effect.manifest_id)
        self.complete(node, 0.0001, ev.ManifestLoaded(effect.tag, blob))

    def _do_PersistCatalog(self, node: SimNode, effect: ev.PersistCatalog) -> None:
        self._replace_file(node, effect.blob, "catalog", lambda ok, error: ev.CatalogPersisted(effect.tag, ok, error))

    def _do_PersistCounters(self, node: SimNode, effect: ev.PersistCounters) -> None:
        self._replace_file(node, effect.blob, "counters",
                           lambda ok, error: ev.CountersPersisted(effect.tag, ok, error))

    def _replace_file(self, node: SimNode, blob: bytes, attribute: str, completion: Callable[[bool, str], Any]) -> None:
        """write_file_atomic: the disk holds the old bytes until the new ones are durable."""
        size = len(blob) + SMALL_IO
        if not node.disk.has_room(size):
            self.complete(node, 0.0005, completion(False, "disk full"))
            return

        def durable(target: SimNode) -> None:
            if target.disk.fsync_fails(self.fault_rng):  # the old file stays
                self._feed_core(target, completion(False, FSYNC_EIO))
                return
            setattr(target.disk, attribute, blob)
            self._feed_core(target, completion(True, ""))

        self.loop.after(self._small_write(node, size), self._input, node, node.boot, durable)

    # client side of put and get ------------------------------------------------------------

    def _do_EncodeStripe(self, node: SimNode, effect: ev.EncodeStripe) -> None:
        record = self.clients[effect.client]
        source = record.sources[effect.file_index]
        shard_size = self.settings.policy.shard_size
        first = effect.offset // shard_size
        data = source.shards[first: first + len(effect.shard_lengths)]
        data_ids = tuple(c.true_id for c in data)
        block = effect.shard_lengths[0]
        parity = [parity_content(data_ids, j, block) for j in range(effect.parity)]
        handles = tuple(self.new_handle(node, c) for c in [*data, *parity])
        size = sum(effect.shard_lengths)
        disk = node.disk
        done = disk.schedule_io(self.loop.now, size, disk.model.read_bandwidth) + size / disk.model.hash_rate
        self.loop.at(done, self.feed, node.node_id, ev.StripeEncoded(
            effect.op, effect.stripe, data_ids, tuple(c.size for c in data),
            tuple(c.true_id for c in parity), handles,
        ), node.boot)

    def _do_FinishFileRead(self, node: SimNode, effect: ev.FinishFileRead) -> None:
        source = self.clients[effect.client].sources[effect.file_index]
        self.complete(node, 0.0, ev.FileRead(effect.op, effect.file_index, source.blake3))

    def _do_DeliverStripe(self, node: SimNode, effect: ev.DeliverStripe) -> None:
        record = self.clients[effect.client]
        contents = [node.handles.pop(h, None) for _, h in effect.pieces]
        genuine = all(c is not None and c.true_id == effect.piece_ids[pos]
                      for (pos, _), c in zip(effect.pieces, contents))
        enough = len({pos for pos, _ in effect.pieces}) >= effect.k
        expected = self._source_shards(record, effect)
        matches = expected is not None and tuple(effect.piece_ids[: effect.k]) == expected
        correct = genuine and enough and matches
        if not correct:
            self.violation(
                f"wrong:{effect.client}:{effect.stripe}",
                f"node {node.node_id[:4]} delivered wrong bytes for stripe {effect.stripe} of client "
                f"{effect.client} (pieces genuine={genuine}, enough={enough}, match what was put={matches})",
            )
        record.delivered[effect.stripe] = correct
        size = sum(effect.shard_lengths)
        disk = node.disk
        done = disk.schedule_io(self.loop.now, size, disk.model.write_bandwidth)
        self.loop.at(done, self.feed, node.node_id, ev.StripeDelivered(effect.op, effect.stripe, True), node.boot)

    def _source_shards(self, record: ClientRecord, effect: ev.DeliverStripe) -> tuple[bytes, ...] | None:
        """The data-shard ids the stripe must have: from the file that was really put."""
        manifest = record.manifest
        if manifest is None or effect.file_index >= len(manifest.files):
            return None
        source = self.sources.get(manifest.files[effect.file_index].blake3)
        if source is None:
            return None
        shard = manifest.policy.shard_size
        first = effect.offset // shard
        return tuple(c.true_id for c in source.shards[first: first + effect.k])

    def _do_Reply(self, node: SimNode, effect: ev.Reply) -> None:
        record = self.clients.get(effect.client)
        if record is None or record.done:
            return
        record.replies.append(effect.body)
        if isinstance(effect.body, ev.GetStarted):
            record.manifest = effect.body.manifest
            record.entry = effect.body.entry
        if effect.final:
            record.finished = self.loop.now
            record.final = self._client_check(node, record, effect.body)

    def _client_check(self, node: SimNode, record: ClientRecord, body: Any) -> Any:
        """What a real client does at the end: a get verifies every file's bytes; and the
        harness checks a successful put's pieces are really durable where it says."""
        if isinstance(body, ev.GetDone):
            manifest = record.manifest
            expected = sum(len(f.stripes) for f in manifest.files) if manifest else -1
            if len(record.delivered) != expected or not all(record.delivered.values()):
                self.violation(f"getdone:{id(record)}", f"get via {node.node_id[:4]} reported success with "
                               f"{len(record.delivered)}/{expected} stripes delivered correctly")
                return ev.Failed("whole-file hash mismatch")
            self.ledger.get_finished(record)
        if isinstance(body, ev.PutDone):
            self._check_put_durable(node, record, body)
            self.ledger.put_committed(record, body)
        if isinstance(body, ev.Removed):
            self.ledger.versions_removed(record, body)
        if isinstance(body, ev.Status):
            self.ledger.status_answered(record, body)
        return body

    def _check_put_durable(self, node: SimNode, record: ClientRecord, done: ev.PutDone) -> None:
        """Every slot durable and genuine, the tolerance met, the manifest on tolerance + 1
        nodes; but for rot and disk losses that happened while the put ran."""
        lost = {n for t, n in self.ledger.losses if t > record.started}
        forgiven = self.ledger.rot_since(record.started)
        holders = [n for n in self.nodes.values() if done.manifest_id in n.disk.manifests]
        if len(holders) + len(lost) < done.tolerance + 1:
            self.violation(f"put-manifest:{done.manifest_id.hex()}",
                           f"put {done.name} reported success with its manifest on {len(holders)} nodes "
                           f"< tolerance+1 = {done.tolerance + 1}")
        if not holders:
            return
        manifest = Manifest.decode(holders[0].disk.manifests[done.manifest_id])
        for (_, number, stripe), hint in zip(manifest.iter_stripes(), manifest.placement):
            for slot, node_id in enumerate(hint):
                pid = stripe.data_ids[slot // 2] if slot < 2 * stripe.k else stripe.parity_ids[slot - 2 * stripe.k]
                if not self.nodes[node_id].disk.genuine(pid) and node_id not in lost \
                        and (node_id, pid) not in forgiven:
                    self.violation(f"put-durable:{done.manifest_id.hex()}",
                                   f"put {done.name} reported success but stripe {number} slot {slot} "
                                   f"is not durable on {node_id[:4]}")
        actual = self.durable_tolerance(manifest, forgive=forgiven)
        if actual < done.tolerance - len(lost & {n for hint in manifest.placement for n in hint}):
            self.violation(f"put-tolerance:{done.manifest_id.hex()}",
                           f"put {done.name} reported tolerance {done.tolerance} but its durable pieces "
                           f"only survive {actual} failures")

    def durable_tolerance(self, manifest: Manifest, nodes: Iterable[str] | None = None,
                          forgive: set[tuple[str, bytes]] | frozenset = frozenset()) -> int:
        """Exact tolerance of what is durable and genuine on ``nodes`` (default: all),
        counting the (node, piece) copies in ``forgive`` as genuine."""
        among = [self.nodes[i] for i in (nodes if nodes is not None else self.ids)]
        return self.ledger.tolerance(manifest, among,
                                     lambda n, pid: n.disk.genuine(pid) or (n.node_id, pid) in forgive)

    # -- what tests call -----------------------------------------------------------------

    def _client(self, record: ClientRecord) -> int:
        client = len(self.clients) + 1
        record.started = self.loop.now
        record.client = client
        self.clients[client] = record
        return client

    def put(self, node_id: str, name: str, files: list[FileModel], *, is_dir: bool = False) -> int:
        for f in files:
            self.sources[f.blake3] = f
        client = self._client(ClientRecord("put", node_id, sources=list(files), name=name))
        cmd = ev.PutCommand(client, name, tuple(ev.FileSpec(f.path, f.size, f.mode) for f in files),
                            is_dir=is_dir, created=self.loop.now)
        self.loop.after(0.0, self.feed, node_id, cmd)
        return client

    def get(self, node_id: str, spec: str) -> int:
        record = ClientRecord("get", node_id, name=spec)
        node = self.nodes[node_id]
        if node.running and node.core is not None and "@" not in spec:
            try:
                record.seen = frozenset(e.version for e in node.core.catalog.live_versions(spec))
            except PeerstoreError:
                pass
        client = self._client(record)
        self.loop.after(0.0, self.feed, node_id, ev.GetCommand(client, spec))
        return client

    def command(self, node_id: str, make: Callable[[int], Any], kind: str = "cmd") -> int:
        record = ClientRecord(kind, node_id)
        client = self._client(record)
        command = make(client)
        if isinstance(command, ev.RemoveCommand):
            record.name = command.spec
        self.loop.after(0.0, self.feed, node_id, command)
        return client

    def rm(self, node_id: str, spec: str) -> int:
        return self.command(node_id, lambda c: ev.RemoveCommand(c, spec), "rm")

    def cancel(self, client: int) -> None:
        self.feed(self.clients[client].node, ev.CancelCommand(client))

    # -- faults --------------------------------------------------------------------------

    def _fault(self, description: str) -> None:
        self.faults.append((self.loop.now, description))
        self.loop.trace(f"FAULT {description}")
        if self.with_cores:  # once the fault has taken effect: what status says vs what is durable
            self.loop.after(0.0, self.ledger.check_tolerances)

    def crash(self, node_id: str, *, power_off: bool = False, why: str = "") -> None:
        """Kill the process (the host's kernel resets its connections) or, with
        ``power_off``, the whole host (connections go silent). Un-fsynced writes are lost."""
        node = self.nodes[node_id]
        if not node.running:
            return
        self._fault(f"{'power off' if power_off else 'crash'} {node_id[:4]}{' (' + why + ')' if why else ''}")
        if node.swim is not None:
            self.highest_incarnation[node_id] = max(self.highest_incarnation.get(node_id, -1), node.swim.incarnation)
        node.running = False
        node.disk.crash()
        node.reset_process()
        if power_off:
            self.net.power_off(node_id)
        else:
            self.net.process_down(node_id)
        for record in self.clients.values():
            if record.node == node_id and not record.done:
                record.disconnected = True

    def restart(self, node_id: str, *, new_address: bool = False) -> None:
        node = self.nodes[node_id]
        if node.running or node_id in self.retired:
            return
        refusal = self.boot_refusal(node_id) if self.with_cores else None
        if refusal is not None:  # the process exits at once; the host stays up
            self._fault(f"restart {node_id[:4]} refused: {refusal}")
            self.net.process_up(node_id)
            self.net.process_down(node_id)
            return
        self._fault(f"restart {node_id[:4]}{' at a new address' if new_address else ''}")
        if new_address:
            self.addr_owner.pop(node.addr, None)
            node.addr = self._new_addr(node_id)
        self.net.process_up(node_id)
        others = [n for n in self.ids if n != node_id]
        seeds = [self.nodes[i].addr for i in self.fault_rng.sample(others, min(self.seeds_per_node, len(others)))]
        self._boot(node, seeds)
        if self.membership == "static":
            self.loop.after(0.0, self.announce)

    def join(self, node_id: str) -> None:
        """Start a node that never ran, seeded with a couple of running nodes."""
        node = self.nodes[node_id]
        if node.running or node.boot:
            raise ValueError(f"node {node_id} has run before: use restart()")
        self._fault(f"join {node_id[:4]}")
        self.net.process_up(node_id)
        running = [i for i in self.ids if self.nodes[i].running]
        picked = self.fault_rng.sample(running, min(self.seeds_per_node, len(running)))
        self._boot(node, [self.nodes[i].addr for i in picked])

    def readdress(self, node_id: str) -> None:
        """The running node's address changes (a DHCP renewal): connections to the old one
        go silent; the node re-announces itself and peers reconnect when they hear of it."""
        node = self.nodes[node_id]
        if not node.running or node.swim is None:
            return
        self._fault(f"new address for running {node_id[:4]}")
        self.addr_owner.pop(node.addr, None)
        node.addr = self._new_addr(node_id)
        for key, conn in self.net.conns.items():
            if node_id in key:
                conn.zombie = True
        self._input(node, node.boot, lambda n: self._swim_effects(n, n.swim.set_addr(self.loop.now, n.addr)))
        if self.mdns:
            self._announce_mdns(node)

    def leave(self, node_id: str) -> None:
        """Graceful shutdown (SIGTERM): announce leaving, gossip a moment, then stop."""
        node = self.nodes[node_id]
        if not node.running or node.swim is None:
            return
        self._fault(f"leave {node_id[:4]}")
        self._swim_effects(node, node.swim.leave(self.loop.now))
        self.loop.after(1.0, self.crash, node_id)

    def freeze(self, node_id: str) -> None:
        """The process stops (SIGSTOP): its sockets accept, nothing is answered."""
        node = self.nodes[node_id]
        if node.running and not node.frozen:
            self._fault(f"freeze {node_id[:4]}")
            node.frozen = True

    def thaw(self, node_id: str) -> None:
        """The process runs again and works through what queued up meanwhile."""
        node = self.nodes[node_id]
        if not node.frozen:
            return
        self._fault(f"thaw {node_id[:4]}")
        node.frozen = False
        backlog, node.backlog = node.backlog, []
        node.backlog_datagrams = 0
        boot = node.boot
        for handler, args in backlog:
            if node.boot != boot or not node.running or node.frozen:
                break
            handler(node, *args)
        if node.boot == boot and node.running and not node.frozen:
            if node.core is not None:
                node.core_tick_at = math.inf
                self._schedule_core_tick(node)
            if node.swim is not None:
                node.swim_tick_at = math.inf
                self._schedule_swim_tick(node)

    def stall(self, node_id: str, seconds: float) -> None:
        """An event-loop stall: the node processes nothing for ``seconds``, then catches up."""
        self.freeze(node_id)
        self.loop.after(seconds, self.thaw, node_id)

    def corrupt(self, node_id: str, piece_id: bytes) -> None:
        """Flip bits in a stored piece: its bytes no longer hash to its id."""
        self.nodes[node_id].disk.corrupt(piece_id)
        self.corrupted.add((node_id, piece_id))
        self.ledger.rotted(node_id, piece_id)
        self._fault(f"corrupt {node_id[:4]} {piece_id.hex()[:8]}")

    def crash_mid_write(self, node_id: str) -> None:
        """Crash the node right after its next piece write, before the fsync."""
        node = self.nodes[node_id]
        if node.running:
            self._fault(f"arm torn write {node_id[:4]}")
            node.crash_when_written = True

    def slow_disk(self, node_id: str, model: DiskModel) -> None:
        self.nodes[node_id].disk.model = model
        self._fault(f"slow disk {node_id[:4]} ({model.write_bandwidth / 1e6:.0f} MB/s)")

    def slow_nic(self, node_id: str, bandwidth: float) -> None:
        self.net.hosts[node_id].nic = bandwidth
        self._fault(f"nic {node_id[:4]} {bandwidth * 8 / 1e6:.0f} Mbit/s")

    def fill_disk(self, node_id: str, free_bytes: int = 0) -> None:
        disk = self.nodes[node_id].disk
        disk.capacity = disk.used + free_bytes
        self._fault(f"disk full {node_id[:4]} ({free_bytes} bytes free)")

    def free_disk(self, node_id: str) -> None:
        self.nodes[node_id].disk.capacity = None
        self._fault(f"disk freed {node_id[:4]}")

    def isolate(self, node_id: str) -> None:
        self._fault(f"isolate {node_id[:4]}")
        self.net.isolate(node_id)

    def partition(self, *sides: list[str]) -> None:
        self._fault("partition " + " | ".join(",".join(i[:4] for i in side) for side in sides))
        self.net.split(*sides)

    def block(self, src: str, dst: str) -> None:
        self._fault(f"block {src[:4]} -> {dst[:4]}")
        self.net.block(src, dst)

    def heal(self) -> None:
        if self.net.blocked:
            self._fault("heal network")
        self.net.heal()

    def clog(self, src: str, dst: str, delay: float, bandwidth_factor: float = 1.0) -> None:
        self._fault(f"clog {src[:4]} -> {dst[:4]} +{delay * 1000:.0f}ms x{bandwidth_factor}")
        self.net.clog(src, dst, Clog(delay, bandwidth_factor))

    def unclog(self) -> None:
        self.net.unclog()

    def break_streams(self, node_id: str) -> int:
        """Reset every connection of ``node_id`` (both ends notice)."""
        broken = sum(self.net.break_connection(node_id, other) for other in self.ids if other != node_id)
        self._fault(f"break {broken} streams of {node_id[:4]}")
        return broken

    def degrade_links(self, **changes: float) -> None:
        """Change every link's model (``loss=0.1, duplicate=0.02, reorder=0.2, jitter=...``)."""
        self.net.default_link = dataclasses.replace(self.net.default_link, **changes)
        self._fault("links: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(changes.items())))

    def set_loss(self, loss: float) -> None:
        self.degrade_links(loss=loss)

    def stream_faults(self, *, loss: float = 0.0, straggle: float = 0.0, redeliver: float = 0.0) -> None:
        """Data-path (TCP) faults, see ``sim.network``: segment ``loss`` (messages late by
        retransmission timeouts), messages that ``straggle`` in after their connection
        broke, and messages delivered again on a new connection (``redeliver``)."""
        self.net.default_link = dataclasses.replace(self.net.default_link, stream_loss=loss)
        self.net.straggle, self.net.redeliver = straggle, redeliver
        self._fault(f"streams: segment loss {loss:.3g}, straggle {straggle:.2f}, redeliver {redeliver:.2f}")

    def fail_fsync(self, node_id: str, probability: float = 1.0) -> None:
        """The node's fsyncs fail with EIO (a dying disk): piece, manifest, catalog and
        counter writes fail and leave nothing new on disk."""
        self.nodes[node_id].disk.fail_fsync = probability
        self._fault(f"fsync EIO {node_id[:4]} (p={probability:.2f})")

    def corrupt_manifest(self, node_id: str, manifest_id: bytes) -> None:
        """Flip bits in a stored manifest file: it no longer hashes to its id."""
        self.nodes[node_id].disk.corrupt_manifest(manifest_id)
        self._fault(f"corrupt manifest {node_id[:4]} {manifest_id.hex()[:8]}")

    def corrupt_file(self, node_id: str, name: str, *, unreadable: bool = True) -> bool:
        """Rot in the node's ``"catalog"`` or ``"counters"`` file, found when it next boots;
        ``unreadable``: cut short, else one bit flipped. False if it has no such file."""
        done = self.nodes[node_id].disk.corrupt_file(name, self.fault_rng, unreadable=unreadable)
        if done:
            self._fault(f"corrupt {name} file {node_id[:4]} ({'cut short' if unreadable else 'one bit flipped'})")
        return done

    def boot_refusal(self, node_id: str) -> str | None:
        """Why the daemon would refuse to start on this node's disk, or None: a rotten
        counters file is fatal (a rotten catalog is not: the node starts empty)."""
        try:
            restore_counters(self.nodes[node_id].disk.counters)
        except FormatError as err:
            return str(err)
        return None

    def lose_disk(self, node_id: str, *, new_id: bool = False, new_address: bool = False) -> str:
        """Permanent disk loss: the host goes down and its store is gone. With the same id
        the node keeps only its identity (node id and boot epoch; pieces, manifests,
        catalog and reserved counters are lost): ``restart()`` it. With ``new_id`` the
        whole data directory is gone, so the machine comes back as a node that never ran
        (same address unless ``new_address``): ``join()`` the returned id; the old id
        never returns. Returns the id to start."""
        node = self.nodes[node_id]
        self.crash(node_id, power_off=True, why="disk lost")
        old = node.disk
        node.disk = SimDisk(model=old.model, boot_epoch=old.boot_epoch)
        self.corrupted.difference_update({c for c in self.corrupted if c[0] == node_id})
        self.ledger.disk_lost(node_id)
        if not new_id:
            self._fault(f"disk lost {node_id[:4]}: back empty with the same id")
            return node_id
        self.retired.add(node_id)
        index = len(self.nodes)
        fresh = f"{index + 1:02x}" + model_id("node", self.seed, "replacement", index).hex()[:14]
        addr = self._new_addr(fresh) if new_address else node.addr
        self.addr_owner[addr] = fresh
        self.nodes[fresh] = SimNode(fresh, index, addr, SimDisk(model=old.model), running=False)
        self.net.add_host(fresh, self.net.hosts[node_id].nic)
        self.net.hosts[fresh].listening = False
        self.ids[self.ids.index(node_id)] = fresh
        self._fault(f"disk lost {node_id[:4]}: the machine comes back as new node {fresh[:4]}")
        return fresh

    def heal_all(self) -> None:
        """End every transient fault: network, clogs, freezes, full disks."""
        self.heal()
        self.unclog()
        link = self.net.default_link
        self.net.default_link = LinkModel(link.latency, link.jitter)
        for node_id, node in self.nodes.items():
            if node.frozen:
                self.thaw(node_id)
            if node.disk.capacity is not None:
                self.free_disk(node_id)
            node.crash_when_written = False
            node.disk.fail_fsync = 0.0
        self.net.straggle = self.net.redeliver = 0.0

    def announce(self) -> None:
        """Static membership: tell every core the truth about who is running."""
        alive = frozenset(i for i, n in self.nodes.items() if n.running)
        for node_id in sorted(alive):
            self.feed(node_id, ev.MembersChanged(alive))

    _announce = announce  # the name older tests use

    # -- inspection ----------------------------------------------------------------------

    def running_ids(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].running]

    def converged(self) -> bool:
        """Every running node's Swim view of who is alive is exactly the running nodes."""
        if self.membership != "swim":
            return True
        up = sorted(self.running_ids())
        return all(self.nodes[i].swim.alive_ids() == up for i in up)  # type: ignore[union-attr]

    def views(self) -> dict[str, list[str]]:
        return {i[:4]: [a[:4] for a in n.swim.alive_ids()] for i, n in self.nodes.items()
                if n.running and n.swim is not None}

    def holders(self, piece_id: bytes) -> list[str]:
        return [i for i, n in self.nodes.items() if piece_id in n.disk.durable]

    def manifest_of(self, record: ClientRecord) -> Manifest:
        done = record.final
        for node in self.nodes.values():
            if done.manifest_id in node.disk.manifests:
                return Manifest.decode(node.disk.manifests[done.manifest_id])
        raise AssertionError("no node holds the manifest")

    def find_manifest(self, manifest_id: bytes) -> Manifest | None:
        for node in self.nodes.values():
            blob = node.disk.manifests.get(manifest_id)
            if blob is not None:
                return Manifest.decode(blob)
        return None

    def member_state(self, observer: str, node_id: str) -> MemberState | None:
        swim = self.nodes[observer].swim
        member = swim.member(node_id) if swim is not None else None
        return member.state if member else None

    def gossip_bytes(self) -> int:
        """Bytes of gossip sent so far by running nodes: datagrams and push-pull streams."""
        return sum(n.swim.stats["bytes_out"] + n.gossip_stream_bytes for n in self.nodes.values()
                   if n.swim is not None)


def _brief(obj: Any) -> str:
    """A short, deterministic description for the trace."""
    parts = []
    for name in ("peer", "req", "op", "stripe", "tag", "ok", "client"):
        value = getattr(obj, name, None)
        if value is not None:
            parts.append(f"{name}={value!r}")
    message = getattr(obj, "message", None)
    if message is not None:
        parts.append(f"{type(message).__name__}(req={message.req})")
    return " ".join(parts)
