"""One side of one TCP connection, sans-IO: bytes in, events out; bytes to send out.

After the handshake (see :mod:`peerstore.wire.handshake`) the stream is a run of frames::

    u32 header_len | header (msgpack map, str keys, str "t") | 16-byte MAC | payload ("n" bytes)

**What the MAC covers.** MAC = keyed BLAKE3 under the session key over (direction label,
frame sequence number as u64, header bytes), truncated to 16 bytes. Sequence numbers are
implicit and counted per direction, so a replayed, reordered, dropped or reflected frame
fails the next MAC check. The payload is *not* MACed byte by byte -- that would put a
keyed hash pass over every GB/s in the event loop. Instead a frame with a payload carries
"h", the 32-byte BLAKE3 of the payload, inside the MACed header. **The receiving shell
must hash the payload and compare it with** ``Message.payload_hash`` (for pieces "h" is the
piece id, which the store checks on arrival anyway) before trusting a single byte of it.

**Reserved header keys.** "n" (payload length) and "h" (payload hash) belong to this
layer: :meth:`Connection.send_message` adds them from its arguments and ``Message.header``
comes back without them. A header without a payload must not carry "h".

**Zero copies of payload.** :meth:`Connection.send_message` returns only header + MAC; the
caller writes the payload bytes to the socket itself. On receive, payload arrives either
as ``PayloadChunk`` memoryviews over the very ``bytes`` objects fed to
:meth:`Connection.receive_data`, or -- for a large payload -- the caller drains
:meth:`Connection.take_buffered_payload` and reads the rest straight from the socket into
its own buffer, reporting the count with :meth:`Connection.payload_received_externally`.

**Bounded buffering.** :meth:`Connection.next_event` returns ``None`` (needs more bytes)
only while the buffered bytes are fewer than the next unit needs, and no unit is larger
than ``MAX_FRAME_PREFIX`` (4 + 64 KiB header + 16) -- a payload is handed out as it
arrives, never accumulated. A shell that feeds at most N bytes per ``receive_data`` and
drains ``next_event`` until ``None`` before reading again therefore never holds more than
``MAX_FRAME_PREFIX + N`` buffered bytes (:attr:`Connection.buffered_bytes`). A header
length above the limit is refused from its 4-byte prefix, before anything is allocated.
A payload is announced by its :class:`Message` (``payload_len``, up to ``MAX_PAYLOAD``)
before any of it arrives: a shell that gathers payloads into buffers must admit that
length against a node-wide budget *before* allocating (the daemon's ``PayloadBudget``),
or every authenticated connection could make it allocate ``MAX_PAYLOAD`` at once.

Shell loop::

    conn = Connection(role=..., cluster_key=..., node_id=..., nonce=secrets.token_bytes(32))
    send(conn.initial_bytes())
    while True:
        event = conn.next_event()           # CodecError / AuthError: send data_to_send(), close
        send(conn.data_to_send())
        if event is None:
            conn.receive_data(recv(N))      # b"" at EOF
        else:
            handle(event)
"""

from __future__ import annotations

import hmac
from collections import deque
from dataclasses import dataclass
from typing import Union

import blake3
import msgpack

from peerstore.errors import AuthError, CodecError
from peerstore.model.codec import unpack
from peerstore.wire.handshake import (
    MAX_HANDSHAKE_MESSAGE,
    PREFIX_SIZE,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    Handshake,
    HandshakeResult,
    Role,
)

MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 80 * 1024 * 1024
MAC_SIZE = 16
HASH_SIZE = 32
LENGTH_SIZE = 4
MAX_FRAME_PREFIX = LENGTH_SIZE + MAX_HEADER + MAC_SIZE
_MAX_SEQUENCE = 2**64 - 1


_CLIENT_TO_SERVER = b"peerstore frame client->server"
_SERVER_TO_CLIENT = b"peerstore frame server->client"


