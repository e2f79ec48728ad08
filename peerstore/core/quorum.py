"""Who has been away since when, and the majority rule for repair.

Pure: time comes in as ``now``. A node's repair needs two things from its membership:

- **Absence.** For every member it has seen leave, since when it has been away; members
  it never saw (named only by old placement hints, or lost while this node was down) count
  as away since this node booted. Repair waits ``grace`` seconds of absence.
- **The last stable membership.** The set of live members once it has stayed unchanged for
  ``settle`` seconds, adopted only if it holds a strict majority of the previous stable
  membership. The first one comes from the data (``seed``: every node the placement hints
  of the stored checkpoints name, plus those alive) unless the node saved one before. A
  node repairs only while it sees a strict majority of it. A partition's minority never
  adopts its side as stable, so it never repairs; after a mass reboot the stable
  membership (kept on disk) stops the first few nodes back from re-creating everything
  the others hold.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from peerstore.errors import FormatError
from peerstore.model.codec import pack, seal, unpack, unseal

MAX_MEMBERS = 4096


def majority_of(seen: Collection[str], members: Collection[str]) -> bool:
    """Does ``seen`` include strictly more than half of ``members``?"""
    members = set(members)
    return bool(members) and 2 * len(members & set(seen)) > len(members)


class MembershipTracker:
    """Absence times and the last stable membership of one node's view."""

    def __init__(self, node_id: str, booted_at: float, settle: float,
                 stable: Iterable[str] | None = None):
        self.node_id = node_id
        self.booted_at = booted_at
        self.settle = settle
        self.alive: frozenset[str] = frozenset({node_id})
        self.view_since = booted_at
        self.absent_since: dict[str, float] = {}
        self.grew_at = booted_at  # when members last came (back): others may still be on their way
        self.stable: frozenset[str] | None = frozenset(stable) if stable is not None else None

    def observe(self, now: float, alive: Iterable[str]) -> None:
        """The live set changed to ``alive`` (this node is always in it)."""
        alive = frozenset(alive) | {self.node_id}
        if alive == self.alive:
            return
        for node in self.alive - alive:
            self.absent_since[node] = now
        for node in alive:
            self.absent_since.pop(node, None)
        if alive - self.alive:
            self.grew_at = now
        self.alive = alive
        self.view_since = now

    def tick(self, now: float) -> bool:
        """Adopt the current view as stable if it is due; True when the stable set changed."""
        if not self._promotable() or now < self.view_since + self.settle:
            return False
        self.stable = self.alive
        return True

    def next_deadline(self) -> float | None:
        return self.view_since + self.settle if self._promotable() else None

    def _promotable(self) -> bool:
        # With no stable membership yet, nothing is adopted by waiting: ``seed`` sets the
        # first one from what the data says the members were, so a node that boots into a
        # minority never takes that minority for the cluster.
        if self.stable is None or self.alive == self.stable:
            return False
        return majority_of(self.alive, self.stable)

    def seed(self, members: Iterable[str]) -> bool:
        """Set the first stable membership, when there is none (no saved one): ``members``
        (the nodes the placement hints of the stored checkpoints name) plus those alive now.
        True when it was set."""
        if self.stable is not None:
            return False
        self.stable = frozenset(members) | self.alive
        return True

    def has_majority(self) -> bool:
        """The majority rule: this node sees a strict majority of the last stable membership."""
        return self.stable is not None and majority_of(self.alive, self.stable)

    def away_since(self, node: str) -> float:
        """Since when ``node`` has been away (this node's boot if it never saw it)."""
        return self.absent_since.get(node, self.booted_at)

    def split(self, nodes: Iterable[str], now: float, grace: float) -> tuple[frozenset[str], frozenset[str]]:
        """Of ``nodes`` not alive: (those away within the grace, those gone past it)."""
        away, gone = set(), set()
        for node in set(nodes) - self.alive:
            (gone if now - self.away_since(node) >= grace else away).add(node)
        return frozenset(away), frozenset(gone)

    def grace_ends(self, grace: float) -> list[float]:
        """When each absence this node saw begin passes the grace, and when the boot's does."""
        return sorted({t + grace for t in self.absent_since.values()} | {self.booted_at + grace})

    # -- persistence ---------------------------------------------------------------------

    def encode_stable(self) -> bytes:
        """The stable membership as a blob for the node's disk (empty set: none yet)."""
        return seal(pack({"format": 1, "stable": sorted(self.stable or ())}))


def decode_stable(blob: bytes | None) -> frozenset[str] | None:
    """The stable membership a node saved, or None (no file, or none adopted yet).
    Raises FormatError for a blob it cannot read."""
    if blob is None:
        return None
    doc = unpack(unseal(blob, "the stable membership file"), "the stable membership file",
                 max_bytes=MAX_MEMBERS * 80, max_str=64, max_bin=0, max_array=MAX_MEMBERS, max_map=2)
    if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("stable"), tuple):
        raise FormatError("the stable membership file is not format 1: written by another version?")
    members = doc["stable"]
    if not all(isinstance(m, str) and 0 < len(m) <= 64 for m in members):
        raise FormatError("the stable membership file names invalid node ids")
    return frozenset(members) or None
