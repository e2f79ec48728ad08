"""Core bugs the simulator found, pinned as small sans-IO tests: the NodeCore driver\n(``tests/support/core_driver.py``) runs the schedule that exposed each one."""

from __future__ import annotations

import random

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.ec import encode_parity, piece_id
from peerstore.model.catalog import Catalog, CatalogEntry
from peerstore.model.codec import seal
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg
from tests.support.core_driver import SHARD, CoreDriver

A, B, C, D, E = (ch * 16 for ch in "abcde")
PLACEMENT = (B, C, B, C, D, E, D, E, B, C)  # data0 on b and c, data1 on b and c, ..., parity0 b, parity1 c


def one_stripe_checkpoint() -> tuple[Manifest, list[bytes]]:
    """Checkpoint run/x: one file of one full stripe (k=4, p=2) placed as PLACEMENT, and
    its six pieces' bytes by position."""
    rng = random.Random(7)
    shards = [rng.randbytes(SHARD) for _ in range(4)]
    pieces = shards + encode_parity(shards, 2)
    ids = [piece_id(piece) for piece in pieces]
    stripe = StripeEntry(k=4, p=2, block_size=SHARD, data_ids=tuple(ids[:4]), data_lengths=(SHARD,) * 4,
                         parity_ids=tuple(ids[4:]))
    manifest = Manifest(
        name="run/x", version=VersionId(1, B), policy=Policy(shard_size=SHARD),
        files=(FileEntry("m", 4 * SHARD, 0o644, piece_id(b"".join(shards)), (stripe,)),),
        placement=(PLACEMENT,), tolerance=1, created=0.0, is_dir=False,
    )
    return manifest, pieces


def cluster_holding(holders: dict[str, set[int]]) -> tuple[CoreDriver, Manifest, list[bytes]]:
    """Nodes a..e, started; a holds run/x's manifest and catalog entry, each holder the
    pieces at the given positions."""
    manifest, pieces = one_stripe_checkpoint()
    driver = CoreDriver([A, B, C, D, E], start=False)
    disk = driver.nodes[A].disk
    disk.manifests[manifest.id] = manifest.encode()
    disk.catalog = seal(Catalog(entries=[CatalogEntry.for_manifest(manifest)]).encode())
    for node_id, positions in holders.items():
        driver.nodes[node_id].disk.pieces.update({piece_id(pieces[i]): pieces[i] for i in positions})
    driver.start()
    return driver, manifest, pieces


def test_get_fails_instead_of_hanging_when_the_last_piece_verifies_after_sources_ran_out():
    """Found by ``sim.chaos --scenario stream-breaks --seed 2``: connection resets left a
    stripe with three verified pieces, no source for a fourth, and the stripe's last
    reschedule ran while one piece was still being verified. Nothing ever looked at the
    stripe again, so the get waited forever (contract 2: bounded wait, never a hang)."""
    driver, manifest, pieces = cluster_holding({B: {0, 1, 4}, C: {0, 1, 5}, D: {2, 3}, E: {2, 3}})
    driver.crash(B)  # a still believes them alive: every request to them fails
    driver.crash(C)
    position_2 = piece_id(pieces[2])
    # the verification of position 2 completes last, after every source was tried
    driver.hold(lambda node, e: node == A and isinstance(e, ev.VerifyPiece) and e.piece_id == position_2)
    client = driver.get(A, "run/x")
    driver.run()
    assert driver.held, "position 2 was never fetched: the schedule this test pins did not happen"
    assert not driver.clients[client].done
    driver.now = 1.0
    driver.release()
    get = driver.result(client)  # fails the test if the get never answers (it hangs)
    assert isinstance(get.final, ev.Failed) and "cannot restore" in get.final.reason
    core = driver.core(A)
    assert core.operations == [] and core.buffer_bytes == 0
    assert driver.nodes[A].handles == {}, "the failed get left piece buffers behind"


def test_concurrent_puts_share_the_memory_budget_and_resume_when_it_frees():
    """Found by ``sim.chaos --scenario many-puts-small-memory``: an operation waiting for
    the node's memory budget or a peer's in-flight room was only woken by its own events,
    so concurrent puts through one node stalled until some unrelated timer fired (forever,
    without one); and each operation could take one stripe beyond the budget, so memory
    grew with the number of concurrent puts (contract 4)."""
    from sim.cluster import Cluster
    from sim.content import FileModel

    budget = 16 * SHARD
    settings = CoreSettings(policy=Policy(shard_size=SHARD), memory_budget=budget,
                            max_inflight_bytes_per_peer=4 * SHARD)
    cluster = Cluster(5, seed=1, settings=settings, membership="static")
    via = cluster.ids[0]
    clients = [cluster.put(via, f"run/p{i}", [FileModel.generate("m", SHARD * (9 + i), SHARD, seed=i)])
               for i in range(6)]
    records = cluster.wait(*clients, max_time=60)
    assert all(r.ok for r in records), [r.final for r in records]
    assert cluster.loop.now < 5.0  # no stall waiting for a timer
    assert cluster.violations == []  # buffers within budget + one stripe, in flight within limit + one piece


def test_a_stripe_being_delivered_is_not_fetched_again_when_membership_changes():
    """Found by ``sim.chaos --scenario random --seed 2125``: a node returned while a get
    was handing a stripe to its client; the get fetched that stripe's pieces again, and
    the handles of the second copies were never released (the shell's memory leaked)."""
    everything = set(range(6))
    driver, manifest, pieces = cluster_holding({B: everything, C: everything, D: everything, E: everything})
    driver.announce(alive=[A, B, C, D], to=[A])  # a believes e is down
    driver.run()
    delivering, late_fetches = [], []

    def record_late_fetch(node: str, effect) -> None:
        if node == A and delivering and isinstance(effect, ev.Send) and isinstance(effect.message, msg.FetchPiece):
            late_fetches.append(effect.message.piece_id)

    def deliver(node: str, effect: ev.DeliverStripe) -> bool:
        delivering.append(effect.stripe)
        driver.announce(alive=[A, B, C, D, E], to=[A])  # e comes back while the stripe is on its way
        return False  # then deliver it as usual

    driver.watch(record_late_fetch)
    driver.intercept(ev.DeliverStripe, deliver)
    get = driver.result(driver.get(A, "run/x"))
    assert isinstance(get.final, ev.GetDone), get.replies
    assert get.files() == {"m": b"".join(pieces[:4])}
    assert delivering == [0]
    assert late_fetches == []
    assert driver.nodes[A].handles == {}, "handles leaked"
