"""One node's garbage collector: its piece leases, its GC passes and its local deletes.

A pass (every ``gc_interval`` seconds) runs these steps, each waiting for the last:

1. **Retention**: tombstone what ``retention_keep_last`` drops (``gc.retention_tombstones``),
   made durable in the local catalog; anti-entropy spreads it (every node computes the same).
2. **Quorum**: collect nothing unless this node sees a majority of the last stable
   membership (a minority side may be missing catalog entries).
3. **Catalog sync**: push-pull the catalog with every live peer; every one must answer, so
   any version a reachable node knows of is known here before deciding.
4. **References**: load the manifest of every live version (local copy first, then
   peers; cached by id, manifests are immutable). One that cannot be loaded stops the pass.
5. **Sweep**: with the catalog durable (a tombstone is never acted on before it would
   survive a crash) and no live version added since step 4, delete every local piece that
   is unreferenced and unleased (``gc.plan_deletions``), and the manifests of tombstoned
   versions.

Deletes go through :meth:`GarbageCollector.delete_pieces`: the pieces leave the inventory
at once (so they are no longer offered or counted), and a store of the same id waits
until the delete has completed, so a delete can never undo a later write. A crash
mid-sweep loses nothing referenced: only unreferenced pieces are ever deleted, and a
delete the crash undid is repeated by the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from peerstore.core import events as ev
from peerstore.core import gc
from peerstore.core.manifests import ManifestFetch
from peerstore.model.catalog import Catalog
from peerstore.wire import messages as msg

if TYPE_CHECKING:
    from random import Random

    from peerstore.core.settings import CoreSettings
    from peerstore.model.manifest import Manifest

RENEWALS_PER_LEASE = 3  # a running put renews its leases this many times per lease period
FIGURES_EVERY = 5.0  # seconds: GC figures are recomputed at most this often unless something changed
MAX_REFERENCE_ROUNDS = 5  # live versions added while loading manifests: load again, this often


class CollectorHost(Protocol):
    """What the collector uses of its node (``NodeContext`` provides it)."""

    node_id: str
    settings: CoreSettings
    rng: Random
    alive: frozenset[str]
    catalog: Catalog
    inventory: set[bytes]
    stats: Any

    def emit(self, effect: ev.Effect) -> None: ...
    def local(self, make: Callable[[Any], ev.Effect], on_done: Callable[[float, Any], None]) -> None: ...
    def request(self, now: float, peer: str, make: Callable[[int], msg.Message],
                on_reply: Callable[[float, msg.Message, Any], None],
                on_failure: Callable[[float, str], None], **kwargs: Any) -> int: ...
    def is_alive(self, peer: str) -> bool: ...
    def merge_catalog(self, now: float, other: Catalog, on_done: Callable[[float, bool], None]) -> None: ...
    def refresh_catalog(self, now: float, on_done: Callable[[float, int], None],
                        peers: list[str] | None = None) -> None: ...
    def catalog_durable(self) -> bool: ...
    def flush_catalog(self, on_done: Callable[[float, bool], None]) -> None: ...


@dataclass
class LeaseHolder:
    """A running operation (a put) whose pieces must not be collected anywhere.
    ``pieces()`` maps each node to the piece ids it holds or is being sent;
    ``lost(node, ids)`` is told of pieces a node says it no longer has."""

    pieces: Callable[[], dict[str, set[bytes]]]
    lost: Callable[[float, str, list[bytes]], None]


@dataclass
class GcReport:
    """The latest figures of this node's collector, for status and metrics."""

    awaiting_bytes: int = 0
    awaiting_pieces: int = 0
    leased_bytes: int = 0
    freed_bytes: int = 0  # since the process started
    freed_pieces: int = 0
    passes: int = 0
    last_pass: float | None = None  # when the last complete pass ended (the shell's clock)
    blocked: str = ""  # why the last pass deleted nothing, if it was stopped

    def as_dict(self) -> dict[str, Any]:
        return {"awaiting_bytes": self.awaiting_bytes, "awaiting_pieces": self.awaiting_pieces,
                "leased_bytes": self.leased_bytes, "freed_bytes": self.freed_bytes,
                "freed_pieces": self.freed_pieces, "passes": self.passes, "blocked": self.blocked}


