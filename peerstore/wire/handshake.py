"""The connection handshake: version negotiation and mutual proof of the cluster key.

Four fixed-size messages, each ``MAGIC | type byte | body``::

    client -> server  CLIENT_HELLO  min u16, max u16, client nonce (32), client node id (16)
    server -> client  SERVER_HELLO  min u16, max u16, chosen u16, server nonce (32), server node id (16)
    client -> server  CLIENT_PROOF  keyed-BLAKE3(cluster key, "client proof", hello transcript)
    server -> client  SERVER_PROOF  keyed-BLAKE3(cluster key, "server proof", transcript + client proof)

Either side may instead answer with REJECT (reason, its version range) and close.

The cluster key never crosses the wire. Each proof covers the whole transcript so far --
both nonces, both node ids, both version ranges and the chosen version -- so a proof is
useless in any other connection (replay), a version downgrade breaks the proofs, and the
role labels keep a client proof from being reflected back as a server proof.

**The client proves first.** Anyone can open a TCP connection to a listening node, so
the server answers an unauthenticated stranger with nothing keyed: its hello carries
only a fresh nonce, its node id and its version range. The server computes and sends its
own proof only after the client's proof verified; a client holding the wrong key gets a
REJECT, never a value computed under the key (no oracle for offline key guessing). The
client, in turn, only proves to a server it chose to dial, over a transcript holding its
own fresh nonce.

The session key is a keyed hash of the whole transcript, so it is fresh per connection
and bound to both identities. REJECT is unauthenticated (there is no shared key to
authenticate it with yet): an on-path attacker can forge one, but such an attacker can
equally reset the TCP connection, so it gains nothing.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Literal

import blake3

from peerstore.errors import AuthError, CodecError

PROTOCOL_MIN = 1
PROTOCOL_MAX = 1
NONCE_SIZE = 32
KEY_SIZE = 32
NODE_ID_SIZE = 16
PROOF_SIZE = 32

MAGIC = b"pstr"
PREFIX_SIZE = len(MAGIC) + 1

CLIENT_HELLO = 1
SERVER_HELLO = 2
CLIENT_PROOF = 3
SERVER_PROOF = 4
REJECT = 5

REJECT_VERSION = 1
REJECT_AUTH = 2

_BODY_SIZE = {
    CLIENT_HELLO: 2 + 2 + NONCE_SIZE + NODE_ID_SIZE,
    SERVER_HELLO: 2 + 2 + 2 + NONCE_SIZE + NODE_ID_SIZE,
    CLIENT_PROOF: PROOF_SIZE,
    SERVER_PROOF: PROOF_SIZE,
    REJECT: 1 + 2 + 2,
}
_NAMES = {
    CLIENT_HELLO: "client hello",
    SERVER_HELLO: "server hello",
    CLIENT_PROOF: "client proof",
    SERVER_PROOF: "server proof",
    REJECT: "reject",
}
MAX_HANDSHAKE_MESSAGE = PREFIX_SIZE + max(_BODY_SIZE.values())

_CLIENT_PROOF_LABEL = b"peerstore client proof"
_SERVER_PROOF_LABEL = b"peerstore server proof"
_SESSION_KEY_LABEL = b"peerstore session key"
_HEX = frozenset("0123456789abcdef")

Role = Literal["client", "server"]


def keyed_digest(key: bytes, label: bytes, *parts: bytes, size: int = 32) -> bytes:
    """Keyed BLAKE3 over a label and parts, each length-prefixed so no two inputs collide."""
    hasher = blake3.blake3(key=key)
    for piece in (label, *parts):
        hasher.update(len(piece).to_bytes(4, "big"))
        hasher.update(piece)
    return hasher.digest(size)


def is_node_id(value: object) -> bool:
    """A node id is 16 lowercase hex characters."""
    return isinstance(value, str) and len(value) == NODE_ID_SIZE and set(value) <= _HEX


def negotiate_version(ours: tuple[int, int], theirs: tuple[int, int]) -> int:
    """The highest protocol version both ranges contain, or CodecError naming both ranges."""
    low, high = max(ours[0], theirs[0]), min(ours[1], theirs[1])
    if low > high:
        raise CodecError(
            f"no common protocol version: this node speaks {_range(ours)}, the peer speaks "
            f"{_range(theirs)}; upgrade peerstore on the older node"
        )
    return high


def _range(versions: tuple[int, int]) -> str:
    return f"versions {versions[0]}-{versions[1]}"


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a finished handshake established."""

    peer_node_id: str
    version: int
    session_key: bytes = field(repr=False)