# -- events


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The peer proved the cluster key; frames may flow both ways."""

    peer_node_id: str
    version: int


@dataclass(frozen=True, slots=True)
class Message:
    """A verified frame header; ``payload_len`` payload bytes follow if it is non-zero."""

    header: dict
    payload_len: int = 0
    payload_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class PayloadChunk:
    """The next slice of the current payload (a view into received bytes, not a copy)."""

    data: memoryview


@dataclass(frozen=True, slots=True)
class PayloadEnd:
    """The current payload is complete (only after a Message with payload_len > 0)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed cleanly at a frame boundary; repeated on every later call."""


Event = Union[HandshakeComplete, Message, PayloadChunk, PayloadEnd, ConnectionClosed]


# -- header codec


def decode_header(raw: bytes) -> tuple[dict, int, bytes | None]:
    """Parse a header's bytes into (header without "n"/"h", payload length, payload hash)."""
    # Per-container limits inside one header; the 64 KiB header bound caps the total anyway,
    # these refuse an absurd declared length before msgpack allocates for it.
    header = unpack(raw, "frame header", max_bytes=MAX_HEADER, max_str=MAX_HEADER, max_bin=MAX_HEADER,
                    max_array=16 * 1024, max_map=4 * 1024, use_list=True, error=CodecError)
    if not isinstance(header, dict):
        raise CodecError(f"frame header must be a msgpack map, got {type(header).__name__}")
    for key in header:
        if not isinstance(key, str):
            raise CodecError(f"frame header keys must be strings, got {key!r}")
    if not isinstance(header.get("t"), str):
        raise CodecError('frame header lacks a string "t" (message type)')
    payload_len = header.pop("n", 0)
    if type(payload_len) is not int or not 0 <= payload_len <= MAX_PAYLOAD:
        raise CodecError(f'frame header "n" must be a payload length 0..{MAX_PAYLOAD}, got {payload_len!r}')
    payload_hash = header.pop("h", None)
    if payload_len and not (isinstance(payload_hash, bytes) and len(payload_hash) == HASH_SIZE):
        raise CodecError(f'a frame with a payload must carry "h", its {HASH_SIZE}-byte BLAKE3 hash')
    if not payload_len and payload_hash is not None:
        raise CodecError('a frame without a payload must not carry "h"')
    return header, payload_len, payload_hash


def encode_header(header: dict, payload_len: int = 0, payload_hash: bytes | None = None) -> bytes:
    """Encode a header the receiver will accept, or raise ValueError saying why not."""
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ValueError('a frame header must be a dict with a str "t" (message type)')
    if "n" in header or "h" in header:
        raise ValueError('"n" and "h" are reserved for the payload length and hash; pass them as arguments')
    if type(payload_len) is not int or not 0 <= payload_len <= MAX_PAYLOAD:
        raise ValueError(f"payload_len must be 0..{MAX_PAYLOAD}, got {payload_len!r}")
    if payload_len:
        if not isinstance(payload_hash, (bytes, bytearray, memoryview)) or len(payload_hash) != HASH_SIZE:
            raise ValueError(f"a payload needs its {HASH_SIZE}-byte BLAKE3 hash")
        header = {**header, "n": payload_len, "h": bytes(payload_hash)}
    elif payload_hash is not None:
        raise ValueError("payload_hash given without a payload")
    try:
        # packb would malloc a 256 KiB scratch buffer per call; a small one grows if needed
        raw = msgpack.Packer(use_bin_type=True, buf_size=1024).pack(header)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"frame header is not msgpack-encodable: {err}") from None
    if len(raw) > MAX_HEADER:
        raise ValueError(f"frame header is {len(raw)} bytes, over the {MAX_HEADER}-byte limit")
    try:
        decode_header(raw)  # refuse at the sender what the receiver would refuse
    except CodecError as err:
        raise ValueError(str(err)) from None
    return raw


# -- MACs


class FrameMac:
    """MACs for one direction of one session: (label, implicit u64 sequence, header)."""

    def __init__(self, session_key: bytes, direction_label: bytes):
        self._base = blake3.blake3(direction_label, key=session_key)
        self.sequence = 0

    def next_mac(self, header: bytes) -> bytes:
        """The MAC for the next frame in this direction; advances the sequence."""
        if self.sequence > _MAX_SEQUENCE:
            raise CodecError("frame sequence number exhausted; reconnect")
        hasher = self._base.copy()
        hasher.update(self.sequence.to_bytes(8, "big"))
        hasher.update(header)
        self.sequence += 1
        return hasher.digest(MAC_SIZE)


# -- receive buffer


_COALESCE_BELOW = 1024


