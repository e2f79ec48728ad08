"""What every operation a node coordinates works with: the node's state, requests to
peers with their deadlines, local effects with their completions, and the shared steps
(store a piece, reserve a version, spread or refresh the catalog).

``NodeContext`` is the part of a node that put, get and status depend on; ``NodeCore``
(``core/node.py``) adds the input handlers and serves peers. Pure: no I/O, no clock, no
global randomness (the ``random.Random`` is injected).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from peerstore.core import events as ev
from peerstore.core.collector import GarbageCollector
from peerstore.core.fanout import Fanout
from peerstore.core.forwarding import Forwarder
from peerstore.core.integrity import Integrity
from peerstore.core.messenger import Messenger
from peerstore.core.repairer import RepairService
from peerstore.core.settings import CoreSettings
from peerstore.core.snapshots import SnapshotWriter
from peerstore.core.store_health import StoreHealth
from peerstore.errors import FormatError
from peerstore.model.catalog import Catalog, encode_counters
from peerstore.model.codec import seal
from peerstore.model.names import VersionId
from peerstore.wire import messages as msg

if TYPE_CHECKING:
    from random import Random


class Operation:
    """Base for client operations coordinated by this node."""

    def __init__(self, node: "NodeContext", op_id: int, client: ev.ClientRef):
        self.node = node
        self.op_id = op_id
        self.client = client
        self.finished = False

    def start(self, now: float) -> None:
        raise NotImplementedError

    def on_completion(self, now: float, event: Any) -> None:
        """An effect this operation asked for has completed."""

    def tick(self, now: float) -> None:
        """Run retries that are due."""

    def next_deadline(self) -> float | None:
        return None

    def on_members_changed(self, now: float) -> None:
        """Membership changed: skip or re-place away from nodes no longer alive."""

    def cancel(self, now: float) -> None:
        """The client went away."""
        self.finish(ev.Failed("cancelled: the client disconnected"))

    def reply(self, body: Any, final: bool = False) -> None:
        self.node.emit(ev.Reply(self.client, body, final=final))

    def finish(self, body: Any) -> None:
        if not self.finished:
            self.finished = True
            self.cleanup()
            self.reply(body, final=True)
            self.node.forget_operation(self)

    def cleanup(self) -> None:
        """Release buffers and budget; called once when the operation ends."""


class NodeContext(Messenger):
    """The state and services of one node that its operations use."""

    def __init__(
        self,
        node_id: str,
        settings: CoreSettings,
        rng: Random,
        *,
        catalog: Catalog | None = None,
        inventory: frozenset[bytes] | set[bytes] | Mapping[bytes, int] = frozenset(),
        alive: frozenset[str] | None = None,
        counters: Mapping[str, int] | None = None,
        boot_epoch: int = 0,
        stable_members: Iterable[str] | None = None,
    ):
        super().__init__(node_id, settings, rng, alive, boot_epoch)
        self.catalog = catalog if catalog is not None else Catalog()
        self.inventory: set[bytes] = set(inventory)
        # Leases, GC passes and local deletes (core/collector.py); sizes when the shell gave them.
        self.gc = GarbageCollector(self, sizes=dict(inventory) if isinstance(inventory, Mapping) else None,
                                   majority=self.sees_majority)
        # Scrub, re-reads on request, and what happens to a corrupt copy (core/integrity.py).
        self.integrity = Integrity(self, sizes=inventory if isinstance(inventory, Mapping) else None)
        # A read-only disk: refuse pieces, say so in status, probe until writable (core/store_health.py).
        self.store_health = StoreHealth(self)
        # Passing pieces on for other nodes' puts (core/forwarding.py).
        self.forwarder = Forwarder(self)
        # Repair after node loss (core/repairer.py); ``stable_members`` is the last stable
        # membership this node saved (core/quorum.py), None on a first boot.
        self.repair = RepairService(self, stable=stable_members, on_stable=self._stable_changed)
        self._ops: dict[int, Operation] = {}
        self._ops_by_client: dict[ev.ClientRef, Operation] = {}
        self.buffer_bytes = 0  # bytes of stripe buffers held by the shell for our ops
        # Version counters this node reserved, per name: durable before use, loaded on
        # boot, so a version id is never handed out twice, crash or not.
        self.own_counters: dict[str, int] = dict(counters or {})
        self.reserved_counters: dict[str, int] = dict(self.own_counters)  # ... and seen from others
        self.stats["catalog_conflicts"] = len(self.catalog.conflicts())
        self._catalog_writer = SnapshotWriter(
            self, lambda: seal(self.catalog.encode()), ev.PersistCatalog, lambda c: (c.ok, c.error))
        self._counter_writer = SnapshotWriter(
            self, lambda: seal(encode_counters(self.own_counters)), ev.PersistCounters,
            lambda c: (c.ok, c.error))
        self._membership_writer = SnapshotWriter(
            self, self.repair.stable_blob, ev.PersistMembership, lambda c: (c.ok, c.error))

    @property
    def operations(self) -> list[Operation]:
        return list(self._ops.values())

    # -- helpers for operations ----------------------------------------------------------

    def can_buffer(self, size: int) -> bool:
        """Node-wide memory budget for stripe buffers, shared by every operation; one
        stripe may always be buffered when nothing is, so any stripe size makes progress."""
        return self.buffer_bytes == 0 or self.buffer_bytes + size <= self.settings.memory_budget

    def forget_operation(self, op: Operation) -> None:
        self._ops.pop(op.op_id, None)
        if self._ops_by_client.get(op.client) is op:
            del self._ops_by_client[op.client]

    def reserve_version(self, name: str, on_ready: Callable[[float, VersionId | None, str], None]) -> None:
        """A new version id for ``name``, unique for all time: its counter is above every
        one seen for the name and is durably recorded before ``on_ready`` gets it (None
        and the reason if that record could not be written)."""
        counter = max(self.catalog.next_counter(name), self.reserved_counters.get(name, 0) + 1)
        self.reserved_counters[name] = counter
        self.own_counters[name] = counter
        self._counter_writer.request(
            lambda t, ok, error: on_ready(t, VersionId(counter, self.node_id) if ok else None, error))

    def merge_catalog(self, now: float, other: Catalog, on_done: Callable[[float, bool], None]) -> None:
        """Merge ``other`` into our catalog and make it durable before ``on_done``."""
        changed = self.catalog.merge(other)
        for entry in other.entries:
            self.reserved_counters[entry.name] = max(
                self.reserved_counters.get(entry.name, 0), entry.version.counter
            )
        if not changed:
            on_done(now, True)
            return
        conflicts = len(self.catalog.conflicts())
        if conflicts > self.stats["catalog_conflicts"]:  # corruption: say so, keep both
            self.stats["catalog_conflicts"] = conflicts
        self._catalog_writer.request(lambda t, ok, error: on_done(t, ok))

    def store_piece(self, piece_id: bytes, handle: ev.Handle,
                    on_done: Callable[[float, bool, str], None], *, size: int = 0) -> None:
        """Make ``piece_id`` durable here from the bytes named by ``handle``.

        The one place that decides whether a copy already held may be trusted: it never
        is without being read again, since an acknowledgement counts the piece towards a
        checkpoint's tolerance. A held copy that no longer matches its id is replaced
        from the incoming bytes. The caller keeps ``handle``.

        Garbage collection: a store of a piece being deleted waits for the delete; the
        piece is pinned while the store runs and leased once it is done (``size``, when
        the caller knows it, is what the piece's GC figures count)."""
        if self.gc.before_store(piece_id, lambda now: self.store_piece(piece_id, handle, on_done, size=size)):
            return
        self.gc.pin(piece_id)

        def finish(now: float, ok: bool, error: str) -> None:
            self.gc.unpin(piece_id)
            if ok:
                self.gc.piece_stored(now, piece_id, size)
            on_done(now, ok, error)

        if piece_id not in self.inventory:
            self._write_piece(piece_id, handle, finish)
            return

        def checked(now: float, done: ev.HeldPieceVerified) -> None:
            if done.ok:
                finish(now, True, "")
                return
            self.inventory.discard(piece_id)  # the shell moved the rotten copy aside
            self.stats["held_pieces_corrupt"] += 1
            self._write_piece(piece_id, handle, finish)

        self.local(lambda tag: ev.VerifyHeldPiece(tag, piece_id), checked)

    def _write_piece(self, piece_id: bytes, handle: ev.Handle,
                     on_done: Callable[[float, bool, str], None]) -> None:
        def stored(now: float, done: ev.PieceStoredLocally) -> None:
            if done.ok:
                self.inventory.add(piece_id)
            on_done(now, done.ok, done.error)

        self.local(lambda tag: ev.StorePieceLocal(tag, piece_id, handle), stored)

    def catalog_durable(self) -> bool:
        """Is the catalog in memory the one on disk (no write pending or failed)?"""
        return self._catalog_writer.idle

    def flush_catalog(self, on_done: Callable[[float, bool], None]) -> None:
        """Write the catalog as it is now; ``on_done(now, ok)`` once that is durable."""
        self._catalog_writer.request(lambda t, ok, error: on_done(t, ok))

    def request_repair(self, now: float, piece_ids: Iterable[bytes]) -> None:
        """Re-create these pieces soon: scrub, verify and get call it with pieces found
        corrupt (already quarantined and out of the inventory). The repair service
        (``self.repair``, core/repairer.py) does it; without one the request is counted."""
        repair = getattr(self, "repair", None)
        if repair is not None:
            repair.request_repair(now, piece_ids)
        else:
            self.stats["repair_requests_unserved"] += 1

    def node_report(self, now: float) -> dict[str, Any]:
        """This node's report about itself for ``status`` (core/node_report.py): one key
        per subsystem."""
        return {"scrub": self.integrity.report(now), "repair": self.repair.report(now),
                "gc": self.gc.refresh_figures(now).as_dict(), "store": self.store_health.report(now)}

    def _stable_changed(self, now: float, members: frozenset[str]) -> None:
        """The repair service adopted a new stable membership: keep it on disk."""
        def written(t: float, ok: bool, error: str) -> None:
            if not ok:
                self.stats["membership_persist_failed"] += 1

        self._membership_writer.request(written)

    def sees_majority(self) -> bool:
        """The majority rule (core/quorum.py): this node sees a strict majority of the
        last stable membership. Until the repair service has one, nobody is a majority."""
        tracker = getattr(getattr(self, "repair", None), "tracker", None)
        return tracker is not None and tracker.has_majority()

    def spread_catalog(self, now: float, delta: Catalog, on_done: Callable[[float, int], None],
                       optional: frozenset[str] = frozenset()) -> None:
        """Persist ``delta`` locally, send it to every alive peer; ``on_done(now, acks)``
        once every peer answered or timed out (acks counts durable copies, ours included),
        not waiting for those in ``optional``."""
        blob = delta.encode()
        Fanout(
            self,
            peers=sorted(self.alive - {self.node_id}),
            make=lambda req: msg.CatalogUpdate(req, blob=blob),
            accept=lambda reply: isinstance(reply, msg.CatalogAck) and reply.ok,
            local=lambda done: self.merge_catalog(now, delta, lambda t, ok: done(t, ok)),
            on_done=on_done,
            optional=optional,
        ).start(now)

    def refresh_catalog(self, now: float, on_done: Callable[[float, int], None],
                        peers: list[str] | None = None) -> None:
        """Push-pull our whole catalog with ``peers`` (default: every alive peer), merging
        what they answer; ``on_done(now, answers)`` when all answered or timed out."""
        def merge(reply: msg.Message) -> bool:
            if not isinstance(reply, msg.CatalogState):
                return False
            try:
                theirs = Catalog.decode(reply.blob)
            except FormatError:
                return False
            self.merge_catalog(now, theirs, lambda t, ok: None)
            return True

        blob = self.catalog.encode()
        Fanout(
            self,
            peers=sorted(self.alive - {self.node_id}) if peers is None else peers,
            make=lambda req: msg.SyncCatalog(req, blob=blob),
            accept=merge,
            local=None,
            on_done=on_done,
            timeout=self.settings.commit_timeout,
        ).start(now)

    # -- internals -----------------------------------------------------------------------
