"""Forwarded replication (core/forwarding.py, core/put.py), on the NodeCore driver.

The coordinator sends each data shard once; the first holder forwards it to the second,
which acknowledges straight to the coordinator. A slot still counts only when its own
holder says it is durable, and every way a forward can fail (declined, relay dead, relay
unable to reach the holder) ends with the coordinator sending that copy itself."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.placement import StripePlacement
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg
from tests.support.core_driver import SHARD, CoreDriver

DATA = random.Random(7).randbytes(12 * SHARD)  # 12 distinct shards


def sends_from(driver: CoreDriver, node: str) -> Counter[bytes]:
    """Count the StorePiece requests ``node`` sends, by piece (watched from now on)."""
    counts: Counter[bytes] = Counter()

    def watch(sender: str, effect: object) -> None:
        if sender == node and isinstance(effect, ev.Send) and isinstance(effect.message, msg.StorePiece):
            counts[effect.message.piece_id] += 1

    driver.watch(watch)
    return counts


def assert_every_slot_on_disk(driver: CoreDriver, put_client: int) -> None:
    """Every copy the manifest's placement names is on that node's disk, byte-exact."""
    coordinator = driver.clients[put_client].node
    get = driver.result(driver.get(coordinator, "run/a"))
    assert get.ok, get.final
    assert get.files() == {"m": DATA}
    manifest = get.manifest
    for stripe, hint in zip((s for f in manifest.files for s in f.stripes), manifest.placement):
        where = StripePlacement.from_hint(hint, stripe.k, stripe.p)
        holders = [*where.data, *((node,) for node in where.parity)]
        for pid, nodes in zip(stripe.piece_ids, holders):
            for holder in nodes:
                assert pid in driver.nodes[holder].disk.pieces, (holder, pid.hex()[:12])

def test_the_coordinator_sends_each_data_shard_once_and_relays_forward_the_second_copy():
    driver = CoreDriver(5)
    coordinator = driver.ids[0]
    sent = sends_from(driver, coordinator)
    put = driver.result(driver.put(coordinator, "run/a", {"m": DATA}))
    assert put.ok, put.final
    assert sent and max(sent.values()) == 1, "a piece left the coordinator twice"
    forwarded = driver.core(coordinator).stats["replicas_forwarded"]
    relayed = sum(driver.core(n).stats["pieces_forwarded"] for n in driver.ids[1:])
    assert forwarded > 0 and forwarded == relayed
    copies = Counter(pid for node in driver.nodes.values() for pid in node.disk.pieces)
    assert sum(copies.values()) >= 2 * 12, "every data shard must have two copies"
    get = driver.result(driver.get(driver.ids[3], "run/a"))
    assert get.ok and get.files() == {"m": DATA}


def test_without_forwarding_the_coordinator_sends_both_copies():
    settings = replace(CoreSettings(policy=Policy(shard_size=SHARD)), forward_replicas=False)
    driver = CoreDriver(5, settings=settings)
    coordinator = driver.ids[0]
    sent = sends_from(driver, coordinator)
    put = driver.result(driver.put(coordinator, "run/a", {"m": DATA}))
    assert put.ok, put.final
    assert max(sent.values()) == 2 and driver.core(coordinator).stats["replicas_forwarded"] == 0


def test_a_forwarded_copy_counts_only_once_its_own_holder_acknowledges_it():
    """The relay's reply says nothing about the second copy: while the second holders'
    acknowledgements are held back, the put cannot finish."""
    driver = CoreDriver(5)
    coordinator = driver.ids[0]

    def holder_ack(sender: str, effect: object) -> bool:
        """Each holder's acknowledgement of a forwarded copy, held once."""
        if (isinstance(effect, ev.Send) and effect.peer == coordinator and sender != coordinator
                and isinstance(effect.message, msg.PieceStored) and effect.message.ok
                and effect.message.req in forward_reqs and id(effect) not in held_once):
            held_once.add(id(effect))
            return True
        return False

    held_once: set[int] = set()

    forward_reqs: set[int] = set()
    driver.watch(lambda s, e: forward_reqs.add(e.message.forward_req) if isinstance(e, ev.Send) and isinstance(
        e.message, msg.StorePiece) and e.message.forward_req else None)
    driver.hold(holder_ack, count=10_000)
    client = driver.put(coordinator, "run/a", {"m": DATA})
    driver.run()
    assert driver.held, "no forwarded copy was acknowledged"
    assert not driver.clients[client].done, "the put finished without the holders' own acknowledgements"
    for _ in range(100):  # acknowledgements of later forwards are held too: hand them on each round
        if not driver.held:
            break
        assert not driver.clients[client].done
        driver.release()
        driver.run()
    put = driver.result(client)
    assert put.ok, put.final
    assert_every_slot_on_disk(driver, client)


