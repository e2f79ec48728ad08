"""Connections to other nodes, and who is reachable.

Until gossip membership lands, a node is "alive" while we hold an authenticated
connection to it. The seed loop dials every static seed that has no live connection
every few seconds; a connection that drops removes the node, which the core learns as a
membership change. Incoming connections from nodes count too.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from peerstore.daemon.transport import WireStream, dial
from peerstore.errors import AuthError, CodecError

log = logging.getLogger("peerstore.peers")

DIAL_ERRORS = (OSError, trio.TooSlowError, AuthError, CodecError, trio.BrokenResourceError, EOFError)


class Peers:
    def __init__(
        self,
        *,
        node_id: str,
        cluster_key: bytes,
        seeds: list[tuple[str, int]],
        connect_timeout: float,
        on_connection: Callable[[str, WireStream], Awaitable[None]],
        on_change: Callable[[], None],
    ):
        self.node_id = node_id
        self.cluster_key = cluster_key
        self.seeds = list(seeds)
        self.connect_timeout = connect_timeout
        self.on_connection = on_connection  # runs the receive loop of a connection
        self.on_change = on_change
        self.conns: dict[str, WireStream] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.own_addresses: set[tuple[str, int]] = set()
        self._dialing: dict[str, trio.Event] = {}
        self._seed_dials: set[tuple[str, int]] = set()
        self.nursery: trio.Nursery | None = None

    @property
    def alive(self) -> frozenset[str]:
        return frozenset(self.conns) | {self.node_id}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            while True:
                for address in self.seeds:
                    if address not in self.own_addresses and address not in self._seed_dials \
                            and not self._connected(address):
                        self._seed_dials.add(address)
                        nursery.start_soon(self._dial_seed, address)
                await trio.sleep(2.0)

    def _connected(self, address: tuple[str, int]) -> bool:
        return any(self.addresses.get(peer) == address for peer in self.conns)

    async def _dial_seed(self, address: tuple[str, int]) -> None:
        try:
            await self._dial_seed_once(address)
        finally:
            self._seed_dials.discard(address)

    async def _dial_seed_once(self, address: tuple[str, int]) -> None:
        try:
            wire = await dial(*address, cluster_key=self.cluster_key, node_id=self.node_id,
                              timeout=self.connect_timeout)
        except AuthError as err:
            log.warning("seed %s:%d refused our cluster key (%s): is it another cluster?", *address, err)
            return
        except DIAL_ERRORS as err:
            log.debug("seed %s:%d: %s", *address, err)
            return
        if wire.peer_id == self.node_id:
            self.own_addresses.add(address)
            await wire.aclose()
            return
        self.addresses[wire.peer_id] = address
        self.adopt(wire)

    def adopt(self, wire: WireStream) -> None:
        """Register a connection we dialled and start receiving on it."""
        assert self.nursery is not None
        self.nursery.start_soon(self.serve, wire)

    async def serve(self, wire: WireStream) -> None:
        """Register an authenticated connection and receive on it until it ends."""
        peer = wire.peer_id
        assert peer is not None
        fresh = peer not in self.conns
        self.conns[peer] = wire
        if fresh:
            log.info("connected to %s", peer)
            self.on_change()
        try:
            await self.on_connection(peer, wire)
        finally:
            await wire.aclose()
            if self.conns.get(peer) is wire:
                del self.conns[peer]
                log.info("lost connection to %s", peer)
                self.on_change()

    async def connection(self, peer: str) -> WireStream:
        """A live connection to ``peer``, dialling its known address if needed."""
        wire = self.conns.get(peer)
        if wire is not None and not wire.closed:
            return wire
        pending = self._dialing.get(peer)
        if pending is not None:
            await pending.wait()
            wire = self.conns.get(peer)
            if wire is not None:
                return wire
            raise OSError(f"cannot reach {peer}")
        address = self.addresses.get(peer)
        if address is None:
            raise OSError(f"no known address for {peer}")
        self._dialing[peer] = done = trio.Event()
        try:
            wire = await dial(*address, cluster_key=self.cluster_key, node_id=self.node_id,
                              timeout=self.connect_timeout)
            if wire.peer_id != peer:
                await wire.aclose()
                raise OSError(f"{address[0]}:{address[1]} is now node {wire.peer_id}, not {peer}")
            self.conns[peer] = wire  # usable at once; serve() announces it
            self.adopt(wire)
            return wire
        finally:
            del self._dialing[peer]
            done.set()

    async def drop(self, peer: str, wire: WireStream) -> None:
        """Close a connection that misbehaved or stalled."""
        await wire.aclose()
        if self.conns.get(peer) is wire:
            del self.conns[peer]
            self.on_change()
