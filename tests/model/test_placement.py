"""Stripe placement: templates, ranking, hints, load spread and stability.

Tolerances are checked with brute force written here, independent of stripe_tolerance.
"""

import itertools
import random
import statistics

import blake3
import pytest

from peerstore.model import placement
from peerstore.errors import FormatError, PlacementError
from peerstore.model.placement import (
    StripePlacement,
    Template,
    best_tolerance,
    place_stripe,
    placement_order,
    rendezvous_rank,
    stripe_tolerance,
    template_for,
)

K, P = 4, 2
WIDTH = 2 * K + P
# Best achievable tolerance with k=4, p=2 (ARCHITECTURE.md): 1 at 2-3 nodes, 2 at 4-5, 3 from 6.
TABLE_4_2 = {2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3, 8: 3, 9: 3, 10: 3, 11: 3, 12: 3}


def brute_tolerance(position_holders, k):
    """Largest t such that losing any t nodes leaves >= k positions held; -1 if unreadable."""
    holders = [set(h) for h in position_holders]
    nodes = sorted(set().union(*holders))

    def readable(lost):
        return sum(1 for h in holders if h - lost) >= k

    if not readable(set()):
        return -1
    for size in range(1, len(nodes) + 1):
        if any(not readable(set(lost)) for lost in itertools.combinations(nodes, size)):
            return size - 1
    raise AssertionError("losing every node must make the stripe unreadable")


def brute_template_tolerance(template, k):
    """Same, over a template's ranks, with bit masks (fast enough for 16 ranks)."""
    masks = template.position_masks()
    need = len(masks) - k + 1
    for size in range(template.n_nodes + 1):
        for lost in itertools.combinations([1 << r for r in range(template.n_nodes)], size):
            lost_mask = sum(lost)
            if sum(1 for mk in masks if mk & lost_mask == mk) >= need:
                return size - 1
    raise AssertionError("unreachable")


def cluster(rng, n):
    return [f"node-{rng.getrandbits(40):010x}" for _ in range(n)]


def slots(stripe: StripePlacement):
    return stripe.as_hint()


# --------------------------------------------------------------------------- templates and tolerance


@pytest.mark.parametrize("n", sorted(TABLE_4_2))
def test_every_stripe_of_a_checkpoint_reaches_the_table(n):
    rng = random.Random(1000 + n)
    nodes = cluster(rng, n)
    stripes = []
    for _ in range(50):
        stripe = place_stripe(rng.randbytes(32), nodes, K, P)
        assert len(stripe.data) == K and len(stripe.parity) == P
        assert all(a != b for a, b in stripe.data), "both replicas of a shard on one node"
        assert set(slots(stripe)) <= set(nodes)
        assert len(set(slots(stripe))) == min(n, WIDTH), "uses as many nodes as it can"
        assert brute_tolerance(stripe.holders(), K) == TABLE_4_2[n]
        assert stripe_tolerance(stripe.holders(), K) == TABLE_4_2[n]
        stripes.append((stripe.holders(), K))
    assert placement.checkpoint_tolerance(stripes, empty=-1) == TABLE_4_2[n]
    assert best_tolerance(n, K, P) == TABLE_4_2[n]


COMBOS = [(1, 0), (1, 2), (2, 1), (3, 2), (4, 2), (6, 3), (8, 4)]


@pytest.mark.parametrize("k, p", COMBOS)
def test_templates_for_other_codes(k, p):
    previous = 0
    for n in range(2, 17):
        template = template_for(n, k, p)
        m = min(n, 2 * k + p)
        assert template.n_nodes == m
        assert len(template.data) == k and len(template.parity) == p
        assert all(a != b for a, b in template.data)
        loads = template.loads()
        assert min(loads) >= 1, "every rank is used"
        assert max(loads) - min(loads) <= 1, f"uneven template at n={n}: {loads}"
        tolerance = brute_template_tolerance(template, k)
        assert best_tolerance(n, k, p) == tolerance
        # replicas apart always survive one loss; nothing beats p + 1 or n - 1
        assert 1 <= tolerance <= min(p + 1, m - 1)
        assert tolerance >= previous, "more nodes never lower the best tolerance"
        previous = tolerance


def test_template_at_full_width_puts_every_slot_on_its_own_rank():
    for k, p in COMBOS + [(16, 16)]:
        template = template_for(2 * k + p + 5, k, p)
        assert sorted(itertools.chain(*template.data, template.parity)) == list(range(2 * k + p))
        assert best_tolerance(2 * k + p, k, p) == p + 1


