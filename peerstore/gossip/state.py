"""The member table's vocabulary and the incarnation ordering rules of SWIM.

Only a node raises its own incarnation. The rules below decide whether a claim about
a member (alive, suspect, dead, left at some incarnation) replaces what we believe:

- ``alive@i`` wins over anything held at a *lower* incarnation (a refutation or a
  restart), never over suspect/dead/left at an equal one;
- ``suspect@i`` wins over ``alive`` at an equal or lower incarnation;
- ``dead@i`` wins over alive and suspect at an equal or lower incarnation;
- ``left@i`` is dead by intent: it wins wherever dead would, and also over dead.

The functions are pure so they can be tested as a table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def gone(self) -> bool:
        """Dead or left: not probed, not asked for help, not a push-pull partner."""
        return self._gone  # type: ignore[attr-defined]


for _state in MemberState:  # precomputed: this is asked for every member on every tick
    _state._gone = _state in (MemberState.DEAD, MemberState.LEFT)  # type: ignore[attr-defined]


@dataclass
class Member:
    """What this node believes about one member (itself included)."""

    node_id: str
    addr: tuple[str, int]
    incarnation: int
    state: MemberState
    state_since: float
    last_contact: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> Member:
        """A copy that later changes to the table do not reach (effects carry these)."""
        return Member(
            self.node_id,
            self.addr,
            self.incarnation,
            self.state,
            self.state_since,
            self.last_contact,
            dict(self.meta),
        )


def alive_wins(current: Member | None, incarnation: int) -> bool:
    """Does ``alive@incarnation`` replace what we hold (``None``: unknown member)?"""
    return current is None or incarnation > current.incarnation


def suspect_wins(current: Member | None, incarnation: int) -> bool:
    """Does ``suspect@incarnation`` turn a member suspect? Unknown members stay unknown."""
    return (
        current is not None
        and current.state is MemberState.ALIVE
        and incarnation >= current.incarnation
    )


def dead_wins(current: Member | None, incarnation: int) -> bool:
    """Does ``dead@incarnation`` declare a member dead? Unknown members stay unknown."""
    return (
        current is not None
        and not current.state.gone
        and incarnation >= current.incarnation
    )


def left_wins(current: Member | None, incarnation: int) -> bool:
    """Does ``left@incarnation`` mark a member as having left? Left also beats dead."""
    return (
        current is not None
        and current.state is not MemberState.LEFT
        and incarnation >= current.incarnation
    )
