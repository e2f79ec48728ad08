"""Whole-cluster membership behaviour: the real Swim machines on the simulator, without
cores (``Cluster(cores=False)``), in virtual time.

The simulator carries every datagram as the daemon's bytes (encoded with the wire's size
limit; one that does not fit is dropped and counted), so each scenario also checks that
none was dropped. Measured times are printed (``pytest -s``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import pytest

from peerstore.core.membership import boot_incarnation
from peerstore.gossip import AppMessage, MemberChanged, MemberState, SendDatagram, Swim
from sim.cluster import Cluster

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
JOIN_GAP = 0.05  # seconds between two joins while a cluster grows


@dataclass(frozen=True)
class Change:
    """One MemberChanged seen by ``observer`` at ``time``."""

    time: float
    observer: str
    node_id: str
    new: MemberState
    incarnation: int


class Membership:
    """Every MemberChanged of a simulated cluster, as its nodes saw them."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.changes: list[Change] = []
        cluster.member_observers.append(self._seen)

    def _seen(self, now: float, observer: str, change: MemberChanged) -> None:
        self.changes.append(Change(now, observer, change.node_id, change.new, change.member.incarnation))

    def first(self, node_id: str, new: MemberState, after: float = 0.0) -> Change | None:
        return next((c for c in self.changes if c.node_id == node_id and c.new is new and c.time >= after), None)

    def trace(self) -> list[tuple[float, str, str, str, int]]:
        return [(round(c.time, 9), c.observer, c.node_id, c.new.value, c.incarnation) for c in self.changes]


class Tap:
    """What the simulator does not report: every app message a Swim machine delivers, and
    the largest datagram any of them asked to send (msgpack-encoded, as on the wire).
    Wraps the effect-returning entry points of the machines running when attached."""

    ENTRY_POINTS = ("add_seeds", "leave", "set_addr", "on_datagram", "on_stream_reply", "tick")

    def __init__(self) -> None:
        self.inbox: dict[str, list[AppMessage]] = {}
        self.largest_datagram = 0
        self.datagrams = 0
        self.budget = 1 << 30  # the smallest max_message_bytes of the machines that sent

    def attach(self, cluster: Cluster) -> None:
        for node in cluster.nodes.values():
            if node.swim is not None and not getattr(node.swim, "_tapped", False):
                self._wrap(node.node_id, node.swim)

    def _wrap(self, node_id: str, swim: Swim) -> None:
        inbox = self.inbox.setdefault(node_id, [])

        def seen(effects: list) -> list:
            for effect in effects:
                if isinstance(effect, AppMessage):
                    inbox.append(effect)
                elif isinstance(effect, SendDatagram):
                    self.datagrams += 1
                    self.largest_datagram = max(self.largest_datagram, len(msgpack.packb(effect.message)))
                    self.budget = min(self.budget, swim.max_message_bytes)
            return effects

        for name in self.ENTRY_POINTS:
            original = getattr(swim, name)
            setattr(swim, name, lambda *a, _original=original, **k: seen(_original(*a, **k)))
        original_request = swim.on_stream_request

        def on_stream_request(*args, **kwargs):
            reply, effects = original_request(*args, **kwargs)
            return reply, seen(effects)

        swim.on_stream_request = on_stream_request  # type: ignore[method-assign]
        swim._tapped = True  # type: ignore[attr-defined]


def grow(n: int, seed: int, *, started: int | None = None, tap: Tap | None = None,
         **options) -> tuple[Cluster, Membership]:
    """A cluster of ``n`` Swim machines, the first ``started`` (default all) grown one join
    at a time, ``JOIN_GAP`` apart, each through running nodes; mDNS off unless ``mdns=True``."""
    options.setdefault("mdns", False)
    cluster = Cluster(n, seed, cores=False, form=False, booted=1, **options)
    seen = Membership(cluster)
    if tap is not None:
        tap.attach(cluster)
    for node_id in cluster.ids[1:started]:
        cluster.join(node_id)
        if tap is not None:
            tap.attach(cluster)
        cluster.run_for(JOIN_GAP)
    return cluster, seen


