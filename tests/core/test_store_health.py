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


def test_a_put_whose_tail_stripe_is_replanned_onto_nodes_holding_its_piece_completes():
    """A k = 1 tail stripe stores one piece three times (its parity is a copy of its data).
    When the refusal of one slot arrives after every other copy was acknowledged, the slot
    is re-placed onto a node that already holds that piece and acknowledged at once: the
    stripe must still count as complete (a put hung forever here on real processes)."""
    from peerstore.wire import messages as msg

    for seed in range(6):
        driver = CoreDriver(3, seed=seed)
        coordinator, broken = driver.ids[0], driver.ids[seed % 2 + 1]
        driver.feed(broken, ev.StoreHealthChanged(False, "writing /data/tmp/x failed: [Errno 30 EROFS]"))
        driver.run()
        held_once: set[int] = set()

        def first_refusals(node: str, e: object) -> bool:
            """The broken node's refusals, each held once (released ones pass)."""
            if node != broken or not isinstance(e, ev.Send) or not isinstance(e.message, msg.PieceStored):
                return False
            if id(e) in held_once:
                return False
            held_once.add(id(e))
            return True

        driver.hold(first_refusals, count=1000)
        data = bytes(range(256)) * (4 * SHARD // 256) + b"tail" * 108  # 4 shards + a 432-byte tail
        client = driver.put(coordinator, f"run/t{seed}", {"m": data})
        driver.run()
        assert driver.held, "the broken node was sent no piece"
        for _ in range(20):  # refusals of re-sent pieces are held too: hand them on each round
            if not driver.held:
                break
            driver.release()
            driver.run()
        put = driver.result(client)
        assert put.ok, (seed, put.final)
        got = driver.result(driver.get(coordinator, f"run/t{seed}"))
        assert got.ok and got.files()["m"] == data
