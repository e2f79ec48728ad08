"""Authenticated gossip datagrams with replay protection.

Layout (at most ``MAX_DATAGRAM`` bytes, so it fits one Ethernet frame without IP
fragmentation)::

    MAGIC (2) | format version (1) | node id (16) | boot epoch u64 | seq u64 | body | MAC (16)

The MAC is keyed BLAKE3 over everything before it and the *recipient's* node id (not sent:
the receiver uses its own), under a key derived from the cluster key with a datagram-only
context, so a datagram MAC can never be confused with a handshake proof or a frame MAC,
and a datagram captured on its way to one node does not open at another.
``open_datagram`` checks the MAC *before* it consults the replay filter: a forged datagram
must not move anyone's window.

Replay: a node numbers its datagrams ``seq`` within a boot epoch, which it raises (durably)
on every start. The receiver keeps, per sender, the newest epoch and a 1024-wide sliding
window of seen sequence numbers. A key holder can forge any tag, so the filter refuses
implausible jumps: a sender's epoch may rise by at most ``MAX_EPOCH_JUMP`` and its
sequence by at most ``MAX_SEQ_JUMP`` over what was last accepted from it. One forged
datagram therefore cannot push a member's window to the maximum (which would make every
real datagram of it look like a replay for good). What is left to an insider: a tag a
little ahead of the member's (its next boot) makes the member's datagrams look stale at
that receiver until the member restarts past it; the first datagram heard from a sender
sets its window unchecked.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import blake3

from peerstore.errors import AuthError, CodecError
from peerstore.wire.handshake import KEY_SIZE, NODE_ID_SIZE, is_node_id

MAX_DATAGRAM = 1400
MAGIC = b"pg"
FORMAT_VERSION = 2  # 2: the MAC covers the recipient
MAC_SIZE = 16
TAG_SIZE = len(MAGIC) + 1 + NODE_ID_SIZE + 8 + 8
OVERHEAD = TAG_SIZE + MAC_SIZE
MAX_BODY = MAX_DATAGRAM - OVERHEAD
REPLAY_WINDOW = 1024
MAX_EPOCH_JUMP = 1 << 16  # boots of one sender between two datagrams we accept from it
MAX_SEQ_JUMP = 1 << 32  # its datagrams (to anyone) between two we accept: years at gossip rates
MAX_TRACKED_NODES = 4096
_U64 = 2**64

_DATAGRAM_KEY_CONTEXT = "peerstore 2025 gossip datagram MAC key v1"


class ReplayError(CodecError):
    """An authentic datagram was already seen, is too old, or is from an old boot epoch."""


@lru_cache(maxsize=8)
def _datagram_key(cluster_key: bytes) -> bytes:
    if not isinstance(cluster_key, bytes) or len(cluster_key) != KEY_SIZE:
        raise ValueError(f"cluster key must be {KEY_SIZE} bytes")
    return blake3.blake3(cluster_key, derive_key_context=_DATAGRAM_KEY_CONTEXT).digest()


def _mac(cluster_key: bytes, signed: bytes | memoryview, recipient: str) -> bytes:
    hasher = blake3.blake3(signed, key=_datagram_key(cluster_key))
    hasher.update(recipient.encode("ascii"))
    return hasher.digest(MAC_SIZE)


def seal_datagram(key: bytes, node_id: str, boot_epoch: int, seq: int, body: bytes, *, to: str) -> bytes:
    """Tag and MAC a gossip body for node ``to``; CodecError if the result would exceed
    MAX_DATAGRAM."""
    for name, value in (("node id", node_id), ("recipient node id", to)):
        if not is_node_id(value):
            raise ValueError(f"{name} must be {NODE_ID_SIZE} lowercase hex characters, not {value!r}")
    for name, value in (("boot_epoch", boot_epoch), ("seq", seq)):
        if type(value) is not int or not 0 <= value < _U64:
            raise ValueError(f"{name} must be an integer in 0..2**64-1, got {value!r}")
    if len(body) > MAX_BODY:
        raise CodecError(
            f"gossip body of {len(body)} bytes does not fit a {MAX_DATAGRAM}-byte datagram "
            f"(at most {MAX_BODY} body bytes); send fewer updates per datagram"
        )
    signed = b"".join(
        (MAGIC, bytes([FORMAT_VERSION]), node_id.encode(), boot_epoch.to_bytes(8, "big"), seq.to_bytes(8, "big"), body)
    )
    return signed + _mac(key, signed, to)


def open_datagram(key: bytes, data: bytes, replay: "ReplayFilter", *, me: str) -> tuple[str, int, int, bytes]:
    """Verify and unpack a datagram sent to node ``me``: (node_id, boot_epoch, seq, body).

    Raises CodecError (malformed or oversized), AuthError (bad MAC: forged, another
    cluster key, or sealed for another node) or ReplayError.
    """
    if len(data) > MAX_DATAGRAM:
        raise CodecError(f"datagram of {len(data)} bytes is over the {MAX_DATAGRAM}-byte limit")
    if len(data) < OVERHEAD:
        raise CodecError(f"datagram of {len(data)} bytes is truncated (at least {OVERHEAD} expected)")
    view = memoryview(data)
    if view[: len(MAGIC)] != MAGIC:
        raise CodecError("datagram is not peerstore gossip (bad magic)")
    if view[len(MAGIC)] != FORMAT_VERSION:
        raise CodecError(
            f"datagram format version {view[len(MAGIC)]}, this node reads version {FORMAT_VERSION}; "
            "upgrade the older node"
        )
    signed, mac = view[:-MAC_SIZE], view[-MAC_SIZE:]
    if not hmac.compare_digest(_mac(key, signed, me), mac):
        raise AuthError(
            "gossip datagram failed its MAC: forged, corrupted, sent with a different cluster key, "
            "or sealed for another node (replayed, or sent to an address that changed hands)"
        )
    offset = len(MAGIC) + 1
    node_id = bytes(view[offset : offset + NODE_ID_SIZE]).decode("ascii", errors="replace")
    if not is_node_id(node_id):
        raise CodecError(f"authentic datagram carries a malformed node id {node_id!r}")
    offset += NODE_ID_SIZE
    boot_epoch = int.from_bytes(view[offset : offset + 8], "big")
    seq = int.from_bytes(view[offset + 8 : offset + 16], "big")
    verdict = replay.check_and_record(node_id, boot_epoch, seq)
    if verdict is not None:
        raise ReplayError(f"datagram from {node_id} (epoch {boot_epoch}, seq {seq}) refused: {verdict}")
    return node_id, boot_epoch, seq, bytes(view[TAG_SIZE:-MAC_SIZE])


@dataclass(slots=True)
class _Window:
    epoch: int
    highest: int
    seen: int  # bit i set = (highest - i) seen


class ReplayFilter:
    """Per-sender boot epoch and a REPLAY_WINDOW-wide bitmap of seen sequence numbers.

    Tracks at most ``max_nodes`` senders, evicting the least recently heard one. Only
    senders holding the cluster key reach the filter (the MAC is checked first), so
    eviction -- which forgets a sender's window -- needs more members than the cluster has.
    """

    def __init__(self, max_nodes: int = MAX_TRACKED_NODES, window: int = REPLAY_WINDOW):
        if max_nodes < 1 or window < 1:
            raise ValueError("max_nodes and window must be positive")
        self._max_nodes = max_nodes
        self._window = window
        self._mask = (1 << window) - 1
        self._nodes: OrderedDict[str, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._nodes)

    def accept(self, node_id: str, boot_epoch: int, seq: int) -> bool:
        """Record (node, epoch, seq) and return True if it is new; False for a replay."""
        return self.check_and_record(node_id, boot_epoch, seq) is None

    def check_and_record(self, node_id: str, boot_epoch: int, seq: int) -> str | None:
        """Like accept, but returns why a datagram is refused (None when accepted)."""
        state = self._nodes.get(node_id)
        if state is None:
            if len(self._nodes) >= self._max_nodes:
                self._nodes.popitem(last=False)
            self._nodes[node_id] = _Window(boot_epoch, seq, 1)
            return None
        self._nodes.move_to_end(node_id)
        if boot_epoch < state.epoch:
            return f"boot epoch {boot_epoch} is older than the sender's current epoch {state.epoch}"
        if boot_epoch > state.epoch:
            if boot_epoch - state.epoch > MAX_EPOCH_JUMP or seq > MAX_SEQ_JUMP:
                return (f"implausible jump to boot epoch {boot_epoch}, sequence {seq} from epoch {state.epoch} "
                        f"(at most {MAX_EPOCH_JUMP} boots and {MAX_SEQ_JUMP} datagrams at once): a forged tag")
            state.epoch, state.highest, state.seen = boot_epoch, seq, 1
            return None
        if seq - state.highest > MAX_SEQ_JUMP:
            return (f"implausible jump of sequence number from {state.highest} to {seq} "
                    f"(at most {MAX_SEQ_JUMP} at once): a forged tag")
        if seq > state.highest:
            shift = seq - state.highest
            state.seen = ((state.seen << shift) | 1) & self._mask if shift < self._window else 1
            state.highest = seq
            return None
        age = state.highest - seq
        if age >= self._window:
            return f"sequence number is {age} behind the newest, outside the {self._window}-wide replay window"
        if state.seen >> age & 1:
            return "duplicate (already received)"
        state.seen |= 1 << age
        return None