def run_until(cluster: Cluster, predicate, limit: float, step: float = 0.1) -> float | None:
    """Advance until ``predicate()`` (checked every ``step``) or virtual time ``limit``: the
    time it became true, or None."""
    if cluster.run_until(predicate, max_time=max(0.0, limit - cluster.loop.now), step=step):
        return cluster.loop.now
    return None


def everyone_sees(cluster: Cluster, node_id: str, state: MemberState, observers=None) -> bool:
    observers = [o for o in (observers or cluster.running_ids()) if o != node_id]
    return all(cluster.member_state(o, node_id) is state for o in observers)


def all_alive(cluster: Cluster) -> bool:
    """Every running node sees every other running node alive (not merely not dead)."""
    up = cluster.running_ids()
    return all(cluster.member_state(o, n) is A for o in up for n in up if o != n)


def nothing_dropped(cluster: Cluster) -> bool:
    """No datagram was too big for the wire, and none failed to decode on arrival."""
    return not [k for k, v in cluster.stats.items() if k.startswith("gossip_dropped") and v]


@pytest.mark.parametrize("size, within", [(5, 5.0), (20, 10.0)])
def test_cluster_converges_after_join(size, within):
    tap = Tap()
    cluster, seen = grow(size, seed=size, tap=tap)
    first_join = JOIN_GAP
    at = run_until(cluster, lambda: all_alive(cluster), limit=cluster.loop.now + within)
    assert at is not None, "members did not all see each other alive"
    cluster.run_for(30)
    assert all_alive(cluster)
    assert not [c for c in seen.changes if c.new is not A], "a healthy cluster raised a suspicion"
    assert tap.datagrams > 0 and tap.largest_datagram <= tap.budget
    assert nothing_dropped(cluster)
    print(f"\n{size} nodes converged {at - first_join:.2f}s after the first join")


def _crash_and_measure(seed: int, size: int) -> tuple[float, float]:
    cluster, seen = grow(size, seed)
    cluster.run_for(20.0 - cluster.loop.now)
    victim = cluster.ids[seed % size]
    crashed_at = cluster.loop.now
    cluster.crash(victim, power_off=True)  # silent: peers find out by missed acks
    suspected = run_until(cluster, lambda: seen.first(victim, S, crashed_at) is not None, crashed_at + 30, step=0.05)
    dead = run_until(cluster, lambda: everyone_sees(cluster, victim, D), crashed_at + 60, step=0.05)
    assert suspected is not None and dead is not None
    others = [i for i in cluster.ids if i != victim]
    assert all(cluster.member_state(o, p) is A for o in others for p in others if o != p), "collateral damage"
    # helpers nacked in time, so nobody blamed itself for the dead node
    assert all(cluster.nodes[o].swim.local_health == 0 for o in others)
    assert nothing_dropped(cluster)
    return suspected - crashed_at, dead - crashed_at


def test_crashed_node_is_suspected_quickly_and_dead_everywhere_soon():
    results = [_crash_and_measure(seed, 20) for seed in range(6)]
    suspect_times = [s for s, _ in results]
    dead_times = [d for _, d in results]
    print(f"\n20 nodes, crash -> first suspicion: {['%.2f' % t for t in suspect_times]} s")
    print(f"20 nodes, crash -> dead everywhere: {['%.2f' % t for t in dead_times]} s")
    assert max(suspect_times) <= 3.0
    assert sum(suspect_times) / len(suspect_times) <= 2.2
    assert max(dead_times) <= 15.0


