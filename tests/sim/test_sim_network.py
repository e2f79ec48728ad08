"""The simulated network: datagram faults, stream timing and order, breaks, partitions."""

from __future__ import annotations

import itertools
import random

import pytest

from sim.loop import EventLoop, Seeds
from sim.network import NIC_1GBE, NIC_100MBIT, Clog, LinkModel, Network

MiB = 1024 * 1024


def make(link: LinkModel | None = None, hosts=("a", "b", "c"), nic=NIC_1GBE):
    loop = EventLoop()
    net = Network(loop, random.Random(1), link=link or LinkModel(latency=0.001, jitter=0.0))
    for h in hosts:
        net.add_host(h, nic)
    return loop, net


def test_seeds_give_independent_reproducible_streams():
    seeds = Seeds(5)
    assert seeds.rng("node", "a").random() == Seeds(5).rng("node", "a").random()
    assert seeds.rng("node", "a").random() != seeds.rng("node", "b").random()
    assert seeds.rng("node", "a").random() != Seeds(6).rng("node", "a").random()


@pytest.mark.parametrize("loss, duplicate", [(0.0, 0.0), (0.1, 0.0), (0.3, 0.0), (0.0, 0.2)])
def test_datagram_loss_and_duplication_rates(loss, duplicate):
    loop, net = make(LinkModel(latency=0.001, jitter=0.0005, loss=loss, duplicate=duplicate))
    got = []
    for i in range(4000):
        net.send_datagram("a", "b", got.append, i)
    loop.run(max_time=10)
    delivered = len(got)
    expected = 4000 * (1 - loss) * (1 + duplicate)
    assert abs(delivered - expected) < 0.1 * 4000
    if duplicate:
        assert len(set(got)) < delivered


def test_jitter_and_reorder_shuffle_datagrams_but_streams_stay_in_order():
    loop, net = make(LinkModel(latency=0.001, jitter=0.002, reorder=0.3, reorder_delay=0.01))
    datagrams, stream = [], []
    for i in range(200):
        net.send_datagram("a", "b", datagrams.append, i)
        net.send_stream("a", "b", 100, stream.append, i)
    loop.run(max_time=10)
    assert sorted(datagrams) == list(range(200)) and datagrams != list(range(200))
    assert stream == list(range(200))


@pytest.mark.parametrize("nic, seconds", [(NIC_1GBE, 4 * MiB / 125e6), (NIC_100MBIT, 4 * MiB / 12.5e6)])
def test_a_piece_takes_its_size_over_the_nic(nic, seconds):
    loop, net = make(nic=nic)
    arrived = []
    net.send_stream("a", "b", 4 * MiB, lambda: arrived.append(loop.now))
    loop.run(max_time=10)
    setup = 4 * 0.001  # handshake and key proof on a new connection
    assert arrived[0] == pytest.approx(setup + seconds + 0.001, rel=1e-6)


def test_a_sender_nic_is_shared_by_its_streams():
    loop, net = make()
    arrived = {}
    net.send_stream("a", "b", 8 * MiB, lambda: arrived.setdefault("b", loop.now))
    net.send_stream("a", "c", 8 * MiB, lambda: arrived.setdefault("c", loop.now))
    loop.run(max_time=10)
    one = 8 * MiB / 125e6
    assert arrived["c"] - arrived["b"] == pytest.approx(one, rel=0.01)


def test_partition_blocks_both_ways_and_asymmetric_block_one_way():
    loop, net = make()
    got = []
    net.split(["a"], ["b", "c"])
    net.send_datagram("a", "b", got.append, "a>b")
    net.send_datagram("b", "c", got.append, "b>c")
    net.heal()
    net.block("a", "b")
    net.send_datagram("a", "b", got.append, "a>b blocked")
    net.send_datagram("b", "a", got.append, "b>a")
    loop.run(max_time=1)
    assert sorted(got) == ["b>a", "b>c"]


def test_a_reset_breaks_in_flight_messages_and_tells_both_ends():
    loop, net = make()
    broken, arrived = [], []
    net.on_break = lambda a, b, gen: broken.append((a, b, gen))
    gen = net.send_stream("a", "b", 64 * MiB, arrived.append, "big")
    assert gen > 0
    loop.run(max_time=0.1)
    assert net.break_connection("a", "b")
    loop.run(max_time=10)
    assert arrived == [] and broken == [("a", "b", gen)]
    later = net.send_stream("a", "b", 100, arrived.append, "after")
    loop.run(max_time=20)
    assert arrived == ["after"] and later != gen  # a new connection


def test_a_partition_makes_connections_silent_until_it_heals():
    loop, net = make()
    broken, arrived, failed = [], [], []
    net.on_break = lambda a, b, gen: broken.append(gen)
    net.send_stream("a", "b", 100, arrived.append, 1)
    loop.run(max_time=1)
    net.isolate("b")
    net.send_stream("a", "b", 100, arrived.append, 2, on_fail=failed.append)
    loop.run(max_time=30)
    assert arrived == [1] and failed == [] and broken == []  # silence: only timeouts tell
    net.heal()
    loop.run(max_time=31)
    assert len(broken) == 1  # the stale connection resets when packets flow again


@pytest.mark.parametrize("how, reason, after", [
    ("process_down", "connection refused", 0.002),
    ("power_off", "unreachable: connect timed out", 3.0),
])
def test_connecting_to_a_dead_process_or_host(how, reason, after):
    loop, net = make()
    getattr(net, how)("b")
    failed = []
    assert net.send_stream("a", "b", 100, lambda: None, on_fail=lambda why: failed.append((loop.now, why))) == 0
    loop.run(max_time=10)
    assert failed == [(pytest.approx(after), reason)]


