"""The wire codec over a trio TCP stream: handshake, framed sends, framed receives.

Payloads are sent raw after their header with large writes, and received straight into
a preallocated buffer with ``recv_into`` (no reassembly copies). A payload's hash is in
its MACed header; ``receive`` checks it unless the caller says the payload is
content-addressed and will be verified against its piece id anyway.
"""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import blake3
import trio

from peerstore.errors import AuthError, CodecError
from peerstore.wire import Connection, HandshakeComplete, Message, PayloadEnd
from peerstore.wire.frames import ConnectionClosed

log = logging.getLogger("peerstore.transport")

RECEIVE_SIZE = 256 * 1024
HASH_IN_THREAD = 1024 * 1024  # hash payloads at least this big in a worker thread


class PeerClosed(Exception):
    """The other side closed the connection (cleanly or not)."""


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytearray | None
    payload_hash: bytes | None


def tune_socket(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    for option, size in ((socket.SO_SNDBUF, 4 << 20), (socket.SO_RCVBUF, 4 << 20)):
        try:
            stream.socket.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:  # pragma: no cover - some kernels cap or refuse; defaults still work
            pass


async def hash_payload(data: Any) -> bytes:
    if len(data) >= HASH_IN_THREAD:
        return await trio.to_thread.run_sync(lambda: blake3.blake3(data).digest())
    return blake3.blake3(data).digest()


class WireStream:
    """One authenticated connection. Sends are serialised by a lock; one task receives."""

    def __init__(self, stream: trio.SocketStream, *, role: str, cluster_key: bytes, node_id: str):
        self.stream = stream
        self.conn = Connection(role=role, cluster_key=cluster_key, node_id=node_id, nonce=secrets.token_bytes(32))
        self.send_lock = trio.Lock()
        self.peer_id: str | None = None
        self.closed = False

    async def handshake(self, timeout: float) -> str:
        """Run the handshake; return the peer's node id. AuthError/CodecError on failure."""
        with trio.fail_after(timeout):
            while True:
                try:
                    event = self.conn.next_event()
                except (AuthError, CodecError):
                    await self._flush()  # the reject notice, so the peer knows why
                    raise
                await self._flush()
                if isinstance(event, HandshakeComplete):
                    self.peer_id = event.peer_node_id
                    return event.peer_node_id
                if isinstance(event, ConnectionClosed):
                    raise PeerClosed("closed during the handshake")
                self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            try:
                await self.stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def send(self, header: dict[str, Any], payload: Any = None, payload_hash: bytes | None = None) -> None:
        """Send one frame; ``payload`` (bytes-like) follows raw. The hash is computed if
        not given (pieces pass their id)."""
        size = len(payload) if payload is not None else 0
        if size and payload_hash is None:
            payload_hash = await hash_payload(payload)
        async with self.send_lock:
            prefix = self.conn.send_message(header, size, payload_hash if size else None)
            if size and size <= 64 * 1024:
                await self.stream.send_all(prefix + bytes(payload))
                return
            await self.stream.send_all(prefix)
            if size:
                await self.stream.send_all(memoryview(payload).cast("B"))

    async def receive(self, *, verify: bool = True) -> Frame:
        """The next frame with its whole payload. Raises PeerClosed at EOF."""
        while True:
            event = self.conn.next_event()
            if event is None:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.conn.receive_data(data)
                continue
            if isinstance(event, ConnectionClosed):
                raise PeerClosed("connection closed")
            if isinstance(event, Message):
                payload = None
                if event.payload_len:
                    payload = await self._read_payload(event.payload_len)
                    if verify and await hash_payload(payload) != event.payload_hash:
                        raise CodecError("a payload did not match the hash in its header")
                return Frame(event.header, payload, event.payload_hash)

    async def _read_payload(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while True:
            chunk = self.conn.take_buffered_payload()
            if not len(chunk):
                break
            view[got: got + len(chunk)] = chunk
            got += len(chunk)
        external = 0
        sock = self.stream.socket
        while got < size:
            n = await sock.recv_into(view[got:], size - got)
            if n == 0:
                raise PeerClosed("closed in the middle of a payload")
            got += n
            external += n
        if external:
            self.conn.payload_received_externally(external)
        end = self.conn.next_event()
        if not isinstance(end, PayloadEnd):  # pragma: no cover - codec invariant
            raise CodecError("payload framing out of step")
        return buffer

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1):
            await self.stream.aclose()


async def dial(host: str, port: int, *, cluster_key: bytes, node_id: str, timeout: float) -> WireStream:
    """Connect and authenticate. OSError, trio.TooSlowError, AuthError, CodecError on failure."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
    tune_socket(stream)
    wire = WireStream(stream, role="client", cluster_key=cluster_key, node_id=node_id)
    try:
        await wire.handshake(timeout)
    except BaseException:
        await wire.aclose()
        raise
    return wire
