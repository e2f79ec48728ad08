"""The garbage collector driven through real NodeCores (tests/support/core_driver.py):
rm frees pieces, leases hold them for running puts, deletes are ordered before writes."""

from __future__ import annotations

import pytest

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg
from tests.support.core_driver import SHARD, CoreDriver

INTERVAL, LEASE, MARGIN = 10.0, 30.0, 10.0
SETTLE = 10.0  # repair's stable membership settles in grace/2: GC needs that majority
SETTINGS = CoreSettings(policy=Policy(shard_size=SHARD), gc_interval=INTERVAL, gc_lease_seconds=LEASE,
                        gc_margin_seconds=MARGIN, repair_grace_seconds=2 * SETTLE)
BOOT_LEASE = LEASE + MARGIN + INTERVAL  # after this, pieces held at boot are fair game


def data(size: int, seed: int = 1) -> bytes:
    out = bytearray()
    block = seed.to_bytes(4, "big")
    while len(out) < size:
        block = (int.from_bytes(block[-4:], "big") * 1103515245 + 12345 & 0xFFFFFFFF).to_bytes(4, "big")
        out += block * 64
    return bytes(out[:size])


def driver(n: int = 5, settings: CoreSettings = SETTINGS) -> CoreDriver:
    d = CoreDriver(n, settings=settings, start=False)
    d.intercept(lambda node, e: type(e).__name__ == "PersistMembership",
                lambda node, e: d.feed(node, ev.MembershipPersisted(e.tag, True)) or True)
    d.start()
    d.advance(BOOT_LEASE)  # the boot lease is over and a stable membership adopted
    return d


def pieces_on(d: CoreDriver) -> dict[str, set[bytes]]:
    return {i: set(d.nodes[i].disk.pieces) for i in d.ids}


def all_pieces(d: CoreDriver) -> set[bytes]:
    return set().union(*pieces_on(d).values())


def put(d: CoreDriver, name: str, content: bytes, via: int = 0):
    record = d.result(d.put(d.ids[via], name, {"model.bin": content}))
    assert record.ok, record.final
    return record


def manifest_pieces(d: CoreDriver, name: str) -> set[bytes]:
    entry = d.core(d.ids[0]).catalog.resolve(name)
    blob = next(n.disk.manifests[entry.manifest_id] for n in d.nodes.values() if entry.manifest_id in n.disk.manifests)
    from peerstore.model.manifest import Manifest

    return set(Manifest.decode(blob).piece_ids())


def test_rm_frees_every_piece_of_the_version_within_one_interval_and_keeps_the_rest():
    d = driver()
    put(d, "keep", data(5 * SHARD, seed=1))
    put(d, "gone", data(9 * SHARD, seed=2))
    keep, gone = manifest_pieces(d, "keep"), manifest_pieces(d, "gone")
    d.advance(LEASE + MARGIN)  # the puts' leases are over
    assert all_pieces(d) == keep | gone
    removed = d.result(d.command(d.ids[3], lambda c: ev.RemoveCommand(c, "gone")))
    assert isinstance(removed.final, ev.Removed)
    d.advance(INTERVAL)
    assert all_pieces(d) == keep
    assert all(gone.isdisjoint(d.core(i).inventory) for i in d.ids)
    got = d.result(d.get(d.ids[4], "keep"))
    assert got.ok and got.files() == {"model.bin": data(5 * SHARD, seed=1)}
    freed = sum(d.core(i).gc.report.freed_bytes for i in d.ids)
    assert freed == 2 * 9 * SHARD + 2 * 3 * SHARD  # data twice; 3 stripes x 2 parity chunks of one shard
    # The manifest of the removed version goes too, on every node.
    gone_id = next(e.manifest_id for e in d.core(d.ids[0]).catalog.entries if e.name == "gone")
    assert not any(gone_id in n.disk.manifests for n in d.nodes.values())


def test_status_reports_bytes_awaiting_gc_until_the_pass_frees_them():
    d = driver()
    put(d, "gone", data(4 * SHARD, seed=3))
    d.advance(LEASE + MARGIN)
    d.result(d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "gone")))
    status = d.result(d.command(d.ids[1], lambda c: ev.StatusCommand(c))).final
    awaiting = sum(r["gc"]["awaiting_bytes"] for _, r in status.nodes if r)
    assert awaiting == 2 * 4 * SHARD + 2 * SHARD
    d.advance(INTERVAL)
    status = d.result(d.command(d.ids[1], lambda c: ev.StatusCommand(c))).final
    assert sum(r["gc"]["awaiting_bytes"] for _, r in status.nodes if r) == 0
    assert sum(r["gc"]["freed_bytes"] for _, r in status.nodes if r) == awaiting


