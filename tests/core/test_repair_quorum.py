"""The majority rule and absence times (core/quorum.py) and repair pacing (core/pacing.py)."""

from __future__ import annotations

import pytest

from peerstore.core.pacing import TokenBucket
from peerstore.core.quorum import MembershipTracker, decode_stable, majority_of
from peerstore.errors import FormatError

A, B, C, D, E = "a", "b", "c", "d", "e"
FIVE = {A, B, C, D, E}


@pytest.mark.parametrize("seen,members,expected", [
    ({A, B, C}, FIVE, True),
    ({A, B}, FIVE, False),
    ({A, B}, {A, B, C, D}, False),  # half is not a majority
    ({A, B, C}, {A, B, C, D}, True),
    ({A}, {A}, True),
    ({A}, set(), False),
    ({A, B, C, D, E, "f"}, {A, B, C}, True),
])
def test_majority_of(seen, members, expected):
    assert majority_of(seen, members) is expected


def settled(members, settle=10.0, me=A, stable=None) -> MembershipTracker:
    t = MembershipTracker(me, 0.0, settle, stable)
    t.observe(1.0, members)
    t.seed(members)
    return t


def test_the_first_stable_membership_comes_from_the_data_not_from_waiting():
    t = MembershipTracker(A, 0.0, 10.0)
    t.observe(1.0, {A, B})
    assert not t.tick(1000.0) and t.stable is None and not t.has_majority()
    assert t.next_deadline() is None
    assert t.seed(FIVE)  # the hints name five nodes: two is a minority of them
    assert t.stable == FIVE and not t.has_majority()
    assert not t.seed({A, B})  # only the first time
    t.observe(1001.0, {A, B, C})
    assert t.has_majority()


def test_a_view_becomes_stable_only_after_settling():
    t = settled(FIVE)
    t.observe(20.0, {A, B, C, D})
    assert not t.tick(29.9) and t.stable == FIVE
    assert t.next_deadline() == 30.0
    assert t.tick(30.0) and t.stable == {A, B, C, D} and t.has_majority()
    assert t.next_deadline() is None


@pytest.mark.parametrize("steps,stable_after,majority", [
    # one node dies, then another: each smaller view holds a majority of the last stable one
    ([{A, B, C, D}, {A, B, C}], {A, B, C}, True),
    # a minority side never adopts itself, so it never repairs
    ([{A, B}], FIVE, False),
    # a minority that shrinks in stages: 3 of 5 adopted, then 2 of 3 adopted
    ([{A, B, C}, {A, B}], {A, B}, True),
    # the other side of that split: 2 of 5, never
    ([{D, E}], FIVE, False),
    # a node joins: a superset is always adopted
    ([FIVE | {"f"}], FIVE | {"f"}, True),
])
def test_stable_membership_follows_majorities_only(steps, stable_after, majority):
    me = next(iter(steps[-1]))
    t = settled(FIVE, me=me)
    now = 100.0
    for view in steps:
        t.observe(now, view)
        now += 100.0
        t.tick(now)
    assert t.stable == stable_after
    assert t.has_majority() is majority


def test_a_flapping_view_is_never_adopted():
    t = settled(FIVE)
    for i in range(20):
        t.observe(100.0 + i * 5, {A, B, C, D} if i % 2 == 0 else FIVE)
        t.tick(100.0 + i * 5 + 4.9)
    assert t.stable == FIVE


def test_after_a_reboot_the_saved_stable_membership_rules():
    t = MembershipTracker(A, 50.0, 10.0, stable=FIVE)
    assert not t.has_majority()  # alone after booting: no repair
    t.observe(51.0, {A, B})
    t.tick(500.0)
    assert t.stable == FIVE and not t.has_majority()
    t.observe(501.0, {A, B, C})
    assert t.has_majority()


def test_absence_times_and_grace_split():
    t = settled(FIVE)
    t.observe(100.0, {A, B, C})
    t.observe(150.0, {A, B, C, D})  # d came back within the grace: its absence is forgotten
    assert t.away_since(E) == 100.0
    assert t.away_since(D) == 0.0 or D in t.alive
    assert t.away_since("z") == 0.0  # never seen: away since this node booted
    away, gone = t.split({D, E, "z"}, 170.0, 60.0)
    assert away == frozenset() and gone == {E, "z"}
    away, gone = t.split({E}, 120.0, 600.0)
    assert away == {E} and gone == frozenset()
    assert t.grace_ends(600.0) == [600.0, 700.0]


def test_stable_membership_survives_encoding_and_refuses_garbage():
    t = settled(FIVE)
    assert decode_stable(t.encode_stable()) == FIVE
    assert decode_stable(None) is None
    assert decode_stable(MembershipTracker(A, 0, 1).encode_stable()) is None
    for bad in (b"\x00garbage", t.encode_stable()[:-3]):
        with pytest.raises(FormatError):
            decode_stable(bad)


# -- pacing ----------------------------------------------------------------------------

def test_token_bucket_holds_the_average_rate():
    bucket = TokenBucket(rate=100.0, burst=100.0)
    now, taken = 0.0, 0
    while now < 100.0:
        if bucket.try_take(now, 30):
            taken += 30
        now += 0.01
    assert 100 * 100 <= taken <= 100 * 100 + 100 + 30  # rate x time plus one burst


def test_token_bucket_requests_bigger_than_the_burst_go_into_debt():
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert bucket.try_take(0.0, 50)  # a full bucket grants it
    assert not bucket.try_take(0.1, 1)
    assert bucket.ready_at(0.1, 5) == pytest.approx(5.0)  # 45 of debt + 5 at 10/s
    assert not bucket.try_take(4.9, 5)
    assert bucket.try_take(5.0, 5)


def test_token_bucket_unlimited():
    bucket = TokenBucket(rate=0, burst=1)
    assert all(bucket.try_take(0.0, 10**9) for _ in range(3))
    assert bucket.ready_at(7.0, 10**12) == 7.0
