"""Rebalance planning: drop surplus copies, and give every node a fair share.

Pure and deterministic, like the repair planner (``core/repair.py``), and only for a
cluster with nothing to repair: every stripe of every committed checkpoint at policy with
the live nodes. Two kinds of work come out:

- **Drops.** A copy is *surplus* when its stripes stay at policy without it: what is left
  after a node came back whose pieces were re-created elsewhere, after a partition healed,
  or after the cluster grew and repair raised the stripes to a new layout. Surplus copies
  are dropped from the fullest nodes first.
- **Moves.** A node holding more than its fair share (the referenced bytes over the live
  nodes) hands copies to a node holding less: the piece is first copied to the emptier
  node and verified there, and only then dropped from the fuller one, so no stripe ever
  drops below policy while data moves. Only nodes above their share give, only nodes below
  it take, and each takes at most its deficit: adding a fifth node to four moves about a
  fifth of the bytes, onto the new node, and nothing else.

A piece may belong to several stripes (identical content is stored once): every drop and
every move keeps *all* of them at policy, and each piece's work belongs to one node, the
owner (``repair.owner_of``) of the first stripe that holds it, so two nodes never act on
the same piece. Every node plans the whole cluster the same way and carries out its share.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from peerstore.core.repair import StripeRef, at_policy, best_for, owner_of
from peerstore.model import placement

MAX_ACTIONS = 100_000  # drops plus moves in one plan (a bound, far above a real cluster's need)


@dataclass(frozen=True)
class Drop:
    """Remove ``node``'s copy of ``piece_id`` (``size`` bytes): its stripes stay at policy."""

    piece_id: bytes
    size: int
    node: str
    owner: str  # the node that carries it out


@dataclass(frozen=True)
class Move:
    """Copy ``piece_id`` from any holder to ``target``, verify it there, then drop ``source``'s copy."""

    piece_id: bytes
    size: int
    source: str
    target: str
    stripe: StripeRef  # the first stripe holding the piece (the copy's context)
    position: int  # the piece's position in that stripe
    owner: str


@dataclass(frozen=True)
class RebalancePlan:
    drops: tuple[Drop, ...] = ()
    moves: tuple[Move, ...] = ()
    loads: Mapping[str, int] | None = None  # referenced bytes per live node, before the plan
    fair: float = 0.0  # the fair share: referenced copy bytes over the live nodes

    @property
    def bytes_dropped(self) -> int:
        return sum(d.size for d in self.drops)

    @property
    def bytes_moved(self) -> int:
        return sum(m.size for m in self.moves)

    def of(self, node: str) -> RebalancePlan:
        """The part of the plan ``node`` carries out."""
        return RebalancePlan(tuple(d for d in self.drops if d.owner == node),
                             tuple(m for m in self.moves if m.owner == node), self.loads, self.fair)


