"""A put re-places a straggler's slots (core/put.py, ``_drop_stragglers``) without costing
the checkpoint tolerance, on the NodeCore driver: every piece sent waits for the next
0.05 s round, and one node takes only one piece per half-second."""

from __future__ import annotations

import random

import pytest

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg
from tests.support.core_driver import SHARD, CoreDriver

STEP = 0.05  # seconds per round; the straggler takes one piece every SLOW_EVERY rounds
SLOW_EVERY = 10


def put_with_straggler(nodes: int, seed: int, forward: bool, slow: bool = True) -> tuple[CoreDriver, object]:
    settings = CoreSettings(policy=Policy(shard_size=SHARD), forward_replicas=forward)
    driver = CoreDriver(nodes, seed=seed, settings=settings)
    coordinator, straggler = driver.ids[0], driver.ids[1 + seed % (nodes - 1)]
    seen: set[int] = set()

    def a_piece(node: str, effect: object) -> bool:
        if isinstance(effect, ev.Send) and isinstance(effect.message, msg.StorePiece) and id(effect) not in seen:
            seen.add(id(effect))
            return True
        return False

    driver.hold(a_piece, count=10**9)
    data = random.Random(seed).randbytes(SHARD * 4 * 8)  # 8 stripes
    client = driver.put(coordinator, "m", {"m": data})
    driver.run()
    for round_ in range(4000):
        driver.advance(STEP)
        held = list(zip(driver.held, driver._held_boots))
        waiting = [h for h in held if slow and h[0][1].peer == straggler]
        go = [h for h in held if h not in waiting]
        if round_ % SLOW_EVERY == 0 and waiting:  # the straggler takes one piece
            go.append(waiting.pop(0))
        driver.held, driver._held_boots = [h for h, _ in go], [b for _, b in go]
        driver.release()
        driver.held, driver._held_boots = [h for h, _ in waiting], [b for _, b in waiting]
        driver.run()
        if driver.clients[client].done:
            break
    record = driver.result(client)
    assert record.ok, record.final
    return driver, record.final


@pytest.mark.parametrize("nodes, forward", [(7, True), (5, False), (5, True)])
def test_moving_a_stragglers_slots_keeps_the_tolerance_a_healthy_put_gets(nodes, forward):
    """Found in review: moving each slot alone could not always reach the best tolerance
    of the nodes left (7 nodes committed at 2 instead of 3); such stripes are re-placed
    whole from the template instead."""
    for seed in (1, 2, 3):
        _, healthy = put_with_straggler(nodes, seed, forward, slow=False)
        driver, done = put_with_straggler(nodes, seed, forward)
        assert driver.core(driver.ids[0]).stats["put_stragglers_replaced"] == 1, f"seed {seed}"
        assert done.tolerance == healthy.tolerance, f"seed {seed}: {done.tolerance} < {healthy.tolerance}"


def test_a_policy_without_parity_stores_with_forwarding():
    """Found in review: the coordinator's parity role looked for the most parity among none."""
    settings = CoreSettings(policy=Policy(shard_size=SHARD, parity=0))
    driver = CoreDriver(3, settings=settings)
    data = random.Random(4).randbytes(SHARD * 3)
    put = driver.result(driver.put(driver.ids[0], "m", {"m": data}))
    assert put.ok, put.final
    got = driver.result(driver.get(driver.ids[2], "m"))
    assert got.ok and got.files() == {"m": data}
