"""One Swim machine against scripted peers: each protocol rule as a table."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

import msgpack
import pytest

from peerstore.shell.config import GossipSettings
from peerstore.gossip import (
    AppMessage,
    AppState,
    MemberChanged,
    MemberRemoved,
    MemberState,
    NeedSeeds,
    SendDatagram,
    SendStream,
    Swim,
)
from peerstore.gossip import messages as m

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
SETTINGS = GossipSettings()
ME = ("10.0.0.1", 7000)
MY_INC = 10
PEERS = [f"p{i}" for i in range(30)]


def addr(name: str) -> tuple[str, int]:
    return (f"10.0.1.{PEERS.index(name) + 1}", 7000)


def name_at(address) -> str:
    return PEERS[int(address[0].rsplit(".", 1)[1]) - 1]


def make(peers: int = 4, *, seed: int = 1, settings: GossipSettings = SETTINGS, **kw) -> Swim:
    swim = Swim(node_id="me", addr=ME, incarnation=MY_INC, settings=settings, rng=random.Random(seed), now=0.0, **kw)
    swim.start(0.0, [])
    if peers:
        feed(swim, 0.0, PEERS[0], [m.Alive(p, 1, addr(p), {}) for p in PEERS[:peers]])
    return swim


def feed(swim: Swim, now: float, sender: str, updates, kind: str = "gossip", **fields) -> list:
    message = {"t": kind, "f": sender, **fields, "g": [u.to_wire() for u in updates]}
    return swim.on_datagram(now, addr(sender), msgpack.unpackb(msgpack.packb(message)))


Responder = Callable[[Swim, float, SendDatagram], list]


def ack_all(swim: Swim, now: float, send: SendDatagram) -> list:
    """A peer that answers every ping to it (and nothing else)."""
    msg = send.message
    if msg["t"] == "ping":
        target = msg["to"]
        return swim.on_datagram(now + 0.001, addr(target), {"t": "ack", "f": target, "s": msg["s"]})
    return []


def silent(swim: Swim, now: float, send: SendDatagram) -> list:
    return []


MAX_TICKS = 100_000


def run(swim: Swim, until: float, respond: Responder = silent, start: float = 0.0) -> list[tuple[float, object]]:
    """Tick the machine up to ``until``, feeding each datagram to ``respond``."""
    out: list[tuple[float, object]] = []
    now = start
    pending: list = []
    for _ in range(MAX_TICKS):  # a deadline that never advances fails instead of hanging
        now = max(now, swim.next_deadline())
        if now > until:
            return out
        pending = swim.tick(now)
        while pending:
            effect = pending.pop(0)
            out.append((now, effect))
            if isinstance(effect, SendDatagram):
                pending += respond(swim, now, effect)
    raise AssertionError(f"swim ticked {MAX_TICKS} times before reaching t={until}: its deadline is stuck at {now}")


def sends(effects, kind: str | None = None) -> list[SendDatagram]:
    return [e for _, e in effects if isinstance(e, SendDatagram) and (kind is None or e.message["t"] == kind)]


def updates_in(message: dict) -> list:
    return [m.parse_update(u) for u in message.get("g", [])]


def raise_health(swim: Swim, score: int) -> None:
    """Raise local health by making the node refute suspicions about itself."""
    for _ in range(score):
        feed(swim, 0.0, PEERS[0], [m.Suspect("me", swim.incarnation, PEERS[0])])


# Probing -------------------------------------------------------------------------------


def test_probes_every_member_once_per_shuffled_round():
    swim = make(peers=6)
    rounds = []
    pings = sends(run(swim, 18.5, ack_all), "ping")
    targets = [p.message["to"] for p in pings]
    for r in range(3):
        rounds.append(targets[6 * r : 6 * r + 6])
        assert sorted(rounds[-1]) == PEERS[:6]
    assert len({tuple(r) for r in rounds}) > 1, "each round should be reshuffled"
    assert swim.stats["probes_sent"] == len(pings)


def test_new_member_joins_the_current_round_at_a_random_position():
    waits = []
    for seed in range(6):
        swim = make(peers=6, seed=seed)
        effects = run(swim, 1.0, ack_all)
        first_ping_at = next(t for t, e in effects if isinstance(e, SendDatagram) and e.message["t"] == "ping")
        feed(swim, first_ping_at, PEERS[0], [m.Alive(PEERS[6], 1, addr(PEERS[6]), {})])
        targets = [p.message["to"] for p in sends(run(swim, first_ping_at + 13.5, ack_all, start=first_ping_at), "ping")]
        waits.append(targets.index(PEERS[6]) + 1)
    # Five probes remain in the round: a member only added at the next reshuffle would
    # wait at least six.
    assert min(waits) <= 5 and max(waits) <= 12


@pytest.mark.parametrize("score", [0, 1, 3, 7])
def test_ack_timeout_scales_with_local_health(score):
    swim = make(peers=4)
    raise_health(swim, score)
    assert swim.local_health == score
    effects = run(swim, 1.0)
    first_ping_at = next(t for t, e in effects if isinstance(e, SendDatagram) and e.message["t"] == "ping")
    later = run(swim, first_ping_at + 10, start=first_ping_at)
    first_preq_at = next(t for t, e in later if isinstance(e, SendDatagram) and e.message["t"] == "preq")
    assert first_preq_at - first_ping_at == pytest.approx(SETTINGS.probe_timeout * (score + 1))


@pytest.mark.parametrize(
    "peers, helpers, stream_ping",
    [(1, 0, True), (2, 1, True), (3, 2, False), (4, 3, False), (8, 3, False)],
)
def test_indirect_probe_uses_k_helpers_and_tcp_when_few(peers, helpers, stream_ping):
    swim = make(peers=peers)
    effects = run(swim, 1.0)
    ping = sends(effects, "ping")[0]
    target = ping.message["to"]
    effects = run(swim, 1.0 + SETTINGS.probe_timeout + 0.01, start=1.0)
    preqs = sends(effects, "preq")
    assert len(preqs) == helpers
    assert {p.message["to"] for p in preqs} <= {target}
    assert target not in {name_at(p.addr) for p in preqs}
    assert len({p.addr for p in preqs}) == helpers
    streams = [e for _, e in effects if isinstance(e, SendStream)]
    assert len(streams) == (1 if stream_ping else 0)
    if stream_ping:
        assert streams[0].addr == addr(target) and streams[0].message["t"] == "ping"


@pytest.mark.parametrize(
    "peers, outcome, suspected, health_delta",
    [
        (4, "direct_ack", False, -1),
        (4, "helper_ack", False, -1),
        (2, "stream_ack", False, -1),
        (4, "3_nacks", True, 0),  # helpers could not reach it either: it is the target's fault
        (4, "1_nack", True, 2),  # two helpers silent: we may be the slow one
        (4, "0_nacks", True, 3),
        (1, "nothing", True, 1),  # no helpers to ask: a failed probe counts against us
    ],
)
def test_probe_outcome_decides_suspicion_and_local_health(peers, outcome, suspected, health_delta):
    swim = make(peers=peers)
    raise_health(swim, 2)
    effects = run(swim, 1.0)
    t0, ping = next((t, e) for t, e in effects if isinstance(e, SendDatagram) and e.message["t"] == "ping")
    target, seq = ping.message["to"], ping.message["s"]
    if outcome == "direct_ack":
        swim.on_datagram(t0 + 0.1, addr(target), {"t": "ack", "f": target, "s": seq})
    after_timeout = run(swim, t0 + SETTINGS.probe_timeout * 3 + 0.01, start=t0)
    helpers = [name_at(p.addr) for p in sends(after_timeout, "preq")]
    if outcome == "helper_ack":
        swim.on_datagram(t0 + 1.6, addr(helpers[0]), {"t": "ack", "f": helpers[0], "s": seq})
    if outcome == "stream_ack":
        request = next(e for _, e in after_timeout if isinstance(e, SendStream) and e.message["t"] == "ping")
        swim.on_stream_reply(t0 + 1.6, request.request_id, {"t": "ack", "f": target, "s": seq})
    if outcome.endswith("nacks") or outcome.endswith("nack"):
        for helper in helpers[: int(outcome[0])]:
            swim.on_datagram(t0 + 1.7, addr(helper), {"t": "nack", "f": helper, "s": seq})
    run(swim, t0 + 3 * SETTINGS.probe_interval + 0.01, start=t0 + 1.8)  # health 2: 3x interval
    assert (swim.member(target).state is S) is suspected
    assert swim.local_health == 2 + health_delta
    assert swim.stats["probes_failed"] == (1 if suspected else 0)


def test_ping_to_a_suspect_carries_the_suspicion_buddy_rule():
    swim = make(peers=3)
    feed(swim, 0.0, "p1", [m.Suspect("p2", 1, "p1")])
    pings = [p for p in sends(run(swim, 4.0, ack_all), "ping") if p.message["to"] == "p2"]
    assert pings
    first = updates_in(pings[0].message)[0]
    assert first == m.Suspect("p2", 1, "me")


# Suspicion and refutation --------------------------------------------------------------


@pytest.mark.parametrize("confirmers, confirmations", [([], 0), (["p1"], 0), (["p2"], 1), (["p2", "p3"], 2),
                                                       (["p2", "p3", "p4"], 2)])
def test_suspicion_timeout_shrinks_with_independent_confirmations(confirmers, confirmations):
    swim = make(peers=20)
    n = 21
    low = SETTINGS.suspicion_mult * math.log10(n) * SETTINGS.probe_interval
    high = SETTINGS.suspicion_max_timeout_mult * low
    k = SETTINGS.suspicion_mult - 2
    expected = high - (high - low) * math.log(confirmations + 1) / math.log(k + 1)
    expected = max(low, math.floor(expected * 1000) / 1000)
    feed(swim, 0.0, "p1", [m.Suspect("p9", 1, "p1")])
    for who in confirmers:
        feed(swim, 0.0, who, [m.Suspect("p9", 1, who)])
    effects = run(swim, 60.0, ack_all)
    died = [t for t, e in effects if isinstance(e, MemberChanged) and e.node_id == "p9" and e.new is D]
    assert died == [pytest.approx(expected)]
    assert swim.stats["suspicion_timeouts"] == 1


@pytest.mark.parametrize(
    "update, refuted, new_incarnation",
    [
        (m.Suspect("me", MY_INC, "p1"), True, MY_INC + 1),
        (m.Suspect("me", MY_INC - 1, "p1"), False, MY_INC),
        (m.Dead("me", MY_INC + 5, "p1"), True, MY_INC + 6),
        (m.Dead("me", MY_INC - 1, "p1"), False, MY_INC),
        (m.Alive("me", MY_INC, ME, {}), False, MY_INC),  # our own announcement echoed back
        (m.Alive("me", MY_INC, ("10.9.9.9", 1), {}), True, MY_INC + 1),
        (m.Alive("me", MY_INC + 3, ME, {}), True, MY_INC + 4),
        (m.Left("me", MY_INC), True, MY_INC + 1),
    ],
)
def test_a_node_refutes_claims_about_itself(update, refuted, new_incarnation):
    swim = make(peers=3)
    feed(swim, 0.0, "p1", [update])
    assert swim.incarnation == new_incarnation
    assert swim.local_health == (1 if refuted else 0)
    assert swim.stats["refutations_sent"] == (1 if refuted else 0)
    assert swim.member("me").state is A
    # the refutation rides on the very next message we send
    reply = feed(swim, 0.1, "p1", [], kind="ping", s=5, to="me")
    carried = [u for u in updates_in(reply[0].message) if isinstance(u, m.Alive) and u.node == "me"]
    assert max(u.incarnation for u in carried) == new_incarnation  # (start() announced MY_INC)


SEQUENCES = [
    # updates about p2 after it was announced alive@1 -> (state, incarnation)
    ([m.Suspect("p2", 1, "p1")], S, 1),
    ([m.Suspect("p2", 2, "p1")], S, 2),
    ([m.Suspect("p2", 1, "p1"), m.Alive("p2", 1, addr("p2"), {})], S, 1),
    ([m.Suspect("p2", 1, "p1"), m.Alive("p2", 2, addr("p2"), {})], A, 2),
    ([m.Alive("p2", 3, addr("p2"), {}), m.Suspect("p2", 2, "p1")], A, 3),
    ([m.Dead("p2", 1, "p1")], D, 1),
    ([m.Dead("p2", 1, "p1"), m.Alive("p2", 1, addr("p2"), {})], D, 1),
    ([m.Dead("p2", 1, "p1"), m.Alive("p2", 2, addr("p2"), {})], A, 2),
    ([m.Dead("p2", 1, "p1"), m.Suspect("p2", 1, "p3")], D, 1),
    ([m.Alive("p2", 3, addr("p2"), {}), m.Dead("p2", 2, "p1")], A, 3),
    ([m.Left("p2", 2)], L, 2),
    ([m.Dead("p2", 1, "p1"), m.Left("p2", 2)], L, 2),
    ([m.Left("p2", 2), m.Dead("p2", 2, "p1")], L, 2),
    ([m.Left("p2", 2), m.Alive("p2", 2, addr("p2"), {})], L, 2),
    ([m.Left("p2", 2), m.Alive("p2", 3, addr("p2"), {})], A, 3),
    ([m.Suspect("p7", 1, "p1"), m.Dead("p7", 1, "p1")], None, None),  # unknown stays unknown
]


@pytest.mark.parametrize("updates, state, incarnation", SEQUENCES)
def test_incarnation_ordering_through_the_machine(updates, state, incarnation):
    swim = make(peers=4)
    for update in updates:
        feed(swim, 0.0, "p1", [update])
    held = swim.member(updates[0].node)
    got = (held.state, held.incarnation) if held else (None, None)
    assert got == (state, incarnation)


@pytest.mark.parametrize(
    "prior, old_state",
    [(None, A), (m.Suspect("p2", 5, "p1"), S), (m.Dead("p2", 5, "p1"), D), (m.Left("p2", 5), L)],
)
def test_restarted_node_with_higher_incarnation_is_alive_at_its_new_address(prior, old_state):
    swim = make(peers=3)
    feed(swim, 0.0, "p1", [m.Alive("p2", 5, addr("p2"), {})])
    if prior:
        feed(swim, 0.0, "p1", [prior])
    effects = feed(swim, 1.0, "p1", [m.Alive("p2", 5, ("10.7.7.7", 7100), {})])
    assert swim.member("p2").addr == addr("p2"), "same incarnation must not move a member"
    effects = feed(swim, 1.0, "p1", [m.Alive("p2", 6, ("10.7.7.7", 7100), {"rack": "b"})])
    held = swim.member("p2")
    assert (held.state, held.addr, held.incarnation, held.meta) == (A, ("10.7.7.7", 7100), 6, {"rack": "b"})
    changes = [e for e in effects if isinstance(e, MemberChanged)]
    assert [(c.old, c.new, c.member.addr) for c in changes] == [(old_state, A, ("10.7.7.7", 7100))]


# Helping others probe ------------------------------------------------------------------


@pytest.mark.parametrize("target_answers, want_nack, reply", [(True, True, "ack"), (True, False, "ack"),
                                                               (False, True, "nack"), (False, False, None)])
def test_ping_req_helper_forwards_the_ack_or_nacks(target_answers, want_nack, reply):
    swim = make(peers=3)
    effects = feed(swim, 5.0, "p1", [], kind="preq", s=77, to="p2", ad=list(addr("p2")), nk=want_nack)
    (ping,) = sends([(0, e) for e in effects])
    assert ping.addr == addr("p2") and ping.message["t"] == "ping" and ping.message["to"] == "p2"
    out = []
    if target_answers:
        out += feed(swim, 5.1, "p2", [], kind="ack", s=ping.message["s"])
    out += [e for _, e in run(swim, 5.0 + SETTINGS.probe_timeout + 0.01, start=5.0)]
    to_requester = [e for e in out if isinstance(e, SendDatagram) and e.addr == addr("p1")
                    and e.message["t"] in ("ack", "nack")]
    assert [(e.message["t"], e.message["s"]) for e in to_requester] == ([(reply, 77)] if reply else [])


def test_helper_nacks_early_enough_for_the_requester_to_count_it():
    swim = make(peers=3)
    feed(swim, 5.0, "p1", [], kind="preq", s=77, to="p2", ad=list(addr("p2")), nk=True)
    nacks = [t for t, e in run(swim, 7.0, ack_all, start=5.0) if isinstance(e, SendDatagram) and e.message["t"] == "nack"]
    # the requester asked at probe_timeout into its probe and stops counting at probe_interval
    assert nacks and nacks[0] - 5.0 < SETTINGS.probe_interval - SETTINGS.probe_timeout


def test_ping_meant_for_another_node_gets_no_ack():
    swim = make(peers=2)
    assert feed(swim, 0.0, "p1", [], kind="ping", s=1, to="someone-else") == []
    assert swim.stats["dropped_messages"] == 1
    (ack,) = feed(swim, 0.0, "p1", [], kind="ping", s=2, to="me")
    assert ack.addr == addr("p1") and ack.message["t"] == "ack" and ack.message["s"] == 2


def test_stream_ping_is_answered_for_us_only():
    swim = make(peers=2)
    reply, _ = swim.on_stream_request(0.0, addr("p1"), {"t": "ping", "f": "p1", "s": 3, "to": "me"})
    assert reply == {"t": "ack", "f": "me", "s": 3}
    reply, _ = swim.on_stream_request(0.0, addr("p1"), {"t": "ping", "f": "p1", "s": 3, "to": "p0"})
    assert reply["t"] == "err"
    reply, _ = swim.on_stream_request(0.0, addr("p1"), {"t": "what"})
    assert reply["t"] == "err" and swim.stats["dropped_messages"] == 1


@pytest.mark.parametrize("junk", [None, 5, {"t": "ping"}, {"t": "gossip", "f": "p1", "g": [{"k": "a"}]},
                                  {"t": "ack", "f": "p1", "s": 1, "zz": 0}, {"t": "ping", "f": "me", "s": 1, "to": "me"}])
def test_junk_datagrams_are_dropped_and_counted(junk):
    swim = make(peers=2)
    before = swim.members()
    assert swim.on_datagram(0.0, addr("p1"), junk) == []
    assert swim.stats["dropped_messages"] == 1
    assert swim.members() == before


# Dissemination -------------------------------------------------------------------------


@pytest.mark.parametrize("peers, log_rounds", [(3, 1), (9, 2), (14, 2)])  # ceil(log10(N + 1)), N = peers + 1
def test_each_update_is_retransmitted_a_bounded_number_of_times(peers, log_rounds):
    limit = SETTINGS.retransmit_mult * log_rounds
    swim = make(peers=peers)
    run(swim, 20.0, ack_all)  # let the join news drain
    swim.broadcast_app("catalog", b"v1")
    effects = run(swim, 60.0, ack_all, start=20.0)
    carrying = [s for s in sends(effects) if any(isinstance(u, m.AppUpdate) for u in updates_in(s.message))]
    assert len(carrying) == limit
    assert swim.broadcasts_pending == 0


def test_gossip_reaches_the_recently_dead_but_not_the_long_dead():
    swim = make(peers=4)
    feed(swim, 0.0, "p1", [m.Dead("p3", 1, "p1")])
    run(swim, 5.0, ack_all)

    def gossip_targets(start: float) -> set[str]:
        targets: set[str] = set()
        for i in range(40):
            swim.broadcast_app("k", bytes([i]))
            t = start + 0.2 * i
            targets |= {name_at(s.addr) for s in sends(run(swim, t, ack_all, start=t - 0.2), "gossip")}
        return targets

    assert "p3" in gossip_targets(5.2)
    assert "p3" not in gossip_targets(40.0)


def test_datagrams_are_filled_up_to_the_size_budget_and_never_beyond():
    budget = 800
    swim = make(peers=0, max_message_bytes=budget)
    big = {"role": "x" * 150}
    for i in range(40):
        feed(swim, 0.0, "p1", [m.Alive(f"node-{i:03d}-" + "y" * 40, 1, (f"10.2.0.{i}", 7000), big)])
    effects = run(swim, 0.25)
    sizes = [len(msgpack.packb(s.message)) for s in sends(effects)]
    assert sizes and max(sizes) <= budget
    one_update = len(msgpack.packb(m.Alive("node-000-" + "y" * 40, 1, ("10.2.0.10", 7000), big).to_wire()))
    assert min(sizes) > budget - one_update, "each gossip datagram should be packed close to the budget"


def test_app_broadcasts_replace_by_key_arrive_once_and_are_regossiped():
    swim = make(peers=3)
    swim.broadcast_app("catalog", b"old")
    swim.broadcast_app("catalog", b"new")
    swim.broadcast_app("other", b"x")
    update = m.AppUpdate("p1", "catalog", 4, 9, b"payload")
    first = feed(swim, 0.0, "p1", [update])
    again = feed(swim, 0.0, "p2", [update])
    older = feed(swim, 0.0, "p2", [m.AppUpdate("p1", "catalog", 4, 8, b"stale")])
    assert [e for e in first if isinstance(e, AppMessage)] == [AppMessage("p1", "catalog", b"payload")]
    assert not [e for e in again + older if isinstance(e, AppMessage)]
    sent = [u for s in sends(run(swim, 10.0, ack_all)) for u in updates_in(s.message) if isinstance(u, m.AppUpdate)]
    assert {(u.origin, u.payload) for u in sent} == {("me", b"new"), ("me", b"x"), ("p1", b"payload")}
    with pytest.raises(ValueError, match="does not fit"):
        swim.broadcast_app("big", b"x" * 1200)


# Push-pull -----------------------------------------------------------------------------


def test_push_pull_runs_each_interval_with_a_live_member_and_a_dead_one():
    swim = make(peers=4)
    feed(swim, 0.0, "p1", [m.Dead("p3", 1, "p1")])
    effects = run(swim, 2 * SETTINGS.pushpull_interval, ack_all)
    streams = [(t, e) for t, e in effects if isinstance(e, SendStream) and e.message["t"] == "pp"]
    rounds = sorted({t for t, _ in streams})
    assert len(rounds) == 2 and rounds[1] - rounds[0] == pytest.approx(SETTINGS.pushpull_interval)
    for when in rounds:
        targets = [name_at(e.addr) for t, e in streams if t == when]
        assert len(targets) == 2 and targets[1] == "p3" and targets[0] in ("p0", "p1", "p2")


def test_push_pull_merge():
    swim = make(peers=4)
    remote = [
        {"n": "p1", "ad": list(addr("p1")), "i": 1, "st": "alive", "m": {}},
        {"n": "p2", "ad": list(addr("p2")), "i": 1, "st": "dead", "m": {}},  # -> only suspect here
        {"n": "p3", "ad": ["10.5.5.5", 7001], "i": 4, "st": "alive", "m": {}},  # restarted, moved
        {"n": "p9", "ad": list(addr("p9")), "i": 1, "st": "alive", "m": {}},  # new to us
        {"n": "p8", "ad": list(addr("p8")), "i": 1, "st": "dead", "m": {}},  # unknown and dead: ignored
        {"n": "me", "ad": list(ME), "i": MY_INC, "st": "suspect", "m": {}},  # must refute
    ]
    reply, effects = swim.on_stream_request(
        0.5, addr("p1"), {"t": "pp", "f": "p1", "j": False, "ms": remote, "as": b"catalog-state"}
    )
    got = {mem.node_id: (mem.state, mem.incarnation, mem.addr) for mem in swim.members()}
    assert got["p2"][0] is S and got["p3"] == (A, 4, ("10.5.5.5", 7001)) and got["p9"][0] is A
    assert "p8" not in got
    assert swim.incarnation == MY_INC + 1
    assert AppState("p1", b"catalog-state") in effects
    # the reply already carries our refutation and the merged view
    mine = {e["n"]: e for e in reply["ms"]}
    assert mine["me"]["i"] == MY_INC + 1 and mine["me"]["st"] == "alive" and "p9" in mine


def test_join_pushes_state_to_each_seed_and_merges_the_reply():
    swim = Swim(node_id="me", addr=ME, incarnation=1, settings=SETTINGS, rng=random.Random(3), now=0.0)
    effects = swim.start(0.0, [addr("p1"), addr("p2"), addr("p1"), ME])
    streams = [e for e in effects if isinstance(e, SendStream)]
    assert [s.addr for s in streams] == [addr("p1"), addr("p2")]
    assert streams[0].message["j"] is True and streams[0].message["ms"][0]["n"] == "me"
    reply = {"t": "pp", "f": "p1", "j": False, "as": None,
             "ms": [{"n": "p1", "ad": list(addr("p1")), "i": 3, "st": "alive", "m": {}}]}
    effects = swim.on_stream_reply(0.1, streams[0].request_id, reply)
    assert [(e.node_id, e.new) for e in effects if isinstance(e, MemberChanged)] == [("p1", A)]
    assert swim.on_stream_reply(0.2, streams[1].request_id, None) == []
    assert swim.alive_ids() == ["me", "p1"]


# Lifecycle -----------------------------------------------------------------------------


def test_dead_members_are_reaped_and_left_ones_forgotten_later():
    settings = dataclasses.replace(SETTINGS, dead_reclaim_time=100.0, tombstone_lifetime=300.0)
    swim = make(peers=4, settings=settings)
    feed(swim, 0.0, "p1", [m.Dead("p2", 1, "p1"), m.Left("p3", 2)])
    effects = run(swim, 99.0, ack_all)
    assert not [e for _, e in effects if isinstance(e, MemberRemoved)]
    effects = run(swim, 101.5, ack_all, start=99.0)
    assert [e.node_id for _, e in effects if isinstance(e, MemberRemoved)] == ["p2"]
    effects = run(swim, 301.5, ack_all, start=101.5)
    assert [e.node_id for _, e in effects if isinstance(e, MemberRemoved)] == ["p3"]
    assert [mem.node_id for mem in swim.members()] == ["me", "p0", "p1"]


def test_isolated_node_asks_for_seeds_with_backoff_until_it_has_company():
    swim = make(peers=0)
    asks = [t for t, e in run(swim, 100.0) if isinstance(e, NeedSeeds)]
    assert asks[:4] == pytest.approx([5.0, 15.0, 35.0, 65.0], abs=1.01)
    assert all(b - a <= SETTINGS.pushpull_interval + 1e-9 for a, b in zip(asks, asks[1:]))
    feed(swim, 100.0, "p1", [m.Alive("p1", 1, addr("p1"), {})])
    assert not [e for _, e in run(swim, 200.0, ack_all, start=100.0) if isinstance(e, NeedSeeds)]


def test_add_seeds_skips_known_members_and_bad_addresses():
    swim = make(peers=2)
    effects = swim.add_seeds(1.0, [addr("p1"), ("10.3.3.3", 7000), ("bad", 0), ME])
    assert [e.addr for e in effects if isinstance(e, SendStream)] == [("10.3.3.3", 7000)]


def test_leave_announces_left_with_a_raised_incarnation_and_stops_probing():
    swim = make(peers=5)
    run(swim, 3.0, ack_all)
    before = swim.incarnation
    effects = swim.leave(3.0)
    assert swim.incarnation == before + 1 and swim.left and swim.alive_ids() == sorted(PEERS[:5])
    change = next(e for e in effects if isinstance(e, MemberChanged))
    assert (change.node_id, change.old, change.new) == ("me", A, L)
    told = {name_at(e.addr) for e in effects if isinstance(e, SendDatagram)
            and m.Left("me", before + 1) in updates_in(e.message)}
    assert told == set(PEERS[:5])
    assert not sends(run(swim, 20.0, ack_all, start=3.0), "ping")
    feed(swim, 21.0, "p1", [m.Suspect("me", before + 1, "p1")])
    assert swim.incarnation == before + 1, "a node that left does not refute"


def test_set_addr_reannounces_under_a_new_incarnation():
    swim = make(peers=3)
    effects = swim.set_addr(2.0, ("10.0.0.77", 7000))
    assert swim.incarnation == MY_INC + 1 and swim.addr == ("10.0.0.77", 7000)
    announced = [u for s in sends([(0, e) for e in effects]) for u in updates_in(s.message)
                 if isinstance(u, m.Alive) and u.node == "me"]
    assert announced and announced[0].addr == ("10.0.0.77", 7000) and announced[0].incarnation == MY_INC + 1


@pytest.mark.parametrize(
    "kwargs, problem",
    [({"node_id": ""}, "node id"), ({"addr": ("h", 0)}, "port"), ({"incarnation": -1}, "incarnation"),
     ({"meta": {"x": "y" * 400}}, "meta"), ({"max_message_bytes": 100}, "max_message_bytes")],
)
def test_constructor_rejects_bad_arguments(kwargs, problem):
    args = dict(node_id="me", addr=ME, incarnation=1, settings=SETTINGS, rng=random.Random(1), now=0.0)
    with pytest.raises(ValueError, match=problem):
        Swim(**{**args, **kwargs})
