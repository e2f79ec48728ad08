"""One authenticated connection over a trio TCP stream: handshake, framed sends, receives.

The trio wrapper of :class:`peerstore.wire.Connection` that both TCP ends use: the
daemon (links to other nodes, and its side of a CLI session) and the client (the CLI's
side). Payloads are sent raw after their header, big ones by a worker thread straight
to the socket (``sendfile`` for a whole file). Two ways to receive:

- :meth:`WireStream.receive`: the next frame with its whole payload, read straight into
  one preallocated buffer (no reassembly copies); the daemon's way;
- :meth:`WireStream.next_event` and :meth:`WireStream.read_payload`: codec events one by
  one, a payload handed to a sink chunk by chunk; the client's way, so a get's stripes
  go to disk without being held whole.

With ``idle`` set, no send or receive waits longer than ``idle`` seconds after the
last byte moved either way. A dropped connection raises :class:`PeerClosed`, a stall
past ``idle`` what :meth:`WireStream.silent` returns; a subclass may override both
(the client turns them into errors a user can act on).

Links between nodes set ``stall`` instead: a send (its wait for the connection's send
lock included) fails once nothing has moved either way for ``stall`` seconds, however
long it spent queued behind other frames while bytes flowed (:meth:`unless_silent`). The
connection counts the bytes it moves, worker threads' included (``bytes_in``,
``bytes_out``); :meth:`poll_progress` says whether any moved since it was last called.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import blake3
import trio

from peerstore.errors import AuthError, CodecError
from peerstore.wire import Connection, HandshakeComplete, Message, PayloadChunk, PayloadEnd
from peerstore.wire.frames import ConnectionClosed

RECEIVE_SIZE = 256 * 1024
HASH_IN_THREAD = 1024 * 1024  # hash payloads at least this big in a worker thread
# Payloads at least this big are moved by a worker thread: on loopback and fast LANs the
# kernel copy of a send dominates, and it must not stall the trio thread.
THREAD_IO = 256 * 1024
IO_TIMEOUT = 60.0
# A payload receive asks the socket to wake it once this many bytes are in (SO_RCVLOWAT),
# not per segment: on a slow link that costs half the receiver's CPU. A link so slow that
# they do not come within LOWAT_WAIT seconds is read as it comes.
RECEIVE_LOWAT = 64 * 1024
LOWAT_WAIT = 0.5
LOWAT = getattr(socket, "SO_RCVLOWAT", None)
FAREWELL_TIMEOUT = 1.0  # seconds to hand a peer the reason we are closing on it
io_threads = trio.CapacityLimiter(16)
ENDED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _wait(fd: int, event: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(fd, event)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(left * 1000):
        raise TimeoutError("socket stalled")


def _uncounted(n: int) -> None:
    pass


# The blocking_* functions run in a worker thread; ``timeout`` bounds the silence (the
# time since the last byte moved), not the whole transfer, and ``count(n)`` is told of
# every ``n`` bytes moved (the connection's byte counters).


def blocking_send(fd: int, data: Any, timeout: float = IO_TIMEOUT, count: Callable[[int], None] = _uncounted) -> None:
    """Write all of ``data`` to a non-blocking socket fd from a worker thread."""
    view = memoryview(data).cast("B")
    deadline = time.monotonic() + timeout
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            _wait(fd, select.POLLOUT, deadline)
            continue
        view = view[sent:]
        count(sent)
        deadline = time.monotonic() + timeout


def blocking_sendfile(fd: int, path: str, size: int, timeout: float = IO_TIMEOUT,
                      count: Callable[[int], None] = _uncounted) -> None:
    """Send ``size`` bytes of a file with sendfile (no user-space copy), else read+write."""
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
                    _wait(fd, select.POLLOUT, deadline)
                    continue
                except OSError:
                    break  # e.g. a file system without sendfile support: copy the rest
                if sent == 0:
                    raise OSError(f"{path} shrank while being sent")
                offset += sent
                count(sent)
                deadline = time.monotonic() + timeout
        if offset < size:
            source.seek(offset)
            blocking_send(fd, source.read(size - offset), timeout, count)


def blocking_receive(fd: int, view: memoryview, timeout: float = IO_TIMEOUT,
                     count: Callable[[int], None] = _uncounted) -> None:
    """Fill ``view`` from a non-blocking socket fd from a worker thread, woken once
    RECEIVE_LOWAT bytes (or the rest) are in; SO_RCVLOWAT is back at 1 when it returns."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(fileno=os.dup(fd)) if LOWAT is not None else None
    lowat = 1
    try:
        while view:
            try:
                got = os.readv(fd, [view])
            except BlockingIOError:
                if sock is None or lowat < 0:
                    _wait(fd, select.POLLIN, deadline)
                    continue
                want = min(len(view), RECEIVE_LOWAT)
                if want != lowat:
                    sock.setsockopt(socket.SOL_SOCKET, LOWAT, want)
                    lowat = want
                try:
                    _wait(fd, select.POLLIN, min(deadline, time.monotonic() + LOWAT_WAIT))
                except TimeoutError:
                    sock.setsockopt(socket.SOL_SOCKET, LOWAT, 1)
                    lowat = -1  # a link this slow: read what comes for the rest of the payload
                continue
            if got == 0:
                raise EOFError("closed in the middle of a payload")
            view = view[got:]
            count(got)
            deadline = time.monotonic() + timeout
    finally:
        if sock is not None:
            if lowat > 1:
                sock.setsockopt(socket.SOL_SOCKET, LOWAT, 1)
            sock.close()


