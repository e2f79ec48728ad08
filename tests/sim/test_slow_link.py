"""Issue 14, section 1, in the simulator: a put with the default settings survives a slow
link (100 Mbit, 20 Mbit), its queue stays a few seconds deep, and a peer that really goes
silent still times out within the bound. The simulator reports bytes moving as the daemon
does (``ev.BytesMoved`` every ``PROGRESS_INTERVAL``), so these runs drive the daemon's rule."""

from __future__ import annotations

from peerstore.core.messenger import PROGRESS_INTERVAL
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import MiB, Policy
from sim.cluster import Cluster
from sim.content import FileModel
from sim.network import NIC_100MBIT

DEFAULTS = CoreSettings(policy=Policy())  # 4 MiB shards, 10 s request timeout, 32 MiB window
NIC_20MBIT = 2.5e6


def slow_cluster(nic: float, seed: int = 1, core_class: type[NodeCore] = NodeCore) -> Cluster:
    return Cluster(5, seed=seed, settings=DEFAULTS, nic=nic, core_class=core_class)


def put_and_get(cluster: Cluster, size: int, watch_inflight: bool = False) -> tuple[float, int]:
    """Put ``size`` bytes through the first node and get them back; (put seconds, the most
    bytes it ever had in flight to one peer)."""
    source = FileModel.generate("model.safetensors", size, DEFAULTS.policy.shard_size, seed=3)
    coordinator = cluster.nodes[cluster.ids[0]]
    started = cluster.loop.now
    client = cluster.put(coordinator.node_id, "m", [source])
    record = cluster.clients[client]
    deepest = 0
    while not record.done and cluster.loop.now - started < 600:
        cluster.run_for(0.05 if watch_inflight else 5.0)
        deepest = max([deepest, *coordinator.core.inflight.values()])
    assert record.ok, record.final
    seconds = record.finished - started
    got = cluster.wait(cluster.get(cluster.ids[1], "m"))[0]
    assert got.ok and all(got.delivered.values()), got.final
    assert cluster.violations == []
    return seconds, deepest


def test_a_put_over_100_mbit_with_default_settings_runs_at_the_nic_limit_with_a_shallow_queue():
    cluster = slow_cluster(NIC_100MBIT)
    size = 131 * 10**6
    seconds, deepest = put_and_get(cluster, size, watch_inflight=True)
    limit = 2 * size / NIC_100MBIT  # the coordinator sends about two copies of the checkpoint
    assert seconds < 1.1 * limit
    # The window follows the rate: about 2 s of a quarter of the NIC, not 32 MiB per peer
    # (that queue alone took over 10 s to drain and timed the put out).
    assert deepest <= 12 * MiB
    assert cluster.nodes[cluster.ids[0]].core.stats["request_timeout"] == 0


def test_a_deep_queue_on_a_20_mbit_link_does_not_time_out_while_bytes_flow():
    """Two shards per peer (the window's floor) times four peers is 13 s of a 20 Mbit NIC:
    more than request_timeout spent in our own queue, which must not count."""
    cluster = slow_cluster(NIC_20MBIT)
    seconds, _ = put_and_get(cluster, 40 * 10**6)
    assert seconds < 1.1 * 2 * 40e6 / NIC_20MBIT
    assert cluster.nodes[cluster.ids[0]].core.stats["request_timeout"] == 0


class TimeoutLog(NodeCore):
    """A core that notes when each of its requests timed out, and to whom."""

    timeouts: list[tuple[float, str]]

    def _fail_request(self, now: float, req: int, why: str) -> None:
        pending = self._pending.get(req)
        if pending is not None and why == "timeout":
            self.__dict__.setdefault("timeouts", []).append((now, pending.peer))
        super()._fail_request(now, req, why)


def test_a_peer_that_goes_silent_mid_put_still_times_out_within_the_bound():
    cluster = slow_cluster(NIC_100MBIT, core_class=TimeoutLog)
    coordinator = cluster.nodes[cluster.ids[0]]
    silent = cluster.ids[3]
    source = FileModel.generate("model.safetensors", 131 * 10**6, DEFAULTS.policy.shard_size, seed=3)
    client = cluster.put(coordinator.node_id, "m", [source])
    cluster.run_for(5.0)
    assert coordinator.core.inflight.get(silent), "the test wants bytes in flight to it"
    off = cluster.loop.now
    cluster.crash(silent, power_off=True)  # its connections go silent: no reset, no answer
    record = cluster.wait(client, max_time=300)[0]
    assert record.ok, record.final
    timeouts = coordinator.core.__dict__.get("timeouts", [])
    assert timeouts and {peer for _, peer in timeouts} == {silent}
    bound = DEFAULTS.request_timeout + 2 * PROGRESS_INTERVAL
    assert all(off < when <= off + bound for when, _ in timeouts), (off, timeouts)
