"""Connections to other nodes, pooled by node id.

Membership (gossip) says who is alive and where; this module keeps at most one live
authenticated data connection per peer in use, dialling the peer's last known address
when none is open. Connections the peer opened to us are used as well.

Every link between nodes is bounded by silence (``stall``, the request timeout): a send
fails once nothing moved on its connection for that long, however long it waited behind
other frames while bytes flowed. :meth:`Peers.moved` says which peers bytes moved to or
from since it was last called, for the core's ``BytesMoved`` reports.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from peerstore.errors import AuthError, CodecError
from peerstore.shell.logs import fields
from peerstore.shell.wirestream import Frame, WireStream, dial

log = logging.getLogger("peerstore.peers")

DIAL_ERRORS = (OSError, trio.TooSlowError, AuthError, CodecError, trio.BrokenResourceError, EOFError)


class Peers:
    def __init__(
        self,
        *,
        node_id: str,
        cluster_key: bytes,
        connect_timeout: float,
        on_connection: Callable[[str, WireStream, Frame | None], Awaitable[None]],
        stall: float | None = None,
    ):
        self.node_id = node_id
        self.cluster_key = cluster_key
        self.connect_timeout = connect_timeout
        self.on_connection = on_connection  # runs the receive loop of a connection
        self.stall = stall
        self.conns: dict[str, WireStream] = {}
        self.links: dict[str, set[WireStream]] = {}  # every connection with each peer, pooled or not
        self.addresses: dict[str, tuple[str, int]] = {}  # from membership
        self._dialing: dict[str, trio.Event] = {}
        self.nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def serve(self, wire: WireStream, first: Frame | None = None) -> None:
        """Receive on an authenticated connection until it ends. It becomes the pooled
        connection to its peer unless a live one is already there."""
        peer = wire.peer_id
        assert peer is not None
        wire.stall = self.stall
        current = self.conns.get(peer)
        if current is None or current.closed:
            self.conns[peer] = wire
        links = self.links.setdefault(peer, set())
        links.add(wire)
        log.debug("connected with %s", peer, extra=fields("peer_connected", peer=peer))
        try:
            await self.on_connection(peer, wire, first)
        finally:
            links.discard(wire)
            if not links and self.links.get(peer) is links:
                del self.links[peer]
            await wire.aclose()
            if self.conns.get(peer) is wire:
                del self.conns[peer]
            log.debug("connection with %s closed", peer, extra=fields("peer_disconnected", peer=peer))

    def moved(self) -> frozenset[str]:
        """The peers that bytes moved to or from (on any connection) since the last call."""
        return frozenset(peer for peer, links in self.links.items()
                         if any([wire.poll_progress() for wire in links]))

    async def connection(self, peer: str) -> WireStream:
        """A live connection to ``peer``, dialling its known address if needed."""
        wire = self.conns.get(peer)
        if wire is not None and not wire.closed:
            return wire
        pending = self._dialing.get(peer)
        if pending is not None:
            await pending.wait()
            wire = self.conns.get(peer)
            if wire is not None and not wire.closed:
                return wire
            raise OSError(f"cannot reach {peer}")
        address = self.addresses.get(peer)
        if address is None:
            raise OSError(f"no known address for {peer}")
        self._dialing[peer] = done = trio.Event()
        try:
            wire = await dial(*address, cluster_key=self.cluster_key, node_id=self.node_id,
                              timeout=self.connect_timeout)
            wire.stall = self.stall
            if wire.peer_id != peer:
                await wire.aclose()
                raise OSError(f"{address[0]}:{address[1]} is now node {wire.peer_id}, not {peer}")
            self.conns[peer] = wire
            assert self.nursery is not None
            self.nursery.start_soon(self.serve, wire)
            return wire
        finally:
            del self._dialing[peer]
            done.set()

    def forget(self, peer: str) -> None:
        """Stop using the pooled connection to ``peer`` (it is closed by its receive loop
        ending; a send in progress on it fails and is retried on a new one)."""
        wire = self.conns.pop(peer, None)
        if wire is not None and self.nursery is not None:
            self.nursery.start_soon(wire.aclose)

    def forget_all(self) -> None:
        for peer in list(self.conns):
            self.forget(peer)

    async def drop(self, peer: str, wire: WireStream) -> None:
        """Close a connection that misbehaved or stalled."""
        await wire.aclose()
        if self.conns.get(peer) is wire:
            del self.conns[peer]
