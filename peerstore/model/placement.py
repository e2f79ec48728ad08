"""Where a stripe's pieces go, and how many node failures a checkpoint survives.

A stripe of k data shards and p parity chunks has 2k + p *slots*: every data shard is
stored as two full replicas on two distinct nodes, every parity chunk once. Its
*positions* are data shard i = position i and parity chunk j = position k + j. Any k
distinct positions rebuild the stripe (the code is MDS), so a stripe is readable while at
least k positions have a live holder.

*Tolerance* is the largest t such that losing ANY t nodes leaves the thing readable (-1 if
it is unreadable now), computed exactly as a minimum node cut: the fewest nodes whose loss
leaves fewer than k positions held, minus one. A checkpoint's is the minimum over its
stripes.

Placement is per stripe: ``template_for`` picks, once per (cluster size, k, p), the slot
layout over ranks with the highest tolerance (then the most even load); ``place_stripe``
orders the live nodes for a stripe key (``placement_order``) and maps the template's ranks
onto them.

Pure and deterministic: no I/O, no clock, no global randomness. The template search uses
its own fixed-seed generator, so every node and every run derives the same templates.

One module, though long: the template search, stripe placement and the tolerance cut are
three views of one slot layout, and each is only checkable against the others.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import blake3

from peerstore.errors import FormatError, PlacementError
from peerstore.model.policy import MAX_PARITY, MAX_STRIPE_WIDTH

# Input bounds for the tolerance functions. A stripe has k + p <= 32 positions under any
# valid policy. Holder sets may be larger than 2 (identical pieces pass the union of their
# holders), so the node bound is loose; both only stop a caller bug from running away.
MAX_POSITIONS = MAX_STRIPE_WIDTH + MAX_PARITY
MAX_STRIPE_NODES = 1024

# Template search effort. Changing any of these may change templates (so placements of
# future puts; stored manifests keep their placement hints and stay valid).
_SEARCH_SEED = 0x5EED_0F_57121E
_SEARCH_BUDGET = 60_000  # killing-set checks the local search may spend per template
_SEARCH_MAX_STEPS = 800
_COUNT_LIMIT = 5_000  # the last tie-break counts minimum killing sets only below this many
_CUT_VISITS = 5_000  # branch-and-bound states one candidate's exact cut may take
_SMALL_COMPONENT = 10  # components this small are solved by trying all 2**10 node subsets
_UNREACHABLE = 1 << 30


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A slot layout over ranks 0..n_nodes-1 of a stripe's ordered node list."""

    n_nodes: int  # distinct ranks used: min(cluster size, 2k + p)
    data: tuple[tuple[int, int], ...]  # per data shard: (rank of replica A, rank of replica B)
    parity: tuple[int, ...]  # per parity chunk: rank

    def position_masks(self) -> tuple[int, ...]:
        """Per position (data, then parity), the bit set of the ranks holding it."""
        return tuple((1 << a) | (1 << b) for a, b in self.data) + tuple(1 << r for r in self.parity)

    def loads(self) -> tuple[int, ...]:
        """Slots per rank."""
        out = [0] * self.n_nodes
        for rank in itertools.chain(itertools.chain.from_iterable(self.data), self.parity):
            out[rank] += 1
        return tuple(out)


def template_for(n_nodes: int, k: int, p: int) -> Template:
    """The template for ``n_nodes`` live nodes: highest exact tolerance, then the most even
    load (slots per rank differ by at most one where possible), then the fewest minimum
    killing node sets. Uses min(n_nodes, 2k + p) ranks. Deterministic; cached.

    Raises PlacementError below two nodes (two replicas need two machines) and ValueError
    for k outside 1..16 or p outside 0..16.
    """
    _check_code(k, p)
    if n_nodes < 2:
        raise PlacementError(
            f"need at least 2 live nodes to place a stripe (two replicas on two machines), "
            f"have {n_nodes}: start more nodes or wait for them to rejoin"
        )
    return _template(min(n_nodes, 2 * k + p), k, p)


def best_tolerance(n_nodes: int, k: int, p: int) -> int:
    """The exact tolerance of ``template_for(n_nodes, k, p)``."""
    return _template_tolerance(template_for(n_nodes, k, p), k)


def _check_code(k: int, p: int) -> None:
    if not 1 <= k <= MAX_STRIPE_WIDTH:
        raise ValueError(f"k (data shards per stripe) must be 1 to {MAX_STRIPE_WIDTH}, got {k}")
    if not 0 <= p <= MAX_PARITY:
        raise ValueError(f"p (parity chunks per stripe) must be 0 to {MAX_PARITY}, got {p}")


