"""The simulated network: datagram faults, stream timing and order, breaks, partitions."""

from __future__ import annotations

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
