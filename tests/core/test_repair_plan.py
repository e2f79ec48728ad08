"""The repair planner (peerstore/core/repair.py): table-driven cases over real placements."""

from __future__ import annotations

import random

import blake3
import pytest

from peerstore.core.repair import (
    State,
    StripeRef,
    assess_stripe,
    best_for,
    owner_of,
    plan,
    stripes_of,
)
from peerstore.model import placement
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry, VersionId
from peerstore.model.policy import Policy

K, P, BLOCK = 4, 2, 1000


def entry(seed: object, k: int = K, p: int = P, ids: tuple[bytes, ...] | None = None,
          short: bool = True) -> StripeEntry:
    ids = ids or tuple(blake3.blake3(f"{seed}-{i}".encode()).digest() for i in range(k + p))
    lengths = (BLOCK,) * (k - 1) + (BLOCK - 7 if short else BLOCK,)
    return StripeEntry(k, p, BLOCK, ids[:k], lengths, ids[k:])


def nodes(n: int) -> list[str]:
    return [f"{i:02x}" + "0" * 14 for i in range(n)]


def placed(seed: object, members: list[str], k: int = K, p: int = P,
           ids: tuple[bytes, ...] | None = None) -> tuple[StripeRef, dict[bytes, set[str]]]:
    """A stripe as a put on ``members`` placed it, and its holders then."""
    e = entry(seed, k, p, ids)
    where = placement.place_stripe(b"".join(e.piece_ids), members, k, p)
    holders: dict[bytes, set[str]] = {}
    for pid, at in zip(e.piece_ids, where.positions()):
        holders.setdefault(pid, set()).update(at)
    return StripeRef(b"m" * 32, 0, e, where.as_hint()), holders


def after(ref: StripeRef, holders: dict[bytes, set[str]], alive: set[str], additions) -> list[set[str]]:
    hs = {pid: set(h) & alive for pid, h in holders.items()}
    for a in additions:
        hs[a.piece_id].add(a.target)
    return [hs[pid] for pid in ref.piece_ids]


# -- restoring the policy ---------------------------------------------------------------

@pytest.mark.parametrize("size,lost", [(3, 1), (4, 1), (4, 2), (5, 1), (5, 2), (6, 1), (6, 2), (8, 3)])
def test_repair_restores_two_replicas_parity_and_the_best_tolerance(size, lost):
    members = nodes(size)
    for seed in range(40):
        ref, holders = placed(seed, members)
        dead = set(random.Random(seed).sample(members, lost))
        alive = set(members) - dead
        r = assess_stripe(ref, holders, alive, gone=dead)
        touched = any(holders[pid] & dead for pid in ref.piece_ids)
        if not touched:
            assert r.state is State.OK
            continue
        if r.tolerance < 0:
            assert r.state is State.LOST
            continue
        assert r.state is State.REPAIR, (seed, r.state)
        final = after(ref, holders, alive, r.additions)
        assert all(len(h) >= 2 for h in final[:K]) and all(final[K:])
        assert placement.stripe_tolerance(final, K) == best_for(len(alive), K, P)
        assert all(a.target in alive for a in r.additions)
        assert len({(a.piece_id, a.target) for a in r.additions}) == len(r.additions)


def test_one_of_five_lost_costs_few_additions():
    """Minimal movement: losing a node's two slots takes at most two more than those."""
    members = nodes(5)
    counts = []
    for seed in range(60):
        ref, holders = placed(seed, members)
        dead = {members[seed % 5]}
        r = assess_stripe(ref, holders, set(members) - dead, gone=dead)
        lost_slots = sum(len(holders[pid] & dead) for pid in ref.piece_ids)
        if lost_slots:
            counts.append(len(r.additions))
            assert len(r.additions) <= lost_slots + 2, (seed, lost_slots, r.additions)
    assert counts and sum(counts) / len(counts) < 4


@pytest.mark.parametrize("case,expect_copy", [("one replica left", True), ("both replicas lost", False)])
def test_copy_from_a_surviving_replica_else_rebuild_from_parity(case, expect_copy):
    members = nodes(5)
    ref, holders = placed(7, members)
    pid = ref.piece_ids[1]
    dead = set(list(holders[pid])[:1]) if expect_copy else set(holders[pid])
    alive = set(members) - dead
    r = assess_stripe(ref, holders, alive, gone=dead)
    assert r.state is State.REPAIR
    mine = [a for a in r.additions if a.piece_id == pid]
    assert mine
    if expect_copy:
        assert all(a in r.copies for a in mine)
        assert r.sources[pid] and set(r.sources[pid]) <= alive
    else:
        assert all(a in r.rebuilds for a in mine)
        readable = r.readable_positions()
        assert len(readable) >= K and all(set(h) <= alive for _, h in readable)


