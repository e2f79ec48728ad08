"""The core's side of a read-only disk (core/store_health.py), on the NodeCore driver: the
node refuses pieces without touching its disk, reports it, and probes until writable."""

from __future__ import annotations

from peerstore.core import events as ev
from peerstore.core.store_health import PROBE_INTERVAL, READ_ONLY, read_only_nodes
from tests.support.core_driver import SHARD, CoreDriver


def test_a_read_only_node_refuses_pieces_reports_it_and_probes_until_writable():
    driver = CoreDriver(4)
    coordinator, broken = driver.ids[0], driver.ids[3]
    writes: list[str] = []
    driver.watch(lambda node, effect: writes.append(node) if isinstance(effect, ev.StorePieceLocal) else None)
    driver.feed(broken, ev.StoreHealthChanged(False, "writing /data/tmp/x failed: [Errno 30 EROFS]"))
    driver.run()

    put = driver.result(driver.put(coordinator, "run/a", {"m": bytes(range(256)) * (SHARD // 64)}))
    assert put.ok, put.final
    assert broken not in writes, "a read-only node must not even try to write"
    assert broken not in driver.nodes[broken].disk.pieces and driver.nodes[broken].disk.pieces == {}

    report = driver.core(broken).node_report(driver.now)["store"]
    assert report["writable"] is False and "EROFS" in report["problem"]
    status = driver.result(driver.command(coordinator, lambda c: ev.StatusCommand(c)))
    assert list(read_only_nodes(status.final.nodes)) == [broken]

    refused = driver.result(driver.put(broken, "run/b", {"m": b"x" * 100}))
    assert isinstance(refused.final, ev.Failed) and READ_ONLY in refused.final.reason

    probes: list[bool] = []

    def answer(node_id: str, effect: ev.ProbeStore) -> bool:
        probes.append(True)
        driver.feed(node_id, ev.StoreProbed(effect.tag, ok=len(probes) > 1, error="still EROFS"))
        return True

    driver.intercept(ev.ProbeStore, answer)
    driver.advance(PROBE_INTERVAL + 1)
    assert len(probes) == 1 and not driver.core(broken).store_health.writable
    driver.advance(PROBE_INTERVAL + 1)
    assert len(probes) == 2 and driver.core(broken).store_health.writable
    again = driver.result(driver.put(broken, "run/b", {"m": b"x" * 100}))
    assert again.ok, again.final
