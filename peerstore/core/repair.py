"""Repair planning: which pieces of which stripes to re-create where, and who does it.

Pure and deterministic: the planner takes what a node knows (the stripes of committed
checkpoints, who holds each piece, who is alive, who is away but still within the grace
period) and returns an ordered plan. The driver (``core/repairer.py``) gathers those
inputs and carries the plan out; ``status`` uses the same assessment to report
checkpoints below policy.

The rules:

- **Policy.** A stripe is at policy when each data shard has two live holders on distinct
  nodes, each parity chunk one, and its exact tolerance is the best the cluster's size
  allows (``placement.best_tolerance``).
- **Grace.** Holders that are away but not yet past the grace period are *presumed* to
  come back with their pieces: a stripe that is short only because of them waits. A stripe
  short because of nodes gone past the grace is repaired, with the away nodes still counted,
  so a second failure mid-repair does not hold back the first one's repair.
- **Minimal movement.** Pieces stay where they are; missing slots are added one at a time
  on the live node that raises the stripe's tolerance most (then the least loaded in the
  stripe, then the stripe's rendezvous order). Only when single additions cannot reach the
  target does the stripe get the placement template's nodes for the live cluster.
- **Sources.** A piece with a live holder is copied from it (the owner's own copy first);
  one without is rebuilt from any k positions that have live holders.
- **Order.** Checkpoints closest to loss first (lowest tolerance now), then their weakest
  stripes.
- **Owner.** Every stripe has one owner, computed the same way by every node that sees
  the same membership: the first live node of its placement hint, else the first live
  node of its rendezvous order. No locks; two nodes never plan the same stripe.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from peerstore.errors import FormatError, PlacementError
from peerstore.model import placement
from peerstore.model.manifest import Manifest, StripeEntry

# At most this many single-slot additions per stripe before falling back to the template
# (a stripe has at most 2k + p <= 48 slots, so this only stops a runaway loop).
MAX_ADDITIONS = 64


@dataclass(frozen=True)
class StripeRef:
    """One stripe of one committed checkpoint, with what a plan needs to know about it."""

    manifest_id: bytes
    index: int  # global stripe index in the manifest (its placement hint's index)
    entry: StripeEntry
    hint: tuple[str, ...]  # the 2k + p node ids at commit: data0 A, data0 B, ..., parity0, ...

    @property
    def key(self) -> bytes:
        """The stripe key placement ranks nodes by (as the put computed it)."""
        return b"".join(self.entry.piece_ids)

    @property
    def piece_ids(self) -> tuple[bytes, ...]:
        return self.entry.piece_ids

    def size_of(self, position: int) -> int:
        """Bytes of the piece at ``position`` (a data shard's true length, else a block)."""
        entry = self.entry
        return entry.data_lengths[position] if position < entry.k else entry.block_size

    def hinted(self) -> list[tuple[str, ...]]:
        """Per position, the nodes the hint placed it on."""
        entry = self.entry
        try:
            return placement.StripePlacement.from_hint(self.hint, entry.k, entry.p).positions()
        except (FormatError, ValueError):  # a damaged hint names nobody; inventories still do
            return [() for _ in entry.piece_ids]


def stripes_of(manifest: Manifest, manifest_id: bytes | None = None) -> list[StripeRef]:
    """Every stripe of ``manifest`` as a StripeRef."""
    mid = manifest.id if manifest_id is None else manifest_id
    hints = list(manifest.placement)
    out = []
    for _, index, entry in manifest.iter_stripes():
        hint = hints[index] if index < len(hints) else ()
        out.append(StripeRef(mid, index, entry, tuple(hint)))
    return out


class State(Enum):
    OK = "at policy"
    WAITING = "below policy, waiting for nodes within the grace period"
    REPAIR = "below policy, to repair"
    HELD = "below policy, held back (just booted: its holders may still come back)"
    STUCK = "below policy, cannot be repaired with the live nodes"
    LOST = "unreadable with the live nodes"


@dataclass(frozen=True)
class Addition:
    """Store the piece at ``position`` (``piece_id``, ``size`` bytes) on ``target``."""

    position: int
    piece_id: bytes
    size: int
    target: str


@dataclass(frozen=True)
class StripeRepair:
    """The assessment of one stripe and, when it is to be repaired, how."""

    stripe: StripeRef
    state: State
    tolerance: int  # exact tolerance now, over live holders (-1: unreadable now)
    target: int  # the best tolerance for the cluster size planned for
    owner: str | None
    additions: tuple[Addition, ...] = ()
    sources: Mapping[bytes, tuple[str, ...]] = field(default_factory=dict)  # piece -> live holders, best first
    checkpoint_tolerance: int = 0  # the lowest tolerance now of any stripe of the same checkpoint

    @property
    def bytes(self) -> int:
        return sum(a.size for a in self.additions)

    @property
    def copies(self) -> tuple[Addition, ...]:
        """Additions whose piece has a live holder to copy from."""
        return tuple(a for a in self.additions if self.sources.get(a.piece_id))

    @property
    def rebuilds(self) -> tuple[Addition, ...]:
        """Additions whose piece no live node holds: rebuilt from k other positions."""
        return tuple(a for a in self.additions if not self.sources.get(a.piece_id))

    def readable_positions(self) -> list[tuple[int, tuple[str, ...]]]:
        """(position, its live holders best first) for every position a rebuild can read."""
        return [(i, self.sources[pid]) for i, pid in enumerate(self.stripe.piece_ids) if self.sources.get(pid)]

    @property
    def below_policy(self) -> bool:
        return self.state is not State.OK


def owner_of(stripe: StripeRef, alive: Collection[str]) -> str | None:
    """The node that repairs ``stripe``: the first live node of its placement hint (it
    usually holds a piece, so its copy is local), else the first live node of the stripe's
    rendezvous order. Deterministic: nodes that agree on ``alive`` agree on the owner."""
    live = set(alive)
    for node in stripe.hint:
        if node in live:
            return node
    if not live:
        return None
    return placement.rendezvous_rank(stripe.key, sorted(live))[0]


def best_for(n_nodes: int, k: int, p: int) -> int:
    """The best tolerance ``n_nodes`` nodes allow for a (k, p) stripe (-1 below two nodes)."""
    try:
        return placement.best_tolerance(n_nodes, k, p)
    except PlacementError:
        return -1


def assess_stripe(
    stripe: StripeRef,
    holders: Mapping[bytes, Collection[str]],
    alive: Collection[str],
    *,
    away: Collection[str] = (),
    presumed: Mapping[bytes, Collection[str]] | None = None,
    gone: Collection[str] = (),
    hold_unexplained: bool = False,
    planned: Mapping[bytes, Collection[str]] | None = None,
    no_targets: Collection[str] = (),
) -> StripeRepair:
    """Assess one stripe and plan its repair.

    ``holders[pid]``: live nodes known to hold ``pid`` (nodes not in ``alive`` are ignored).
    ``away``: nodes absent but within the grace period; ``presumed[pid]`` the away nodes
    believed to hold ``pid`` (from the last inventories seen; the placement hint counts
    too). ``gone``: nodes absent past the grace period. ``hold_unexplained``: a shortfall
    that neither a gone node nor the hint explains (this node just booted and does not know
    who held what) waits instead of being repaired. ``planned[pid]``: live nodes an earlier
    part of the same plan will store ``pid`` on (counted as holders, never as sources).
    ``no_targets``: live nodes that refuse new pieces (a read-only or full disk): they
    count as holders and sources, but nothing is added on them.
    """
    entry = stripe.entry
    k, p = entry.k, entry.p
    live = frozenset(alive)
    away_set = frozenset(away) - live
    pids = entry.piece_ids
    hinted = stripe.hinted()
    live_holders = {pid: frozenset(holders.get(pid, ())) & live for pid in pids}
    virtual: dict[bytes, set[str]] = {pid: set(live_holders[pid]) for pid in pids}
    for position, pid in enumerate(pids):
        believed = set(presumed.get(pid, ())) if presumed is not None else set()
        believed |= set(hinted[position])
        virtual[pid] |= believed & away_set
        if planned is not None:
            virtual[pid] |= set(planned.get(pid, ())) & live
    now_tolerance = placement.stripe_tolerance([live_holders[pid] for pid in pids], k)
    cluster = len(live | away_set)
    target = best_for(cluster, k, p)
    owner = owner_of(stripe, live)
    sources = {pid: _ordered(live_holders[pid], owner, stripe.key) for pid in pids}
    base = dict(stripe=stripe, tolerance=now_tolerance, target=target, owner=owner, sources=sources)

    if at_policy([live_holders[pid] for pid in pids], k, p, target):
        return StripeRepair(state=State.OK, **base)
    if now_tolerance < 0:
        readable_later = placement.stripe_tolerance([virtual[pid] for pid in pids], k) >= 0
        return StripeRepair(state=State.WAITING if readable_later and away_set else State.LOST, **base)
    if at_policy([virtual[pid] for pid in pids], k, p, target):
        return StripeRepair(state=State.WAITING, **base)
    if hold_unexplained:
        named = {n for nodes in hinted for n in nodes}
        if presumed is not None:
            named |= {n for pid in pids for n in presumed.get(pid, ())}
        if not named & set(gone):
            return StripeRepair(state=State.HELD, **base)
    additions = _choose(stripe, virtual, live, target, frozenset(no_targets))
    if additions is None:
        return StripeRepair(state=State.STUCK, **base)
    return StripeRepair(state=State.REPAIR, additions=tuple(additions), **base)


def at_policy(position_holders: list[Collection[str]], k: int, p: int, target: int) -> bool:
    """Two holders per data shard, one per parity chunk, and at least ``target`` tolerance."""
    if any(len(h) < 2 for h in position_holders[:k]) or any(len(h) < 1 for h in position_holders[k:]):
        return False
    return placement.stripe_tolerance(position_holders, k) >= target


def _ordered(nodes: Collection[str], first: str | None, key: bytes) -> tuple[str, ...]:
    """``nodes`` in the stripe's rendezvous order, ``first`` (the owner) ahead if present."""
    ranked = placement.rendezvous_rank(key, sorted(nodes)) if nodes else []
    if first in ranked:
        ranked.remove(first)
        ranked.insert(0, first)
    return tuple(ranked)


def _choose(stripe: StripeRef, virtual: dict[bytes, set[str]], live: frozenset[str],
            target: int, no_targets: frozenset[str] = frozenset()) -> list[Addition] | None:
    """Additions (on live nodes not in ``no_targets``) that bring ``virtual`` to policy;
    None if impossible."""
    entry = stripe.entry
    k, p = entry.k, entry.p
    pids = entry.piece_ids
    if len(live) < 2:
        return None
    takers = live - no_targets
    rank = {n: i for i, n in enumerate(placement.rendezvous_rank(stripe.key, sorted(live)))}
    need = [2] * k + [1] * p
    added: list[Addition] = []

    def holders() -> list[set[str]]:
        return [virtual[pid] for pid in pids]

    def tolerance_with(position: int, node: str) -> int:
        hs = holders()
        pid = pids[position]
        trial = [h | {node} if pids[i] == pid else h for i, h in enumerate(hs)]
        return placement.stripe_tolerance(trial, k)

    def load(node: str) -> int:
        return sum(node in virtual[pid] for pid in set(pids))

    def add(position: int, node: str) -> None:
        pid = pids[position]
        virtual[pid].add(node)
        added.append(Addition(position, pid, stripe.size_of(position), node))

    # 1. Fill every missing slot: the most short position first.
    for _ in range(MAX_ADDITIONS):
        short = [i for i in range(k + p) if len(virtual[pids[i]]) < need[i]]
        if not short:
            break
        position = min(short, key=lambda i: (len(virtual[pids[i]]) - need[i], i))
        candidates = [n for n in takers if n not in virtual[pids[position]]]
        if not candidates:
            return None
        node = max(candidates, key=lambda n: (tolerance_with(position, n), -load(n), -rank[n]))
        add(position, node)
    # 2. Raise the tolerance to the target, one addition at a time while that helps.
    for _ in range(MAX_ADDITIONS):
        current = placement.stripe_tolerance(holders(), k)
        if current >= target:
            return added
        options = [(tolerance_with(i, n), -load(n), -rank[n], -i, i, n)
                   for i in range(k + p) for n in takers if n not in virtual[pids[i]]]
        best = max(options, default=None)
        if best is None:
            break
        if best[0] > current:
            add(best[4], best[5])
            continue
        pair = _best_pair(stripe, virtual, takers, rank, current)
        if pair is None:
            break
        for position, node in pair:
            add(position, node)
    # 3. Fall back to the template's placement for the live nodes.
    try:
        where = placement.place_stripe(stripe.key, sorted(live), k, p)
    except (PlacementError, ValueError):
        return added or None
    for position, nodes in enumerate(where.positions()):
        for node in nodes:
            if node not in virtual[pids[position]] and node in takers:
                add(position, node)
    return added


def _best_pair(stripe: StripeRef, virtual: dict[bytes, set[str]], live: frozenset[str],
               rank: dict[str, int], current: int) -> tuple[tuple[int, str], tuple[int, str]] | None:
    """Two additions that together raise the tolerance above ``current`` when no single one
    does (the best by tolerance, then fewest slots on the busiest node), or None."""
    entry = stripe.entry
    k, pids = entry.k, entry.piece_ids
    singles = [(i, n) for i in range(len(pids)) for n in sorted(live, key=rank.__getitem__)
               if n not in virtual[pids[i]]]
    if len(singles) > 2 * MAX_ADDITIONS:  # big clusters: the template fallback is cheaper
        return None
    best: tuple[tuple[int, int, int], tuple[tuple[int, str], tuple[int, str]]] | None = None
    for a, b in _pairs(singles):
        trial = {pid: set(h) for pid, h in virtual.items()}
        for position, node in (a, b):
            trial[pids[position]].add(node)
        t = placement.stripe_tolerance([trial[pid] for pid in pids], k)
        if t <= current:
            continue
        loads = [sum(n in trial[pid] for pid in set(pids)) for n in live]
        score = (t, -max(loads), -(rank[a[1]] + rank[b[1]]))
        if best is None or score > best[0]:
            best = (score, (a, b))
    return best[1] if best is not None else None


def _pairs(items: list[tuple[int, str]]) -> Iterable[tuple[tuple[int, str], tuple[int, str]]]:
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            yield a, b


def plan(
    stripes: Iterable[StripeRef],
    holders: Mapping[bytes, Collection[str]],
    alive: Collection[str],
    *,
    away: Collection[str] = (),
    presumed: Mapping[bytes, Collection[str]] | None = None,
    gone: Collection[str] = (),
    hold_unexplained: bool = False,
    owner: str | None = None,
    no_targets: Collection[str] = (),
) -> list[StripeRepair]:
    """Assess every stripe; return those below policy, closest to loss first.

    With ``owner``, additions are planned only for the stripes that node owns (the others
    are still assessed, for status). Additions of earlier stripes count as held for later
    ones, so a piece shared by several stripes is re-created once.
    """
    refs = list(stripes)
    live = frozenset(alive)
    options = dict(away=away, presumed=presumed, gone=gone, hold_unexplained=hold_unexplained,
                   no_targets=no_targets)
    first = [assess_stripe(ref, holders, live, **options) for ref in refs]
    worst: dict[bytes, int] = {}
    for r in first:
        worst[r.stripe.manifest_id] = min(worst.get(r.stripe.manifest_id, r.tolerance), r.tolerance)
    order = sorted(
        (r for r in first if r.below_policy),
        key=lambda r: (worst[r.stripe.manifest_id], r.tolerance, r.stripe.manifest_id, r.stripe.index),
    )
    planned: dict[bytes, set[str]] = {}
    out = []
    for r in order:
        additions = r.additions
        if r.state is State.REPAIR and (owner is None or r.owner == owner) and planned:
            # Re-plan against what earlier stripes of this plan will add.
            additions = assess_stripe(r.stripe, holders, live, planned=planned, **options).additions
        elif r.state is State.REPAIR and owner is not None and r.owner != owner:
            additions = ()
        for a in additions:
            planned.setdefault(a.piece_id, set()).add(a.target)
        out.append(StripeRepair(r.stripe, r.state, r.tolerance, r.target, r.owner, tuple(additions),
                                r.sources, worst[r.stripe.manifest_id]))
    return out


@dataclass(frozen=True)
class CheckpointHealth:
    """One checkpoint against its policy, over the live holders only (what ``status`` shows)."""

    best: int  # the best tolerance the live nodes allow
    below_policy: bool
    repair_bytes: int  # what repair has to store to bring it back (0 when it cannot)


def health(stripes_by_manifest: Mapping[bytes, list[StripeRef]], holders: Mapping[bytes, Collection[str]],
           alive: Collection[str]) -> dict[bytes, CheckpointHealth]:
    """Per manifest id, how it stands against its policy with the nodes alive now. One plan
    over every stripe, so a piece several checkpoints share is counted once."""
    live = frozenset(alive)
    refs = [ref for stripes in stripes_by_manifest.values() for ref in stripes]
    below: dict[bytes, int] = {}
    for r in plan(refs, holders, live):
        below[r.stripe.manifest_id] = below.get(r.stripe.manifest_id, 0) + r.bytes
    out = {}
    for mid, stripes in stripes_by_manifest.items():
        best = min((best_for(len(live), s.entry.k, s.entry.p) for s in stripes), default=len(live) - 1)
        out[mid] = CheckpointHealth(best, mid in below, below.get(mid, 0))
    return out
