"""The glue between a node's membership machine (``Swim``) and its ``NodeCore``.

Both shells (the trio daemon and the simulator) run a Swim next to each core and pass
what Swim learns to the core the same way, through :class:`MembershipBridge`:

- the core's live set is the Swim view's ``alive_ids()`` (alive and suspect members,
  ourselves included), sent as ``MembersChanged`` whenever it changes;
- catalog anti-entropy rides on push-pull: the node publishes its catalog digest as
  Swim app state, and when a peer's digest (an ``AppState`` effect) differs from ours
  the core gets ``CatalogDiffers`` and push-pulls its catalog with that peer.

The glue returns core *inputs* rather than calling the core: the daemon hands them to
the one task that owns its core, the simulator handles them on the spot.

Incarnations: a node must come back with an incarnation above any it announced before,
or its fresh "alive" loses to the old suspicions and deaths others still hold. The boot
epoch is stored durably and raised on every boot; :func:`boot_incarnation` leaves room
for 2**32 refutations per boot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from peerstore.core import events as ev
from peerstore.gossip.effects import AppState, MemberChanged, MemberRemoved

if TYPE_CHECKING:
    from peerstore.core.node import NodeCore
    from peerstore.gossip.swim import Swim

INCARNATION_BITS_PER_BOOT = 32


def boot_incarnation(boot_epoch: int) -> int:
    """The incarnation to start Swim with on boot number ``boot_epoch`` (raised and made
    durable before announcing): above every incarnation of earlier boots."""
    if boot_epoch < 1:
        raise ValueError(f"boot epoch must be at least 1 (raise it before announcing), got {boot_epoch}")
    return boot_epoch << INCARNATION_BITS_PER_BOOT


class MembershipBridge:
    """Keeps one NodeCore in step with its node's Swim machine. Pure: call ``inputs``
    after every batch of Swim effects and ``publish_catalog`` after every core step."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.alive: frozenset[str] = frozenset({node_id})
        self.published: bytes | None = None

    def inputs(self, swim: Swim, effects: Iterable[object], catalog_digest: bytes) -> list[ev.Input]:
        """The core inputs that what Swim just reported calls for."""
        out: list[ev.Input] = []
        membership_moved = False
        for effect in effects:
            if isinstance(effect, (MemberChanged, MemberRemoved)):
                membership_moved = True
            elif isinstance(effect, AppState) and effect.payload != catalog_digest:
                out.append(ev.CatalogDiffers(effect.from_node))
        if membership_moved:
            alive = frozenset(swim.alive_ids()) | {self.node_id}
            if alive != self.alive:
                self.alive = alive
                out.append(ev.MembersChanged(alive))
        return out

    def on_swim_effects(self, now: float, core: NodeCore, swim: Swim,
                        effects: Iterable[object]) -> list[ev.Effect]:
        """For a shell that owns its core outright: handle the inputs; return the effects."""
        out: list[ev.Effect] = []
        for event in self.inputs(swim, effects, core.catalog.digest()):
            out += core.handle(now, event)
        return out

    def publish_catalog(self, core: NodeCore, swim: Swim) -> None:
        """Advertise the core's catalog digest in push-pulls (call after core steps)."""
        digest = core.catalog.digest()
        if digest != self.published:
            self.published = digest
            swim.set_app_state(digest)
