"""Gossip messages: typed updates and datagrams, their dict form, strict parsing.

Every shell encodes the dicts produced here with :func:`encode_datagram` / :func:`encode`
(and seals them in MACed datagrams or stream frames), and decodes what arrives with
:func:`decode_datagram` / :func:`decode`: bounded msgpack, then checked field by field
(type, bound, no unknown keys) before the protocol machine sees it. Anything else raises
:class:`CodecError`.

Wire forms (short keys: a datagram has ~1,200 bytes for all of this):

- updates (``"g"`` lists): alive ``{"k":"a","n","i","ad","m"}``, suspect ``{"k":"s","n","i","f"}``,
  dead ``{"k":"d","n","i","f"}``, left ``{"k":"l","n","i"}``,
  app ``{"k":"u","o","key","i","q","p"}``;
- datagrams: ``ping {"f","s","to","g"}``, ``ack {"f","s","g"}``, ``nack {"f","s"}``,
  ``preq {"f","s","to","ad","nk","g"}`` (ping-req), ``gossip {"f","g"}``, each with ``"t"``;
- streams: ``ping`` (replied to with ``ack``), ``pp {"f","j","ms","as"}`` push-pull
  (replied to with ``pp``), ``err {"why"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import msgpack

from peerstore.errors import CodecError
from peerstore.model.codec import unpack
from peerstore.wire.datagram import MAX_BODY

from .state import Member, MemberState

MAX_NODE_ID = 64
MAX_HOST = 64  # an IPv6 literal with a zone id fits
MAX_META_BYTES = 256
MAX_APP_KEY = 64
MAX_UPDATES = 256
MAX_PUSH_PULL_MEMBERS = 4096
MAX_APP_STATE_BYTES = 1024 * 1024
MAX_INT = 2**63 - 1
MAX_ERROR_LEN = 500

Addr = tuple[str, int]


# Updates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alive:
    node: str
    incarnation: int
    addr: Addr
    meta: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"k": "a", "n": self.node, "i": self.incarnation, "ad": list(self.addr), "m": dict(self.meta)}


@dataclass(frozen=True)
class Suspect:
    node: str
    incarnation: int
    accuser: str

    def to_wire(self) -> dict[str, Any]:
        return {"k": "s", "n": self.node, "i": self.incarnation, "f": self.accuser}


@dataclass(frozen=True)
class Dead:
    node: str
    incarnation: int
    accuser: str

    def to_wire(self) -> dict[str, Any]:
        return {"k": "d", "n": self.node, "i": self.incarnation, "f": self.accuser}


@dataclass(frozen=True)
class Left:
    node: str
    incarnation: int

    def to_wire(self) -> dict[str, Any]:
        return {"k": "l", "n": self.node, "i": self.incarnation}


@dataclass(frozen=True)
class AppUpdate:
    """An app broadcast; ``(incarnation, seq)`` orders one origin's versions of a key."""

    origin: str
    key: str
    incarnation: int
    seq: int
    payload: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "k": "u", "o": self.origin, "key": self.key, "i": self.incarnation, "q": self.seq, "p": self.payload
        }


Update = Union[Alive, Suspect, Dead, Left, AppUpdate]


def encoded_size(obj: Any) -> int:
    return len(msgpack.packb(obj))


# Encoding ------------------------------------------------------------------------------
# The one codec both shells use (the daemon on its sockets, the simulator on its modelled
# links), so a message the daemon would refuse never reaches a simulated Swim either.

MAX_DATAGRAM_BODY = MAX_BODY  # what fits a sealed datagram (peerstore.wire.datagram)
MAX_STREAM_BYTES = 16 * 1024 * 1024


def encode(message: Any, limit: int = MAX_STREAM_BYTES) -> bytes:
    """msgpack bytes of ``message``; CodecError if they exceed ``limit``."""
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > limit:
        raise CodecError(f"gossip message of {len(data)} bytes is over the {limit}-byte limit")
    return data


def decode(data: bytes, limit: int = MAX_STREAM_BYTES) -> Any:
    """Strict, bounded msgpack decoding of received gossip; CodecError on anything bad."""
    if len(data) > limit:
        raise CodecError(f"gossip message of {len(data)} bytes is over the {limit}-byte limit")
    return unpack(data, "gossip message", max_bytes=limit, max_str=65536, max_bin=MAX_APP_STATE_BYTES,
                  max_array=8192, max_map=4096, use_list=True, error=CodecError)


