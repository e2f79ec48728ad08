"""Issue 10's two durability holes, at the level of one NodeCore and of the simulator:
a version id is never handed out twice, crash or not; an already-held piece is read
again before it is acknowledged."""

from __future__ import annotations

import dataclasses
import random

import pytest

from peerstore.core import events as ev
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.core.snapshots import restore_counters
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg
from sim.cluster import Cluster
from sim.content import FileModel
from tests.support.core_driver import CoreDriver

SHARD = 64 * 1024
PIECE = bytes(range(32))


def core(**kwargs) -> NodeCore:
    return NodeCore("aa" * 8, CoreSettings(policy=Policy(shard_size=SHARD)), random.Random(1), **kwargs)


def only(effects, kind):
    found = [e for e in effects if isinstance(e, kind)]
    assert len(found) == 1, effects
    return found[0]


# -- version ids ---------------------------------------------------------------------------


def test_a_reserved_counter_is_durable_before_it_is_used_and_survives_a_restart():
    node = core()
    versions = []
    node.reserve_version("run", lambda t, v, err: versions.append(v))
    persist = only(node._drain(), ev.PersistCounters)
    assert versions == []  # not handed out before the record is durable
    assert restore_counters(persist.blob) == {"run": 1}
    node.handle(0.0, ev.CountersPersisted(persist.tag, True))
    assert [v.counter for v in versions] == [1]
    # The catalog entry never became durable anywhere; the restarted node still moves on.
    restarted = core(counters=restore_counters(persist.blob))
    restarted.reserve_version("run", lambda t, v, err: versions.append(v))
    assert restore_counters(only(restarted._drain(), ev.PersistCounters).blob) == {"run": 2}


def test_reservations_during_a_write_share_the_next_one_and_never_overlap():
    node = core()
    got = []
    for name in ("a", "b", "c"):
        node.reserve_version(name, lambda t, v, err, name=name: got.append((name, v and v.counter)))
    first = only(node._drain(), ev.PersistCounters)  # b and c wait: one write at a time
    assert restore_counters(first.blob) == {"a": 1}
    second = only(node.handle(0.0, ev.CountersPersisted(first.tag, True)), ev.PersistCounters)
    assert got == [("a", 1)]
    assert restore_counters(second.blob) == {"a": 1, "b": 1, "c": 1}
    node.handle(0.0, ev.CountersPersisted(second.tag, True))
    assert got == [("a", 1), ("b", 1), ("c", 1)]


def test_a_put_fails_with_the_reason_when_the_counter_cannot_be_recorded():
    driver = CoreDriver(3)
    coordinator = driver.ids[0]

    def fsync_fails(node: str, effect: ev.PersistCounters) -> bool:
        if node != coordinator:
            return False  # written as usual
        driver.feed(node, ev.CountersPersisted(effect.tag, False, "fsync failed: EIO"))
        return True

    driver.intercept(ev.PersistCounters, fsync_fails)
    put = driver.result(driver.put(coordinator, "m", {"m": bytes(SHARD * 5)}))
    assert isinstance(put.final, ev.Failed) and "EIO" in put.final.reason
    assert driver.nodes[coordinator].disk.counters is None
    assert not any(n.disk.manifests for n in driver.nodes.values())
    assert not any(driver.core(i).catalog.names() for i in driver.ids)


