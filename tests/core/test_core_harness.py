"""The sans-IO node core, driven by the deterministic simulator: targeted outcomes of
put and get. The scenario sweep, determinism and the injected-bug tests that prove the
simulator can fail are in tests/sim/test_sim_scenarios.py."""

from __future__ import annotations

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from sim.cluster import Cluster
from sim.content import FileModel

SHARD = 64 * 1024


def put_and_get(cluster: Cluster, files, coordinator=0, via=3, name="run1/step-500"):
    [put] = cluster.wait(cluster.put(cluster.ids[coordinator], name, files, is_dir=len(files) > 1))
    assert put.ok, put.final
    [get] = cluster.wait(cluster.get(cluster.ids[via], name))
    return put, get


def test_put_then_get_on_five_nodes_returns_every_stripe_intact():
    cluster = Cluster(5, seed=11)
    files = [
        FileModel.generate("model.safetensors", SHARD * 9 + 123, SHARD, seed=1),
        FileModel.generate("trainer_state.json", 777, SHARD, seed=2),
        FileModel.generate("empty.txt", 0, SHARD, seed=3),
    ]
    put, get = put_and_get(cluster, files)
    assert get.ok, get.final
    manifest = get.manifest
    assert [f.path for f in manifest.files] == [f.path for f in files]
    assert [f.blake3 for f in manifest.files] == [f.blake3 for f in files]
    stripes = sum(len(f.stripes) for f in manifest.files)
    assert stripes == 3 + 1  # 10 shards of the model in stripes of 4, one for the json
    assert sorted(get.delivered) == list(range(stripes)) and all(get.delivered.values())
    assert put.final.tolerance == 2  # best achievable with k=4, p=2 on 5 nodes
    assert get.final.degraded_stripes == 0 and get.final.fallbacks == 0
    assert cluster.violations == []


def test_every_data_shard_has_two_replicas_on_distinct_nodes():
    cluster = Cluster(5, seed=12)
    put, _ = put_and_get(cluster, [FileModel.generate("m", SHARD * 17, SHARD, seed=4)])
    manifest = cluster.manifest_of(put)
    for (_, _, stripe), hint in zip(manifest.iter_stripes(), manifest.placement):
        for i, pid in enumerate(stripe.data_ids):
            a, b = hint[2 * i], hint[2 * i + 1]
            assert a != b
            assert {a, b} <= set(cluster.holders(pid))
        for j, pid in enumerate(stripe.parity_ids):
            assert hint[2 * stripe.k + j] in cluster.holders(pid)


def test_get_with_both_holders_of_a_shard_dead_rebuilds_from_parity():
    cluster = Cluster(5, seed=13)
    put = cluster.wait(cluster.put(cluster.ids[0], "m", [FileModel.generate("m", SHARD * 8, SHARD, seed=5)]))[0]
    hint = cluster.manifest_of(put).placement[0]
    for node in (hint[0], hint[1]):
        cluster.crash(node)
    via = next(i for i in cluster.ids if i not in hint[:2])
    [get] = cluster.wait(cluster.get(via, "m"))
    assert get.ok, get.final
    assert get.final.degraded_stripes >= 1
    assert all(get.delivered.values())


def test_get_with_a_frozen_primary_costs_a_bounded_wait():
    settings = CoreSettings(policy=Policy(shard_size=SHARD), request_timeout=2.0)
    cluster = Cluster(5, seed=14, settings=settings)
    put = cluster.wait(cluster.put(cluster.ids[0], "m", [FileModel.generate("m", SHARD * 8, SHARD, seed=6)]))[0]
    primary = cluster.manifest_of(put).placement[0][0]
    cluster.freeze(primary)
    via = next(i for i in cluster.ids if i != primary)
    start = cluster.loop.now
    [get] = cluster.wait(cluster.get(via, "m"), max_time=60)
    assert get.ok, get.final
    assert get.final.fallbacks >= 1
    assert 2.0 <= cluster.loop.now - start < 3 * 2.0  # one timeout, not one per piece


def test_a_corrupt_primary_copy_is_detected_and_fetched_elsewhere():
    cluster = Cluster(5, seed=15)
    put = cluster.wait(cluster.put(cluster.ids[0], "m", [FileModel.generate("m", SHARD * 4, SHARD, seed=7)]))[0]
    manifest = cluster.manifest_of(put)
    pid, primary = manifest.files[0].stripes[0].data_ids[0], manifest.placement[0][0]
    cluster.corrupt(primary, pid)
    via = next(i for i in cluster.ids if pid not in cluster.nodes[i].disk.durable)
    [get] = cluster.wait(cluster.get(via, "m"))
    assert get.ok, get.final
    assert get.final.fallbacks >= 1 and all(get.delivered.values())


