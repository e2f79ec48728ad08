"""A disk remounted read-only (EROFS, what a dying SD card does), in the simulator: the
node stops taking pieces (its core refuses them once a write has failed), puts go to the
other nodes, status says so, it cannot coordinate a put, and once the disk is writable
again a probe notices and it takes pieces again. The decisions are the core's
(core/store_health.py), so the daemon behaves the same."""

from __future__ import annotations

from peerstore.core import events as ev
from peerstore.core.store_health import PROBE_INTERVAL, READ_ONLY, read_only_nodes
from sim.cluster import Cluster
from sim.content import FileModel

SHARD = 64 * 1024


def one_file(size_shards: int, seed=1):
    return [FileModel.generate("m", SHARD * size_shards, SHARD, seed=seed)]


def status(cluster: Cluster, via: str) -> ev.Status:
    [record] = cluster.wait(cluster.command(via, lambda c: ev.StatusCommand(c), kind="status"))
    assert isinstance(record.final, ev.Status), record.final
    return record.final


def test_a_read_only_disk_takes_no_pieces_and_puts_go_elsewhere():
    cluster = Cluster(5, seed=7)
    broken, coordinator = cluster.ids[4], cluster.ids[0]
    cluster.read_only_disk(broken)
    [first] = cluster.wait(cluster.put(coordinator, "run/a", one_file(8)))
    assert first.ok, first.final
    assert cluster.nodes[broken].disk.durable == {}
    assert all(broken not in hint for hint in cluster.manifest_of(first).placement)
    assert not cluster.nodes[broken].core.store_health.writable  # its core knows now

    [second] = cluster.wait(cluster.put(cluster.ids[1], "run/b", one_file(8, seed=2)))
    assert second.ok, second.final
    assert all(broken not in hint for hint in cluster.manifest_of(second).placement)

    seen = read_only_nodes(status(cluster, coordinator).nodes)
    assert list(seen) == [broken] and "EROFS" in seen[broken]

    [refused] = cluster.wait(cluster.put(broken, "run/c", one_file(2, seed=3)))
    assert isinstance(refused.final, ev.Failed) and READ_ONLY in refused.final.reason
    assert "another node" in refused.final.reason
    assert cluster.violations == []


def test_a_disk_writable_again_is_noticed_by_a_probe():
    cluster = Cluster(5, seed=8)
    broken = cluster.ids[3]
    cluster.read_only_disk(broken)
    [first] = cluster.wait(cluster.put(cluster.ids[0], "run/a", one_file(8)))
    assert first.ok and not cluster.nodes[broken].core.store_health.writable
    cluster.writable_disk(broken)
    cluster.run_for(PROBE_INTERVAL + 5.0)
    assert cluster.nodes[broken].core.store_health.writable
    assert read_only_nodes(status(cluster, cluster.ids[0]).nodes) == {}
    [again] = cluster.wait(cluster.put(broken, "run/b", one_file(8, seed=2)))
    assert again.ok, again.final
    assert cluster.violations == []
