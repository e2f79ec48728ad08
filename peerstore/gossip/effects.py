"""What the membership machine asks its shell to do, or tells it happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .state import Member, MemberState

Addr = tuple[str, int]


@dataclass(frozen=True)
class SendDatagram:
    """Send ``message`` (msgpack-encodable, within the size budget) over UDP to ``addr``,
    where node ``to`` is believed to be: the datagram is sealed for that node alone, so
    it does not open anywhere else (``peerstore.wire.datagram``)."""

    addr: Addr
    message: dict[str, Any]
    to: str = ""


@dataclass(frozen=True)
class SendStream:
    """Send ``message`` over TCP to ``addr`` and feed the reply (or ``None`` on failure or
    timeout) to ``Swim.on_stream_reply(now, request_id, reply)``."""

    addr: Addr
    message: dict[str, Any]
    request_id: int


@dataclass(frozen=True)
class MemberChanged:
    """A member appeared (``old is None``), changed state, or (alive -> alive) moved address
    or metadata. ``member`` is a snapshot taken at the change."""

    node_id: str
    old: MemberState | None
    new: MemberState
    member: Member


@dataclass(frozen=True)
class MemberRemoved:
    """A dead member was reaped (after dead_reclaim_time) or a left one forgotten
    (after tombstone_lifetime); it is no longer in ``members()``."""

    node_id: str
    member: Member


@dataclass(frozen=True)
class AppMessage:
    """An app broadcast (``Swim.broadcast_app``) from ``from_node`` arrived for the first time."""

    from_node: str
    key: str
    payload: bytes


@dataclass(frozen=True)
class AppState:
    """``from_node``'s app state (``Swim.set_app_state``) arrived with a push-pull."""

    from_node: str
    payload: bytes


@dataclass(frozen=True)
class NeedSeeds:
    """This node has seen no other live member for a while (sent with backoff). The
    machine already re-contacts every seed it was given and every member it knew; a shell
    that can discover on demand may pass what it finds to ``Swim.add_seeds``."""


Effect = Union[SendDatagram, SendStream, MemberChanged, MemberRemoved, AppMessage, AppState, NeedSeeds]
