"""Issue 14: a node far slower than the others barely slows a put: its slots are re-placed
on the others (core/put.py, ``_drop_stragglers``). In the simulator, so the figures are
exact: here the straggler's NIC runs at a tenth of the others' (a frozen simulated process
still takes bytes into its socket buffers, so a duty-cycled freeze barely slows it; the
bench's ``slow`` phase SIGSTOPs a real node 90% of the time, where the aim is 0.8x).

The bound here is 0.75x: once the straggler is out, four nodes carry what five did, and
their NICs, not the coordinator's, become the limit (without the rule: about 0.3x)."""

from __future__ import annotations

import pytest

from peerstore.core import put as put_module
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from sim.cluster import Cluster
from sim.content import FileModel

SIZE = 1500 * 10**6
NIC = 125e6  # 1 Gbit/s


def timed_put(slow: bool, seed: int = 2) -> tuple[float, Cluster, str]:
    cluster = Cluster(5, seed=seed, settings=CoreSettings(policy=Policy()), nic=NIC)
    assert cluster.run_until(cluster.converged, max_time=30)
    coordinator, straggler = cluster.ids[0], cluster.ids[3]
    if slow:
        cluster.slow_nic(straggler, NIC / 10)
    source = FileModel.generate("model.safetensors", SIZE, Policy().shard_size, seed=5)
    started = cluster.loop.now
    [record] = cluster.wait(cluster.put(coordinator, "m", [source]), max_time=300)
    assert record.ok, f"seed={seed}: {record.final}"
    return record.finished - started, cluster, straggler


def test_a_node_at_a_tenth_of_the_speed_slows_a_put_to_no_less_than_0_75x():
    healthy, _, _ = timed_put(slow=False)
    throttled, cluster, straggler = timed_put(slow=True)
    assert healthy / throttled >= 0.75, f"{healthy:.1f} s healthy, {throttled:.1f} s with a straggler"
    coordinator = cluster.nodes[cluster.ids[0]].core
    assert coordinator.stats["put_stragglers_replaced"] == 1
    [got] = cluster.wait(cluster.get(cluster.ids[1], "m"))
    assert got.ok and all(got.delivered.values()), got.final
    assert cluster.violations == []


def test_without_re_placing_the_straggler_the_put_is_far_slower(monkeypatch):
    """The figure above is the rule's doing."""
    healthy, _, _ = timed_put(slow=False)
    monkeypatch.setattr(put_module, "STRAGGLER_RATIO", float("inf"))  # nobody is slow enough
    throttled, cluster, _ = timed_put(slow=True)
    assert healthy / throttled < 0.5, f"{healthy:.1f} s healthy, {throttled:.1f} s with a straggler"
    assert cluster.nodes[cluster.ids[0]].core.stats["put_stragglers_replaced"] == 0


@pytest.mark.parametrize("seed", [3, 4])
def test_a_merely_busy_node_keeps_its_slots(seed):
    """Peers on a healthy cluster are never taken for stragglers."""
    _, cluster, _ = timed_put(slow=False, seed=seed)
    assert cluster.nodes[cluster.ids[0]].core.stats["put_stragglers_replaced"] == 0