def plan_rebalance(stripes: Iterable[StripeRef], holders: Mapping[bytes, Collection[str]],
                   alive: Collection[str], no_targets: Collection[str] = ()) -> RebalancePlan:
    """Plan drops of surplus copies and moves towards a fair share. Empty unless every
    stripe is at policy with the ``alive`` nodes (repair comes first). Nothing moves onto
    ``no_targets`` (nodes that refuse new pieces)."""
    live = frozenset(alive)
    refs = sorted(stripes, key=lambda s: (s.manifest_id, s.index))
    if len(live) < 2 or not refs:
        return RebalancePlan()
    held = {pid: set(holders.get(pid, ())) & live for ref in refs for pid in ref.piece_ids}
    targets = {(ref.entry.k, ref.entry.p): best_for(len(live), ref.entry.k, ref.entry.p) for ref in refs}
    stripes_of: dict[bytes, list[StripeRef]] = {}
    for ref in refs:
        for pid in dict.fromkeys(ref.piece_ids):
            stripes_of.setdefault(pid, []).append(ref)

    def fine(pid: bytes) -> bool:
        return all(at_policy([held[q] for q in ref.piece_ids], ref.entry.k, ref.entry.p,
                             targets[(ref.entry.k, ref.entry.p)]) for ref in stripes_of[pid])

    if not all(fine(pid) for pid in stripes_of):
        return RebalancePlan()
    size = {}
    for pid, its in stripes_of.items():
        ref = its[0]
        size[pid] = ref.size_of(ref.piece_ids.index(pid))
    loads = {n: 0 for n in live}
    for pid, nodes in held.items():
        for n in nodes:
            loads[n] += size[pid]
    before = dict(loads)
    owners = {pid: owner_of(its[0], live) for pid, its in stripes_of.items()}
    drops: list[Drop] = []
    moves: list[Move] = []

    # 1. Surplus: from the fullest holder down, drop every copy the stripes can spare.
    for pid, its in stripes_of.items():
        for node in sorted(held[pid], key=lambda n: (-loads[n], n)):
            if len(drops) >= MAX_ACTIONS or len(held[pid]) <= 1:
                break
            held[pid].discard(node)
            if fine(pid):
                loads[node] -= size[pid]
                drops.append(Drop(pid, size[pid], node, owners[pid]))  # type: ignore[arg-type]
            else:
                held[pid].add(node)

    # 2. Fair share: move copies from nodes above it to nodes below it, never past it.
    fair = sum(loads.values()) / len(live)
    for pid, its in stripes_of.items():
        if len(drops) + len(moves) >= MAX_ACTIONS:
            break
        s = size[pid]
        # Hysteresis: a node gives only a full piece above its share, takes only half a piece
        # below it, so shares found a little off later (surplus shows up as data moves) do
        # not send pieces back and forth.
        givers = [n for n in sorted(held[pid], key=lambda n: (-loads[n], n)) if loads[n] - s >= fair]
        if not givers:
            continue
        order = placement.rendezvous_rank(its[0].key, sorted(live))
        takers = sorted((n for n in live if n not in held[pid] and n not in no_targets
                         and loads[n] + s <= fair + s / 2),
                        key=lambda n: (loads[n], order.index(n)))
        done = False
        for source in givers:
            for target in takers:
                held[pid].discard(source)
                held[pid].add(target)
                if fine(pid):
                    loads[source] -= s
                    loads[target] += s
                    ref = its[0]
                    moves.append(Move(pid, s, source, target, ref, ref.piece_ids.index(pid),
                                      owners[pid]))  # type: ignore[arg-type]
                    done = True
                    break
                held[pid].discard(target)
                held[pid].add(source)
            if done:
                break
    return RebalancePlan(tuple(drops), tuple(moves), before, fair)


def still_spare(piece_id: bytes, node: str, stripes: Iterable[StripeRef],
                holders: Mapping[bytes, Collection[str]], alive: Collection[str]) -> bool:
    """Is ``node``'s copy of ``piece_id`` still surplus: do all the stripes holding it stay
    at policy over ``alive`` without it? (Checked again right before a drop.)"""
    live = frozenset(alive)
    refs = [s for s in stripes if piece_id in s.piece_ids]
    if not refs:
        return False
    for ref in refs:
        trial = []
        for q in ref.piece_ids:
            h = set(holders.get(q, ())) & live
            if q == piece_id:
                h.discard(node)
            trial.append(h)
        if not at_policy(trial, ref.entry.k, ref.entry.p, best_for(len(live), ref.entry.k, ref.entry.p)):
            return False
    return True


def spare_on_return(piece_id: bytes, node: str, stripes: Iterable[StripeRef],
                    holders: Mapping[bytes, Collection[str]], alive: Collection[str],
                    absent: Mapping[bytes, Collection[str]]) -> bool:
    """``still_spare`` also if every absent node came back with the copies it was last
    seen holding (``absent``): a copy dropped while a holder is away or gone must not leave
    the stripes below what the whole cluster promised once it returns. Only the stripes
    an absent node holds a piece of are held back, so a node lost for good costs its
    stripes their spare copies, nothing more."""
    refs = [s for s in stripes if piece_id in s.piece_ids]
    returning = {n for s in refs for q in s.piece_ids for n in absent.get(q, ())}
    if not returning:
        return True
    together = {q: set(holders.get(q, ())) | set(absent.get(q, ())) for s in refs for q in s.piece_ids}
    return still_spare(piece_id, node, refs, together, set(alive) | returning)