@functools.lru_cache(maxsize=1024)
def _template_tolerance(template: Template, k: int) -> int:
    masks = template.position_masks()
    return _min_cut(masks, len(masks) - k + 1) - 1


@functools.lru_cache(maxsize=1024)
def _template(m: int, k: int, p: int) -> Template:
    n_slots = 2 * k + p
    if m == n_slots:  # one slot per rank: the only even layout, and it reaches p + 1
        return Template(m, tuple((2 * i, 2 * i + 1) for i in range(k)), tuple(range(2 * k, n_slots)))
    return _search_template(m, k, p)


def _tolerance_ceiling(m: int, k: int, p: int) -> int:
    """A proven upper bound on the tolerance of any layout on m ranks (stops the search):

    - p + 1: losing every parity holder and both replicas of one shard (at most p + 2
      nodes) leaves k - 1 positions;
    - m - 1: losing every node;
    - averaging: a uniformly random t-set of nodes holds all of p*t/m + k*t(t-1)/(m(m-1))
      positions on average, so once that exceeds p, some t-set kills p + 1 positions.
    """
    bound = min(p + 1, m - 1)
    for t in range(1, m + 1):
        if p * t * (m - 1) + k * t * (t - 1) > p * m * (m - 1):
            return min(bound, t - 1)
    return bound


class _SplitMix64:
    """A tiny fixed-seed generator (sans-IO code takes no module-level randomness)."""

    _MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self._state = seed & self._MASK

    def below(self, n: int) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & self._MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._MASK
        return (z ^ (z >> 31)) % n


class _TooHard(Exception):
    """Establishing a candidate's exact tolerance would exceed the search's allowance."""


# A layout is a list of ranks per slot: slot 2i / 2i+1 = data shard i replica A / B,
# slot 2k + j = parity chunk j.


def _layout_masks(k: int, slots: Sequence[int]) -> list[int]:
    return [(1 << slots[2 * i]) | (1 << slots[2 * i + 1]) for i in range(k)] + [1 << r for r in slots[2 * k :]]