class PeerClosed(Exception):
    """The other side closed the connection (cleanly or not), or it stalled."""


class PeerSilent(PeerClosed):
    """Nothing moved on the connection for longer than its bound: it is closed."""


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytearray | None
    payload_hash: bytes | None


def tune_socket(stream: trio.SocketStream) -> None:
    """TCP_NODELAY and 4 MiB socket buffers, for node-to-node bulk transfers."""
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


def why(err: BaseException) -> str:
    """An OS error's short reason (its strerror), else the error's text or type."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


class WireStream:
    """One authenticated connection. Sends are serialised by a lock; one task receives."""

    receive_size = RECEIVE_SIZE

    def __init__(self, stream: trio.SocketStream, *, role: str, cluster_key: bytes, node_id: str,
                 where: str = "the peer", idle: float | None = None):
        self.stream = stream
        self.conn = Connection(role=role, cluster_key=cluster_key, node_id=node_id, nonce=secrets.token_bytes(32))
        self.where = where
        self.idle = idle
        self.send_lock = trio.Lock()
        self.peer_id: str | None = None
        self.closed = False
        self.last_activity = trio.current_time()
        self._eof = False
        self.stall: float | None = None  # see the module docstring; set for links between nodes
        self.bytes_in = 0
        self.bytes_out = 0
        self._polled = (0, 0)
        self._bounded_sends: set[trio.CancelScope] = set()

    # -- what a dropped or stalled connection raises (a subclass may say it its way)

    def lost(self, why: str) -> Exception:
        return PeerClosed(why)

    def silent(self) -> Exception:
        return PeerSilent(f"{self.where} went silent: nothing moved for {self.io_timeout:g} s")

    @property
    def io_timeout(self) -> float:
        """How long a blocking payload transfer in a worker thread may go without a byte
        moving."""
        if self.idle is not None:
            return self.idle
        return self.stall if self.stall is not None else IO_TIMEOUT

    # -- progress

    def _count_in(self, n: int) -> None:
        self.bytes_in += n

    def _count_out(self, n: int) -> None:
        self.bytes_out += n

    def _moved(self) -> None:
        self.last_activity = now = trio.current_time()
        if self.stall is not None:
            for scope in self._bounded_sends:
                scope.deadline = max(scope.deadline, now + self.stall)

    def poll_progress(self) -> bool:
        """Did bytes move either way since the last call? Counts what worker threads
        moved in the middle of a payload, and pushes back :meth:`unless_silent`'s bound."""
        counts = (self.bytes_in, self.bytes_out)
        if counts == self._polled:
            return False
        self._polled = counts
        self._moved()
        return True

    @contextlib.contextmanager
    def unless_silent(self) -> Iterator[None]:
        """Run the block (a send) until it ends or nothing has moved on the connection for
        ``stall`` seconds; then it is cancelled and :meth:`silent` raised (the caller
        closes the connection: a frame may be half sent). Unbounded without ``stall``."""
        if self.stall is None:
            yield
            return
        scope = trio.CancelScope(deadline=trio.current_time() + self.stall)
        self._bounded_sends.add(scope)
        try:
            with scope:
                yield
        finally:
            self._bounded_sends.discard(scope)
        if scope.cancelled_caught:
            raise self.silent()

    # -- handshake

    async def handshake(self, timeout: float) -> str:
        """Run the handshake; return the peer's node id. AuthError, CodecError,
        PeerClosed (or ``lost``) or trio.TooSlowError on failure."""
        with trio.fail_after(timeout):
            while True:
                event = await self.next_event()
                if isinstance(event, HandshakeComplete):
                    self.peer_id = event.peer_node_id
                    return event.peer_node_id
                if isinstance(event, ConnectionClosed):
                    raise self.lost(f"{self.where} closed the connection during the handshake")

    # -- sending

    async def send(self, header: dict[str, Any], payload: Any = None, payload_hash: bytes | None = None) -> None:
        """Send one frame; ``payload`` (bytes-like) follows raw. The hash is computed if
        not given (pieces pass their id)."""
        size = len(payload) if payload is not None else 0
        if size and payload_hash is None:
            payload_hash = await hash_payload(payload)
        async with self.send_lock:
            prefix = self.conn.send_message(header, size, payload_hash if size else None)
            if size < THREAD_IO:
                await self._send_all(prefix + bytes(payload) if size else prefix)  # one segment
                return
            await self._send_all(prefix)
            await self._in_thread(blocking_send, memoryview(payload).cast("B"), count=self._count_out)

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
            await self._send_all(self.conn.send_message(header, size, payload_hash))
            for view in views:
                if len(view) < THREAD_IO:
                    await self._send_all(view)
                else:
                    await self._in_thread(blocking_send, view, count=self._count_out)

    async def send_file(self, header: dict[str, Any], path: str, size: int, payload_hash: bytes) -> None:
        """Send one frame whose payload is a whole file, with sendfile where possible."""
        async with self.send_lock:
            await self._send_all(self.conn.send_message(header, size, payload_hash))
            await self._in_thread(blocking_sendfile, path, size, count=self._count_out)

    async def _send_all(self, data: bytes | memoryview) -> None:
        try:
            if self.idle is None:
                await self.stream.send_all(data)
            else:
                with trio.fail_after(self.idle):
                    await self.stream.send_all(data)
        except trio.TooSlowError:
            raise self.silent() from None
        except ENDED as err:
            raise self.lost(f"the connection to {self.where} dropped: {why(err)}") from None
        self.bytes_out += len(data)
        self._moved()

    async def _in_thread(self, function: Any, *args: Any, count: Callable[[int], None]) -> None:
        """Run blocking socket I/O in a worker thread. A stall or a failure part-way
        leaves the stream out of step, so the connection is closed."""
        try:
            async with io_threads:
                fd = self.stream.socket.fileno()
                await trio.to_thread.run_sync(functools.partial(function, fd, *args, timeout=self.io_timeout,
                                                                count=count))
        except (OSError, EOFError, TimeoutError) as err:
            await self.aclose()
            if isinstance(err, TimeoutError):
                raise self.silent() from err
            raise self.lost(f"the connection to {self.where} dropped: {why(err)}") from err
        self._moved()

    # -- receiving whole frames

    async def receive(self, *, verify: bool = True, alloc: Any = bytearray, budget: Any = None) -> Frame:
        """The next frame with its whole payload (in a buffer from ``alloc(size)``).
        Raises PeerClosed (or ``lost``) at EOF.

        With ``budget`` (``admit(n)`` awaited, ``release(n)``: the daemon's PayloadBudget)
        a payload's declared length is admitted before its buffer is allocated; the caller
        owns the admitted bytes once the frame is returned (``Frame.payload`` long), and
        they are released here if the frame fails first."""
        while True:
            event = self.conn.next_event()
            if event is None:
                self.conn.receive_data(await self._receive_some())
                continue
            if isinstance(event, ConnectionClosed):
                raise self.lost("connection closed")
            if isinstance(event, Message):
                payload = None
                if event.payload_len:
                    if budget is not None:
                        await budget.admit(event.payload_len)
                    try:
                        payload = await self._read_payload(event.payload_len, alloc)
                        if verify and await hash_payload(payload) != event.payload_hash:
                            raise CodecError("a payload did not match the hash in its header")
                    except BaseException:
                        if budget is not None:
                            budget.release(event.payload_len)
                        raise
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
            await self._in_thread(blocking_receive, view[got:], count=self._count_in)
        else:
            while got < size:
                n = await self._receive_into(view[got:], size - got)
                if n == 0:
                    raise self.lost("closed in the middle of a payload")
                got += n
        if direct:
            self.conn.payload_received_externally(direct)
        end = self.conn.next_event()
        if not isinstance(end, PayloadEnd):  # pragma: no cover - codec invariant
            raise CodecError("payload framing out of step")
        return buffer

    # -- receiving event by event

    async def next_event(self) -> Any:
        """The next codec event (handshake replies are sent on the way)."""
        while True:
            try:
                event = self.conn.next_event()
            except AuthError:
                await self._flush_farewell()  # a REJECT, so the peer hears why
                raise
            except CodecError as err:
                await self._flush_farewell()
                if self._eof:
                    raise self.lost(f"the connection to {self.where} dropped: {err}") from None
                raise CodecError(f"{self.where} broke the protocol: {err}") from None
            out = self.conn.data_to_send()
            if out:
                await self._send_all(out)
            if event is not None:
                return event
            self.conn.receive_data(await self._receive_some())

    async def read_payload(self, message: Message, sink: Callable[[memoryview], None]) -> None:
        """Hand the payload after ``message`` to ``sink`` and check it against its hash."""
        hasher = blake3.blake3()
        while True:
            event = await self.next_event()
            if isinstance(event, PayloadChunk):
                hasher.update(event.data)
                sink(event.data)
            elif isinstance(event, PayloadEnd):
                break
        if hasher.digest() != message.payload_hash:
            raise CodecError(
                f"the {message.header.get('t')} payload from {self.where} does not match its hash: "
                "corrupted in transit; retry"
            )

    # -- the socket, bounded by ``idle``

    async def _receive_some(self) -> bytes:
        data = await self._bounded(self.stream.receive_some, self.receive_size)
        if not data:
            self._eof = True
        self.bytes_in += len(data)
        return data

    async def _receive_into(self, view: memoryview, n: int) -> int:
        got = await self._bounded(self.stream.socket.recv_into, view, n)
        self.bytes_in += got
        return got

    async def _bounded(self, receive: Any, *args: Any) -> Any:
        """``await receive(*args)``, failing with ``silent`` once nothing moved for ``idle``."""
        try:
            if self.idle is None:
                result = await receive(*args)
            else:
                while True:
                    with trio.move_on_at(self.last_activity + self.idle):
                        result = await receive(*args)
                        break
                    if trio.current_time() >= self.last_activity + self.idle:
                        raise self.silent()
        except ENDED as err:
            raise self.lost(f"the connection to {self.where} dropped: {why(err)}") from None
        self._moved()
        return result

    async def _flush_farewell(self) -> None:
        out = self.conn.data_to_send()
        if out:
            with trio.move_on_after(FAREWELL_TIMEOUT):
                try:
                    await self.stream.send_all(out)
                except ENDED:
                    pass

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


async def dial(host: str, port: int, *, cluster_key: bytes, node_id: str, timeout: float) -> WireStream:
    """Connect to a node and authenticate. OSError, trio.TooSlowError, AuthError,
    CodecError or PeerClosed on failure."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
    tune_socket(stream)
    wire = WireStream(stream, role="client", cluster_key=cluster_key, node_id=node_id, where=f"{host}:{port}")
    try:
        await wire.handshake(timeout)
    except BaseException:
        await wire.aclose()
        raise
    return wire
