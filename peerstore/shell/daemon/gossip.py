"""The trio shell of membership: UDP datagrams and TCP streams for the ``Swim`` machine.

Datagrams are msgpack, sealed with a MAC and a (node id, boot epoch, sequence) tag; a
forged, replayed or malformed one is dropped and counted. Gossip is encoded and decoded
with ``peerstore.gossip.messages``, as in the simulator, so under the same limits.
Re-seeding (when alone, and the periodic island check) is decided by ``Swim``: this
shell only hands it the config seeds and what mDNS finds. Stream requests (push-pull
and the fallback ping) use a short-lived authenticated TCP connection each. The machine
runs on the node's TCP port number, over UDP.

Membership changes reach the core as ``MembersChanged`` (alive or suspect members), and
members' addresses feed the data path's connection pool. The catalog digest rides along
as app state: a peer whose digest differs gets a catalog push-pull.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from collections import Counter
from typing import Any, Protocol

import trio

from peerstore.core.membership import MembershipBridge, boot_incarnation
from peerstore.core.node import NodeCore
from peerstore.errors import CodecError
from peerstore.gossip import (
    MemberChanged,
    MemberRemoved,
    MemberState,
    NeedSeeds,
    SendDatagram,
    SendStream,
    Swim,
)
from peerstore.gossip.messages import decode, decode_datagram, encode, encode_datagram
from peerstore.gossip.settings import GossipSettings
from peerstore.shell.config import Config
from peerstore.shell.daemon.buffers import PayloadBudget
from peerstore.shell.daemon.discovery import boot_and_sequence, member_name, sd_targets
from peerstore.shell.daemon.peers import Peers
from peerstore.shell.logs import fields
from peerstore.shell.wirestream import PeerClosed, dial
from peerstore.wire import ReplayFilter, open_datagram, seal_datagram

log = logging.getLogger("peerstore.gossip")

STREAM_TIMEOUT = 5.0


class GossipHost(Protocol):
    """What the gossip runner needs of the node it runs in (the daemon's ``Daemon``)."""

    node_id: str
    boot_epoch: int
    config: Config
    core: NodeCore
    peers: Peers
    payloads: PayloadBudget  # received payloads are admitted against it before allocation

    def feed(self, event: Any) -> None: ...


class GossipRunner:
    """The daemon's gossip: owns the UDP socket and Swim, feeds membership to the core."""

    def __init__(self, daemon: GossipHost, *, settings: GossipSettings, bind_host: str,
                 addr: tuple[str, int], seeds: list[tuple[str, int]], meta: dict[str, Any] | None = None):
        self.daemon = daemon
        self.node_id = daemon.node_id
        self.epoch = daemon.boot_epoch
        self.key = daemon.config.cluster_key
        self.bind_host = bind_host
        self.seeds = list(seeds)
        self.swim = Swim(
            node_id=self.node_id, addr=addr, incarnation=boot_incarnation(self.epoch),
            settings=settings, rng=random.Random(), now=trio.current_time(), meta=meta,
        )
        # Prometheus http_sd targets, rebuilt here when members change and read by the
        # metrics thread (a fresh list each time, never changed in place).
        self.discovery: list[dict[str, Any]] = sd_targets(self.swim.members())
        self.replay = ReplayFilter()
        self.seq = 0
        self.sock: trio.socket.SocketType | None = None
        self.raw_sock: socket.socket | None = None
        self.wake = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.glue = MembershipBridge(self.node_id)
        self.dropped: Counter[str] = Counter()

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET
        self.raw_sock = socket.socket(family, socket.SOCK_DGRAM)
        self.raw_sock.setblocking(False)
        self.raw_sock.bind((self.bind_host, self.swim.addr[1]))
        self.sock = trio.socket.from_stdlib_socket(self.raw_sock)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._timer_loop)
            self.apply(self.swim.start(trio.current_time(), self.seeds))
            task_status.started()

    def apply(self, effects: list[Any]) -> None:
        """Carry out the machine's effects (called after every input to it)."""
        assert self.nursery is not None
        members_moved = False
        for event in self.glue.inputs(self.swim, effects, self.daemon.core.catalog.digest()):
            self.daemon.feed(event)
        for effect in effects:
            if isinstance(effect, SendDatagram):
                self._send_datagram(effect.addr, effect.message, effect.to)
            elif isinstance(effect, SendStream):
                self.nursery.start_soon(self._stream_request, effect)
            elif isinstance(effect, (MemberChanged, MemberRemoved)):
                self._member_event(effect)
                members_moved = True
            elif isinstance(effect, NeedSeeds):
                # Swim re-contacts its remembered seeds and known members by itself;
                # mDNS finds reach it through add_seeds as zeroconf reports them.
                log.info("no other live member: re-seeding from %d remembered address(es)",
                         len(self.swim.seeds()), extra=fields("reseeding"))
        if members_moved:
            self.discovery = sd_targets(self.swim.members())
        self.wake.set()

    def _member_event(self, effect: MemberChanged | MemberRemoved) -> None:
        member = effect.member
        if member.node_id == self.node_id:
            return
        if isinstance(effect, MemberRemoved):
            self.daemon.peers.addresses.pop(member.node_id, None)
            return
        address = tuple(member.addr)
        previous = self.daemon.peers.addresses.get(member.node_id)
        self.daemon.peers.addresses[member.node_id] = address  # type: ignore[assignment]
        if previous is not None and previous != address:
            log.info("member %s moved from %s:%d to %s:%d", member.node_id, *previous, *address,
                     extra=fields("peer_moved", peer=member.node_id, address="%s:%d" % address))
            self.daemon.peers.forget(member.node_id)  # its old connection leads nowhere
        if effect.old != effect.new:
            level = logging.WARNING if effect.new in (MemberState.DEAD, MemberState.SUSPECT) else logging.INFO
            log.log(level, "member %s at %s:%d is %s", member.node_id, *member.addr, effect.new.name.lower(),
                    extra=fields(_member_event_name(effect.old, effect.new), peer=member.node_id,
                                 peer_name=member_name(member), address="%s:%d" % tuple(member.addr[:2])))

    @property
    def alive(self) -> frozenset[str]:
        return self.glue.alive

    def publish_catalog(self) -> None:
        self.glue.publish_catalog(self.daemon.core, self.swim)

    async def _timer_loop(self) -> None:
        while True:
            self.wake = trio.Event()
            deadline = self.swim.next_deadline()
            with trio.move_on_at(deadline if deadline != math.inf else trio.current_time() + 1.0):
                await self.wake.wait()
            now = trio.current_time()
            if now >= self.swim.next_deadline():
                self.publish_catalog()
                self.apply(self.swim.tick(now))

    # -- datagrams -----------------------------------------------------------------------

    def _send_datagram(self, addr: tuple[str, int], message: dict[str, Any], to: str) -> None:
        self.seq += 1
        try:
            data = seal_datagram(self.key, self.node_id, self.epoch, self.seq, encode_datagram(message), to=to)
            self.raw_sock.sendto(data, addr)  # non-blocking: a full buffer drops it, as UDP may
        except (OSError, CodecError, ValueError) as err:  # ValueError: no recipient id (a Swim bug)
            self.dropped["send"] += 1
            log.debug("datagram to %s:%d failed: %s", *addr, err, extra=fields("datagram_send_failed", peer=to or None))

    async def _receive_loop(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data, source = await self.sock.recvfrom(2048)
            except OSError as err:  # e.g. ICMP port unreachable reported on Linux
                log.debug("udp receive: %s", err)
                continue
            try:
                sender, _, _, body = open_datagram(self.key, data, self.replay, me=self.node_id)
                message = decode_datagram(body, sender)
            except CodecError as err:
                self.dropped[type(err).__name__] += 1
                log.debug("dropped a datagram from %s: %s", source, err, extra=fields("datagram_dropped"))
                continue
            self.apply(self.swim.on_datagram(trio.current_time(), tuple(source[:2]), message, size=len(data)))

    # -- streams -------------------------------------------------------------------------

    async def _stream_request(self, effect: SendStream) -> None:
        reply = None
        try:
            with trio.fail_after(STREAM_TIMEOUT):
                wire = await dial(*effect.addr, cluster_key=self.key, node_id=self.node_id, timeout=STREAM_TIMEOUT)
                try:
                    await wire.send({"t": "gossip"}, encode(effect.message))
                    frame = await wire.receive(budget=self.daemon.payloads)
                    try:
                        if frame.header.get("t") == "gossip" and frame.payload is not None:
                            reply = decode(bytes(frame.payload))
                    finally:
                        if frame.payload is not None:
                            self.daemon.payloads.release(len(frame.payload))
                finally:
                    await wire.aclose()
        except (OSError, trio.TooSlowError, CodecError, PeerClosed, trio.BrokenResourceError) as err:
            log.debug("gossip stream to %s:%d failed: %s", *effect.addr, err, extra=fields("gossip_stream_failed"))
        self.apply(self.swim.on_stream_reply(trio.current_time(), effect.request_id, reply))

    def answer_stream(self, source: tuple[str, int], payload: bytes | None) -> bytes:
        """Serve a stream request that arrived on a TCP connection; returns the reply."""
        message = decode(payload or b"")
        reply, effects = self.swim.on_stream_request(trio.current_time(), source, message)
        self.apply(effects)
        return encode(reply)

    # -- queries and control -------------------------------------------------------------

    def add_seeds(self, addrs: list[tuple[str, int]]) -> None:
        """Pass on addresses mDNS found (Swim remembers them for re-seeding)."""
        self.apply(self.swim.add_seeds(trio.current_time(), addrs))

    def set_addr(self, addr: tuple[str, int]) -> None:
        log.info("our address changed to %s:%d: announcing it", *addr, extra=fields("address_changed"))
        self.daemon.peers.forget_all()  # connections from the old address are dead
        self.apply(self.swim.set_addr(trio.current_time(), addr))
        self.discovery = sd_targets(self.swim.members())

    async def leave(self, linger: float = 1.0) -> None:
        """Tell the others we are leaving, and give the news a moment to spread."""
        self.apply(self.swim.leave(trio.current_time()))
        with trio.move_on_after(linger):
            while self.swim.broadcasts_pending:
                await trio.sleep(0.05)
                self.apply(self.swim.tick(trio.current_time()))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        now = trio.current_time()
        for member in self.swim.members():
            boot, seq = boot_and_sequence(member.incarnation)
            out.append({
                "id": member.node_id, "name": member_name(member), "address": f"{member.addr[0]}:{member.addr[1]}",
                "state": member.state.name.lower(), "incarnation": member.incarnation, "boot": boot, "seq": seq,
                "last_contact": None if member.last_contact is None else round(now - member.last_contact, 1),
                "self": member.node_id == self.node_id,
            })
        return out

    def state_counts(self) -> dict[str, int]:
        return dict(Counter(m.state.name.lower() for m in self.swim.members()))


def _member_event_name(old: MemberState | None, new: MemberState) -> str:
    """``peer_joined`` (first seen alive), ``peer_alive`` (back), ``peer_suspect``, ``peer_dead``, ``peer_left``."""
    if new is MemberState.ALIVE:
        return "peer_joined" if old is None else "peer_alive"
    return "peer_" + new.name.lower()