@pytest.mark.parametrize("new_address", [False, True])
def test_restarted_node_is_alive_everywhere_within_seconds(new_address):
    cluster, _ = grow(10, seed=7)
    cluster.run_for(10.0 - cluster.loop.now)
    victim = cluster.ids[3]
    cluster.crash(victim, power_off=True)
    assert run_until(cluster, lambda: everyone_sees(cluster, victim, D), 60.0) is not None
    restarted_at = cluster.loop.now
    cluster.restart(victim, new_address=new_address)
    back = run_until(cluster, lambda: all_alive(cluster), restarted_at + 5.0, step=0.05)
    assert back is not None
    addr = cluster.nodes[victim].addr
    assert all(cluster.nodes[o].swim.member(victim).addr == addr for o in cluster.ids if o != victim)
    assert nothing_dropped(cluster)
    print(f"\nrestart (new address: {new_address}) -> alive everywhere after {back - restarted_at:.2f}s")


def test_quick_restart_before_anyone_noticed_is_also_accepted():
    cluster, _ = grow(8, seed=8)
    cluster.run_for(10.0 - cluster.loop.now)
    victim = cluster.ids[5]
    cluster.crash(victim, power_off=True)
    cluster.run_for(0.3)
    cluster.restart(victim, new_address=True)
    assert run_until(cluster, lambda: all_alive(cluster), 14.0, step=0.05) is not None
    cluster.run_for(40.0 - cluster.loop.now)
    assert all_alive(cluster) and cluster.nodes[victim].swim.incarnation == boot_incarnation(2)
    assert cluster.violations == []


def test_restart_with_a_stale_incarnation_recovers_by_refuting():
    # A shell that forgot to raise the incarnation: the cluster's memory of the node
    # (dead at a higher incarnation) makes it refute past that, so it still comes back.
    cluster, _ = grow(8, seed=10)
    cluster.run_for(10.0 - cluster.loop.now)
    victim = cluster.ids[6]
    cluster.crash(victim, power_off=True)
    assert run_until(cluster, lambda: everyone_sees(cluster, victim, D), 60.0) is not None
    restarted_at = cluster.loop.now
    cluster.incarnation = lambda boot_epoch: 3  # forgets: every boot starts at 3
    cluster.restart(victim, new_address=True)
    assert any("incarnation did not survive" in v for v in cluster.violations), cluster.violations
    back = run_until(cluster, lambda: all_alive(cluster), restarted_at + 5.0, step=0.05)
    assert back is not None and cluster.nodes[victim].swim.incarnation > boot_incarnation(1)
    addr = cluster.nodes[victim].addr
    assert all(cluster.nodes[o].swim.member(victim).addr == addr for o in cluster.ids if o != victim)


def test_graceful_leave_shows_left_everywhere():
    cluster, _ = grow(10, seed=9)
    cluster.run_for(10.0 - cluster.loop.now)
    leaver = cluster.ids[4]
    cluster.leave(leaver)  # the daemon keeps running a second so the news spreads, then stops
    others = [i for i in cluster.ids if i != leaver]
    at = run_until(cluster, lambda: everyone_sees(cluster, leaver, L, others), 13.0, step=0.05)
    assert at is not None
    cluster.run_for(60.0 - cluster.loop.now)
    assert not cluster.nodes[leaver].running
    assert everyone_sees(cluster, leaver, L, others), "a left node must not turn dead or alive again"


def test_no_healthy_node_is_declared_dead_under_one_percent_loss():
    # 20 nodes x 600 virtual seconds in CI (a few seconds of wall time); the slow
    # variant below runs three virtual hours.
    cluster, seen = grow(20, seed=11)
    cluster.set_loss(0.01)
    cluster.run_for(600.0 - cluster.loop.now)
    assert cluster.net.stats["datagrams_lost"] > 0
    assert not [c for c in seen.changes if c.new is D]
    assert all_alive(cluster)


@pytest.mark.slow
def test_no_healthy_node_is_declared_dead_under_one_percent_loss_for_hours():
    cluster, seen = grow(20, seed=12)
    cluster.set_loss(0.01)
    cluster.run_for(3 * 3600.0 - cluster.loop.now)
    assert not [c for c in seen.changes if c.new is D]
    assert all_alive(cluster)


