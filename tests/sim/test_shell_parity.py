"""The simulator must not be kinder than the daemon (issue 10, section 3): each rule the
two shells share is one code path, and the simulator goes through it exactly as the
daemon does. Gossip codec, re-seeding, core settings from the config, warm starts."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest

from peerstore.shell.config import GossipSettings, TransferSettings, config_from_mapping
from peerstore.core.settings import CoreSettings
from peerstore.errors import CodecError
from peerstore.gossip import Member, MemberState, NeedSeeds, SendDatagram, SendStream, Swim
from peerstore.gossip import messages as gm
from peerstore.gossip.swim import MAX_SEEDS_PER_CALL, RESEED_PROBES
from peerstore.wire import MAX_DATAGRAM_BODY
from sim.cluster import Cluster
from tests.support.paths import REPO

SETTINGS = GossipSettings()
ME = ("10.0.0.1", 7000)


def at(i: int) -> tuple[str, int]:
    return (f"10.0.9.{i}", 7000)


# -- one gossip codec ---------------------------------------------------------------------


def test_the_daemon_encodes_and_decodes_gossip_with_the_shared_codec():
    from peerstore.shell.daemon import gossip as daemon_gossip

    for name in ("encode", "decode", "encode_datagram", "decode_datagram"):
        assert getattr(daemon_gossip, name) is getattr(gm, name)
    assert gm.MAX_DATAGRAM_BODY == MAX_DATAGRAM_BODY  # what seal_datagram accepts


@pytest.mark.parametrize("data, why", [
    (msgpack.packb(list(range(9000))), "8192"),
    (msgpack.packb({1: 2}), "gossip message is not valid msgpack"),
    (msgpack.packb({"t": "gossip"}) + b"\x00", "gossip message is not valid msgpack"),
    (b"\xc1", "gossip message is not valid msgpack"),
    (b"\x00" * (gm.MAX_STREAM_BYTES + 1), "over the"),
])
def test_gossip_decoding_is_strict_and_bounded(data, why):
    with pytest.raises(CodecError, match=why):
        gm.decode(data)


def test_a_datagram_must_fit_and_name_its_authenticated_sender():
    ok = {"t": "gossip", "f": "aa" * 8, "g": []}
    assert gm.decode_datagram(gm.encode_datagram(ok), "aa" * 8) == ok
    with pytest.raises(CodecError, match="authenticated tag"):
        gm.decode_datagram(gm.encode_datagram(ok), "bb" * 8)
    with pytest.raises(CodecError, match="over the"):
        gm.encode_datagram({**ok, "g": ["x" * MAX_DATAGRAM_BODY]})


def _recording(cluster: Cluster) -> list:
    sent: list = []
    real = cluster.net.send_datagram

    def send(*args, **kwargs):
        sent.append(args)
        return real(*args, **kwargs)

    cluster.net.send_datagram = send  # type: ignore[method-assign]
    return sent


def test_the_simulator_drops_an_oversized_datagram_at_the_sender_like_the_daemon():
    cluster = Cluster(2, seed=1, cores=False)
    a, b = (cluster.nodes[i] for i in cluster.ids)
    sent = _recording(cluster)
    room = MAX_DATAGRAM_BODY - len(gm.encode({"t": "gossip", "f": a.node_id, "g": [""]}))
    fits = {"t": "gossip", "f": a.node_id, "g": ["x" * (room - 2)]}  # str header: 3 bytes, not 1
    assert len(gm.encode(fits)) <= MAX_DATAGRAM_BODY
    cluster._send_datagram(a, SendDatagram(b.addr, {**fits, "g": ["x" * room]}, b.node_id))
    assert sent == [] and cluster.stats["gossip_dropped_send"] == 1
    cluster._send_datagram(a, SendDatagram(b.addr, fits, b.node_id))
    assert len(sent) == 1 and isinstance(sent[0][-1], bytes)  # the daemon's bytes travel


def test_the_simulator_drops_a_datagram_that_names_another_sender():
    cluster = Cluster(3, seed=2, cores=False)
    a, b, c = (cluster.nodes[i] for i in cluster.ids)
    before = b.swim.stats["messages_in"]
    cluster._send_datagram(a, SendDatagram(b.addr, {"t": "gossip", "f": c.node_id, "g": []}, b.node_id))
    cluster.run_for(0.01)  # less than any gossip interval: nothing else arrives meanwhile
    assert cluster.stats["gossip_dropped_CodecError"] == 1
    assert b.swim.stats["messages_in"] == before


# -- one re-seeding decision --------------------------------------------------------------


def drive(swim: Swim, until: float, start: float = 0.0) -> list[tuple[float, object]]:
    """Tick ``swim`` to ``until``: members ack every ping; every stream fails at once."""
    out: list[tuple[float, object]] = []
    now = start
    for _ in range(10_000):
        now = max(now, swim.next_deadline())
        if now > until:
            return out
        pending = list(swim.tick(now))
        while pending:
            effect = pending.pop(0)
            out.append((now, effect))
            if isinstance(effect, SendStream):
                pending += swim.on_stream_reply(now, effect.request_id, None)
            elif isinstance(effect, SendDatagram) and effect.message["t"] == "ping":
                target = effect.message["to"]
                ack = {"t": "ack", "f": target, "s": effect.message["s"]}
                pending += swim.on_datagram(now, effect.addr, ack)
    raise AssertionError(f"deadline stuck at {now}")


def joins(effects, address) -> list[float]:
    return [t for t, e in effects if isinstance(e, SendStream) and e.addr == address and e.message["j"]]


def test_an_isolated_swim_recontacts_its_seeds_and_known_members_briskly():
    swim = Swim(node_id="me", addr=ME, incarnation=1, settings=SETTINGS, rng=random.Random(1), now=0.0)
    first = swim.start(0.0, [at(1)])
    [stream] = [e for e in first if isinstance(e, SendStream)]
    swim.on_stream_reply(0.1, stream.request_id, None)
    [stream] = [e for e in swim.add_seeds(0.2, [at(2)]) if isinstance(e, SendStream)]  # mDNS found it
    swim.on_stream_reply(0.2, stream.request_id, None)
    swim.on_datagram(0.3, at(3), {"t": "gossip", "f": "old", "g": [  # a member we now believe dead
        {"k": "a", "n": "old", "i": 1, "ad": list(at(3)), "m": {}}, {"k": "d", "n": "old", "i": 1, "f": "x"}]})
    assert swim.seeds() == [at(1), at(2)] and swim.member("old").state is MemberState.DEAD
    effects = drive(swim, 20.3, start=0.3)
    period = RESEED_PROBES * SETTINGS.probe_interval
    for address in (at(1), at(2), at(3)):
        times = joins(effects, address)
        assert len(times) >= 20.0 / period - 1, (address, times)
        assert all(b - a <= period + 0.01 for a, b in zip(times, times[1:])), (address, times)
    asks = [t for t, e in effects if isinstance(e, NeedSeeds)]
    assert 1 <= len(asks) <= 3  # the shell is still asked, with backoff


def test_a_swim_with_company_still_contacts_seeds_that_are_not_members_every_push_pull_period():
    swim = Swim(node_id="me", addr=ME, incarnation=1, settings=SETTINGS, rng=random.Random(2), now=0.0)
    swim.start(0.0, [])
    swim.on_datagram(0.0, at(1), {"t": "gossip", "f": "p1", "g": [
        {"k": "a", "n": "p1", "i": 1, "ad": list(at(1)), "m": {}}]})
    for effect in swim.add_seeds(0.0, [at(1), at(2)]):  # p1's address, and a seed on another island
        swim.on_stream_reply(0.0, effect.request_id, None)
    effects = drive(swim, 95.0)
    island = joins(effects, at(2))
    assert len(island) >= 3 and all(b - a >= SETTINGS.pushpull_interval - 1e-6 for a, b in zip(island, island[1:]))
    assert joins(effects, at(1)) == []  # a live member is not re-seeded


def test_reseeding_contacts_a_bounded_number_of_addresses_per_round():
    swim = Swim(node_id="me", addr=ME, incarnation=1, settings=SETTINGS, rng=random.Random(3), now=0.0)
    started = swim.start(0.0, [at(i) for i in range(1, 101)])
    assert len([e for e in started if isinstance(e, SendStream)]) == MAX_SEEDS_PER_CALL
    assert len(swim.seeds()) == 100
    effects = drive(swim, 2.5)
    per_round = [t for t, e in effects if isinstance(e, SendStream)]
    assert 0 < len(per_round) <= MAX_SEEDS_PER_CALL


def test_an_isolated_simulated_node_rejoins_within_seconds_through_the_shared_decision():
    # Static seeds only, as in a daemon without multicast; push-pulls (which also reach
    # dead members) rare enough not to be what rejoins it.
    gossip = dataclasses.replace(SETTINGS, pushpull_interval=300.0)
    cluster = Cluster(5, seed=3, cores=False, mdns=False, gossip=gossip)
    loner = cluster.ids[2]
    others = [i for i in cluster.ids if i != loner]
    cluster.isolate(loner)
    assert cluster.run_until(
        lambda: all(cluster.member_state(loner, o) is MemberState.DEAD for o in others), max_time=60)
    cluster.run_for(10.0)
    assert cluster.stats["need_seeds"] >= 1, f"seed={cluster.seed}"
    healed_at = cluster.loop.now
    cluster.heal()
    assert cluster.run_until(cluster.converged, max_time=30, step=0.1), f"seed={cluster.seed}"
    # A reseed round every RESEED_PROBES probe intervals, not a push-pull period.
    assert cluster.loop.now - healed_at <= 2 * RESEED_PROBES * SETTINGS.probe_interval + 1.0, f"seed={cluster.seed}"


def test_two_simulated_islands_that_forgot_each_other_merge_through_their_seeds():
    gossip = dataclasses.replace(SETTINGS, dead_reclaim_time=20.0)
    cluster = Cluster(6, seed=4, cores=False, mdns=False, gossip=gossip)
    left, right = cluster.ids[:3], cluster.ids[3:]
    cluster.partition(left, right)

    def forgotten() -> bool:
        return all(cluster.nodes[x].swim.member(y) is None for x in left for y in right) and all(
            cluster.nodes[x].swim.member(y) is None for x in right for y in left)

    assert cluster.run_until(forgotten, max_time=200), f"seed={cluster.seed}"
    healed_at = cluster.loop.now
    cluster.heal()
    # Nobody is dead any more to push-pull with: only the seeds' island check joins them.
    assert cluster.run_until(cluster.converged, max_time=100, step=0.1), f"seed={cluster.seed}"
    assert cluster.loop.now - healed_at <= gossip.pushpull_interval + 5.0, f"seed={cluster.seed}"


# -- one source of the core's settings ----------------------------------------------------


def test_a_default_config_gives_the_daemon_the_simulators_core_settings():
    from peerstore.shell.daemon.node import core_settings

    config = config_from_mapping({"data_dir": "/d", "cluster_key": "ab" * 32}, "x.yaml")
    assert core_settings(config) == CoreSettings(policy=config.policy)
    for name in CoreSettings.TRANSFER_FIELDS:
        assert getattr(TransferSettings(), name) == getattr(CoreSettings(), name), name


def test_every_transfer_setting_reaches_the_core():
    transfer = TransferSettings(max_inflight_bytes_per_peer=1 << 22, memory_budget=1 << 24, request_timeout=7.0,
                                retries=2, backoff_base=0.5, backoff_max=9.0)
    settings = CoreSettings.from_config(CoreSettings().policy, transfer)
    for name in CoreSettings.TRANSFER_FIELDS:
        assert getattr(settings, name) == getattr(transfer, name), name
    assert settings.commit_timeout == 7.0


def test_config_example_names_no_default_that_differs_from_the_core():
    example = REPO / "config.example.yaml"
    text = example.read_text()
    assert "retries: 5" in text and f"request_timeout: {CoreSettings().request_timeout:g}" in text


# -- a public warm start ------------------------------------------------------------------


def test_load_members_adopts_a_quiet_alive_table_and_probes_it():
    swim = Swim(node_id="me", addr=ME, incarnation=1, settings=SETTINGS, rng=random.Random(4), now=0.0)
    with pytest.raises(ValueError, match="after start"):
        swim.load_members(0.0, [])
    swim.start(0.0, [])
    table = [Member(f"p{i}", at(i), 5, MemberState.ALIVE, 0.0) for i in range(1, 6)]
    table.append(Member("me", ME, 99, MemberState.ALIVE, 0.0))  # ourselves: skipped
    swim.load_members(10.0, table)
    assert swim.alive_ids() == ["me", "p1", "p2", "p3", "p4", "p5"]
    assert swim.incarnation == 1 and swim.broadcasts_pending == 0
    assert all(swim.member(f"p{i}").last_contact == 10.0 for i in range(1, 6))
    swim.load_members(10.0, [Member("p1", at(7), 4, MemberState.ALIVE, 0.0)])  # older: kept out
    assert swim.member("p1").addr == at(1)
    probed = {e.message["to"] for _, e in drive(swim, 16.0, start=10.0)
              if isinstance(e, SendDatagram) and e.message["t"] == "ping"}
    assert probed == {f"p{i}" for i in range(1, 6)}
    with pytest.raises(ValueError, match="load_members"):
        swim.load_members(10.0, [Member("", at(8), 1, MemberState.ALIVE, 0.0)])