class _ReceiveBuffer:
    """Received bytes as a queue of read-only views, so payload slices need no copy."""

    def __init__(self) -> None:
        self._views: deque[memoryview] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if len(data) < _COALESCE_BELOW and self._views and len(self._views[-1]) < _COALESCE_BELOW:
            # A peer trickling 1-byte segments must not cost a view object (~200 bytes)
            # per buffered byte; copying small pieces together is cheap.
            self._views[-1] = memoryview(bytes(self._views[-1]) + data)
        else:
            self._views.append(memoryview(data))

    def peek(self, n: int) -> bytes:
        """A copy of the first n bytes (n <= len), not consumed."""
        out, need = [], n
        for view in self._views:
            out.append(view[:need])
            need -= len(out[-1])
            if not need:
                break
        return b"".join(out)

    def take(self, n: int) -> bytes:
        """Consume and return a copy of the first n bytes (n <= len)."""
        data = self.peek(n)
        self.discard(n)
        return data

    def take_view(self, limit: int) -> memoryview:
        """Consume up to limit bytes from the front without copying (may return fewer)."""
        if not self._views:
            return memoryview(b"")
        view = self._views[0]
        if len(view) <= limit:
            self._views.popleft()
        else:
            self._views[0] = view[limit:]
            view = view[:limit]
        self._size -= len(view)
        return view

    def discard(self, n: int) -> None:
        while n:
            n -= len(self.take_view(n))


# -- the connection

_HANDSHAKE, _FRAMES, _PAYLOAD, _DEAD = "handshake", "frames", "payload", "dead"


