"""The NodeCore test driver (``tests/support/core_driver.py``) on whole operations: what it
reports is what the cores did, with real bytes, so the regression tests built on it can
trust it."""

from __future__ import annotations

import random

import pytest

from peerstore.core import events as ev
from peerstore.model.manifest import Manifest
from peerstore.model.placement import StripePlacement
from tests.support.core_driver import SHARD, CoreDriver


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def stored(driver: CoreDriver, put: ev.PutDone) -> Manifest:
    """The put's manifest, from a disk (every node that has it has the same bytes)."""
    blobs = {n.disk.manifests[put.manifest_id] for n in driver.nodes.values() if put.manifest_id in n.disk.manifests}
    assert len(blobs) == 1, f"{len(blobs)} different manifests under one id"
    return Manifest.decode(blobs.pop())


def placed(manifest: Manifest) -> list[tuple[StripePlacement, list[bytes]]]:
    """Per stripe: its placement and its piece ids by position."""
    return [(StripePlacement.from_hint(hint, stripe.k, stripe.p), [*stripe.data_ids, *stripe.parity_ids])
            for (_, _, stripe), hint in zip(manifest.iter_stripes(), manifest.placement)]


def test_a_put_then_a_get_through_another_node_returns_the_same_bytes():
    driver = CoreDriver(5)
    files = {"model.safetensors": data(SHARD * 9 + 123), "config.json": data(700, seed=2)}
    put = driver.result(driver.put(driver.ids[0], "run/step-1", files, is_dir=True))
    assert isinstance(put.final, ev.PutDone) and put.final.tolerance == 2, put.final
    slots = [(node, pid) for placement, ids in placed(stored(driver, put.final))
             for nodes, pid in zip(placement.positions(), ids) for node in nodes]
    assert len(slots) == put.final.pieces
    assert all(pid in driver.nodes[node].disk.pieces for node, pid in slots), "a placed piece is not on its disk"
    get = driver.result(driver.get(driver.ids[3], "run/step-1"))
    assert isinstance(get.final, ev.GetDone) and get.final.degraded_stripes == 0
    assert get.files() == files
    assert all(n.handles == {} for n in driver.nodes.values()), "a handle was never released"


def test_a_get_with_two_nodes_down_rebuilds_the_exact_bytes_from_parity():
    driver = CoreDriver(5)
    content = data(SHARD * 16)
    put = driver.result(driver.put(driver.ids[0], "m", {"m": content}))
    placement, _ = placed(stored(driver, put.final))[0]
    both_replicas = placement.data[0]  # data shard 0 is on no running node: parity must rebuild it
    for node_id in both_replicas:
        driver.crash(node_id)
    via = next(i for i in driver.ids if i not in both_replicas)
    get = driver.result(driver.get(via, "m"))
    assert isinstance(get.final, ev.GetDone) and get.final.degraded_stripes > 0, get.final
    assert get.files() == {"m": content}


def test_a_restarted_coordinator_keeps_its_catalog_and_never_reuses_a_version():
    driver = CoreDriver(3)
    x = driver.ids[0]
    first = driver.result(driver.put(x, "m", {"m": data(SHARD)}))
    driver.crash(x)
    assert not driver.nodes[x].up and driver.nodes[x].handles == {}
    driver.restart(x)
    assert driver.core(x).catalog.names() == ["m"]
    second = driver.result(driver.put(x, "m", {"m": data(SHARD, seed=2)}))
    assert (first.final.version, second.final.version) == ("1", "2")


def test_a_client_whose_node_dies_is_disconnected_and_held_effects_wait_for_release():
    driver = CoreDriver(3)
    x = driver.ids[0]
    driver.hold(lambda node, e: isinstance(e, ev.PersistCounters))
    client = driver.put(x, "m", {"m": data(SHARD)})
    driver.run()
    assert [type(e) for _, e in driver.held] == [ev.PersistCounters] and not driver.clients[client].done
    driver.crash(x)
    assert driver.clients[client].disconnected
    driver.restart(x)
    driver.release()  # the held write belongs to the process that died: void
    assert driver.run() == 0 and driver.nodes[x].disk.counters is None


def test_timers_run_only_when_the_test_advances_the_clock():
    driver = CoreDriver(3)
    x, y = driver.ids[:2]
    driver.intercept(lambda node, e: node == y and isinstance(e, ev.Send), lambda node, e: True)  # y is frozen
    client = driver.put(x, "m", {"m": data(SHARD * 4)})
    driver.run()
    assert not driver.clients[client].done and driver.now == 0.0
    driver.advance(600.0)
    put = driver.result(client)
    assert driver.now == 600.0 and put.done, put.replies
    assert driver.core(x).next_deadline() == driver.core(x).gc.next_deadline()  # only the periodic GC pass


def test_a_livelock_fails_instead_of_hanging():
    driver = CoreDriver(2)
    x = driver.ids[0]
    orphan = ev.PieceLoaded("nobody waits for this", b"\0" * 32, "h")  # the core releases its handle
    driver.intercept(ev.ReleaseHandles, lambda node, e: driver.feed(node, orphan) or True)  # ... forever
    driver.feed(x, orphan)
    with pytest.raises(AssertionError, match="not quiet"):
        driver.run(max_steps=1000)
