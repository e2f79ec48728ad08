"""A key holder cannot silence a member for good by claiming it at the largest incarnation:
claims are capped to a plausible rise, so the real member can always refute above them."""

from __future__ import annotations

import random

import msgpack

from peerstore.gossip import MemberState, Swim
from peerstore.gossip import messages as m
from peerstore.gossip.swim import FIRST_SIGHT_CEILING, INCARNATION_STEP, INCARNATION_WINDOW
from peerstore.shell.config import GossipSettings

SETTINGS = GossipSettings()
WINDOW = INCARNATION_WINDOW * SETTINGS.probe_interval
MAX = m.MAX_INT
A, S, D = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


def addr(name: str) -> tuple[str, int]:
    return (f"10.0.1.{ord(name[-1]) - ord('a') + 1}", 7000)


def make(name: str = "me", incarnation: int = 10) -> Swim:
    swim = Swim(node_id=name, addr=("10.0.0.1", 7000), incarnation=incarnation, settings=SETTINGS,
                rng=random.Random(1), now=0.0)
    swim.start(0.0, [])
    return swim


def feed(swim: Swim, now: float, sender: str, *updates) -> list:
    message = {"t": "gossip", "f": sender, "g": [u.to_wire() for u in updates]}
    return swim.on_datagram(now, addr(sender), msgpack.unpackb(msgpack.packb(message)))


def incarnation(swim: Swim, node: str) -> int:
    member = swim.member(node)
    assert member is not None
    return member.incarnation


def test_a_forged_death_at_the_maximum_is_capped_and_the_member_refutes_it():
    swim = make()
    feed(swim, 1.0, "peera", m.Alive("peera", 100, addr("peera"), {}))
    feed(swim, 2.0, "peerb", m.Dead("peera", MAX, "peerb"))  # the forgery
    assert swim.member("peera").state is D
    assert incarnation(swim, "peera") == 100 + INCARNATION_STEP
    assert swim.stats["incarnations_capped"] == 1
    # The real member hears of it and refutes one above what it was accused at (capped
    # the same way on its side): that refutation wins here.
    feed(swim, 3.0, "peera", m.Alive("peera", 100 + INCARNATION_STEP + 1, addr("peera"), {}))
    assert swim.member("peera").state is A


def test_forging_again_and_again_in_one_window_climbs_one_step_at_most():
    """One step per window, and past it one per claim (the room a refutation needs)."""
    swim = make()
    feed(swim, 1.0, "peera", m.Alive("peera", 100, addr("peera"), {}))
    for i in range(1, 50):
        feed(swim, 1.0 + i * 0.01, "peerb", m.Alive("peera", 100 + i * INCARNATION_STEP, addr("peera"), {}))
    top = 100 + INCARNATION_STEP
    assert incarnation(swim, "peera") == top + 48
    feed(swim, 2.0 + WINDOW, "peerb", m.Alive("peera", MAX, addr("peera"), {}))  # the next window
    assert incarnation(swim, "peera") == top + 48 + INCARNATION_STEP


def test_a_member_first_heard_of_at_the_maximum_starts_at_the_ceiling():
    swim = make()
    feed(swim, 1.0, "peerb", m.Alive("peera", MAX, addr("peera"), {}))
    assert incarnation(swim, "peera") == FIRST_SIGHT_CEILING
    assert MAX - FIRST_SIGHT_CEILING > 1000 * INCARNATION_STEP  # decades of forging above it


def test_an_accusation_of_ourselves_at_the_maximum_is_refuted_just_above_the_cap():
    swim = make(incarnation=10)
    feed(swim, 1.0, "peerb", m.Suspect("me", MAX, "peerb"))
    assert swim.incarnation == 10 + INCARNATION_STEP + 1
    assert swim.incarnation < MAX


def test_a_member_that_restarted_many_times_unseen_is_alive_at_once_and_catches_up():
    swim = make()
    feed(swim, 1.0, "peera", m.Alive("peera", 1 << 32, addr("peera"), {}))
    real = (1 << 32) * 200  # 199 restarts we never saw: more than one step
    feed(swim, 2.0, "peera", m.Alive("peera", real, addr("peera"), {}))
    assert swim.member("peera").state is A
    assert incarnation(swim, "peera") == (1 << 32) + INCARNATION_STEP
    now = 2.0
    for _ in range(5):
        now += WINDOW
        feed(swim, now, "peera", m.Alive("peera", real, addr("peera"), {}))
    assert incarnation(swim, "peera") == real


def test_in_a_cluster_a_member_declared_dead_at_the_maximum_comes_back():
    """An insider tells every node that x died at the largest incarnation. x hears of it
    and refutes; everyone sees it alive again within seconds (without the cap x could not
    refute above the maximum and would stay dead for good)."""
    from sim.cluster import Cluster

    cluster = Cluster(5, seed=3, cores=False)
    cluster.run_for(5.0)
    x, liar = cluster.ids[0], cluster.ids[1]
    forged = {"t": "gossip", "f": liar, "g": [m.Dead(x, MAX, liar).to_wire()]}
    for node_id in cluster.ids[1:]:
        node = cluster.nodes[node_id]
        cluster._on_datagram(node, cluster.nodes[liar].addr, liar, msgpack.unpackb(msgpack.packb(forged)))
    assert any(cluster.member_state(o, x) is D for o in cluster.ids[2:])
    cluster.run_for(10.0)
    assert all(cluster.member_state(o, x) is A for o in cluster.ids[1:])
    assert cluster.nodes[x].swim.incarnation < MAX // 2
