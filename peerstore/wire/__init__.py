"""The wire codec, sans-IO in the h11 style: bytes in, events out; bytes to send out.

- :mod:`.handshake` -- version negotiation and mutual cluster-key proof for TCP
- :mod:`.frames` -- :class:`Connection`: MACed msgpack frame headers with raw payloads
- :mod:`.datagram` -- MACed gossip datagrams and the replay filter
- :mod:`.messages` -- the message schemas carried in frame headers (core's module)

Nothing here does I/O, reads a clock or draws randomness: nonces come from the caller.
"""

from peerstore.wire.datagram import (
    MAX_BODY as MAX_DATAGRAM_BODY,
    MAX_DATAGRAM,
    ReplayError,
    ReplayFilter,
    open_datagram,
    seal_datagram,
)
from peerstore.wire.frames import (
    MAX_FRAME_PREFIX,
    MAX_HEADER,
    MAX_PAYLOAD,
    Connection,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    Message,
    PayloadChunk,
    PayloadEnd,
)
from peerstore.wire.handshake import NONCE_SIZE, PROTOCOL_MAX, PROTOCOL_MIN

__all__ = [
    "MAX_DATAGRAM",
    "MAX_DATAGRAM_BODY",
    "MAX_FRAME_PREFIX",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "NONCE_SIZE",
    "PROTOCOL_MAX",
    "PROTOCOL_MIN",
    "Connection",
    "ConnectionClosed",
    "Event",
    "HandshakeComplete",
    "Message",
    "PayloadChunk",
    "PayloadEnd",
    "ReplayError",
    "ReplayFilter",
    "open_datagram",
    "seal_datagram",
]