def encode_datagram(message: Mapping[str, Any]) -> bytes:
    """The body of a datagram; CodecError if it would not fit one (the sender drops it)."""
    return encode(message, MAX_DATAGRAM_BODY)


def decode_datagram(body: bytes, sender: str) -> dict[str, Any]:
    """A received datagram body from ``sender`` (the node id its authenticated tag
    names): the message must be a map that names that same sender."""
    message = decode(body, MAX_DATAGRAM_BODY)
    if not isinstance(message, dict) or message.get("f") != sender:
        raise CodecError("datagram sender does not match its authenticated tag")
    return message


# Datagrams -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    """A parsed datagram (or stream ping). Unused fields keep their defaults."""

    kind: str
    sender: str
    seq: int = 0
    target: str = ""
    target_addr: Addr | None = None
    want_nack: bool = False
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class PushPull:
    sender: str
    join: bool
    members: tuple[Member, ...]
    app_state: bytes | None


DATAGRAM_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required keys besides "t", optional keys)
    "ping": (frozenset({"f", "s", "to"}), frozenset({"g"})),
    "ack": (frozenset({"f", "s"}), frozenset({"g"})),
    "nack": (frozenset({"f", "s"}), frozenset()),
    "preq": (frozenset({"f", "s", "to", "ad", "nk"}), frozenset({"g"})),
    "gossip": (frozenset({"f", "g"}), frozenset()),
}


def datagram(kind: str, sender: str, **fields: Any) -> dict[str, Any]:
    """The dict form of a datagram (without piggybacked updates)."""
    message: dict[str, Any] = {"t": kind, "f": sender}
    message.update(fields)
    return message


def parse_datagram(message: Any) -> Datagram:
    """Check a received datagram (or stream ping) and return it typed."""
    if not isinstance(message, Mapping):
        raise CodecError(f"gossip message must be a map, got {type(message).__name__}")
    kind = message.get("t")
    if not isinstance(kind, str) or kind not in DATAGRAM_KEYS:
        raise CodecError(f"unknown gossip message type {kind!r}")
    required, optional = DATAGRAM_KEYS[kind]
    _check_keys(message, required | {"t"}, optional, kind)
    sender = _node_id(message["f"], "f")
    seq = _int(message["s"], "s") if "s" in message else 0
    target = _node_id(message["to"], "to") if "to" in message else ""
    target_addr = _addr(message["ad"], "ad") if "ad" in message else None
    want_nack = _bool(message["nk"], "nk") if "nk" in message else False
    updates = parse_updates(message.get("g", []))
    return Datagram(kind, sender, seq, target, target_addr, want_nack, updates)


def parse_updates(raw: Any) -> tuple[Update, ...]:
    if not isinstance(raw, (list, tuple)):
        raise CodecError("gossip field 'g' must be a list of updates")
    if len(raw) > MAX_UPDATES:
        raise CodecError(f"gossip message carries {len(raw)} updates, more than {MAX_UPDATES}")
    return tuple(parse_update(item) for item in raw)


def parse_update(raw: Any) -> Update:
    if not isinstance(raw, Mapping):
        raise CodecError("gossip update must be a map")
    kind = raw.get("k")
    if kind == "a":
        _check_keys(raw, {"k", "n", "i", "ad", "m"}, (), "alive update")
        return Alive(
            _node_id(raw["n"], "n"), _int(raw["i"], "i"), _addr(raw["ad"], "ad"), parse_meta(raw["m"])
        )
    if kind == "s":
        _check_keys(raw, {"k", "n", "i", "f"}, (), "suspect update")
        return Suspect(_node_id(raw["n"], "n"), _int(raw["i"], "i"), _node_id(raw["f"], "f"))
    if kind == "d":
        _check_keys(raw, {"k", "n", "i", "f"}, (), "dead update")
        return Dead(_node_id(raw["n"], "n"), _int(raw["i"], "i"), _node_id(raw["f"], "f"))
    if kind == "l":
        _check_keys(raw, {"k", "n", "i"}, (), "left update")
        return Left(_node_id(raw["n"], "n"), _int(raw["i"], "i"))
    if kind == "u":
        _check_keys(raw, {"k", "o", "key", "i", "q", "p"}, (), "app update")
        payload = raw["p"]
        if not isinstance(payload, bytes):
            raise CodecError("app update payload 'p' must be bytes")
        return AppUpdate(
            _node_id(raw["o"], "o"), _app_key(raw["key"]), _int(raw["i"], "i"), _int(raw["q"], "q"), payload
        )
    raise CodecError(f"unknown gossip update kind {kind!r}")