def test_put_fails_clearly_below_two_live_nodes_or_min_tolerance():
    cluster = Cluster(1, seed=16)
    [put] = cluster.wait(cluster.put(cluster.ids[0], "m", [FileModel.generate("m", SHARD, SHARD)]))
    assert isinstance(put.final, ev.Failed) and "two replicas" in put.final.reason

    strict = CoreSettings(policy=Policy(shard_size=SHARD, min_tolerance=3))
    cluster = Cluster(5, seed=16, settings=strict)
    [put] = cluster.wait(cluster.put(cluster.ids[0], "m", [FileModel.generate("m", SHARD, SHARD)]))
    assert isinstance(put.final, ev.Failed) and "min_tolerance" in put.final.reason
    assert all(n.core.catalog.latest("m") is None for n in cluster.nodes.values())


def test_versions_latest_ls_rm_and_status():
    cluster = Cluster(4, seed=17)
    for seed in (1, 2):
        [put] = cluster.wait(cluster.put(cluster.ids[seed], "run/a", [FileModel.generate("m", SHARD * 2, SHARD, seed=seed)]))
        assert put.ok and put.final.version == str(seed)
    [ls] = cluster.wait(cluster.command(cluster.ids[3], lambda c: ev.ListCommand(c)))
    assert [e.version.counter for e in ls.final.entries] == [1, 2]
    [get] = cluster.wait(cluster.get(cluster.ids[0], "run/a@1"))
    assert get.ok and get.final.version == "1"

    [status] = cluster.wait(cluster.command(cluster.ids[0], lambda c: ev.StatusCommand(c)))
    assert [row.tolerance for row in status.final.checkpoints] == [2, 2]  # the table: 2 at 4 nodes
    cluster.crash(cluster.ids[3])
    cluster.loop.after(0, cluster.announce)
    [status] = cluster.wait(cluster.command(cluster.ids[0], lambda c: ev.StatusCommand(c)))
    assert all(row.tolerance == 1 for row in status.final.checkpoints)  # its holders are gone

    [rm] = cluster.wait(cluster.command(cluster.ids[1], lambda c: ev.RemoveCommand(c, "run/a@1")))
    assert len(rm.final.versions) == 1
    [ls] = cluster.wait(cluster.command(cluster.ids[0], lambda c: ev.ListCommand(c)))
    assert [e.version.counter for e in ls.final.entries] == [2]
    [get] = cluster.wait(cluster.get(cluster.ids[2], "run/a@1"))
    assert isinstance(get.final, ev.Failed)


def test_an_operation_waiting_for_budget_resumes_when_the_holder_ends():
    """The budget holder is cancelled; the only operation left must be woken by that,
    not by some later timer (there is none)."""
    stripe = SHARD * (4 + 2)
    settings = CoreSettings(policy=Policy(shard_size=SHARD), memory_budget=stripe)
    cluster = Cluster(5, seed=22, settings=settings)
    holder = cluster.put(cluster.ids[0], "run/big", [FileModel.generate("m", SHARD * 400, SHARD, seed=1)])
    waiter = cluster.put(cluster.ids[0], "run/small", [FileModel.generate("m", SHARD * 4, SHARD, seed=2)])
    cluster.run_for(0.001)
    cluster.cancel(holder)
    cancelled_at = cluster.loop.now
    big, small = cluster.wait(holder, waiter, max_time=60)
    assert not big.ok
    assert small.ok, small.final
    assert cluster.loop.now - cancelled_at < 1.0  # not at the next request deadline (10 s)


def test_a_long_run_of_identical_stripes_does_not_exhaust_the_budget():
    """Stripes whose pieces are all already stored (zero-filled regions) must release
    their buffers at once; holding them deadlocked the put once the budget ran out."""
    stripe = SHARD * (4 + 2)
    settings = CoreSettings(policy=Policy(shard_size=SHARD), memory_budget=2 * stripe)
    cluster = Cluster(5, seed=23, settings=settings)
    [put] = cluster.wait(cluster.put(cluster.ids[0], "zeros", [FileModel.repeating("m", SHARD * 4 * 20, SHARD)]),
                         max_time=120)
    assert put.ok, put.final
    assert cluster.nodes[cluster.ids[0]].core.buffer_bytes == 0
    [get] = cluster.wait(cluster.get(cluster.ids[2], "zeros"))
    assert get.ok and all(get.delivered.values()) and len(get.delivered) == 20