def test_sizes_are_the_true_piece_lengths():
    members = nodes(4)
    ref, holders = placed(3, members)
    last = ref.piece_ids[K - 1]
    dead = {sorted(holders[last])[0]}
    r = assess_stripe(ref, holders, set(members) - dead, gone=dead)
    for a in r.additions:
        assert a.size == (BLOCK - 7 if a.position == K - 1 else BLOCK)


# -- grace, presumed holders, booting ----------------------------------------------------

def test_a_node_within_grace_is_waited_for():
    members = nodes(5)
    ref, holders = placed(1, members)
    away = {ref.hint[0]}
    r = assess_stripe(ref, holders, set(members) - away, away=away)
    assert r.state is State.WAITING and not r.additions


def test_a_second_failure_within_grace_does_not_hold_back_the_first_ones_repair():
    members = nodes(6)
    ref, holders = placed(2, members)
    gone, away = {ref.hint[0]}, {ref.hint[2]}
    alive = set(members) - gone - away
    r = assess_stripe(ref, holders, alive, away=away, gone=gone)
    assert r.state is State.REPAIR
    # Only what the gone node held is re-created; the away node is still counted.
    assert {a.piece_id for a in r.additions} <= {pid for pid in ref.piece_ids if holders[pid] & gone} | {
        pid for pid in ref.piece_ids if len(holders[pid] - gone - away) < 1}
    virtual = after(ref, holders, alive | away, r.additions)
    assert placement.stripe_tolerance(virtual, K) >= best_for(len(alive | away), K, P)


def test_presumed_holders_from_the_last_scan_count_like_the_hint():
    members = nodes(6)
    ref, holders = placed(4, members)
    pid = ref.piece_ids[0]
    moved_to = next(n for n in members if n not in holders[pid])  # an earlier repair put a copy here
    gone = set(holders[pid])
    holders = {p: set(h) for p, h in holders.items()}
    holders[pid] = {moved_to}  # ... and that node is away (within grace) now
    alive = set(members) - gone - {moved_to}
    known = assess_stripe(ref, holders, alive, away={moved_to}, gone=gone, presumed={pid: {moved_to}})
    unknown = assess_stripe(ref, holders, alive, away={moved_to}, gone=gone)
    assert known.state is unknown.state is State.REPAIR
    assert len([a for a in known.additions if a.piece_id == pid]) == 1  # one replica is presumed
    assert len([a for a in unknown.additions if a.piece_id == pid]) >= 2  # rebuilt: nobody holds it


def test_an_unexplained_shortfall_is_held_while_booting_but_a_known_loss_is_not():
    members = nodes(5)
    ref, holders = placed(5, members)
    pid = ref.piece_ids[2]
    holders = {p: set(h) for p, h in holders.items()}
    holders[pid] = set(list(holders[pid])[:1])  # one copy vanished from a live node
    alive = set(members)
    assert assess_stripe(ref, holders, alive, hold_unexplained=True).state is State.HELD
    assert assess_stripe(ref, holders, alive, hold_unexplained=False).state is State.REPAIR
    dead = {ref.hint[0]}
    r = assess_stripe(ref, holders, alive - dead, gone=dead, hold_unexplained=True)
    assert r.state is State.REPAIR


def test_unreadable_now_is_lost_or_waiting():
    members = nodes(5)
    ref, holders = placed(6, members)
    dead = set()
    for pid in ref.piece_ids:  # kill holders until fewer than k positions remain
        dead |= holders[pid]
        if placement.stripe_tolerance([holders[p] - dead for p in ref.piece_ids], K) < 0:
            break
    alive = set(members) - dead
    assert assess_stripe(ref, holders, alive, gone=dead).state is State.LOST
    assert assess_stripe(ref, holders, alive, away=dead).state is State.WAITING


# -- owner, order, shared pieces ---------------------------------------------------------

def test_owner_is_the_first_live_hint_node_and_every_view_agrees():
    members = nodes(5)
    for seed in range(30):
        ref, _ = placed(seed, members)
        dead = {ref.hint[0]}
        alive = set(members) - dead
        owner = owner_of(ref, alive)
        assert owner == next(n for n in ref.hint if n in alive)
        assert owner_of(ref, sorted(alive)) == owner_of(ref, sorted(alive, reverse=True)) == owner
    ref, _ = placed(0, members)
    outsiders = set(nodes(8)) - set(members)
    assert owner_of(ref, outsiders) == placement.rendezvous_rank(ref.key, sorted(outsiders))[0]
    assert owner_of(ref, ()) is None