class Connection:
    """One side of one TCP connection: handshake, then MACed frames both ways.

    Receive errors (:class:`CodecError`, :class:`AuthError`) are raised, and kill the
    connection: every later call raises the same error, except :meth:`data_to_send`, which
    still hands out a final REJECT notice the shell should send before closing.
    """

    def __init__(
        self,
        *,
        role: Role,
        cluster_key: bytes,
        node_id: str,
        nonce: bytes,
        versions: tuple[int, int] = (PROTOCOL_MIN, PROTOCOL_MAX),
    ):
        self._handshake: Handshake | None = Handshake(
            role=role, cluster_key=cluster_key, node_id=node_id, nonce=nonce, versions=versions
        )
        self.role: Role = role
        self.node_id = node_id
        self._outgoing = bytearray(self._handshake.initial_message())
        self._buffer = _ReceiveBuffer()
        self._state = _HANDSHAKE
        self._eof = False
        self._error: CodecError | None = None
        self._payload_left = 0
        self._send_mac: FrameMac | None = None
        self._receive_mac: FrameMac | None = None
        self._peer_node_id: str | None = None
        self._version: int | None = None

    # -- state

    @property
    def established(self) -> bool:
        """True once the handshake completed and until the connection dies."""
        return self._send_mac is not None and self._error is None

    @property
    def peer_node_id(self) -> str | None:
        """The peer's node id, once it proved the cluster key."""
        return self._peer_node_id if self._send_mac is not None else None

    @property
    def version(self) -> int | None:
        """The negotiated protocol version, once the handshake completed."""
        return self._version if self._send_mac is not None else None

    @property
    def payload_remaining(self) -> int:
        """Bytes of the current payload not yet handed out (buffered or still on the wire)."""
        return self._payload_left

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet consumed; see the module docstring for the bound."""
        return len(self._buffer)

    # -- sending

    def initial_bytes(self) -> bytes:
        """What to send on connect: the client's hello; b"" for a server."""
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Handshake bytes waiting to be sent (b"" if none); frames come from send_message."""
        out, self._outgoing = bytes(self._outgoing), bytearray()
        return out

    def send_message(self, header: dict, payload_len: int = 0, payload_hash: bytes | None = None) -> bytes:
        """Frame a header: returns length prefix + header + MAC.

        The caller then writes exactly ``payload_len`` payload bytes raw, before the next
        frame. Raises ValueError for a header the peer would refuse (nothing is consumed).
        """
        self._raise_if_dead()
        if self._send_mac is None:
            raise RuntimeError("cannot send frames before the handshake completes")
        raw = encode_header(header, payload_len, payload_hash)
        return b"".join((len(raw).to_bytes(LENGTH_SIZE, "big"), raw, self._send_mac.next_mac(raw)))

    # -- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the socket; b"" means the peer closed (EOF).

        ``bytes`` are kept as they are; a bytearray or memoryview is copied once, since the
        caller may reuse its buffer.
        """
        self._raise_if_dead()
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        if not data:
            self._eof = True
            return
        self._buffer.append(data if isinstance(data, bytes) else bytes(data))

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed."""
        self._raise_if_dead()
        try:
            if self._state == _HANDSHAKE:
                return self._next_handshake_event()
            if self._state == _FRAMES:
                return self._next_frame_event()
            return self._next_payload_event()
        except CodecError as err:
            self._die(err)
            raise

    def take_buffered_payload(self, max_n: int | None = None) -> memoryview:
        """Consume up to max_n already-buffered bytes of the current payload, without copying.

        May return fewer bytes than are buffered; call until it returns an empty view, then
        read :attr:`payload_remaining` bytes from the socket yourself.
        """
        self._raise_if_dead()
        if self._state != _PAYLOAD:
            raise RuntimeError("take_buffered_payload() outside a payload")
        limit = self._payload_left if max_n is None else min(max_n, self._payload_left)
        view = self._buffer.take_view(limit)
        self._payload_left -= len(view)
        return view

    def payload_received_externally(self, n: int) -> None:
        """Tell the connection the caller read n payload bytes directly from the socket."""
        self._raise_if_dead()
        if self._state != _PAYLOAD:
            raise RuntimeError("payload_received_externally() outside a payload")
        if len(self._buffer):
            raise RuntimeError(
                "payload bytes are still buffered; drain take_buffered_payload() before reading "
                "from the socket, or the payload would be reassembled out of order"
            )
        if not 0 <= n <= self._payload_left:
            raise RuntimeError(f"read {n} payload bytes externally, but only {self._payload_left} remain")
        self._payload_left -= n

    # -- internals

    def _next_handshake_event(self) -> Event | None:
        assert self._handshake is not None
        if len(self._buffer) < PREFIX_SIZE:
            return self._need_data("the handshake", PREFIX_SIZE)
        size = self._handshake.message_size(self._buffer.peek(PREFIX_SIZE))
        assert size <= MAX_HANDSHAKE_MESSAGE
        if len(self._buffer) < size:
            return self._need_data("the handshake", size)
        reply, result = self._handshake.receive(self._buffer.take(size))
        self._outgoing += reply
        if result is None:
            return self._next_handshake_event()
        self._establish(result)
        return HandshakeComplete(result.peer_node_id, result.version)

    def _establish(self, result: HandshakeResult) -> None:
        ours, theirs = _CLIENT_TO_SERVER, _SERVER_TO_CLIENT
        if self.role == "server":
            ours, theirs = theirs, ours
        self._send_mac = FrameMac(result.session_key, ours)
        self._receive_mac = FrameMac(result.session_key, theirs)
        self._peer_node_id, self._version = result.peer_node_id, result.version
        self._handshake = None
        self._state = _FRAMES

    def _next_frame_event(self) -> Event | None:
        assert self._receive_mac is not None
        if len(self._buffer) < LENGTH_SIZE:
            return self._need_data("a frame", LENGTH_SIZE)
        header_len = int.from_bytes(self._buffer.peek(LENGTH_SIZE), "big")
        if not 0 < header_len <= MAX_HEADER:
            raise CodecError(
                f"frame header length {header_len} is outside 1..{MAX_HEADER}; the peer is broken "
                "or not speaking this protocol version"
            )
        frame_len = LENGTH_SIZE + header_len + MAC_SIZE
        if len(self._buffer) < frame_len:
            return self._need_data("a frame", frame_len)
        frame = self._buffer.take(frame_len)
        raw, mac = frame[LENGTH_SIZE:-MAC_SIZE], frame[-MAC_SIZE:]
        # Authenticate before parsing: a forged header never reaches the msgpack decoder.
        if not hmac.compare_digest(self._receive_mac.next_mac(raw), mac):
            raise AuthError(
                f"frame {self._receive_mac.sequence - 1} from {self._peer_node_id} failed its MAC: "
                "it was forged, corrupted, replayed or reordered; drop the connection"
            )
        header, payload_len, payload_hash = decode_header(raw)
        if payload_len:
            self._state, self._payload_left = _PAYLOAD, payload_len
        return Message(header, payload_len, payload_hash)

    def _next_payload_event(self) -> Event | None:
        if not self._payload_left:
            self._state = _FRAMES
            return PayloadEnd()
        if not len(self._buffer):
            return self._need_data("a payload", self._payload_left)
        view = self._buffer.take_view(self._payload_left)
        self._payload_left -= len(view)
        return PayloadChunk(view)

    def _need_data(self, unit: str, needed: int) -> Event | None:
        """None while the peer may still send; at EOF, a clean close or a truncation error."""
        if not self._eof:
            return None
        if self._state == _FRAMES and not len(self._buffer):
            return ConnectionClosed()
        raise CodecError(
            f"peer closed the connection in the middle of {unit}: {needed - len(self._buffer)} "
            "more bytes were due"
        )

    def _die(self, err: CodecError) -> None:
        self._error, self._state = err, _DEAD
        if self._handshake is not None:
            self._outgoing += self._handshake.farewell
            self._handshake.farewell = b""
        self._buffer = _ReceiveBuffer()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise self._error