# Streams -------------------------------------------------------------------------------


def member_to_wire(member: Member) -> dict[str, Any]:
    return {
        "n": member.node_id,
        "ad": list(member.addr),
        "i": member.incarnation,
        "st": member.state.value,
        "m": dict(member.meta),
    }


def push_pull(sender: str, join: bool, members: list[Member], app_state: bytes | None) -> dict[str, Any]:
    return {"t": "pp", "f": sender, "j": join, "ms": [member_to_wire(m) for m in members], "as": app_state}


def parse_push_pull(message: Any) -> PushPull:
    if not isinstance(message, Mapping) or message.get("t") != "pp":
        raise CodecError("expected a push-pull message")
    _check_keys(message, {"t", "f", "j", "ms", "as"}, (), "push-pull")
    raw_members = message["ms"]
    if not isinstance(raw_members, (list, tuple)) or len(raw_members) > MAX_PUSH_PULL_MEMBERS:
        raise CodecError(f"push-pull 'ms' must be a list of at most {MAX_PUSH_PULL_MEMBERS} members")
    members = tuple(_parse_member(raw) for raw in raw_members)
    app_state = message["as"]
    if app_state is not None and (not isinstance(app_state, bytes) or len(app_state) > MAX_APP_STATE_BYTES):
        raise CodecError(f"push-pull 'as' must be null or at most {MAX_APP_STATE_BYTES} bytes")
    return PushPull(_node_id(message["f"], "f"), _bool(message["j"], "j"), members, app_state)


def _parse_member(raw: Any) -> Member:
    if not isinstance(raw, Mapping):
        raise CodecError("push-pull member must be a map")
    _check_keys(raw, {"n", "ad", "i", "st", "m"}, (), "push-pull member")
    try:
        state = MemberState(raw["st"])
    except ValueError:
        raise CodecError(
            f"push-pull member state {raw['st']!r} is not one of alive/suspect/dead/left"
        ) from None
    return Member(
        node_id=_node_id(raw["n"], "n"),
        addr=_addr(raw["ad"], "ad"),
        incarnation=_int(raw["i"], "i"),
        state=state,
        state_since=0.0,
        meta=dict(parse_meta(raw["m"])),
    )


def error_reply(why: str) -> dict[str, Any]:
    return {"t": "err", "why": why[:MAX_ERROR_LEN]}


# Field checks --------------------------------------------------------------------------


def parse_meta(raw: Any) -> dict[str, Any]:
    """Member metadata: a small map of scalars, at most MAX_META_BYTES encoded."""
    if not isinstance(raw, Mapping):
        raise CodecError("member meta must be a map")
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool, bytes, type(None))):
            raise CodecError("member meta must map strings to scalars (str, int, float, bool, bytes, null)")
    meta = dict(raw)
    if encoded_size(meta) > MAX_META_BYTES:
        raise CodecError(f"member meta is larger than {MAX_META_BYTES} bytes encoded")
    return meta


def check_addr(raw: Any) -> Addr:
    return _addr(raw, "addr")


def check_node_id(raw: Any) -> str:
    return _node_id(raw, "node_id")


def check_app_key(raw: Any) -> str:
    return _app_key(raw)


def _check_keys(message: Mapping[str, Any], required: Any, optional: Any, what: str) -> None:
    keys = set(message)
    missing = set(required) - keys
    extra = keys - set(required) - set(optional)
    if missing or extra:
        raise CodecError(f"{what}: missing keys {sorted(missing)}, unexpected keys {sorted(map(str, extra))}")


def _node_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NODE_ID:
        raise CodecError(f"field {name!r} must be a node id of 1..{MAX_NODE_ID} characters")
    return value


def _app_key(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_APP_KEY:
        raise CodecError(f"app broadcast key must be a string of 1..{MAX_APP_KEY} characters")
    return value


def _int(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise CodecError(f"field {name!r} must be an integer in 0..2**63-1")
    return value


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise CodecError(f"field {name!r} must be a boolean")
    return value


def _addr(value: Any, name: str) -> Addr:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise CodecError(f"field {name!r} must be a [host, port] pair")
    host, port = value
    if not isinstance(host, str) or not 1 <= len(host) <= MAX_HOST:
        raise CodecError(f"field {name!r}: host must be a string of 1..{MAX_HOST} characters")
    if type(port) is not int or not 1 <= port <= 65535:
        raise CodecError(f"field {name!r}: port must be an integer in 1..65535")
    return (host, port)