def test_templates_are_deterministic():
    wanted = {(n, k, p): template_for(n, k, p) for k, p in [(4, 2), (3, 2), (6, 3)] for n in range(2, 12)}
    placement._template.cache_clear()
    placement._template_tolerance.cache_clear()
    assert {key: template_for(*key) for key in wanted} == wanted


def test_template_for_refuses_fewer_than_two_nodes_and_bad_codes():
    for n in (0, 1):
        with pytest.raises(PlacementError, match="at least 2 live nodes"):
            template_for(n, K, P)
        with pytest.raises(PlacementError):
            place_stripe(b"key", [f"n{i}" for i in range(n)], K, P)
    for k, p in [(0, 2), (17, 2), (4, -1), (4, 17)]:
        with pytest.raises(ValueError):
            template_for(5, k, p)


# --------------------------------------------------------------------------- identical pieces


@pytest.mark.parametrize("n", [3, 4, 5, 6, 8, 10, 12])
@pytest.mark.parametrize("identical", ["data shards", "data and parity"])
def test_identical_pieces_use_the_union_of_their_holders(n, identical):
    """An all-zero stripe: its data shards (and, when parity chunks are as long as the shards,
    its parity too, since zfec parity of zeros is zeros) are one piece id. A node store holds
    identical bytes once, so the id is available wherever any of its slots went."""
    rng = random.Random(n)
    nodes = cluster(rng, n)
    stripe = place_stripe(rng.randbytes(32), nodes, K, P)
    zero = "blake3-of-zeros"
    piece_ids = [zero] * K + ([zero] * P if identical == "data and parity" else ["parity-0", "parity-1"])
    # what each node's store holds, from the placement
    store = {v: set() for v in nodes}
    for i, (a, b) in enumerate(stripe.data):
        store[a].add(piece_ids[i])
        store[b].add(piece_ids[i])
    for j, v in enumerate(stripe.parity):
        store[v].add(piece_ids[K + j])
    holders_of = {pid: {v for v in nodes if pid in store[v]} for pid in piece_ids}
    position_holders = [holders_of[pid] for pid in piece_ids]

    # independent: which node sets leave fewer than k positions with a live copy of their id
    def readable(lost):
        return sum(1 for pid in piece_ids if any(pid in store[v] for v in nodes if v not in lost)) >= K

    expected = next(
        size - 1
        for size in range(n + 1)
        if any(not readable(set(lost)) for lost in itertools.combinations(nodes, size))
    )
    assert stripe_tolerance(position_holders, K) == expected
    assert expected >= best_tolerance(n, K, P)


# --------------------------------------------------------------------------- ranking and hints


def test_rendezvous_rank_is_highest_blake3_weight_first():
    rng = random.Random(5)
    nodes = cluster(rng, 9)
    key = rng.randbytes(32)
    weights = {v: blake3.blake3(key + b"\0" + v.encode()).digest() for v in nodes}
    ranked = rendezvous_rank(key, nodes)
    assert ranked == sorted(nodes, key=lambda v: weights[v], reverse=True)
    assert rendezvous_rank(key, reversed(nodes)) == ranked
    assert placement_order(key, nodes, 1) == ranked[:1]
    with pytest.raises(ValueError, match="distinct"):
        rendezvous_rank(key, nodes + nodes[:1])


def test_placement_ignores_the_order_nodes_are_listed_in():
    rng = random.Random(6)
    nodes = cluster(rng, 7)
    key = rng.randbytes(32)
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    assert place_stripe(key, nodes, K, P) == place_stripe(key, shuffled, K, P)
    assert placement_order(key, nodes, 7) == placement_order(key, shuffled, 99)
    with pytest.raises(ValueError, match="distinct"):
        place_stripe(key, nodes + nodes[:1], K, P)


@pytest.mark.parametrize("k, p", [(4, 2), (1, 0), (3, 2), (2, 5)])
def test_hint_round_trip(k, p):
    rng = random.Random(k * 10 + p)
    nodes = cluster(rng, 6)
    stripe = place_stripe(rng.randbytes(8), nodes, k, p)
    hint = stripe.as_hint()
    assert len(hint) == 2 * k + p
    assert hint[: 2 * k : 2] == tuple(a for a, _ in stripe.data)
    assert hint[2 * k :] == stripe.parity
    assert StripePlacement.from_hint(list(hint), k, p) == stripe
    assert stripe.holders() == [frozenset(pair) for pair in stripe.data] + [frozenset([v]) for v in stripe.parity]