def test_a_relay_can_only_fail_a_forwarded_request_never_answer_it():
    driver = CoreDriver(3)
    core = driver.core(driver.ids[0])
    relay, holder = driver.ids[1], driver.ids[2]
    outcomes: list[str] = []
    req = core.expect(driver.now, holder, relay, lambda t, reply, payload: outcomes.append("answered"),
                      lambda t, why: outcomes.append(why))
    core.handle(driver.now, ev.MessageReceived(relay, msg.PieceStored(req, ok=True), None))
    assert outcomes == [], "a relay's 'stored' must not count for the holder"
    core.handle(driver.now, ev.MessageReceived(relay, msg.PieceStored(req, ok=False, error="queue full"), None))
    assert outcomes == ["queue full"]
    req = core.expect(driver.now, holder, relay, lambda t, reply, payload: outcomes.append("answered"),
                      lambda t, why: outcomes.append(why))
    core.handle(driver.now, ev.MessageReceived(holder, msg.PieceStored(req, ok=True), None))
    assert outcomes[-1] == "answered"


def test_a_relay_that_cannot_reach_the_holder_declines_and_the_coordinator_sends_the_copy():
    driver = CoreDriver(5)
    coordinator = driver.ids[0]
    # Every other node sees only itself and the coordinator: it can forward to nobody.
    for node in driver.ids[1:]:
        driver.announce(alive=[coordinator, node], to=[node])
    driver.run()
    sent = sends_from(driver, coordinator)
    client = driver.put(coordinator, "run/a", {"m": DATA})
    put = driver.result(client)
    assert put.ok, put.final
    core = driver.core(coordinator)
    declined = sum(driver.core(n).stats["forwards_declined"] for n in driver.ids[1:])
    assert declined > 0 and core.stats["forward_fallbacks"] == declined
    assert core.stats["replicas_forwarded"] == 0 and max(sent.values()) == 2
    assert core.stats["piece_retries"] == 0 and core.stats["stripes_replanned"] == 0, \
        "a declined forward is no fault of the holder's"
    assert_every_slot_on_disk(driver, client)


def test_a_relay_that_dies_after_taking_the_piece_is_replaced_and_its_forward_is_sent_directly():
    driver = CoreDriver(5)
    coordinator, relay = driver.ids[0], driver.ids[2]

    def crash_on_forward(sender: str, effect: object) -> bool:
        if sender == relay and isinstance(effect, ev.Send) and isinstance(effect.message, msg.StorePiece) \
                and effect.message.ack_to:
            driver.crash(relay)  # it took the piece and dies before passing it on
            return True
        return False

    driver.intercept(ev.Send, crash_on_forward)
    client = driver.put(coordinator, "run/a", {"m": DATA})
    driver.run()
    assert not driver.nodes[relay].up, "the relay was never asked to forward"
    driver.announce()  # membership notices
    driver.advance(60)
    put = driver.result(client)
    assert put.ok, put.final
    assert driver.core(coordinator).stats["forward_fallbacks"] >= 1
    assert_every_slot_on_disk(driver, client)
    driver.restart(relay)  # its disk is intact: nothing lost either way
    get = driver.result(driver.get(relay, "run/a"))
    assert get.ok and get.files() == {"m": DATA}


def test_a_relay_holds_at_most_its_forwarding_budget():
    settings = replace(CoreSettings(policy=Policy(shard_size=SHARD)), memory_budget=8 * SHARD,
                       max_inflight_bytes_per_peer=2 * SHARD)
    driver = CoreDriver(5, settings=settings)
    coordinator = driver.ids[0]
    deepest = Counter()

    def watch(node: str, effect: object) -> None:
        if node != coordinator and driver.nodes[node].up:
            deepest[node] = max(deepest[node], driver.core(node).forwarder.held)

    driver.watch(watch)
    client = driver.put(coordinator, "run/a", {"m": random.Random(8).randbytes(40 * SHARD)})
    put = driver.result(client)
    assert put.ok, put.final
    budget = settings.memory_budget // 4
    assert deepest and max(deepest.values()) <= budget, deepest
    assert max(deepest.values()) > 0, "nothing was forwarded"
    assert all(driver.core(n).forwarder.held == 0 for n in driver.ids), "a forwarded buffer leaked"


def test_a_forward_nobody_reports_on_ends_within_three_request_timeouts():
    """A relay that restarted lost its forwards without a word, while bytes keep moving
    with it and with the holder for other reasons: the coordinator stops waiting after
    FORWARD_PATIENCE request timeouts and sends the copy itself."""
    from peerstore.core.messenger import FORWARD_PATIENCE

    driver = CoreDriver(3)
    core = driver.core(driver.ids[0])
    relay, holder = driver.ids[1], driver.ids[2]
    ended: list[tuple[float, str]] = []
    core.expect(0.0, holder, relay, lambda t, reply, payload: ended.append((t, "answered")),
                lambda t, why: ended.append((t, why)))
    timeout = core.settings.request_timeout
    for tick in range(1, 100):
        now = tick * 0.5
        core.bytes_moved(now, [relay, holder])
        core.expire(now)
        if ended:
            break
    assert ended and ended[0][1] == "timeout"
    assert FORWARD_PATIENCE * timeout <= ended[0][0] <= FORWARD_PATIENCE * timeout + 0.5