def _seed_layouts(m: int, k: int, p: int) -> Iterator[list[int]]:
    """Starting layouts for the search, most promising first (all keep replicas apart).

    First, when there is room, parity on ranks of its own and the data shards as edges of
    a sparse graph on the other ranks: disjoint chains when m >= k + p + 1 (a forest, so t
    nodes never hold both replicas of t shards: that reaches the ceiling p + 1), else
    circulant rounds. Then slots dealt round-robin in a few orders: the first (replicas of
    a shard on consecutive ranks) is valid for every m >= 2; the others deal all replicas
    A, then parity, then replicas B shifted by a few shard offsets (or parity first).
    """
    n_slots, spare = 2 * k + p, m - p
    yield [s % m for s in range(n_slots)]
    if spare >= 2:
        slots = list(range(2 * k)) + list(range(p))
        if spare >= k + 1:  # spare - k vertex-disjoint paths, as even as possible
            paths, shard, start = spare - k, 0, p
            for path in range(paths):
                length = spare // paths + (path < spare % paths)
                for v in range(start, start + length - 1):
                    slots[2 * shard], slots[2 * shard + 1] = v, v + 1
                    shard += 1
                start += length
        else:  # round r joins each data rank to the one r + 1 further on, wrapping
            for shard in range(k):
                hop = 1 + (shard // spare) % (spare - 1)
                v = shard % spare
                slots[2 * shard], slots[2 * shard + 1] = p + v, p + (v + hop) % spare
        yield slots
    for parity_first in (False, True):
        for shift in sorted({0, 1, 2, k // 2, k - 1} & set(range(k))):
            order = [2 * k + j for j in range(p)] if parity_first else []
            order += [2 * i for i in range(k)]
            order += [] if parity_first else [2 * k + j for j in range(p)]
            order += [2 * ((i + shift) % k) + 1 for i in range(k)]
            slots = [0] * n_slots
            for pos, slot in enumerate(order):
                slots[slot] = pos % m
            if all(slots[2 * i] != slots[2 * i + 1] for i in range(k)):
                yield slots


def _search_template(m: int, k: int, p: int) -> Template:
    """Deterministic local search over layouts on 2 <= m < 2k + p ranks.

    Every candidate is scored exactly, (tolerance, -(max - min load), -(minimum killing
    sets)); candidates whose exact cut would take too long are skipped, so the result's
    tolerance is always exact and a first call stays fast. Swaps keep the load vector,
    single-slot moves change it; sideways moves cross plateaus; restarts return to the best.
    """
    n_slots, need = 2 * k + p, p + 1  # losing p + 1 of the k + p positions kills a stripe
    ceiling = _tolerance_ceiling(m, k, p)
    even = 0 if n_slots % m == 0 else 1

    def score(slots: Sequence[int], max_visits: int | None = _CUT_VISITS) -> tuple[int, int, int]:
        loads = [0] * m
        for r in slots:
            loads[r] += 1
        if min(loads) == 0:
            raise _TooHard  # every rank must be used
        masks = _layout_masks(k, slots)
        cut = _min_cut(masks, need, max_visits)
        return (cut - 1, min(loads) - max(loads), -_count_killing_sets(masks, m, need, cut))

    def unbeatable(s: tuple[int, int, int]) -> bool:
        # at the ceiling, as even as can be, one killing set at most (0: not counted)
        return s[0] >= ceiling and -s[1] <= even and s[2] >= -1

    seeds = list(_seed_layouts(m, k, p))
    best, best_score = seeds[0], (-3, 0, 0)
    for slots in seeds:
        try:
            s = score(slots)
        except _TooHard:
            continue
        if s > best_score:
            best, best_score = slots, s
            if unbeatable(s):
                return _layout_template(m, k, best)
    if best_score[0] < -1:  # every seed was too hard to cut quickly: take the first, exactly
        best_score = score(best, None)

    # Each score enumerates up to C(m, cut) node sets; size the walk to the budget.
    cost = min(math.comb(m, best_score[0] + 1), _COUNT_LIMIT) * (k + p)
    steps = min(_SEARCH_MAX_STEPS, _SEARCH_BUDGET // max(cost, 1))
    rng = _SplitMix64(_SEARCH_SEED ^ (m << 16) ^ (k << 8) ^ p)
    current, current_score = list(best), best_score
    for step in range(steps):
        if unbeatable(best_score):
            break
        if step % 400 == 399:
            current, current_score = list(best), best_score
        cand = list(current)
        a = rng.below(n_slots)
        if rng.below(4):
            b = rng.below(n_slots)
            cand[a], cand[b] = cand[b], cand[a]
        else:
            cand[a] = rng.below(m)
        if cand == current or any(cand[2 * i] == cand[2 * i + 1] for i in range(k)):
            continue
        try:
            s = score(cand)
        except _TooHard:
            continue
        if s >= current_score:
            current, current_score = cand, s
            if s > best_score:
                best, best_score = list(cand), s
    return _layout_template(m, k, best)


def _layout_template(m: int, k: int, slots: Sequence[int]) -> Template:
    return Template(m, tuple((slots[2 * i], slots[2 * i + 1]) for i in range(k)), tuple(slots[2 * k :]))


def _count_killing_sets(masks: Sequence[int], m: int, need: int, size: int) -> int:
    """How many ``size``-sets of the ranks 0..m-1 contain at least ``need`` masks
    (0, meaning "not counted", when there are more than _COUNT_LIMIT sets)."""
    if math.comb(m, size) > _COUNT_LIMIT:
        return 0
    count = 0
    for combo in itertools.combinations([1 << r for r in range(m)], size):
        chosen = sum(combo)
        if sum(1 for mk in masks if mk & chosen == mk) >= need:
            count += 1
    return count


# --------------------------------------------------------------------------- ranking


def rendezvous_rank(stripe_key: bytes, node_ids: Iterable[str]) -> list[str]:
    """Highest-random-weight order of the nodes for ``stripe_key``: by
    blake3(stripe_key + b"\\0" + node_id) descending, ties by node id ascending.
    Raises ValueError on repeated node ids."""
    nodes = _distinct(node_ids)
    return sorted(nodes, key=lambda v: (-_weights(stripe_key, v, 1)[0], v))


def placement_order(stripe_key: bytes, node_ids: Iterable[str], count: int) -> list[str]:
    """The first ``count`` nodes of a stripe's placement order (template rank r is entry r).

    Rank r goes to the node with the highest r-th weight among those not yet ranked, a
    node's r-th weight being the r-th 32-byte block of blake3(stripe_key + b"\\0" + node_id)
    in extended-output mode; rank 0 is therefore ``rendezvous_rank(...)[0]``.

    Why not slice ``rendezvous_rank``: there, losing the node at rank r shifts every later
    rank, moving about half a stripe's slots. Here a node that ranks nowhere changes
    nothing; a lost node's rank goes to that rank's next choice and the earlier ranks stay
    put; a later rank moves only if that next choice held it (then the chain repeats,
    shorter each time). No memoryless rule keeps every other rank in place: it would have
    to give each node a fixed rank per stripe key, and two nodes would collide.
    """
    nodes = _distinct(node_ids)
    count = max(0, min(count, len(nodes)))
    weights = {v: _weights(stripe_key, v, count) for v in nodes}
    remaining = set(nodes)
    order = []
    for r in range(count):
        pick = min(remaining, key=lambda v: (-weights[v][r], v))
        remaining.discard(pick)
        order.append(pick)
    return order


def _weights(stripe_key: bytes, node_id: str, count: int) -> list[int]:
    digest = blake3.blake3(stripe_key + b"\0" + node_id.encode()).digest(length=32 * count)
    return [int.from_bytes(digest[32 * r : 32 * r + 32], "big") for r in range(count)]


def _distinct(node_ids: Iterable[str]) -> list[str]:
    nodes = list(node_ids)
    if len(set(nodes)) != len(nodes):
        repeated = sorted({v for v in nodes if nodes.count(v) > 1})
        raise ValueError(f"node ids must be distinct, repeated: {repeated}")
    return nodes


# --------------------------------------------------------------------------- stripes


@dataclass(frozen=True)
class StripePlacement:
    """The node of every slot of one stripe."""

    data: tuple[tuple[str, str], ...]  # per data shard: (replica A node, replica B node), distinct
    parity: tuple[str, ...]  # per parity chunk: node

    def holders(self) -> list[frozenset[str]]:
        """Per position (data shards, then parity chunks): the nodes placed there."""
        return [frozenset(nodes) for nodes in self.positions()]

    def positions(self) -> list[tuple[str, ...]]:
        """Per position (data shards, then parity chunks): its nodes, replica A first."""
        return [*self.data, *((v,) for v in self.parity)]

    def as_hint(self) -> tuple[str, ...]:
        """data0A, data0B, data1A, ..., parity0, ... (2k + p node ids): what manifests store."""
        return tuple(itertools.chain.from_iterable(self.data)) + self.parity

    @classmethod
    def from_hint(cls, hint: Sequence[str], k: int, p: int) -> StripePlacement:
        """Inverse of ``as_hint``. Raises FormatError for a hint of the wrong shape."""
        _check_code(k, p)
        if len(hint) != 2 * k + p or not all(isinstance(v, str) and v for v in hint):
            raise FormatError(
                f"placement hint must be {2 * k + p} non-empty node ids for k={k}, p={p}, "
                f"got {len(hint)} entries: the manifest is damaged or from another version"
            )
        data = tuple((hint[2 * i], hint[2 * i + 1]) for i in range(k))
        if any(a == b for a, b in data):
            raise FormatError("placement hint puts both replicas of a shard on one node: the manifest is damaged")
        return cls(data, tuple(hint[2 * k :]))


def place_stripe(stripe_key: bytes, node_ids: Iterable[str], k: int, p: int) -> StripePlacement:
    """Place one stripe on the live nodes: take ``template_for(len(nodes), k, p)`` and map
    its ranks through ``placement_order(stripe_key, nodes, ...)``.

    Raises PlacementError with fewer than two nodes, ValueError on repeated node ids.
    """
    nodes = _distinct(node_ids)
    template = template_for(len(nodes), k, p)
    ranked = placement_order(stripe_key, nodes, template.n_nodes)
    return StripePlacement(
        tuple((ranked[a], ranked[b]) for a, b in template.data),
        tuple(ranked[r] for r in template.parity),
    )


# --------------------------------------------------------------------------- tolerance


def stripe_tolerance(position_holders: Sequence[Collection[str]], k: int) -> int:
    """Exact tolerance of one stripe: the fewest nodes whose loss leaves fewer than k
    positions with a live holder, minus one; -1 if fewer than k positions are held now.

    ``position_holders[i]`` is every node holding position i's piece now. When positions
    share a piece id (identical bytes are stored once per node), pass the union of that
    id's holders for each of them. Raises ValueError for k < 1 or oversized input.
    """
    return _pattern_tolerance(_canonical(position_holders), _checked_k(k))


def checkpoint_tolerance(stripes: Iterable[tuple[Sequence[Collection[str]], int]], *, empty: int) -> int:
    """The minimum ``stripe_tolerance`` over ``(position_holders, k)`` pairs, which is
    exactly the checkpoint's tolerance.

    ``empty`` is what a checkpoint without stripes (only empty files) gets: it has no
    pieces to lose, only its manifest, so callers pass e.g. (nodes holding the manifest) - 1.
    Stripes with the same holder pattern (up to node names) are computed once.
    """
    worst: int | None = None
    for holders, k in stripes:
        t = _pattern_tolerance(_canonical(holders), _checked_k(k))
        worst = t if worst is None else min(worst, t)
        if worst < 0:
            break  # nothing is lower
    return empty if worst is None else worst


def _checked_k(k: int) -> int:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return k


def _canonical(position_holders: Sequence[Collection[str]]) -> tuple[int, ...]:
    """Holder sets as bit masks over nodes numbered by first appearance, sorted (tolerance
    ignores position order). A position nobody holds is mask 0."""
    if len(position_holders) > MAX_POSITIONS:
        raise ValueError(f"a stripe has at most {MAX_POSITIONS} positions, got {len(position_holders)}")
    index: dict[str, int] = {}
    masks = []
    for holders in position_holders:
        mask = 0
        for v in sorted(holders):
            mask |= 1 << index.setdefault(v, len(index))
        masks.append(mask)
    if len(index) > MAX_STRIPE_NODES:
        raise ValueError(f"a stripe's pieces are held by at most {MAX_STRIPE_NODES} nodes, got {len(index)}")
    return tuple(sorted(masks))


@functools.lru_cache(maxsize=4096)
def _pattern_tolerance(masks: tuple[int, ...], k: int) -> int:
    live = [mk for mk in masks if mk]
    if len(live) < k:
        return -1
    return _min_cut(live, len(live) - k + 1) - 1


# --------------------------------------------------------------------------- exact cuts
#
# The core question, for stripes and templates alike: given the holder set of every live
# position as a bit mask over nodes, what is the smallest node set S that contains at
# least `need` of the masks (those positions die with S)?


def _min_cut(masks: Sequence[int], need: int, max_visits: int | None = None) -> int:
    """The size of the smallest node set containing at least ``need`` of ``masks``.

    Exact. Masks sharing no node fail independently, so the masks split into connected
    components; for each, the fewest nodes killing x of its positions is found for every
    useful x, and a small knapsack combines the components. A component of at most
    _SMALL_COMPONENT nodes is settled by trying all its node subsets, a bigger one by
    ``_component_cut``'s branch and bound (whose states ``max_visits`` bounds, raising
    _TooHard past it; the default None is unbounded).
    """
    if need <= 0:
        return 0
    if need > len(masks):
        raise ValueError(f"cannot kill {need} of {len(masks)} positions")
    weight: dict[int, int] = {}
    for mk in masks:
        weight[mk] = weight.get(mk, 0) + 1
    budget = _Visits(max_visits)
    best = [0] + [_UNREACHABLE] * need  # best[x]: fewest nodes killing at least x positions
    for component in _components(weight):
        upto = min(need, sum(w for _, w in component))
        if _union(component).bit_count() <= _SMALL_COMPONENT:
            costs: Sequence[int] = _small_component_costs(_renumbered(component), upto)
        else:
            costs = [0]
            for x in range(1, upto + 1):
                costs.append(_component_cut(component, x, costs[-1], budget))
        merged = list(best)
        for have, base in enumerate(best):
            if base != _UNREACHABLE:
                for more in range(1, upto + 1):
                    total = min(need, have + more)
                    merged[total] = min(merged[total], base + costs[more])
        best = merged
    return best[need]


class _Visits:
    """Counts branch-and-bound states against an optional allowance."""

    def __init__(self, allowance: int | None):
        self._left = allowance

    def spend(self) -> None:
        if self._left is not None:
            if self._left <= 0:
                raise _TooHard
            self._left -= 1


def _bits(mask: int) -> Iterator[int]:
    while mask:
        bit = mask & -mask
        yield bit
        mask ^= bit


def _union(component: Iterable[tuple[int, int]]) -> int:
    out = 0
    for mk, _ in component:
        out |= mk
    return out


def _components(weight: dict[int, int]) -> list[tuple[tuple[int, int], ...]]:
    """The (mask, weight) pairs grouped into connected components (masks sharing nodes)."""
    groups: list[tuple[int, list[tuple[int, int]]]] = []  # (nodes, members)
    for mk, w in sorted(weight.items()):
        nodes, members, apart = mk, [(mk, w)], []
        for g_nodes, g_members in groups:
            if g_nodes & nodes:
                nodes |= g_nodes
                members += g_members
            else:
                apart.append((g_nodes, g_members))
        groups = apart + [(nodes, members)]
    return [tuple(sorted(members)) for _, members in groups]


def _renumbered(component: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The component with its nodes renumbered 0, 1, ... in bit order (a cache key)."""
    index = {bit: 1 << i for i, bit in enumerate(_bits(_union(component)))}
    return tuple(sorted((sum(index[b] for b in _bits(mk)), w) for mk, w in component))


@functools.lru_cache(maxsize=4096)
def _small_component_costs(component: tuple[tuple[int, int], ...], upto: int) -> tuple[int, ...]:
    """costs[x] = the fewest of the component's nodes that kill at least x positions."""
    nodes = _union(component)
    costs = [0] + [_UNREACHABLE] * upto
    subset = nodes
    while True:  # every subset of `nodes`, the empty one last
        dead = min(upto, sum(w for mk, w in component if mk & subset == mk))
        costs[dead] = min(costs[dead], subset.bit_count())
        if not subset:
            break
        subset = (subset - 1) & nodes
    for x in range(upto - 1, -1, -1):  # a set killing more also kills fewer
        costs[x] = min(costs[x], costs[x + 1])
    return tuple(costs)


def _component_cut(component: Sequence[tuple[int, int]], need: int, at_least: int, budget: _Visits) -> int:
    """The fewest nodes containing masks of total weight >= ``need`` (known >= at_least).

    A greedy pass gives an upper bound; then, for each smaller size in turn, a depth-first
    search decides whether that many nodes suffice, taking nodes in a fixed order (include,
    then exclude). A branch is cut when an optimistic bound on what its remaining r picks
    could add falls short: a mask still missing j nodes credits weight/j to each of them,
    a node's credit from masks missing two nodes counts only its r - 1 best partners, and
    only the r best credits count. Worst case exponential in the component's nodes; on
    stripe-shaped components the bound settles most sizes at the root.
    """
    masks = list(component)

    def killed(chosen: int) -> int:
        return sum(w for mk, w in masks if mk & chosen == mk)

    chosen = 0  # greedy: add the mask costing the fewest new nodes until enough die
    while killed(chosen) < need:
        chosen |= min((mk for mk, _ in masks if mk & chosen != mk), key=lambda mk: (mk & ~chosen).bit_count())
    best = chosen.bit_count()

    share: dict[int, float] = {}  # nodes (as one-bit masks) most involved first
    for mk, w in masks:
        for bit in _bits(mk):
            share[bit] = share.get(bit, 0.0) + w / mk.bit_count()
    order = sorted(share, key=lambda bit: (-share[bit], bit))
    later = [0] * (len(order) + 1)  # later[i]: the nodes order[i:]
    for i in range(len(order) - 1, -1, -1):
        later[i] = later[i + 1] | order[i]

    def can_add(chosen: int, open_nodes: int, picks: int) -> float:
        credit: dict[int, float] = {}
        partners: dict[int, dict[int, int]] = {}
        for mk, w in masks:
            rest = mk & ~chosen
            if not rest or rest & ~open_nodes:
                continue  # dead already, or cannot die on this branch
            j = rest.bit_count()
            if j > picks:
                continue
            if j == 2:
                a = rest & -rest
                for x, y in ((a, rest ^ a), (rest ^ a, a)):
                    by_partner = partners.setdefault(x, {})
                    by_partner[y] = by_partner.get(y, 0) + w
            else:
                for bit in _bits(rest):
                    credit[bit] = credit.get(bit, 0.0) + w / j
        for bit, by_partner in partners.items():
            credit[bit] = credit.get(bit, 0.0) + sum(heapq.nlargest(picks - 1, by_partner.values())) / 2
        return sum(heapq.nlargest(picks, credit.values()))

    def reachable(i: int, chosen: int, picks: int) -> bool:
        budget.spend()
        dead = killed(chosen)
        if dead >= need:
            return True
        if picks == 0 or len(order) - i < picks:
            return False
        if dead + can_add(chosen, later[i], picks) < need - 1e-9:
            return False
        return reachable(i + 1, chosen | order[i], picks - 1) or reachable(i + 1, chosen, picks)

    for size in range(max(1, at_least), best):
        if reachable(0, 0, size):
            return size
    return best
