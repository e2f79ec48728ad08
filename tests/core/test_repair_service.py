"""The repair service (core/repairer.py, core/repair_task.py) driven by the simulator:
grace, pacing, yielding to puts, the request_repair entry point, status and the saved
stable membership. The scenario sweeps are in tests/sim/test_repair_scenarios.py."""

from __future__ import annotations

import random

import pytest

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import MiB, Policy
from sim.cluster import Cluster
from sim.content import FileModel
from sim.repair_watch import RepairWatch

SHARD = 1 * MiB
GRACE = 60.0


def cluster(seed: int, *, rate: float = 32 * MiB, grace: float = GRACE, n: int = 5) -> Cluster:
    settings = CoreSettings(policy=Policy(shard_size=SHARD), repair_grace_seconds=grace,
                            repair_max_bytes_per_second=rate)
    return Cluster(n, seed, settings=settings)


def store(c: Cluster, count: int = 3, size: int = 12 * MiB) -> list:
    puts = []
    for i in range(count):
        files = [FileModel.generate("model.safetensors", size + i * 4321, SHARD, seed=(c.seed, i))]
        [put] = c.wait(c.put(c.ids[i % len(c.ids)], f"run/step-{i}", files))
        assert put.ok, put.final
        puts.append(put)
    return puts


def status(c: Cluster, via: str) -> ev.Status:
    [record] = c.wait(c.command(via, lambda client: ev.StatusCommand(client), "status"))
    assert isinstance(record.final, ev.Status), record.final
    return record.final


def test_nothing_is_recreated_within_the_grace_and_a_node_back_in_time_just_resumes():
    c = cluster(1)
    store(c)
    watch = RepairWatch(c, GRACE, 32 * MiB).start()
    node = c.ids[2]
    c.crash(node, power_off=True)
    c.run_for(GRACE * 0.6)
    assert watch.below_best(), "losing a node should lower some tolerance"
    c.restart(node)
    assert c.run_until(c.converged, max_time=60)
    assert not watch.below_best()  # its pieces count again at once
    c.run_for(GRACE * 3)
    assert watch.total_repair_bytes == 0
    rows = status(c, c.ids[0]).checkpoints
    assert rows and all(row.tolerance == 2 and not row.below_policy for row in rows)


def test_pacing_holds_repair_to_the_configured_rate():
    rate = 2 * MiB
    c = cluster(2, rate=rate)
    store(c, count=3, size=16 * MiB)
    watch = RepairWatch(c, GRACE, rate, period=0.25).start()
    c.lose_disk(c.ids[1], new_id=True)
    took = watch.wait_restored(max_time=GRACE + 600)
    assert took is not None, watch.below_best()
    assert watch.first_repair is not None and watch.last_repair is not None
    seconds = watch.last_repair - watch.first_repair
    owners = 4
    burst = 2 * SHARD * owners
    assert watch.total_repair_bytes - burst <= rate * owners * (seconds + 0.5)
    assert seconds > 2.0  # really paced: unpaced this takes well under a second


def test_a_put_during_repair_does_not_wait_for_it():
    c = cluster(3, rate=1 * MiB)
    store(c, count=3, size=16 * MiB)
    files = [FileModel.generate("model.safetensors", 8 * MiB, SHARD, seed="idle")]
    [idle] = c.wait(c.put(c.ids[0], "idle", files))
    baseline = idle.finished - idle.started
    watch = RepairWatch(c, GRACE, 1 * MiB).start()
    c.lose_disk(c.ids[4], new_id=True)
    assert c.run_until(lambda: watch.total_repair_bytes > 0, max_time=GRACE + 120)
    files = [FileModel.generate("model.safetensors", 8 * MiB, SHARD, seed="busy")]
    [busy] = c.wait(c.put(c.ids[0], "busy", files))
    assert busy.ok, busy.final
    assert watch.below_best(), "the put should have landed while repair was still running"
    assert busy.finished - busy.started < 2 * baseline + 1.0


def test_request_repair_recreates_a_quarantined_piece_at_once():
    c = cluster(4, grace=600.0)
    [put] = store(c, count=1)
    manifest = c.manifest_of(put)
    pid = manifest.files[0].stripes[0].data_ids[0]
    node_id = c.holders(pid)[0]
    node = c.nodes[node_id]
    del node.disk.durable[pid]  # as a scrub's quarantine: gone from disk and inventory
    node.core.inventory.discard(pid)
    before = len(c.holders(pid))
    node.core.request_repair(c.loop.now, [pid])
    c._core_effects(node, node.core.tick(c.loop.now))
    assert c.run_until(lambda: len(c.holders(pid)) > before, max_time=30)
    assert node.core.stats["repair_pieces"] >= 1