@pytest.mark.parametrize(
    "hint",
    [
        ("a", "b", "c"),  # too short for k=1, p=2
        ("a", "b", "c", "d", "e"),  # too long
        ("a", "a", "c", "d"),  # both replicas on one node
        ("a", "", "c", "d"),  # empty node id
        ("a", 7, "c", "d"),  # not a node id
    ],
)
def test_bad_hints_are_format_errors(hint):
    with pytest.raises(FormatError):
        StripePlacement.from_hint(hint, 1, 2)


def test_short_last_stripe_places_fewer_data_shards():
    nodes = [f"n{i}" for i in range(5)]
    for k in range(1, K + 1):
        stripe = place_stripe(b"last stripe", nodes, k, P)
        assert len(stripe.data) == k and all(a != b for a, b in stripe.data)
        assert brute_tolerance(stripe.holders(), k) == best_tolerance(5, k, P) >= 1


# --------------------------------------------------------------------------- load and stability


@pytest.mark.parametrize("n", [2, 3, 5, 7, 10, 12, 16])
def test_load_spreads_evenly_over_2000_stripes(n):
    rng = random.Random(300 + n)
    nodes = cluster(rng, n)
    count = dict.fromkeys(nodes, 0)
    for _ in range(2000):
        for v in slots(place_stripe(rng.randbytes(16), nodes, K, P)):
            count[v] += 1
    mean = 2000 * WIDTH / n
    assert all(abs(c - mean) <= 0.15 * mean for c in count.values()), (mean, sorted(count.values()))


# Moved slots per affected stripe. placement_order moves the lost node's slot, and another
# slot only when that rank's next choice held a later rank (probability below
# (m - 1) / (n - 1) per link of the chain, each link shorter); measured 2.2 at n = 11 down to
# 1.2 at n = 24. Slicing one rendezvous ranking instead moves everything after the lost rank:
# about 5.5 of the 10 slots. 2.5 fails any slice-style mapping and leaves room for the seed.
MAX_MEAN_MOVED = 2.5


@pytest.mark.parametrize("n", [11, 12, 16])
def test_removing_a_node_moves_little(n):
    assert n - 1 >= WIDTH, "template size is fixed only from 2k + p nodes"
    rng = random.Random(400 + n)
    nodes = cluster(rng, n)
    moved, sliced = [], []
    for s in range(300):
        key = rng.randbytes(16)
        lost = nodes[s % n]
        rest = [v for v in nodes if v != lost]
        before, after = place_stripe(key, nodes, K, P), place_stripe(key, rest, K, P)
        if lost not in slots(before):
            assert after == before, "a stripe that did not use the lost node must not change"
            continue
        order = placement_order(key, nodes, WIDTH)
        rank = order.index(lost)
        assert placement_order(key, rest, WIDTH)[:rank] == order[:rank], "earlier ranks stay put"
        changed = sum(a != b for a, b in zip(slots(before), slots(after)))
        assert changed >= slots(before).count(lost)
        moved.append(changed)
        sliced.append(sum(a != b for a, b in zip(rendezvous_rank(key, nodes)[:WIDTH], rendezvous_rank(key, rest)[:WIDTH])))
    assert len(moved) > 100
    assert statistics.mean(moved) <= MAX_MEAN_MOVED
    assert statistics.mean(moved) < statistics.mean(sliced) / 2


@pytest.mark.parametrize("n", [10, 12, 16])
def test_adding_a_node_moves_little(n):
    rng = random.Random(500 + n)
    nodes = cluster(rng, n)
    newcomer = "node-new"
    moved = []
    for _ in range(300):
        key = rng.randbytes(16)
        before, after = place_stripe(key, nodes, K, P), place_stripe(key, nodes + [newcomer], K, P)
        if newcomer not in placement_order(key, nodes + [newcomer], WIDTH):
            assert after == before, "a stripe the newcomer does not rank in must not change"
            continue
        changed = sum(a != b for a, b in zip(slots(before), slots(after)))
        assert changed >= 1
        moved.append(changed)
    assert len(moved) > 100
    assert statistics.mean(moved) <= MAX_MEAN_MOVED


def test_template_type_is_plain_data():
    template = template_for(5, K, P)
    assert isinstance(template, Template)
    assert sum(template.loads()) == WIDTH
    assert len(template.position_masks()) == K + P
