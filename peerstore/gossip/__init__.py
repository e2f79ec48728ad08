"""Cluster membership: SWIM with the Lifeguard refinements, as a sans-IO state machine.

The shell (trio daemon or simulator) owns sockets, clocks and randomness; :class:`Swim`
takes ``now``, received messages and a seeded ``random.Random`` and returns effects.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# The names below load on first use (PEP 562): the config reader imports
# ``peerstore.gossip.settings``, and a CLI command should not pay for loading Swim.
_EXPORTS = {
    "AppMessage": "effects",
    "AppState": "effects",
    "Effect": "effects",
    "MemberChanged": "effects",
    "MemberRemoved": "effects",
    "NeedSeeds": "effects",
    "SendDatagram": "effects",
    "SendStream": "effects",
    "Member": "state",
    "MemberState": "state",
    "Swim": "swim",
}

__all__ = [
    "AppMessage",
    "AppState",
    "Effect",
    "Member",
    "MemberChanged",
    "MemberRemoved",
    "MemberState",
    "NeedSeeds",
    "SendDatagram",
    "SendStream",
    "Swim",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .effects import (
        AppMessage,
        AppState,
        Effect,
        MemberChanged,
        MemberRemoved,
        NeedSeeds,
        SendDatagram,
        SendStream,
    )
    from .state import Member, MemberState
    from .swim import Swim