def test_a_clog_delays_and_slows_one_direction():
    loop, net = make()
    net.clog("a", "b", Clog(delay=0.05, bandwidth_factor=0.1))
    times = {}
    net.send_stream("a", "b", MiB, lambda: times.setdefault("ab", loop.now))
    net.send_stream("b", "a", MiB, lambda: times.setdefault("ba", loop.now))
    loop.run(max_time=10)
    assert times["ab"] > times["ba"] + 0.05 + 0.5 * MiB / 12.5e6


# -- stream faults ------------------------------------------------------------------------


def test_stream_loss_delays_messages_by_retransmission_timeouts_and_keeps_their_order():
    loop, net = make(LinkModel(latency=0.001, jitter=0.0, stream_loss=0.01))
    arrived = []
    net.send_stream("a", "b", 100, lambda: None)  # open the connection first
    loop.run(max_time=10)
    start = loop.now
    for i in range(300):
        net.send_stream("a", "b", 64 * 1024, lambda i=i: arrived.append((i, loop.now - start)))
    loop.run(max_time=start + 120)
    assert [i for i, _ in arrived] == list(range(300))  # late, never lost, still in order
    assert net.stats["stream_retransmits"] > 0
    clean = 300 * 64 * 1024 / 125e6 + 0.001
    assert arrived[-1][1] >= clean + 0.2 - 1e-9  # at least one RTO somewhere in the line
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(arrived)]
    assert max(gaps) >= 0.2 - 1e-9  # head-of-line blocking behind the lost segment


def test_without_stream_loss_nothing_is_retransmitted():
    loop, net = make()
    for _ in range(50):
        net.send_stream("a", "b", 64 * 1024, lambda: None)
    loop.run(max_time=10)
    assert net.stats["stream_retransmits"] == 0 and net.stats["stream_syn_retransmits"] == 0


def test_lost_syns_delay_the_connect_or_make_it_time_out():
    outcomes = []
    for seed in range(40):
        loop = EventLoop()
        net = Network(loop, random.Random(seed), link=LinkModel(latency=0.001, jitter=0.0, stream_loss=0.5))
        net.add_host("a")
        net.add_host("b")
        arrived, failed = [], []
        net.send_stream("a", "b", 100, lambda got=arrived, clock=loop: got.append(clock.now),
                        on_fail=failed.append)
        loop.run(max_time=30)
        assert len(arrived) + len(failed) == 1
        outcomes.append(arrived[0] if arrived else failed[0])
    assert any(isinstance(o, float) and o >= 1.0 for o in outcomes)  # one SYN lost: 1 s late
    assert any(isinstance(o, str) and "connect timed out" in o for o in outcomes)


def _break_with_a_message_in_flight(**faults):
    loop, net = make()
    net.straggle = faults.get("straggle", 0.0)
    net.redeliver = faults.get("redeliver", 0.0)
    got, broken = [], []
    net.on_break = lambda a, b, gen: broken.append(loop.now)
    net.send_stream("a", "b", 100, got.append, "delivered")
    loop.run(max_time=1)
    net.send_stream("a", "b", MiB, got.append, "in flight")  # its last byte leaves a's NIC at ~8 ms
    loop.run(max_time=1.005)
    assert got == ["delivered"]
    net.break_connection("a", "b")
    net.send_stream("a", "b", 100, got.append, "new connection")
    loop.run(max_time=10)
    return got, broken


def test_without_stream_faults_a_break_loses_what_was_in_flight():
    got, _ = _break_with_a_message_in_flight()
    assert got == ["delivered", "new connection"]


def test_a_straggler_arrives_after_the_break_and_after_the_new_connection_s_message():
    loop, net = make()
    net.straggle = 1.0
    got, broken = [], []
    net.on_break = lambda a, b, gen: broken.append(loop.now)
    net.send_stream("a", "b", 100, got.append, "first")
    loop.run(max_time=1)
    net.clog("a", "b", Clog(delay=0.5))  # the old connection's bytes are slow to arrive
    net.send_stream("a", "b", 100, lambda: got.append(("straggler", loop.now)))
    loop.run(max_time=1.01)
    net.break_connection("a", "b")
    net.unclog()
    net.send_stream("a", "b", 100, got.append, "new connection")
    loop.run(max_time=10)
    assert got[0] == "first" and got[1] == "new connection"  # reordered across connections
    assert got[2][0] == "straggler" and got[2][1] > broken[0]  # after both ends heard of the break
    assert net.stats["stream_stragglers"] == 1


def test_no_straggler_reaches_a_process_that_died():
    loop, net = make()
    net.straggle = 1.0
    got = []
    net.clog("a", "b", Clog(delay=0.5))
    net.send_stream("a", "b", 100, got.append, "straggler")
    loop.run(max_time=0.1)
    net.process_down("b")  # the receiving socket is gone with its process
    net.process_up("b")
    loop.run(max_time=10)
    assert got == []


def test_a_redelivery_repeats_a_delivered_message_on_a_new_connection():
    got, _ = _break_with_a_message_in_flight(redeliver=1.0)
    assert sorted(got) == ["delivered", "delivered", "new connection"]


def test_no_redelivery_from_a_sender_that_died():
    loop, net = make()
    net.redeliver = 1.0
    got = []
    net.send_stream("a", "b", 100, got.append, "once")
    loop.run(max_time=1)
    net.process_down("a")
    net.process_up("a")
    loop.run(max_time=10)
    assert got == ["once"]
