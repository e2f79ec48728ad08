"""Core bugs the simulator found, pinned as small sans-IO tests (no simulator needed)."""

from __future__ import annotations

import random

from peerstore.core import events as ev
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.model.catalog import Catalog, CatalogEntry
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg

SHARD = 64 * 1024


def _pid(i: int) -> bytes:
    return bytes([i]) * 32


def test_get_fails_instead_of_hanging_when_the_last_piece_verifies_after_sources_ran_out():
    """Found by ``sim.chaos --scenario stream-breaks --seed 2``: connection resets left a
    stripe with three verified pieces, no source for a fourth, and the stripe's last
    reschedule ran while one piece was still being verified. Nothing ever looked at the
    stripe again, so the get waited forever (contract 2: bounded wait, never a hang)."""
    a, b, c, d, e = (ch * 16 for ch in "abcde")
    stripe = StripeEntry(k=4, p=2, block_size=SHARD, data_ids=tuple(_pid(i) for i in range(4)),
                         data_lengths=(SHARD,) * 4, parity_ids=(_pid(4), _pid(5)))
    manifest = Manifest(
        name="run/x", version=VersionId(1, b), policy=Policy(shard_size=SHARD),
        files=(FileEntry("m", 4 * SHARD, 0o644, _pid(9), (stripe,)),),
        placement=((b, c, b, c, d, e, d, e, b, c),), tolerance=1, created=0.0, is_dir=False,
    )
    catalog = Catalog(entries=[CatalogEntry.for_manifest(manifest)])
    core = NodeCore(a, CoreSettings(policy=Policy(shard_size=SHARD)), random.Random(1),
                    catalog=catalog, alive=frozenset({a, b, c, d, e}))
    holders = {b: {0, 1, 4}, c: {0, 1, 5}, d: {2, 3}, e: {2, 3}}
    position_of = {_pid(i): i for i in range(6)}
    dead = {b, c}  # their connections reset: every request to them fails
    held_back: list[ev.PieceVerified] = []  # the verification of position 2 completes last
    queue = list(core.handle(0.0, ev.GetCommand("client", "run/x")))
    handles = iter(range(100, 1000))
    verify_of: dict[int, int] = {}
    finals = []
    for step in range(500):
        if not queue:
            if not held_back:
                break
            queue = core.handle(1.0, held_back.pop())
            continue
        effect = queue.pop(0)
        out: list = []
        if isinstance(effect, ev.LoadManifest):
            out = core.handle(0.0, ev.ManifestLoaded(effect.tag, manifest.encode()))
        elif isinstance(effect, ev.Send) and isinstance(effect.message, msg.FetchPiece):
            peer, m = effect.peer, effect.message
            if peer in dead:
                out = core.handle(0.0, ev.PeerUnreachable(peer, m.req))
            else:
                found = position_of[m.piece_id] in holders.get(peer, set())
                handle = next(handles) if found else None
                if handle is not None:
                    verify_of[handle] = position_of[m.piece_id]
                out = core.handle(0.0, ev.MessageReceived(
                    peer, msg.PieceData(m.req, piece_id=m.piece_id, found=found), handle))
        elif isinstance(effect, ev.VerifyPiece):
            done = ev.PieceVerified(effect.tag, True)
            if verify_of.get(effect.handle) == 2 and not held_back:
                held_back.append(done)
            else:
                out = core.handle(0.0, done)
        elif isinstance(effect, ev.Reply) and effect.final:
            finals.append(effect.body)
        queue += out
    assert finals, "the get never answered its client (it hangs)"
    assert isinstance(finals[0], ev.Failed) and "cannot restore" in finals[0].reason
    assert core.operations == [] and core.buffer_bytes == 0


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
    a, b, c, d, e = (ch * 16 for ch in "abcde")
    stripe = StripeEntry(k=4, p=2, block_size=SHARD, data_ids=tuple(_pid(i) for i in range(4)),
                         data_lengths=(SHARD,) * 4, parity_ids=(_pid(4), _pid(5)))
    manifest = Manifest(
        name="run/x", version=VersionId(1, b), policy=Policy(shard_size=SHARD),
        files=(FileEntry("m", 4 * SHARD, 0o644, _pid(9), (stripe,)),),
        placement=((b, c, b, c, d, e, d, e, b, c),), tolerance=1, created=0.0, is_dir=False,
    )
    core = NodeCore(a, CoreSettings(policy=Policy(shard_size=SHARD)), random.Random(1),
                    catalog=Catalog(entries=[CatalogEntry.for_manifest(manifest)]), alive=frozenset({a, b, c, d}))
    issued, released, delivered, late_fetches = set(), set(), set(), []
    handles = iter(range(100, 1000))
    queue = list(core.handle(0.0, ev.GetCommand("client", "run/x")))
    finals = []
    for _ in range(500):
        if not queue:
            break
        effect = queue.pop(0)
        out: list = []
        if isinstance(effect, ev.LoadManifest):
            out = core.handle(0.0, ev.ManifestLoaded(effect.tag, manifest.encode()))
        elif isinstance(effect, ev.Send) and isinstance(effect.message, msg.FetchPiece):
            if delivered:
                late_fetches.append(effect.message.piece_id)
            handle = next(handles)
            issued.add(handle)
            m = effect.message
            out = core.handle(0.0, ev.MessageReceived(effect.peer, msg.PieceData(m.req, piece_id=m.piece_id,
                                                                                   found=True), handle))
        elif isinstance(effect, ev.Send):
            continue  # catalog sync with the returning node: not answered here
        elif isinstance(effect, ev.VerifyPiece):
            out = core.handle(0.0, ev.PieceVerified(effect.tag, True))
        elif isinstance(effect, ev.ReleaseHandles):
            released.update(effect.handles)
        elif isinstance(effect, ev.DeliverStripe):
            delivered.update(h for _, h in effect.pieces)
            # A node comes back while the stripe is on its way to the client.
            out = core.handle(0.0, ev.MembersChanged(frozenset({a, b, c, d, e})))
            out += core.handle(0.1, ev.StripeDelivered(effect.op, effect.stripe, True))
        elif isinstance(effect, ev.Reply) and effect.final:
            finals.append(effect.body)
        queue += out
    assert finals and isinstance(finals[0], ev.GetDone), finals
    assert late_fetches == []
    assert issued - released - delivered == set(), "handles leaked"