def test_status_reports_checkpoints_below_policy_and_repair_progress():
    c = cluster(5, rate=1 * MiB)
    store(c, count=2, size=16 * MiB)
    c.run_for(5)
    healthy = status(c, c.ids[0])
    assert not any(row.below_policy for row in healthy.checkpoints) and healthy.repair_bytes_left == 0
    c.lose_disk(c.ids[3], new_id=True)
    c.run_for(20)
    report = status(c, c.ids[0])
    rows = report.checkpoints
    assert any(row.below_policy for row in rows) and all(row.best == 2 for row in rows)
    assert report.repair_bytes_left == sum(row.repair_bytes for row in rows) > 0
    assert report.repair_eta is None  # nothing repaired yet: no rate to estimate from
    reports = dict(report.nodes)
    assert all(r is not None and r["repair"]["state"] in ("idle", "waiting", "scanning") for r in reports.values())
    # Once repair runs (paced at 1 MiB/s per node), status shows its rate and an ETA.
    assert c.run_until(lambda: c.nodes[c.ids[0]].core.stats["repair_bytes"] > 2 * MiB, max_time=GRACE + 120)
    report = status(c, c.ids[0])
    assert 0 < report.repair_bytes_left < sum(row.repair_bytes for row in rows)
    assert report.repair_rate > 0 and report.repair_eta is not None
    assert report.repair_eta == pytest.approx(report.repair_bytes_left / report.repair_rate)
    assert any(r["repair"]["state"] == "repairing" for r in dict(report.nodes).values() if r)


def test_the_stable_membership_survives_a_restart():
    c = cluster(6)
    store(c, count=1)
    node_id = c.ids[0]
    assert c.run_until(lambda: c.nodes[node_id].core.repair.tracker is not None
                       and c.nodes[node_id].core.repair.tracker.stable is not None, max_time=GRACE * 3)
    stable = c.nodes[node_id].core.repair.tracker.stable
    c.run_for(1.0)  # it is written to disk just after it is adopted
    assert c.nodes[node_id].core.repair.tracker.stable == stable
    c.crash(node_id)
    c.restart(node_id)
    tracker = c.nodes[node_id].core.repair._ensure(c.loop.now)
    assert tracker.stable == stable


@pytest.mark.parametrize("minority", [1, 2])
def test_a_minority_side_never_starts_a_repair(minority):
    c = cluster(7 + minority)
    store(c)
    watch = RepairWatch(c, GRACE, 32 * MiB).start()
    c.run_for(GRACE * 1.5)  # every node scans once and learns the members
    cut = c.ids[:minority]
    c.partition(cut, c.ids[minority:])
    c.run_for(GRACE * 3)
    assert watch.repair_bytes_of(set(cut)) == 0
    assert all(c.nodes[i].core.stats["repair_blocked_no_majority"] > 0 for i in cut)


def test_a_copy_found_corrupt_is_rebuilt_from_parity_and_reported_to_its_holder():
    c = cluster(9)
    [put] = store(c, count=1)
    manifest = c.manifest_of(put)
    stripe = manifest.files[0].stripes[0]
    pid = stripe.data_ids[1]
    holders = c.holders(pid)
    assert len(holders) == 2
    rotten_at, lost = holders
    c.corrupt(rotten_at, pid)  # undetected rot on the surviving copy
    c.lose_disk(lost, new_id=True)
    watch = RepairWatch(c, GRACE, 32 * MiB).start()
    assert c.run_until(lambda: sum(c.nodes[i].disk.genuine(pid) for i in c.running_ids()) >= 2,
                       max_time=GRACE + 180), "the rotten copy's piece was not re-created"
    cores = [c.nodes[i].core for i in c.running_ids()]
    assert sum(core.stats["repair_corrupt_sources"] for core in cores) >= 1
    assert sum(core.stats["corrupt_copies_reported"] for core in cores) >= 1
    assert watch.total_repair_bytes > 0
    [get] = c.wait(c.get(c.running_ids()[0], put.name))
    assert get.ok, get.final


def test_repair_yields_on_a_node_that_serves_pieces_to_a_get_or_a_put_but_not_to_repair():
    from peerstore.core.node import NodeCore
    from peerstore.core import repairer
    from peerstore.wire import messages as msg

    node = NodeCore("aa" * 8, CoreSettings(), random.Random(1), inventory={bytes(32)})
    service = node.repair
    service.now = 10.0
    assert service._room()
    node.handle(10.0, ev.MessageReceived("bb" * 8, msg.FetchPiece(1, piece_id=bytes(32), background=True), None))
    assert service.client_until <= 10.0, "a repair fetch is not a client to yield to"
    node.handle(10.0, ev.MessageReceived("bb" * 8, msg.FetchPiece(2, piece_id=bytes(32)), None))
    assert service.client_until == 10.0 + repairer.CLIENT_HOLD
    service.tasks = [object()] * repairer.BUSY_STRIPES  # type: ignore[list-item]
    assert not service._room(), "while serving a get, repair runs one stripe at a time"
    service.now = 10.0 + repairer.CLIENT_HOLD + 0.1
    assert service._room()
