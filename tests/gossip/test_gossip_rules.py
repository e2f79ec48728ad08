"""Pure pieces of the membership protocol: ordering rules, timers, queue, message checks."""

from __future__ import annotations

import math

import msgpack
import pytest

from peerstore.errors import CodecError
from peerstore.gossip import messages as m
from peerstore.gossip.awareness import Awareness
from peerstore.gossip.broadcast import BroadcastQueue, retransmit_limit
from peerstore.gossip.state import Member, MemberState, alive_wins, dead_wins, left_wins, suspect_wins
from peerstore.gossip.suspicion import (
    Suspicion,
    expected_confirmations,
    suspicion_min_timeout,
    suspicion_timeout,
)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def member(state: MemberState, incarnation: int) -> Member:
    return Member("x", ("10.0.0.9", 7000), incarnation, state, 0.0)


# Incarnation ordering ------------------------------------------------------------------

ORDERING = [
    # rule, current (state, inc) or None, claimed incarnation, wins?
    (alive_wins, None, 0, True),
    (alive_wins, (A, 5), 5, False),
    (alive_wins, (A, 5), 6, True),
    (alive_wins, (S, 5), 5, False),  # suspect overrides alive of equal incarnation
    (alive_wins, (S, 5), 6, True),
    (alive_wins, (D, 5), 5, False),
    (alive_wins, (D, 5), 6, True),  # a restart (or refutation) revives the dead
    (alive_wins, (L, 5), 6, True),
    (alive_wins, (A, 5), 4, False),
    (suspect_wins, None, 9, False),  # unknown members are not created by rumours
    (suspect_wins, (A, 5), 5, True),
    (suspect_wins, (A, 5), 6, True),
    (suspect_wins, (A, 5), 4, False),
    (suspect_wins, (S, 5), 6, False),  # already suspect: a confirmation, not a change
    (suspect_wins, (D, 5), 6, False),
    (dead_wins, None, 1, False),
    (dead_wins, (A, 5), 5, True),
    (dead_wins, (S, 5), 5, True),
    (dead_wins, (A, 5), 4, False),
    (dead_wins, (D, 5), 6, False),
    (dead_wins, (L, 5), 6, False),
    (left_wins, (A, 5), 5, True),
    (left_wins, (S, 5), 6, True),
    (left_wins, (D, 5), 5, True),  # left is dead by intent: it also replaces dead
    (left_wins, (L, 5), 6, False),
    (left_wins, (A, 5), 4, False),
    (left_wins, None, 1, False),
]


@pytest.mark.parametrize("rule, current, incarnation, wins", ORDERING)
def test_incarnation_ordering(rule, current, incarnation, wins):
    held = member(*current) if current else None
    assert rule(held, incarnation) is wins


# Lifeguard suspicion timeout -----------------------------------------------------------


@pytest.mark.parametrize(
    "mult, n, interval, expected",
    [
        (4, 0, 1.0, 4.0),
        (4, 1, 1.0, 4.0),
        (4, 5, 1.0, 4.0),  # log10(5) < 1: floored at one interval per mult
        (4, 10, 1.0, 4.0),
        (4, 20, 1.0, 4 * math.log10(20)),
        (4, 100, 1.0, 8.0),
        (4, 1000, 0.5, 6.0),
        (5, 100, 2.0, 20.0),
    ],
)
def test_suspicion_min_timeout(mult, n, interval, expected):
    assert suspicion_min_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    "mult, n, k",
    [(4, 1, 0), (4, 3, 0), (4, 4, 2), (4, 20, 2), (6, 5, 0), (6, 6, 4), (2, 10, 0), (1, 10, 0)],
)
def test_expected_confirmations(mult, n, k):
    assert expected_confirmations(mult, n) == k


@pytest.mark.parametrize(
    "confirmations, k, expected",
    [
        (0, 2, 24.0),
        (1, 2, math.floor((24 - 20 * math.log(2) / math.log(3)) * 1000) / 1000),
        (2, 2, 4.0),
        (3, 2, 4.0),  # never below the minimum
        (0, 0, 4.0),  # nobody to confirm: go straight to the minimum
        (1, 4, math.floor((24 - 20 * math.log(2) / math.log(5)) * 1000) / 1000),
    ],
)
def test_suspicion_timeout_decays_with_confirmations(confirmations, k, expected):
    assert suspicion_timeout(confirmations, k, 4.0, 24.0) == pytest.approx(expected)