def test_a_running_put_keeps_its_pieces_past_many_leases_and_commits_intact():
    d = driver()
    content = data(8 * SHARD, seed=4)
    # The commit stalls (the version's counter is not yet durable) for ten lease periods.
    d.hold(lambda node, e: isinstance(e, ev.PersistCounters))
    client = d.put(d.ids[0], "slow", {"model.bin": content})
    d.run()
    assert not d.clients[client].done
    stored = all_pieces(d)
    assert stored
    renewals = []
    d.watch(lambda node, e: isinstance(e, ev.Send) and isinstance(e.message, msg.RenewLease)
            and renewals.append(d.now))
    d.advance(10 * LEASE)
    assert all_pieces(d) == stored  # ten passes ran, nothing of the put was taken
    assert len(renewals) >= 4 * 10  # three renewals per lease period to each of the other nodes
    d.release()
    record = d.result(client)
    assert record.ok, record.final
    assert d.result(d.get(d.ids[2], "slow")).files() == {"model.bin": content}


def test_gc_that_ignores_leases_loses_the_running_puts_pieces():
    """The test above can fail: with leases cut short, the put's acknowledged pieces go."""
    d = driver()
    d.hold(lambda node, e: isinstance(e, ev.PersistCounters))
    client = d.put(d.ids[0], "slow", {"model.bin": data(8 * SHARD, seed=4)})
    d.run()
    for i in d.ids:
        d.core(i).gc.leases.protected = lambda pid, now: False  # the mutation
    d.advance(2 * INTERVAL)
    assert not all_pieces(d)
    d.release()
    record = d.result(client)
    assert not record.ok and "no longer on node" in record.final.reason


def test_an_abandoned_put_is_collected_once_its_lease_ran_out():
    d = driver()
    d.hold(lambda node, e: isinstance(e, ev.PersistCounters))
    d.put(d.ids[0], "abandoned", {"model.bin": data(6 * SHARD, seed=5)})
    d.run()
    assert all_pieces(d)
    d.crash(d.ids[0])  # the coordinator dies: nobody renews the leases any more
    d.announce()
    d.advance(LEASE + MARGIN - 1)
    left = all_pieces(d)
    assert left  # still leased
    d.advance(INTERVAL + 1)
    assert not (all_pieces(d) - set(d.nodes[d.ids[0]].disk.pieces))  # the survivors freed theirs


def test_a_store_of_a_piece_being_deleted_waits_for_the_delete():
    """rm, then the same content is put again while the deletes are in flight: the put's
    writes must land after the deletes, or its acknowledged pieces would vanish."""
    d = driver()
    content = data(4 * SHARD, seed=6)
    put(d, "first", content)
    d.advance(LEASE + MARGIN)
    d.result(d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "first")))
    d.hold(lambda node, e: isinstance(e, ev.DeletePieces), count=len(d.ids))
    d.advance(INTERVAL)
    assert len(d.held) == len(d.ids)  # every node decided to delete; none has done it yet
    client = d.put(d.ids[1], "again", {"model.bin": content})
    d.run()
    assert not d.clients[client].done  # the stores wait for the deletes
    d.release()
    record = d.result(client)
    assert record.ok, record.final
    d.advance(3 * (LEASE + MARGIN))
    assert d.result(d.get(d.ids[3], "again")).files() == {"model.bin": content}
    assert all_pieces(d) == manifest_pieces(d, "again")


def test_a_piece_tombstoned_and_re_referenced_by_a_concurrent_put_is_kept():
    d = driver()
    content = data(4 * SHARD, seed=7)
    put(d, "a", content)
    d.advance(LEASE + MARGIN)
    d.result(d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "a")))
    put(d, "b", content, via=2)  # same bytes: the same pieces, now referenced by b
    d.advance(5 * INTERVAL + LEASE + MARGIN)
    assert all_pieces(d) == manifest_pieces(d, "b")
    assert d.result(d.get(d.ids[4], "b")).files() == {"model.bin": content}