def test_a_coordinator_that_restarts_cut_off_from_its_peers_does_not_reuse_a_version():
    """Issue 10's schedule: only two peers made the entry durable before the coordinator
    crashed; it restarts where only nodes without the entry can reach it."""
    cluster = Cluster(5, seed=21)
    x, *others = cluster.ids
    [first] = cluster.wait(cluster.put(x, "m", [FileModel.generate("m", SHARD * 4, SHARD, seed=1)]))
    assert first.ok, first.final
    cut_off = [x, *others[2:]]
    for node_id in cut_off:  # as if the entry never became durable on these three
        cluster.nodes[node_id].disk.catalog = None
        cluster.crash(node_id)
    cluster.partition(cut_off, others[:2])
    for node_id in cut_off:
        cluster.restart(node_id)
    cluster.run_for(1.0)
    [second] = cluster.wait(cluster.put(x, "m", [FileModel.generate("m", SHARD * 4, SHARD, seed=2)]))
    assert second.ok, second.final
    assert second.final.version != first.final.version
    cluster.heal()
    cluster.run_for(90.0)  # push-pull merges the healed catalogs
    catalog = cluster.nodes[x].core.catalog
    assert catalog.conflicts() == []
    assert {e.manifest_id for e in catalog.live_versions("m")} == {
        first.final.manifest_id, second.final.manifest_id}


# -- already-held pieces -------------------------------------------------------------------


def test_an_already_held_piece_is_read_again_before_it_is_acknowledged():
    node = core(inventory={PIECE})
    effects = node.handle(0.0, ev.MessageReceived("bb" * 8, msg.StorePiece(7, piece_id=PIECE, size=10), "h"))
    check = only(effects, ev.VerifyHeldPiece)
    assert not [e for e in effects if isinstance(e, ev.Send)]  # no ack before the check
    effects = node.handle(0.0, ev.HeldPieceVerified(check.tag, PIECE, True))
    reply = only(effects, ev.Send)
    assert reply.message == msg.PieceStored(7, ok=True)
    assert only(effects, ev.ReleaseHandles).handles == ("h",)


def test_a_rotten_held_piece_is_replaced_from_the_incoming_bytes_before_the_ack():
    node = core(inventory={PIECE})
    effects = node.handle(0.0, ev.MessageReceived("bb" * 8, msg.StorePiece(7, piece_id=PIECE, size=10), "h"))
    check = only(effects, ev.VerifyHeldPiece)
    effects = node.handle(0.0, ev.HeldPieceVerified(check.tag, PIECE, False))
    assert PIECE not in node.inventory and not [e for e in effects if isinstance(e, ev.Send)]
    write = only(effects, ev.StorePieceLocal)
    assert (write.piece_id, write.handle) == (PIECE, "h")
    effects = node.handle(0.0, ev.PieceStoredLocally(write.tag, PIECE, True))
    assert only(effects, ev.Send).message == msg.PieceStored(7, ok=True)
    assert PIECE in node.inventory


@pytest.mark.parametrize("forward", [False, True])
def test_reput_over_a_rotten_replica_reports_the_true_tolerance_and_heals_the_copy(forward):
    """With forwarding the coordinator takes a parity role, so the re-put may not target
    the rotten holder again: then it must not count it either."""
    for coordinator_holds_it in (False, True):
        cluster = Cluster(5, seed=31, membership="static",
                          settings=dataclasses.replace(CoreSettings(policy=Policy(shard_size=SHARD)),
                                                       forward_replicas=forward))
        files = [FileModel.generate("m", SHARD * 8, SHARD, seed=3)]
        [first] = cluster.wait(cluster.put(cluster.ids[0], "a", files))
        manifest = cluster.manifest_of(first)
        stripe = manifest.files[0].stripes[0]
        holders = cluster.holders(stripe.data_ids[0])
        rotten = holders[0]
        via = rotten if coordinator_holds_it else next(i for i in cluster.ids if i not in holders)
        cluster.corrupt(rotten, stripe.data_ids[0])
        [again] = cluster.wait(cluster.put(via, "b", files))
        assert again.ok, again.final
        hint = cluster.manifest_of(again).placement[0]
        if not forward:
            assert rotten in hint[:2]
        if rotten in hint[:2]:
            assert cluster.nodes[rotten].disk.genuine(stripe.data_ids[0])  # replaced, not trusted
        assert cluster.durable_tolerance(cluster.manifest_of(again)) >= again.final.tolerance
        assert cluster.violations == []