def test_suspicion_counts_each_independent_accuser_once():
    s = Suspicion(accuser="a", k=2, min_timeout=4.0, max_timeout=24.0, start=100.0)
    assert s.deadline == 124.0
    assert not s.confirm("a")  # the original accuser, gossiped back to us
    assert s.confirm("b")
    assert not s.confirm("b")
    assert 104.0 < s.deadline < 124.0
    assert s.confirm("c")
    assert s.deadline == 104.0
    assert not s.confirm("d")  # enough already
    assert s.confirmations == 2


# Local health awareness ----------------------------------------------------------------


@pytest.mark.parametrize(
    "deltas, score",
    [([], 0), ([1, 1], 2), ([10], 7), ([-1], 0), ([3, -1], 2), ([7, 1, -2], 5), ([2, -5, 1], 1)],
)
def test_awareness_score_is_clamped(deltas, score):
    awareness = Awareness(8)
    for delta in deltas:
        awareness.apply_delta(delta)
    assert awareness.score == score
    assert awareness.scale(0.5) == pytest.approx(0.5 * (score + 1))


# Dissemination queue -------------------------------------------------------------------


@pytest.mark.parametrize("n, limit", [(0, 4), (1, 4), (9, 4), (10, 8), (20, 8), (99, 8), (100, 12)])
def test_retransmit_limit(n, limit):
    assert retransmit_limit(4, n) == limit


def test_queue_sends_fewest_transmitted_first_and_newest_among_equals():
    q: BroadcastQueue[str] = BroadcastQueue()
    q.put("a", "a1", 10)
    q.put("b", "b1", 10)
    assert q.take(10, limit=5) == ["b1"]  # newest first
    assert q.take(10, limit=5) == ["a1"]  # then the one sent fewer times
    q.put("c", "c1", 10)
    assert q.take(30, limit=5) == ["c1", "b1", "a1"]


def test_queue_replaces_by_key_respects_budget_and_drops_at_limit():
    q: BroadcastQueue[str] = BroadcastQueue()
    q.put("node:x", "alive-1", 40)
    q.put("node:x", "suspect-1", 30)
    q.put("node:y", "alive-y", 50)
    assert len(q) == 2
    assert q.take(45, limit=2) == ["suspect-1"]  # alive-y does not fit
    assert q.take(100, limit=2) == ["alive-y", "suspect-1"]
    assert q.keys() == ["node:y"]  # suspect-1 reached its limit
    assert q.take(0, limit=2) == []


def test_queue_is_bounded():
    q: BroadcastQueue[int] = BroadcastQueue(max_queued=3)
    for i in range(3):
        q.put(str(i), i, 1)
    q.take(1, limit=10)  # "2" has now been sent once
    q.put("3", 3, 1)
    assert len(q) == 3 and "2" not in q.keys()


# Message checks ------------------------------------------------------------------------

ALIVE = {"k": "a", "n": "n1", "i": 3, "ad": ["10.0.0.2", 7000], "m": {}}

GOOD = [
    {"t": "ping", "f": "n1", "s": 1, "to": "n2"},
    {"t": "ping", "f": "n1", "s": 1, "to": "n2", "g": [ALIVE]},
    {"t": "ack", "f": "n1", "s": 7},
    {"t": "nack", "f": "n1", "s": 7},
    {"t": "preq", "f": "n1", "s": 2, "to": "n3", "ad": ["10.0.0.3", 1], "nk": True},
    {"t": "gossip", "f": "n1", "g": [ALIVE, {"k": "s", "n": "n2", "i": 0, "f": "n1"}, {"k": "l", "n": "n2", "i": 9}]},
    {"t": "gossip", "f": "n1", "g": [{"k": "u", "o": "n1", "key": "cat", "i": 1, "q": 2, "p": b"x"}]},
]