def test_retention_keeps_the_newest_versions_and_frees_the_rest():
    settings = CoreSettings(policy=SETTINGS.policy, gc_interval=INTERVAL, gc_lease_seconds=LEASE,
                            gc_margin_seconds=MARGIN, repair_grace_seconds=2 * SETTLE, retention_keep_last=2)
    d = driver(settings=settings)
    contents = [data(3 * SHARD, seed=10 + i) for i in range(4)]
    for i, content in enumerate(contents):
        put(d, "run1/latest", content, via=i)
    d.advance(LEASE + MARGIN + INTERVAL)
    for i in d.ids:
        assert [e.version.counter for e in d.core(i).catalog.live_versions("run1/latest")] == [3, 4]
    kept = set()
    for v in (3, 4):
        kept |= manifest_pieces(d, f"run1/latest@{v}")
    assert all_pieces(d) == kept
    assert d.result(d.get(d.ids[0], "run1/latest@3")).files() == {"model.bin": contents[2]}


def test_nothing_is_collected_without_a_majority_or_with_a_peer_that_does_not_answer():
    d = driver()
    put(d, "gone", data(3 * SHARD, seed=8))
    d.advance(LEASE + MARGIN)
    d.result(d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "gone")))
    before = pieces_on(d)
    # A peer that takes in nothing (frozen): its catalog cannot be confirmed.
    frozen = d.ids[4]
    d.intercept(lambda node, e: node == frozen and isinstance(e, ev.Send), lambda node, e: True)
    d.advance(3 * INTERVAL)
    assert pieces_on(d) == before
    assert all("did not answer" in d.core(i).gc.report.blocked for i in d.ids[:4])
    # A minority (2 of 5) sees the others gone for good: still nothing.
    d.crash(d.ids[2]), d.crash(d.ids[3]), d.crash(d.ids[4])
    d.announce()
    d.advance(10 * INTERVAL)
    assert {i: pieces_on(d)[i] for i in d.ids[:2]} == {i: before[i] for i in d.ids[:2]}
    assert "majority" in d.core(d.ids[0]).gc.report.blocked


def test_a_restarted_node_keeps_what_it_holds_for_a_lease_after_boot():
    d = driver()
    put(d, "gone", data(3 * SHARD, seed=9))
    victim = d.ids[1]
    held = set(d.nodes[victim].disk.pieces)
    assert held
    d.crash(victim)
    d.announce()
    d.result(d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "gone")))
    d.restart(victim)  # it missed nothing it can trust about leases: its boot lease covers all
    d.advance(LEASE + MARGIN - 1)
    assert set(d.nodes[victim].disk.pieces) == held
    d.advance(2 * INTERVAL + 1)
    assert not d.nodes[victim].disk.pieces


@pytest.mark.parametrize("fail_first", [True, False])
def test_a_delete_that_fails_leaves_the_piece_held(fail_first):
    d = driver()
    put(d, "gone", data(2 * SHARD, seed=11))
    d.advance(LEASE + MARGIN)
    d.result(d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "gone")))
    node = d.ids[2]
    stuck = sorted(d.nodes[node].disk.pieces)[0]

    def refuse(node_id, effect):
        if node_id != node or stuck not in effect.piece_ids:
            return False
        rest = tuple(p for p in effect.piece_ids if p != stuck)
        for pid in rest:
            d.nodes[node].disk.pieces.pop(pid, None)
        d.feed(node_id, ev.PiecesDeleted(effect.tag, rest, 0, "EROFS"))
        return True

    if fail_first:
        d.intercept(ev.DeletePieces, refuse)
    d.advance(INTERVAL)
    assert (stuck in d.core(node).inventory) is fail_first
    assert (stuck in d.nodes[node].disk.pieces) is fail_first


def test_a_tombstone_is_acted_on_only_once_it_is_on_disk():
    """A crash must not undo a tombstone after GC acted on it: a node whose catalog write
    is slow deletes nothing until the write is durable."""
    d = driver()
    put(d, "gone", data(3 * SHARD, seed=12))
    d.advance(LEASE + MARGIN)
    slow = d.ids[3]
    held = set(d.nodes[slow].disk.pieces)
    d.hold(lambda node, e: node == slow and isinstance(e, ev.PersistCatalog))
    d.command(d.ids[0], lambda c: ev.RemoveCommand(c, "gone"))
    d.run()
    assert d.held and d.core(slow).catalog.names() == []  # removed in memory, not yet on disk
    d.advance(3 * INTERVAL)
    assert set(d.nodes[slow].disk.pieces) == held
    assert all(not d.nodes[i].disk.pieces for i in d.ids if i != slow)
    d.release()
    d.advance(2 * INTERVAL)
    assert not d.nodes[slow].disk.pieces