def test_suspicions_under_heavy_loss_are_refuted_not_fatal():
    cluster, seen = grow(12, seed=13)
    cluster.set_loss(0.10)
    cluster.run_for(300.0 - cluster.loop.now)
    refuted = sum(n.swim.stats["refutations_sent"] for n in cluster.nodes.values())
    dead = [c for c in seen.changes if c.new is D]
    print(f"\n10% loss, 12 nodes, 300 s: {refuted} refutations, {len(dead)} deaths")
    assert refuted > 0, "10% loss raised no suspicion to refute: the loss did not apply"
    assert len(dead) <= 2
    cluster.set_loss(0.0)
    cluster.run_for(400.0 - cluster.loop.now)
    assert all_alive(cluster)


def test_partition_heals_through_push_pull():
    cluster, _ = grow(10, seed=14)
    cluster.run_for(10.0 - cluster.loop.now)
    left_side, right_side = cluster.ids[:5], cluster.ids[5:]
    cluster.partition(left_side, right_side)
    cluster.run_for(80.0 - cluster.loop.now)
    assert all(everyone_sees(cluster, n, D, left_side) for n in right_side)
    assert all(everyone_sees(cluster, n, D, right_side) for n in left_side)
    cluster.heal()
    healed = run_until(cluster, lambda: all_alive(cluster), 80.0 + 2 * cluster.gossip.pushpull_interval, step=0.5)
    assert healed is not None
    print(f"\n5|5 partition for 70 s healed {healed - 80.0:.1f}s after the network did")


@pytest.mark.parametrize("mdns", [True, False])
def test_isolated_node_is_found_through_mdns(mdns):
    """A node that starts with no seed to join through is alone; Swim says so (NeedSeeds)
    and keeps re-contacting what it knows, but only mDNS (its announcement heard on the
    LAN, as the daemon's zeroconf hears it) brings it in. Without mDNS it stays alone: the
    control, which shows it is mDNS that does it."""
    cluster, _ = grow(6, seed=15, started=5, mdns=mdns)
    cluster.run_for(5.0 - cluster.loop.now)
    cluster.crash(cluster.ids[0], power_off=True)
    cluster.seeds_per_node = 0  # the newcomer's seed list is empty
    need_seeds = cluster.stats["need_seeds"]
    loner = cluster.ids[5]
    cluster.join(loner)
    joined = run_until(cluster, lambda: all_alive(cluster), cluster.loop.now + 30.0)
    if mdns:
        assert joined is not None, "mDNS did not bring the isolated node in"
    else:
        assert joined is None, "the isolated node joined without mDNS: the control proves nothing"
        assert cluster.stats["need_seeds"] > need_seeds, "an isolated Swim did not ask for seeds"


def test_app_broadcast_reaches_every_node_once():
    cluster, _ = grow(12, seed=16)
    cluster.set_loss(0.01)
    cluster.run_for(5.0 - cluster.loop.now)
    tap = Tap()
    tap.attach(cluster)
    sender = cluster.ids[2]
    cluster.nodes[sender].swim.broadcast_app("catalog", b"v7")
    cluster.run_for(10.0)
    for node_id in cluster.ids:
        got = [e for e in tap.inbox[node_id] if e.key == "catalog"]
        assert len(got) == (0 if node_id == sender else 1), node_id
        assert all(e.payload == b"v7" and e.from_node == sender for e in got)


def _scenario(seed: int) -> list:
    cluster, seen = grow(8, seed)
    cluster.set_loss(0.02)
    cluster.run_for(20.0 - cluster.loop.now)
    cluster.crash(cluster.ids[2], power_off=True)
    cluster.run_for(20.0)
    cluster.restart(cluster.ids[2], new_address=True)
    cluster.run_for(20.0)
    return seen.trace()


def test_same_seed_gives_the_same_event_trace():
    first, second, other = _scenario(21), _scenario(21), _scenario(22)
    assert first == second
    assert first != other
    assert len(first) > 60