@dataclass
class _Pass:
    started: float
    live: frozenset[bytes] = frozenset()
    rounds: int = 0
    waiting: set[bytes] = field(default_factory=set)


class GarbageCollector:
    """Leases, GC passes and local deletes for one node (pure: driven by its NodeCore)."""

    def __init__(self, node: CollectorHost, sizes: dict[bytes, int] | None = None,
                 majority: Callable[[], bool] | None = None):
        s = node.settings
        self.node = node
        self.interval = s.gc_interval
        self.leases = gc.LeaseTable(s.gc_lease_seconds, s.gc_margin_seconds)
        self.keep_last = s.retention_keep_last
        self.majority = majority or (lambda: True)
        self.sizes: dict[bytes, int] = dict(sizes or {})
        self.deleting: set[bytes] = set()
        self._pinned: dict[bytes, int] = {}  # pieces a store is working on: never deleted meanwhile
        self._parked: dict[bytes, list[Callable[[float], None]]] = {}
        self._holders: dict[int, LeaseHolder] = {}
        self._next_renewal: float | None = None
        self._next_pass: float | None = None  # None until the node has started
        self._pass: _Pass | None = None
        self._pieces_of: dict[bytes, frozenset[bytes]] = {}  # live manifest id -> its piece ids
        self._referenced: frozenset[bytes] | None = None  # pieces live versions need, as of:
        self._referenced_digest: bytes | None = None  # ... this catalog
        self._figures_key: tuple[bytes, int, int] | None = None
        self._figures_at = 0.0
        self._manifests_gone: set[bytes] = set()
        self.report = GcReport()

    # -- the node's clock ------------------------------------------------------------------

    def started(self, now: float) -> None:
        """The node (re)started: what it holds is leased for one lease period from now."""
        self.leases.started(now)
        if self._next_pass is None:
            self._next_pass = now + self.interval

    def tick(self, now: float) -> None:
        if self._next_renewal is not None and self._next_renewal <= now:
            self._renew(now)
        if self._pass is None and self._next_pass is not None and self._next_pass <= now:
            self.run_pass(now)

    def next_deadline(self) -> float | None:
        due = [t for t in (self._next_renewal, None if self._pass else self._next_pass) if t is not None]
        return min(due, default=None)

    # -- leases ----------------------------------------------------------------------------

    def piece_stored(self, now: float, piece_id: bytes, size: int = 0) -> None:
        """A piece was written or acknowledged as held here: lease it, note its size."""
        self.leases.grant(now, (piece_id,))
        if size:
            self.sizes[piece_id] = size

    def serve_renewal(self, now: float, piece_ids: tuple[bytes, ...], seconds: float) -> bytes:
        """A peer's running put renews its leases here; answer which pieces are held
        (bitmap), leasing only those (nothing else can need it). A piece being deleted
        is not held: its lease had run out, so the put must not count it."""
        bits = bytearray((len(piece_ids) + 7) // 8)
        held = []
        for i, pid in enumerate(piece_ids):
            if pid in self.node.inventory:
                bits[i // 8] |= 1 << (i % 8)
                held.append(pid)
        self.leases.grant(now, held, seconds)
        return bytes(bits)

    def hold(self, now: float, op_id: int, holder: LeaseHolder) -> None:
        """``holder``'s pieces stay leased, wherever they are, until ``release(op_id)``."""
        self._holders[op_id] = holder
        if self._next_renewal is None:
            self._next_renewal = now + self._renewal_period()

    def release(self, op_id: int) -> None:
        self._holders.pop(op_id, None)
        if not self._holders:
            self._next_renewal = None

    def _renewal_period(self) -> float:
        return self.leases.lease_seconds / RENEWALS_PER_LEASE

    def _renew(self, now: float) -> None:
        self._next_renewal = now + self._renewal_period() if self._holders else None
        seconds = self.leases.lease_seconds
        for op_id, holder in list(self._holders.items()):
            for target, pids in sorted(holder.pieces().items()):
                ids = sorted(pids)
                if target == self.node.node_id:
                    self.leases.grant(now, [p for p in ids if p in self.node.inventory], seconds)
                    continue
                if not self.node.is_alive(target):
                    continue
                for chunk in gc.batches(ids, msg.MAX_QUERY_IDS):
                    self._send_renewal(now, op_id, target, tuple(chunk), seconds)

    def _send_renewal(self, now: float, op_id: int, target: str, chunk: tuple[bytes, ...], seconds: float) -> None:
        def answered(t: float, reply: msg.Message, payload: Any) -> None:
            holder = self._holders.get(op_id)
            if holder is None or not isinstance(reply, msg.PiecesHeld):
                return
            gone = [pid for i, pid in enumerate(chunk)
                    if not (i // 8 < len(reply.held) and reply.held[i // 8] >> (i % 8) & 1)]
            if gone:
                holder.lost(t, target, gone)

        self.node.stats["gc_lease_renewals"] += 1
        self.node.request(
            now, target,
            lambda req: msg.RenewLease(req, piece_ids=chunk, seconds=int(seconds + 0.999)),
            answered, lambda t, why: None,
        )

    # -- deleting --------------------------------------------------------------------------

    def pin(self, piece_id: bytes) -> None:
        """A store of ``piece_id`` is running (verifying a held copy, or writing)."""
        self._pinned[piece_id] = self._pinned.get(piece_id, 0) + 1

    def unpin(self, piece_id: bytes) -> None:
        left = self._pinned.get(piece_id, 0) - 1
        if left > 0:
            self._pinned[piece_id] = left
        else:
            self._pinned.pop(piece_id, None)

    def before_store(self, piece_id: bytes, resume: Callable[[float], None]) -> bool:
        """True if ``piece_id`` is being deleted: ``resume`` runs once the delete is done
        (so the store writes it afresh instead of trusting a file about to vanish)."""
        if piece_id not in self.deleting:
            return False
        self._parked.setdefault(piece_id, []).append(resume)
        return True

    def drop_surplus(self, now: float, piece_ids: Iterable[bytes], dry_run: bool = False) -> list[bool]:
        """Rebalance: the owner of these pieces found this node's copies surplus. Delete
        each one that is held, not leased to a running put (which may have counted this
        very copy) and not being stored or deleted; per piece, whether it was dropped
        (with ``dry_run``, whether it would be, deleting nothing)."""
        ids = list(piece_ids)
        dropped = [pid in self.node.inventory and pid not in self.deleting and pid not in self._pinned
                   and not self.leases.protected(pid, now) for pid in ids]
        if dry_run:
            return dropped
        chosen = [pid for pid, ok in zip(ids, dropped) if ok]
        self.node.stats["rebalance_drops_refused"] += len(ids) - len(chosen)
        if chosen:
            self.node.stats["rebalance_pieces_dropped"] += len(chosen)
            self.delete_pieces(now, chosen, reason="surplus")
        return dropped

    def delete_pieces(self, now: float, piece_ids: list[bytes],
                      on_done: Callable[[float, int], None] | None = None, reason: str = "gc") -> None:
        """Remove local copies of ``piece_ids`` (at once from the inventory, from disk
        through DeletePieces); ``on_done(now, bytes freed)`` after the last batch.
        ``reason``: "gc" (unreferenced) or "surplus" (rebalance: enough copies elsewhere)."""
        wanted = [pid for pid in piece_ids
                  if pid in self.node.inventory and pid not in self.deleting and pid not in self._pinned]
        if not wanted:
            if on_done:
                on_done(now, 0)
            return
        for pid in wanted:
            self.node.inventory.discard(pid)
            self.deleting.add(pid)
        chunks = gc.batches(wanted)
        left = {"n": len(chunks), "freed": 0}

        def deleted(t: float, done: ev.PiecesDeleted, chunk: list[bytes]) -> None:
            left["n"] -= 1
            left["freed"] += done.freed_bytes
            self.report.freed_bytes += done.freed_bytes
            self.report.freed_pieces += len(done.piece_ids)
            self.node.stats["gc_pieces_deleted"] += len(done.piece_ids)
            self.node.stats["gc_bytes_freed"] += done.freed_bytes
            gone = set(done.piece_ids)
            if len(gone) < len(chunk):
                self.node.stats["gc_delete_errors"] += 1
            for pid in chunk:
                self.deleting.discard(pid)
                if pid in gone:
                    self.sizes.pop(pid, None)
                else:
                    self.node.inventory.add(pid)  # still on disk: held, as before
                for resume in self._parked.pop(pid, []):
                    resume(t)
            if left["n"] == 0 and on_done:
                on_done(t, left["freed"])

        for chunk in chunks:
            self.node.local(lambda tag, c=tuple(chunk): ev.DeletePieces(tag, c, reason),
                            lambda t, done, c=chunk: deleted(t, done, c))

    # -- a pass ----------------------------------------------------------------------------

    def run_pass(self, now: float) -> None:
        """Start a pass now (the node's timer calls this every ``gc_interval``)."""
        if self._pass is not None:
            return
        self._pass = _Pass(started=now)
        self.node.stats["gc_passes_started"] += 1
        # Forget what no longer matters, even if this pass stops early (no majority...).
        self.leases.prune(now)
        for pid in [p for p in self.sizes if p not in self.node.inventory and p not in self.deleting]:
            del self.sizes[pid]
        victims = gc.retention_tombstones(self.node.catalog, self.keep_last)
        if not victims:
            self._check_quorum(now)
            return
        self.node.stats["gc_retention_removed"] += len(victims)

        def applied(t: float, ok: bool) -> None:
            if not ok:
                self._stop(t, "retention: the catalog could not be written to disk")
                return
            self._check_quorum(t)

        self.node.merge_catalog(now, Catalog(tombstones=victims), applied)

    def _check_quorum(self, now: float) -> None:
        if not self.majority():
            self._stop(now, "this node does not see a majority of the cluster")
            return
        peers = sorted(self.node.alive - {self.node.node_id})

        def synced(t: float, answers: int) -> None:
            if answers < len(peers):
                self._stop(t, f"catalog sync: {len(peers) - answers} of {len(peers)} live peer(s) did not answer")
                return
            self._load_references(t)

        self.node.refresh_catalog(now, synced)

    def _load_references(self, now: float) -> None:
        p = self._pass
        assert p is not None
        p.rounds += 1
        if p.rounds > MAX_REFERENCE_ROUNDS:
            self._stop(now, "the catalog kept changing while references were loaded")
            return
        p.live = gc.live_manifest_ids(self.node.catalog)
        for mid in list(self._pieces_of):
            if mid not in p.live:
                del self._pieces_of[mid]
        p.waiting = {mid for mid in p.live if mid not in self._pieces_of}
        if not p.waiting:
            self._sweep(now)
            return
        self._fetch_next(now)

    def _fetch_next(self, now: float) -> None:
        p = self._pass
        assert p is not None
        mid = min(p.waiting)

        def loaded(t: float, manifest: Manifest | None) -> None:
            if self._pass is not p:
                return
            if manifest is None:
                self._stop(t, f"manifest {mid.hex()[:16]} of a live version is on no live node")
                return
            self._pieces_of[mid] = manifest.piece_ids()
            for pid, size in _piece_sizes(manifest).items():
                if pid in self.node.inventory:
                    self.sizes.setdefault(pid, size)
            p.waiting.discard(mid)
            if p.waiting:
                self._fetch_next(t)
            else:
                self._sweep(t)

        ManifestFetch(self.node, mid, loaded).start()  # type: ignore[arg-type]

    def _sweep(self, now: float) -> None:
        p = self._pass
        assert p is not None
        live = gc.live_manifest_ids(self.node.catalog)
        if not live <= set(self._pieces_of):
            self._load_references(now)  # versions committed meanwhile: load theirs too
            return
        referenced = frozenset().union(*(self._pieces_of[mid] for mid in live))
        self._referenced, self._referenced_digest = referenced, self.node.catalog.digest()
        if not self.node.catalog_durable():
            # Act only on tombstones that would survive a crash: write the catalog first.
            def flushed(t: float, ok: bool) -> None:
                if self._pass is not p:
                    return
                if ok:
                    self._load_references(t)
                else:
                    self._stop(t, "the catalog could not be written to disk")

            self.node.flush_catalog(flushed)
            return
        busy = self.deleting | set(self._pinned)
        doomed = gc.plan_deletions(self.node.inventory, referenced, self.leases, now, busy=busy)
        self.node.stats["gc_pieces_planned"] += len(doomed)
        if doomed:
            self.delete_pieces(now, doomed)
        manifests = sorted(gc.tombstoned_manifest_ids(self.node.catalog) - self._manifests_gone)
        for chunk in gc.batches(manifests):
            self._manifests_gone.update(chunk)
            self.node.local(lambda tag, c=tuple(chunk): ev.DeleteManifests(tag, c), lambda t, done: None)
        for mid in list(self._pieces_of):
            if mid not in live:
                del self._pieces_of[mid]
        self._finish(now, "")

    def _stop(self, now: float, why: str) -> None:
        self.node.stats["gc_passes_blocked"] += 1
        self._finish(now, why)

    def _finish(self, now: float, blocked: str) -> None:
        self._pass = None
        self.report.blocked = blocked
        self.report.passes += 1
        self.report.last_pass = now
        self._next_pass = now + self.interval
        self.refresh_figures(now)

    # -- figures ---------------------------------------------------------------------------

    def refresh_figures(self, now: float) -> GcReport:
        """Bytes held that no live version needs. Known once the manifest of every live
        version has been loaded (by a pass); a removal counts at once, a new version from
        the next pass on (until then the figures stay as they were)."""
        digest = self.node.catalog.digest()
        key = (digest, len(self.node.inventory), len(self.deleting))
        if key == self._figures_key and now < self._figures_at + FIGURES_EVERY:
            return self.report  # the shell asks every second; the inventory may be large
        self._figures_key, self._figures_at = key, now
        if digest != self._referenced_digest:
            live = gc.live_manifest_ids(self.node.catalog)
            if live <= set(self._pieces_of):
                self._referenced = frozenset().union(*(self._pieces_of[m] for m in live))
                self._referenced_digest = digest
        referenced = self._referenced
        if referenced is not None:
            figures = gc.unreferenced(self.node.inventory, referenced, self.leases, now, self.sizes)
            self.report.awaiting_bytes = figures.awaiting + sum(self.sizes.get(p, 0) for p in self.deleting)
            self.report.awaiting_pieces = figures.awaiting_pieces + len(self.deleting)
            self.report.leased_bytes = figures.leased
        return self.report


def _piece_sizes(manifest: Manifest) -> dict[bytes, int]:
    """Each piece's length from the manifest: data shards as recorded, parity a block."""
    out: dict[bytes, int] = {}
    for _, _, stripe in manifest.iter_stripes():
        for pid, length in zip(stripe.data_ids, stripe.data_lengths):
            out[pid] = length
        for pid in stripe.parity_ids:
            out[pid] = stripe.block_size
    return out