class Handshake:
    """One side's handshake state machine: whole messages in, reply bytes out.

    The caller frames the byte stream with :meth:`message_size` and feeds each complete
    message to :meth:`receive`. On a rejection, :attr:`farewell` holds a REJECT message
    to send (best effort) before closing.
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
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        if not isinstance(cluster_key, bytes) or len(cluster_key) != KEY_SIZE:
            raise ValueError(f"cluster key must be {KEY_SIZE} bytes")
        if not is_node_id(node_id):
            raise ValueError(f"node id must be {NODE_ID_SIZE} lowercase hex characters, not {node_id!r}")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} random bytes from the caller")
        low, high = versions
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 0xFFFF):
            raise ValueError(f"versions must be (min, max) with 1 <= min <= max <= 65535, not {versions!r}")
        self.role = role
        self._key = cluster_key
        self._node_id = node_id
        self._nonce = nonce
        self._versions = (low, high)
        self._transcript = bytearray()
        self._expect: tuple[int, ...] = (SERVER_HELLO, REJECT) if role == "client" else (CLIENT_HELLO,)
        self._peer_node_id: str | None = None
        self._version: int | None = None
        self.farewell = b""

    def initial_message(self) -> bytes:
        """The client's hello; the server says nothing until it has heard the client."""
        if self.role == "server":
            return b""
        low, high = self._versions
        hello = _message(CLIENT_HELLO, _u16(low) + _u16(high) + self._nonce + self._node_id.encode())
        self._transcript += hello
        return hello

    def message_size(self, prefix: bytes) -> int:
        """Total size of the next message, given its first PREFIX_SIZE bytes."""
        if prefix[: len(MAGIC)] != MAGIC:
            raise CodecError(
                f"peer is not speaking the peerstore protocol (got {bytes(prefix)!r} where a "
                "handshake message should start); check the address and port"
            )
        kind = prefix[len(MAGIC)]
        if kind not in self._expect:
            wanted = " or ".join(_NAMES[k] for k in self._expect)
            got = _NAMES.get(kind, f"unknown message type {kind}")
            raise CodecError(f"handshake out of order: expected {wanted}, got {got}")
        return PREFIX_SIZE + _BODY_SIZE[kind]

    def receive(self, message: bytes) -> tuple[bytes, HandshakeResult | None]:
        """Consume one whole message; return (bytes to send, result once complete)."""
        kind, body = message[len(MAGIC)], bytes(message[PREFIX_SIZE:])
        if kind == REJECT:
            self._on_reject(body)
        if kind == CLIENT_HELLO:
            return self._on_client_hello(message, body), None
        if kind == SERVER_HELLO:
            return self._on_server_hello(message, body), None
        if kind == CLIENT_PROOF:
            return self._on_client_proof(message, body)
        return b"", self._on_server_proof(message, body)

    # -- server side

    def _on_client_hello(self, message: bytes, body: bytes) -> bytes:
        theirs = _read_range(body)
        peer = _read_node_id(body, 4 + NONCE_SIZE)
        try:
            version = negotiate_version(self._versions, theirs)
        except CodecError:
            self.farewell = self._reject(REJECT_VERSION)
            raise
        low, high = self._versions
        hello = _message(
            SERVER_HELLO, _u16(low) + _u16(high) + _u16(version) + self._nonce + self._node_id.encode()
        )
        self._transcript += message
        self._transcript += hello
        self._peer_node_id, self._version = peer, version
        self._expect = (CLIENT_PROOF,)
        return hello

    def _on_client_proof(self, message: bytes, body: bytes) -> tuple[bytes, HandshakeResult]:
        expected = keyed_digest(self._key, _CLIENT_PROOF_LABEL, self._transcript)
        if not hmac.compare_digest(expected, body):
            self.farewell = self._reject(REJECT_AUTH)
            raise AuthError(
                f"peer {self._peer_node_id} failed the cluster-key challenge: it holds a "
                "different cluster key; give every node the same cluster key"
            )
        self._transcript += message
        proof = _message(SERVER_PROOF, keyed_digest(self._key, _SERVER_PROOF_LABEL, self._transcript))
        self._transcript += proof
        self._expect = ()
        return proof, self._result()

    # -- client side

    def _on_server_hello(self, message: bytes, body: bytes) -> bytes:
        theirs = _read_range(body)
        chosen = _read_u16(body, 4)
        peer = _read_node_id(body, 6 + NONCE_SIZE)
        version = negotiate_version(self._versions, theirs)
        if chosen != version:
            raise CodecError(
                f"server chose protocol version {chosen}, but the highest version both sides "
                f"speak is {version} (this node: {_range(self._versions)}, server: {_range(theirs)})"
            )
        self._transcript += message
        proof = _message(CLIENT_PROOF, keyed_digest(self._key, _CLIENT_PROOF_LABEL, self._transcript))
        self._transcript += proof
        self._peer_node_id, self._version = peer, version
        self._expect = (SERVER_PROOF, REJECT)
        return proof

    def _on_server_proof(self, message: bytes, body: bytes) -> HandshakeResult:
        expected = keyed_digest(self._key, _SERVER_PROOF_LABEL, self._transcript)
        if not hmac.compare_digest(expected, body):
            raise AuthError(
                f"server {self._peer_node_id} failed the cluster-key challenge: its proof does "
                "not match this node's cluster key; give every node the same cluster key"
            )
        self._transcript += message
        self._expect = ()
        return self._result()

    def _on_reject(self, body: bytes) -> None:
        reason, theirs = body[0], (_read_u16(body, 1), _read_u16(body, 3))
        if reason == REJECT_VERSION:
            raise CodecError(
                f"peer refused the connection: no common protocol version (this node speaks "
                f"{_range(self._versions)}, the peer speaks {_range(theirs)}); upgrade the older node"
            )
        if reason == REJECT_AUTH:
            raise AuthError(
                f"server {self._peer_node_id} rejected this node's cluster-key proof: the two "
                "nodes hold different cluster keys; give every node the same cluster key"
            )
        raise CodecError(f"peer refused the connection for an unknown reason code {reason}")

    # -- shared

    def _reject(self, reason: int) -> bytes:
        low, high = self._versions
        return _message(REJECT, bytes([reason]) + _u16(low) + _u16(high))

    def _result(self) -> HandshakeResult:
        assert self._peer_node_id is not None and self._version is not None
        session_key = keyed_digest(self._key, _SESSION_KEY_LABEL, self._transcript)
        return HandshakeResult(self._peer_node_id, self._version, session_key)


def _message(kind: int, body: bytes) -> bytes:
    assert len(body) == _BODY_SIZE[kind]
    return MAGIC + bytes([kind]) + body


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _read_u16(body: bytes, offset: int) -> int:
    return int.from_bytes(body[offset : offset + 2], "big")


def _read_range(body: bytes) -> tuple[int, int]:
    low, high = _read_u16(body, 0), _read_u16(body, 2)
    if not 1 <= low <= high:
        raise CodecError(f"peer sent a malformed protocol version range {low}-{high}")
    return low, high


def _read_node_id(body: bytes, offset: int) -> str:
    raw = body[offset : offset + NODE_ID_SIZE]
    text = raw.decode("ascii", errors="replace")
    if not is_node_id(text):
        raise CodecError(f"peer sent a malformed node id {raw!r}; expected {NODE_ID_SIZE} lowercase hex characters")
    return text
