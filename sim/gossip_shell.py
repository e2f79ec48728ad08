"""The simulator's shell of ``Swim``, the membership machine: datagrams, gossip streams
(push-pull) and mDNS discovery over the simulated network, as the daemon's
``peerstore.shell.daemon.gossip`` runs them over UDP and TCP.

With ``wire_roundtrip`` every datagram and stream message travels as the daemon's bytes:
encoded under the same size limits (too big: dropped by the sender, counted in
``stats``) and decoded on arrival against the sender the MAC tag would authenticate.
Always, as the daemon's MAC binds the recipient, a datagram that lands at a node other
than the one it was sealed for (an address that changed hands) is dropped.
Swim's membership changes reach the core through ``MembershipBridge``, exactly as in the
daemon; a member heard of again gets a fresh connection instead of a silent stale one.

``GossipShell`` is a mixin of ``sim.cluster.Cluster`` beside ``sim.shell.NodeShell``
(the core's shell), mirroring the daemon's split between its node and its gossip
runner. The annotations at the top of the class declare what it uses of the cluster and
of the other mixins (declarations only), so it imports neither.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Callable

from peerstore.core.membership import MembershipBridge
from peerstore.errors import CodecError
from peerstore.gossip import messages as gm
from peerstore.gossip import (
    MemberChanged,
    MemberState,
    NeedSeeds,
    SendDatagram,
    SendStream,
    Swim,
)
from peerstore.gossip.settings import GossipSettings
from sim.loop import EventLoop, Seeds
from sim.network import Network
from sim.node import UDP_BACKLOG, Addr, SimNode
from sim.shell import HEADER_BYTES


class GossipShell:
    """Carries out every node's ``Swim`` effects (mixin of ``sim.cluster.Cluster``)."""

    # What the gossip shell uses of the cluster (set by Cluster.__init__).
    loop: EventLoop
    net: Network
    seeds: Seeds
    nodes: dict[str, SimNode]
    addr_owner: dict[Addr, str]
    gossip: GossipSettings
    incarnation: Callable[[int], int]
    wire_roundtrip: bool
    gossip_stream_timeout: float
    mdns: bool
    mdns_rng: random.Random
    member_observers: list[Callable[[float, str, MemberChanged], None]]
    stats: Counter[str]
    # ... and of the core's shell (sim.shell) and the checks (sim.checks).
    _input: Callable[..., None]
    _core_effects: Callable[[SimNode, list[Any]], None]
    _check_incarnation: Callable[[SimNode, int], None]

    # -- booting -------------------------------------------------------------------------

    def _start_swim(self, node: SimNode, seeds: list[Addr]) -> None:
        """Start the node's Swim (its core, if any, is built): an incarnation above every
        earlier one, the catalog digest published, ``seeds`` contacted, mDNS announced."""
        now = self.loop.now
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

    # -- timers --------------------------------------------------------------------------

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
                               node.node_id, effect.to, message)

    def _datagram_lands(self, dst_id: str, addr: Addr, from_addr: Addr, sender: str, to: str,
                        message: Any) -> None:
        node = self.nodes[dst_id]
        if node.addr != addr or not node.running:
            return
        if to != dst_id:
            # Sealed for another node (its address changed hands): the daemon's MAC check
            # refuses it before anything else (peerstore.wire.datagram), and counts it so.
            self._gossip_dropped("AuthError")
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