BAD = [
    None,
    [],
    b"ping",
    {},
    {"t": "pong", "f": "n1", "s": 1},
    {"t": "ping", "f": "n1", "s": 1},  # no target
    {"t": "ping", "f": "n1", "s": -1, "to": "n2"},
    {"t": "ping", "f": "n1", "s": 2**64, "to": "n2"},
    {"t": "ping", "f": "n1", "s": 1.0, "to": "n2"},
    {"t": "ping", "f": "n1", "s": True, "to": "n2"},
    {"t": "ping", "f": "", "s": 1, "to": "n2"},
    {"t": "ping", "f": "x" * 65, "s": 1, "to": "n2"},
    {"t": "ping", "f": "n1", "s": 1, "to": "n2", "extra": 1},
    {"t": "ack", "f": "n1", "s": 1, "g": "notalist"},
    {"t": "ack", "f": "n1", "s": 1, "g": [ALIVE] * (m.MAX_UPDATES + 1)},
    {"t": "nack", "f": "n1", "s": 1, "g": []},
    {"t": "preq", "f": "n1", "s": 2, "to": "n3", "ad": ["10.0.0.3", 0], "nk": True},
    {"t": "preq", "f": "n1", "s": 2, "to": "n3", "ad": ["10.0.0.3"], "nk": True},
    {"t": "preq", "f": "n1", "s": 2, "to": "n3", "ad": ["10.0.0.3", 1], "nk": 1},
    {"t": "gossip", "f": "n1"},
    {"t": "gossip", "f": "n1", "g": [{"k": "z"}]},
    {"t": "gossip", "f": "n1", "g": [{**ALIVE, "i": -3}]},
    {"t": "gossip", "f": "n1", "g": [{**ALIVE, "m": {"k": [1, 2]}}]},
    {"t": "gossip", "f": "n1", "g": [{**ALIVE, "m": {"k": "v" * 300}}]},
    {"t": "gossip", "f": "n1", "g": [{**ALIVE, "ad": ["h" * 65, 7000]}]},
    {"t": "gossip", "f": "n1", "g": [{"k": "u", "o": "n1", "key": "cat", "i": 1, "q": 2, "p": "str"}]},
    {"t": "gossip", "f": "n1", "g": [{"k": "u", "o": "n1", "key": "", "i": 1, "q": 2, "p": b""}]},
    {"t": "gossip", "f": "n1", "g": [{"k": "s", "n": "n2", "i": 0}]},
]


@pytest.mark.parametrize("message", GOOD)
def test_good_datagrams_parse_after_a_msgpack_round_trip(message):
    parsed = m.parse_datagram(msgpack.unpackb(msgpack.packb(message)))
    assert parsed.kind == message["t"] and parsed.sender == "n1"
    assert len(parsed.updates) == len(message.get("g", []))


@pytest.mark.parametrize("message", BAD)
def test_bad_datagrams_are_refused(message):
    with pytest.raises(CodecError):
        m.parse_datagram(message)


@pytest.mark.parametrize(
    "message",
    [
        {"t": "pp", "f": "n1", "j": True, "ms": [], "as": None},
        {"t": "pp", "f": "n1", "j": False, "ms": [{"n": "n2", "ad": ["h", 1], "i": 1, "st": "suspect", "m": {}}],
         "as": b"state"},
    ],
)
def test_push_pull_parses(message):
    pp = m.parse_push_pull(msgpack.unpackb(msgpack.packb(message)))
    assert pp.sender == "n1" and len(pp.members) == len(message["ms"])


@pytest.mark.parametrize(
    "message",
    [
        {"t": "pp", "f": "n1", "j": True, "ms": []},
        {"t": "pp", "f": "n1", "j": True, "ms": [{"n": "n2", "ad": ["h", 1], "i": 1, "st": "zombie", "m": {}}],
         "as": None},
        {"t": "pp", "f": "n1", "j": True, "ms": {}, "as": None},
        {"t": "pp", "f": "n1", "j": True, "ms": [], "as": "text"},
        {"t": "ping", "f": "n1", "j": True, "ms": [], "as": None},
    ],
)
def test_bad_push_pull_is_refused(message):
    with pytest.raises(CodecError):
        m.parse_push_pull(message)


def test_the_largest_member_update_fits_the_smallest_allowed_budget_beside_any_header():
    from peerstore.gossip.swim import ARRAY_HEADER_SLACK, MIN_MESSAGE_BYTES

    meta = {"k": "v" * (m.MAX_META_BYTES - 5)}
    assert m.encoded_size(meta) == m.MAX_META_BYTES
    big_id, big_int, big_addr = "x" * m.MAX_NODE_ID, m.MAX_INT, ("h" * m.MAX_HOST, 65535)
    update = m.Alive(big_id, big_int, big_addr, meta).to_wire()
    headers = [
        m.datagram("preq", big_id, s=big_int, to=big_id, ad=list(big_addr), nk=True),
        m.datagram("ping", big_id, s=big_int, to=big_id),
        m.datagram("ack", big_id, s=big_int),
        m.datagram("gossip", big_id),
    ]
    for header in headers:
        room = MIN_MESSAGE_BYTES - m.encoded_size({**header, "g": []}) - ARRAY_HEADER_SLACK
        assert m.encoded_size(update) <= room, header["t"]
