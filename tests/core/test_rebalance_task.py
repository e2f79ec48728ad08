"""Carrying out a rebalance drop (core/rebalance_task.py), on the NodeCore driver: the drop
decides on holdings asked for right before it, not on the scan's (which may be stale)."""

from __future__ import annotations

import random

from peerstore.core.rebalance import Drop
from peerstore.core.rebalance_task import RebalanceTask
from peerstore.core.repair import StripeRef
from peerstore.core.repair_task import Budget
from peerstore.core.settings import CoreSettings
from tests.support.core_driver import SHARD, CoreDriver


class NoBudget(Budget):
    def take(self, now: float, size: int) -> bool:
        return True

    def reserve(self, size: int) -> bool:
        return True

    def release(self, size: int) -> None:
        pass


def run_drop(driver: CoreDriver, owner: str, drop: Drop, ref: StripeRef,
             holders: dict[bytes, frozenset[str]]) -> RebalanceTask:
    ended: list[RebalanceTask] = []
    core = driver.core(owner)
    task = RebalanceTask(core, drop, [ref], holders, NoBudget(), lambda t, task: ended.append(task))
    task.start(driver.now)
    driver._effects(owner, core._drain())  # what the node's own loop does after an input
    driver.run()
    assert ended == [task], "the drop never ended"
    return task


def setup() -> tuple[CoreDriver, StripeRef, bytes, str, dict[bytes, frozenset[str]]]:
    """One committed k = 4 stripe on 5 nodes plus a spare copy of its first parity chunk:
    (driver, stripe, parity id, node with the spare copy, holders as a scan saw them)."""
    driver = CoreDriver(5)
    data = random.Random(3).randbytes(4 * SHARD)
    put = driver.result(driver.put(driver.ids[0], "run/a", {"m": data}))
    assert put.ok, put.final
    get = driver.result(driver.get(driver.ids[0], "run/a"))
    manifest = get.manifest
    entry = manifest.files[0].stripes[0]
    assert entry.k == 4 and entry.p >= 1
    ref = StripeRef(manifest.id, 0, entry, manifest.placement[0])
    parity = entry.parity_ids[0]
    spare = next(n for n in driver.ids if parity not in driver.nodes[n].disk.pieces)
    holder = next(n for n in driver.ids if parity in driver.nodes[n].disk.pieces)
    driver.nodes[spare].disk.pieces[parity] = driver.nodes[holder].disk.pieces[parity]
    driver.core(spare).inventory.add(parity)
    driver.advance(CoreSettings().gc_lease_seconds + CoreSettings().gc_margin_seconds + 1)  # the put's leases end
    holders = {pid: frozenset(n for n in driver.ids if pid in driver.nodes[n].disk.pieces)
               for pid in entry.piece_ids}
    return driver, ref, parity, spare, holders


def test_a_spare_copy_is_dropped():
    driver, ref, parity, spare, holders = setup()
    task = run_drop(driver, driver.ids[0], Drop(parity, SHARD, spare, driver.ids[0]), ref, holders)
    assert task.ok, task.why
    assert parity not in driver.nodes[spare].disk.pieces


def test_a_copy_that_became_needed_since_the_scan_is_not_dropped():
    """Both copies of a data shard were found rotten and moved aside after the scan: the
    spare parity copy is now needed, although the scan's holdings say otherwise."""
    driver, ref, parity, spare, holders = setup()
    lost = ref.entry.data_ids[0]
    for node_id in holders[lost]:
        driver.nodes[node_id].disk.pieces.pop(lost)
        driver.core(node_id).inventory.discard(lost)
    task = run_drop(driver, driver.ids[0], Drop(parity, SHARD, spare, driver.ids[0]), ref, holders)
    assert not task.ok and "not enough" in task.why
    assert parity in driver.nodes[spare].disk.pieces


def test_two_drops_from_one_stripe_never_run_at_once():
    """Each drop checks the stripe with the other copy still there; run together they
    could take it below policy (scrub-finds-rot seed 7305 dropped two parity copies of
    one stripe in the same instant). The service starts one, and the other after it."""
    from collections import deque
    from types import SimpleNamespace

    driver, ref, parity, spare, holders = setup()
    service = driver.core(driver.ids[0]).repair
    first = Drop(parity, SHARD, spare, driver.ids[0])
    second = Drop(ref.entry.data_ids[0], SHARD, spare, driver.ids[0])
    other = Drop(b"\x07" * 32, SHARD, spare, driver.ids[0])  # a piece of another stripe
    key = (ref.manifest_id, ref.index)
    service.rebalance_stripe_keys = {parity: frozenset({key}), ref.entry.data_ids[0]: frozenset({key}),
                                     b"\x07" * 32: frozenset({(b"n" * 32, 0)})}
    service.moves = deque([second, other])
    service.moving = [SimpleNamespace(ended=False, stripes=[ref], action=first)]
    assert service._next_move() is other
    assert service._next_move() is None and list(service.moves) == [second]
    service.moving[0].ended = True
    assert service._next_move() is second
