"""Cluster membership: SWIM with the Lifeguard refinements, as a sans-IO state machine.

The shell (trio daemon or simulator) owns sockets, clocks and randomness; :class:`Swim`
takes ``now``, received messages and a seeded ``random.Random`` and returns effects.
"""

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
