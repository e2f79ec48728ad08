"""The wire codec over a trio TCP stream: handshake, framed sends, framed receives.

Payloads are sent raw after their header with large writes, and received straight into
a preallocated buffer with ``recv_into`` (no reassembly copies). A payload's hash is in
its MACed header; ``receive`` checks it unless the caller says the payload is
content-addressed and will be verified against its piece id anyway.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
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
# Payloads at least this big are moved by a worker thread: on loopback and fast LANs the
# kernel copy of a send dominates, and it must not stall the trio thread.
THREAD_IO = 256 * 1024
IO_TIMEOUT = 60.0
io_threads = trio.CapacityLimiter(16)


def _wait(fd: int, event: int, deadline: float, clock: Any) -> None:
    poller = select.poll()
    poller.register(fd, event)
    left = deadline - clock()
    if left <= 0 or not poller.poll(left * 1000):
        raise TimeoutError("socket stalled")


def blocking_send(fd: int, data: Any, timeout: float = IO_TIMEOUT) -> None:
    """Write all of ``data`` to a non-blocking socket fd from a worker thread."""
    import time

    view = memoryview(data).cast("B")
    deadline = time.monotonic() + timeout
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            _wait(fd, select.POLLOUT, deadline, time.monotonic)
            continue
        view = view[sent:]


def blocking_sendfile(fd: int, path: str, size: int, timeout: float = IO_TIMEOUT) -> None:
    """Send ``size`` bytes of a file with sendfile (no user-space copy), else read+write."""
    import time

    deadline = time.monotonic() + timeout
    with open(path, "rb") as source:
        if os.fstat(source.fileno()).st_size != size:
            raise OSError(f"{path} changed size")
        offset = 0
        if hasattr(os, "sendfile"):
            while offset < size:
                try:
                    sent = os.sendfile(fd, source.fileno(), offset, size - offset)
                except BlockingIOError:
                    _wait(fd, select.POLLOUT, deadline, time.monotonic)
                    continue
                except OSError:
                    break  # e.g. a file system without sendfile support: copy the rest
                if sent == 0:
                    raise OSError(f"{path} shrank while being sent")
                offset += sent
        if offset < size:
            source.seek(offset)
            blocking_send(fd, source.read(size - offset), max(0.0, deadline - time.monotonic()))


def blocking_receive(fd: int, view: memoryview, timeout: float = IO_TIMEOUT) -> None:
    """Fill ``view`` from a non-blocking socket fd from a worker thread."""
    import time

    deadline = time.monotonic() + timeout
    while view:
        try:
            got = os.readv(fd, [view])
        except BlockingIOError:
            _wait(fd, select.POLLIN, deadline, time.monotonic)
            continue
        if got == 0:
            raise EOFError("closed in the middle of a payload")
        view = view[got:]


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
            if size < THREAD_IO:
                await self.stream.send_all(prefix + bytes(payload) if size else prefix)
                return
            await self.stream.send_all(prefix)
            await self._in_thread(blocking_send, memoryview(payload).cast("B"))

    async def send_parts(self, header: dict[str, Any], parts: list[Any]) -> None:
        """Send one frame whose payload is ``parts`` back to back (no joining copy)."""
        views = [memoryview(part).cast("B") for part in parts]
        size = sum(len(v) for v in views)

        def digest() -> bytes:
            hasher = blake3.blake3()
            for view in views:
                hasher.update(view)
            return hasher.digest()

        payload_hash = await trio.to_thread.run_sync(digest)
        async with self.send_lock:
            await self.stream.send_all(self.conn.send_message(header, size, payload_hash))
            for view in views:
                if len(view) < THREAD_IO:
                    await self.stream.send_all(view)
                else:
                    await self._in_thread(blocking_send, view)

    async def send_file(self, header: dict[str, Any], path: str, size: int, payload_hash: bytes) -> None:
        """Send one frame whose payload is a whole file, with sendfile where possible."""
        async with self.send_lock:
            await self.stream.send_all(self.conn.send_message(header, size, payload_hash))
            await self._in_thread(blocking_sendfile, path, size)

    async def _in_thread(self, function: Any, *args: Any) -> None:
        """Run blocking socket I/O in a worker thread. A stall or a failure part-way
        leaves the stream out of step, so the connection is closed."""
        try:
            async with io_threads:
                await trio.to_thread.run_sync(function, self.stream.socket.fileno(), *args)
        except (OSError, EOFError, TimeoutError) as err:
            await self.aclose()
            raise PeerClosed(str(err)) from err

    async def receive(self, *, verify: bool = True, alloc: Any = bytearray) -> Frame:
        """The next frame with its whole payload (in a buffer from ``alloc(size)``).
        Raises PeerClosed at EOF."""
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
                    payload = await self._read_payload(event.payload_len, alloc)
                    if verify and await hash_payload(payload) != event.payload_hash:
                        raise CodecError("a payload did not match the hash in its header")
                return Frame(event.header, payload, event.payload_hash)

    async def _read_payload(self, size: int, alloc: Any) -> bytearray:
        """The payload, into one preallocated buffer: first what the codec already
        buffered, then the rest straight from the socket."""
        buffer = alloc(size)
        view = memoryview(buffer)
        got = 0
        while True:
            chunk = self.conn.take_buffered_payload()
            if not len(chunk):
                break
            view[got: got + len(chunk)] = chunk
            got += len(chunk)
        direct = size - got
        if direct >= THREAD_IO:
            await self._in_thread(blocking_receive, view[got:])
        else:
            sock = self.stream.socket
            while got < size:
                n = await sock.recv_into(view[got:], size - got)
                if n == 0:
                    raise PeerClosed("closed in the middle of a payload")
                got += n
        if direct:
            self.conn.payload_received_externally(direct)
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