def test_exactly_one_owner_plans_each_stripe():
    members = nodes(5)
    refs, holders = [], {}
    for seed in range(20):
        ref, hs = placed(seed, members)
        refs.append(StripeRef(bytes([seed]) * 32, 0, ref.entry, ref.hint))
        holders.update(hs)
    dead = {members[0]}
    alive = set(members) - dead
    planned = {}
    for me in alive:
        for r in plan(refs, holders, alive, gone=dead, owner=me):
            if r.additions:
                assert (r.stripe.manifest_id, r.stripe.index) not in planned
                planned[(r.stripe.manifest_id, r.stripe.index)] = me
    everyone = plan(refs, holders, alive, gone=dead)
    assert set(planned) == {(r.stripe.manifest_id, r.stripe.index) for r in everyone if r.additions}


def test_closest_to_loss_first():
    members = nodes(5)
    refs, holders = [], {}
    for seed in range(30):
        ref, hs = placed(seed, members)
        refs.append(StripeRef(bytes([seed]) * 32, 0, ref.entry, ref.hint))
        holders.update(hs)
    dead = set(members[:2])
    result = plan(refs, holders, set(members) - dead, gone=dead)
    keys = [(r.checkpoint_tolerance, r.tolerance) for r in result]
    assert keys == sorted(keys)
    assert len({t for _, t in keys}) > 1  # the table really mixes tolerances


def test_a_piece_shared_by_two_stripes_is_recreated_once():
    members = nodes(5)
    shared = blake3.blake3(b"zeros").digest()
    ids_a = (shared,) + tuple(blake3.blake3(f"a{i}".encode()).digest() for i in range(1, K + P))
    ids_b = (shared,) + tuple(blake3.blake3(f"b{i}".encode()).digest() for i in range(1, K + P))
    ref_a, ha = placed("a", members, ids=ids_a)
    ref_b, hb = placed("b", members, ids=ids_b)
    ref_b = StripeRef(b"n" * 32, 0, ref_b.entry, ref_b.hint)
    holders = {**ha, **hb}
    holders[shared] = ha[shared] | hb[shared]
    dead = set(holders[shared])  # every copy of the shared piece is gone
    alive = set(members) - dead
    result = plan([ref_a, ref_b], holders, alive, gone=dead)
    wanted = [a for r in result for a in r.additions if a.piece_id == shared]
    assert 2 <= len(wanted) <= 2 + 1  # two replicas (maybe one more for tolerance), not per stripe


def test_stripes_of_a_manifest():
    members = nodes(4)
    stripes = [entry(i, short=i == 2) for i in range(3)]
    hints = tuple(placement.place_stripe(b"".join(s.piece_ids), members, K, P).as_hint() for s in stripes)
    manifest = Manifest("run/a", VersionId(1, members[0]), Policy(shard_size=64 * 1024),
                        (FileEntry("f", 3 * K * BLOCK - 7, 0o644, b"\0" * 32, tuple(stripes)),),
                        hints, 2, 0.0, False)
    refs = stripes_of(manifest)
    assert [r.index for r in refs] == [0, 1, 2]
    assert [r.hint for r in refs] == list(hints)
    assert all(r.manifest_id == manifest.id for r in refs)
    assert refs[1].key == b"".join(stripes[1].piece_ids)


@pytest.mark.parametrize("n,best", [(1, -1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3), (10, 3)])
def test_best_tolerance_by_cluster_size(n, best):
    assert best_for(n, K, P) == best


def test_nodes_that_refuse_new_pieces_are_never_targets_but_still_count_as_holders():
    members = nodes(6)
    refusing = members[1]
    for seed in range(30):
        ref, holders = placed(f"refuse{seed}", members)
        gone = members[5]
        alive = set(members) - {gone}
        r = assess_stripe(ref, holders, alive, gone={gone}, no_targets={refusing})
        if r.state is State.OK:
            continue
        assert r.state is State.REPAIR, r.state
        assert r.additions and all(a.target != refusing for a in r.additions)
        hs = after(ref, holders, alive, r.additions)
        assert placement.stripe_tolerance(hs, K) >= r.target
        # Its copies still serve as sources.
        for pid, sources in r.sources.items():
            assert set(sources) == holders.get(pid, set()) & alive
