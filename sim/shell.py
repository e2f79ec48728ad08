"""The simulator's shell of ``NodeCore``: it carries out a core's effects over the
simulated network (``sim.network``) and disks (``sim.disk``) and feeds the completions
back, as the trio daemon's shell does with sockets and files, and adds no decision of its
own (the simulator must never be kinder than the daemon).

- *Inputs.* Everything reaches a node's process through :meth:`NodeShell._input`: void
  once the process died or restarted (its boot generation changed), queued while it is
  frozen. :meth:`NodeShell.feed` gives an event to a core; the core's next deadline is
  kept as one timer.
- *Booting.* :meth:`NodeShell._boot` starts a node's process as the daemon starts: raise
  the boot epoch durably, restore catalog and counters from disk (a rotten catalog is
  set aside, the node starts empty), build the core, start Swim (``sim.gossip_shell``).
- *Data path.* ``Send`` becomes a stream message whose payload is modelled by size and
  hash (``sim.content``); a request whose connection breaks fails with
  ``PeerUnreachable``; replies clear the outstanding request.
- *Progress.* Every ``PROGRESS_INTERVAL`` seconds, as the daemon does, the core hears
  which peers bytes moved to or from (``ev.BytesMoved``, from ``Network.moved``): its
  requests time out on a peer's silence, not on a queue. Reported while the node waits
  on a peer (a report changes nothing when no request is outstanding).
- *Disks.* Piece writes are written, then fsynced (a crash in between loses them; an
  fsync may fail with EIO); manifests, catalog and counters are replaced atomically.
- *Client side.* The put's source files and the get's output are the simulated client's:
  stripes are encoded from the files' models, delivered stripes are checked against
  what was put (``sim.checks``), and replies fill in the :class:`ClientRecord`.

``NodeShell`` is a mixin of ``sim.cluster.Cluster``, which composes it with the gossip
shell, the fault API and the checks. The annotations at the top of the class declare
what it uses of the others (set by ``Cluster.__init__`` or defined by the other mixins;
declarations only), so no module here imports the cluster. A mixin, not a separate
object: tests replace one ``_do_*`` effect handler on a cluster to inject a failure.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

from peerstore.core import events as ev
from peerstore.core.messenger import PROGRESS_INTERVAL
from peerstore.core.node import NodeCore
from peerstore.core.quorum import decode_stable
from peerstore.core.settings import CoreSettings
from peerstore.core.snapshots import restore_catalog, restore_counters
from peerstore.errors import FormatError
from peerstore.wire import messages as msg
from sim.clients import ClientRecord
from sim.content import Content, parity_content, rotten
from sim.disk import FSYNC_EIO, MANIFEST_OVERHEAD, READ_ONLY
from sim.loop import EventLoop, Seeds
from sim.network import Network
from sim.node import Addr, SimNode

HEADER_BYTES = 96  # frame header + MAC of a data-path message
DELETE_SECONDS = 0.0002  # one unlink
UNLINK_COMMIT = 5.0  # seconds until a file system commits an unlink (ext4's journal interval)
SMALL_IO = 4096


class NodeShell:
    """Carries out every node's ``NodeCore`` effects (mixin of ``sim.cluster.Cluster``)."""

    # What the shell uses of the cluster (set by Cluster.__init__).
    loop: EventLoop
    net: Network
    seeds: Seeds
    fault_rng: random.Random
    nodes: dict[str, SimNode]
    ids: list[str]
    settings: CoreSettings
    core_class: type[NodeCore]
    membership: str
    with_cores: bool
    wire_roundtrip: bool
    clients: dict[int, ClientRecord]
    corrupted: set[tuple[str, bytes]]
    next_handle: int
    # ... and of the other mixins: the fault API (sim.faults), the gossip shell
    # (sim.gossip_shell) and the checks (sim.checks).
    _fault: Callable[[str], None]
    crash: Callable[..., None]
    _start_swim: Callable[[SimNode, list[Addr]], None]
    _gossip_no_reply: Callable[[SimNode, int], None]
    _check_bounds: Callable[[SimNode], None]
    _check_delivery: Callable[[SimNode, ClientRecord, ev.DeliverStripe, list[Content | None]], bool]
    _client_check: Callable[[SimNode, ClientRecord, Any], Any]
    _check_gc_delete: Callable[[SimNode, ev.DeletePieces], None]

    # -- booting -------------------------------------------------------------------------

    def _boot(self, node: SimNode, seeds: list[Addr]) -> None:
        """Start the node's process (a new boot generation) on what its disk holds."""
        node.boot += 1
        node.running = True
        node.reset_process()
        node.disk.boot_epoch += 1  # durable before the node announces itself
        if self.with_cores:
            catalog, problem = restore_catalog(node.disk.catalog)
            if problem:  # as the daemon: the rotten file is moved aside, peers fill the catalog in
                node.disk.catalog = None
                self._fault(f"{node.node_id[:4]} boots with an empty catalog: {problem}")
            counters = restore_counters(node.disk.counters)
            try:
                stable = decode_stable(node.disk.membership)
            except FormatError as err:  # as the daemon: start without it, relearn it from the data
                node.disk.membership, stable = None, None
                self._fault(f"{node.node_id[:4]} boots without its stable membership: {err}")
            alive = frozenset({node.node_id})
            if self.membership == "static":
                alive = frozenset(i for i in self.ids if self.nodes[i].running)
            node.core = self.core_class(
                node.node_id, self.settings, self.seeds.rng("core", node.node_id, node.boot),
                catalog=catalog, inventory={pid: c.size for pid, c in node.disk.durable.items()},
                alive=alive, counters=counters,
                boot_epoch=node.disk.boot_epoch, stable_members=stable,
            )
        if self.membership == "swim":
            self._start_swim(node, seeds)
        if node.core is not None:
            self.loop.after(0.0, self.feed, node.node_id, ev.Started(), node.boot)

    # -- node inputs ---------------------------------------------------------------------

    def _input(self, node: SimNode, boot: int, handler: Callable[..., None], *args: Any) -> None:
        """Hand something to a node's process: void if it died or restarted since, queued
        while it is frozen."""
        if node.boot != boot or not node.running:
            return
        if node.frozen:
            node.backlog.append((handler, args))
            return
        handler(node, *args)

    def feed(self, node_id: str, event: Any, boot: int | None = None) -> None:
        """Give ``event`` to a node's core (void if the process died or restarted)."""
        node = self.nodes[node_id]
        self._input(node, node.boot if boot is None else boot, self._feed_core, event)

    def _feed_core(self, node: SimNode, event: Any) -> None:
        assert node.core is not None
        self.loop.trace(f"{node.node_id[:4]} <- {type(event).__name__} {_brief(event)}")
        self._core_effects(node, node.core.handle(self.loop.now, event))

    def complete(self, node: SimNode, delay: float, event: Any) -> None:
        self.loop.at(self.loop.now + delay, self.feed, node.node_id, event, node.boot)

    def new_handle(self, node: SimNode, content: Content) -> int:
        self.next_handle += 1
        node.handles[self.next_handle] = content
        return self.next_handle

    # -- timers --------------------------------------------------------------------------

    def _schedule_core_tick(self, node: SimNode) -> None:
        deadline = node.core.next_deadline() if node.core is not None else None
        if deadline is not None and deadline < node.core_tick_at:
            node.core_tick_at = deadline
            self.loop.at(deadline, self._core_tick, node, node.boot, deadline)

    def _core_tick(self, node: SimNode, boot: int, when: float) -> None:
        self._input(node, boot, self._run_core_tick, when)

    def _run_core_tick(self, node: SimNode, when: float) -> None:
        if node.core_tick_at != when:
            return
        node.core_tick_at = math.inf
        assert node.core is not None
        self._core_effects(node, node.core.tick(self.loop.now))

    # -- core effects: messages ----------------------------------------------------------

    def _core_effects(self, node: SimNode, effects: list[Any]) -> None:
        for effect in effects:
            self.loop.trace(f"{node.node_id[:4]} -> {type(effect).__name__} {_brief(effect)}")
            getattr(self, "_do_" + type(effect).__name__)(node, effect)
        if node.running and node.core is not None:
            self._check_bounds(node)
            if node.glue is not None and node.swim is not None:
                node.glue.publish_catalog(node.core, node.swim)
            self._schedule_core_tick(node)

    def _do_Send(self, node: SimNode, effect: ev.Send) -> None:
        message = effect.message
        if self.wire_roundtrip:
            message = msg.from_header(message.to_header(), message.payload_blob)  # schema check
        content = None
        ready = self.loop.now
        if effect.payload is not None:
            content = node.handles.get(effect.payload)
        elif effect.payload_piece is not None:
            content = node.disk.durable.get(effect.payload_piece)
            if content is None and isinstance(message, msg.PieceData):
                message = msg.PieceData(message.req, piece_id=message.piece_id, found=False)
            elif content is not None:
                ready = node.disk.schedule_io(ready, content.size, node.disk.model.read_bandwidth)
        size = HEADER_BYTES + len(message.payload_blob or b"") + (content.size if content else 0)
        self.loop.at(ready, self._transmit, node, node.boot, effect.peer, message, content, size)

    def _transmit(self, node: SimNode, boot: int, peer: str, message: msg.Message,
                  content: Content | None, size: int) -> None:
        if node.boot != boot or not node.running:
            return
        is_request = type(message) not in msg.REPLY_TYPES
        if peer not in self.nodes:
            if is_request:
                self.complete(node, 0.001, ev.PeerUnreachable(peer, message.req))
            return
        on_fail = None
        if is_request:
            def on_fail(why: str, req: int = message.req) -> None:
                node.outstanding.get(peer, {}).pop(req, None)
                self.feed(node.node_id, ev.PeerUnreachable(peer, req), boot)
        gen = self.net.send_stream(node.node_id, peer, size, self._message_lands, peer, node.node_id,
                                   message, content, on_fail=on_fail)
        if is_request and gen:
            node.outstanding.setdefault(peer, {})[message.req] = gen
            self._watch_progress(node)

    def _watch_progress(self, node: SimNode) -> None:
        if not node.progress_watch:
            node.progress_watch = True
            self.loop.after(PROGRESS_INTERVAL, self._input, node, node.boot, self._report_progress)

    def _report_progress(self, node: SimNode) -> None:
        """As the daemon's shell: the peers bytes moved to or from in the last interval."""
        node.progress_watch = False
        now = self.loop.now
        moved = frozenset(peer for peer in self.nodes if peer != node.node_id
                          and self.net.moved(node.node_id, peer, now - PROGRESS_INTERVAL, now))
        if moved and node.core is not None:
            self._feed_core(node, ev.BytesMoved(moved))
        if node.core is not None and node.core.request_deadline() is not None:
            self._watch_progress(node)  # while it waits on a peer (its requests all end)

    def _message_lands(self, dst_id: str, src_id: str, message: msg.Message, content: Content | None) -> None:
        node = self.nodes[dst_id]
        self._input(node, node.boot, self._receive, src_id, message, content)

    def _receive(self, node: SimNode, src: str, message: msg.Message, content: Content | None) -> None:
        if type(message) in msg.REPLY_TYPES:
            node.outstanding.get(src, {}).pop(message.req, None)
        handle = self.new_handle(node, content) if content is not None else None
        self._feed_core(node, ev.MessageReceived(src, message, handle))

    def _connection_broke(self, a: str, b: str, gen: int) -> None:
        """A connection reset: both ends fail what they were waiting for on it."""
        for here, peer in ((a, b), (b, a)):
            node = self.nodes[here]
            if not node.running:
                continue
            waiting = node.outstanding.get(peer, {})
            for req in [r for r, g in waiting.items() if g == gen]:
                del waiting[req]
                self._input(node, node.boot, self._feed_core, ev.PeerUnreachable(peer, req))
            for rid in [r for r, (p, g) in node.gossip_streams.items() if p == peer and g == gen]:
                del node.gossip_streams[rid]
                self._input(node, node.boot, self._gossip_no_reply, rid)

    # -- disk effects --------------------------------------------------------------------

    def _do_StorePieceLocal(self, node: SimNode, effect: ev.StorePieceLocal) -> None:
        content = node.handles.get(effect.handle)
        disk = node.disk
        now = self.loop.now
        size = content.size if content else 0
        if content is None or content.true_id != effect.piece_id:
            hashed = now + size / disk.model.hash_rate
            self.loop.at(hashed, self.feed, node.node_id,
                         ev.PieceStoredLocally(effect.tag, effect.piece_id, False, "hash mismatch"), node.boot)
            return
        if effect.piece_id in disk.durable:  # as PieceStore.write: already held, nothing written or read
            self.complete(node, size / disk.model.hash_rate, ev.PieceStoredLocally(effect.tag, effect.piece_id, True))
            return
        if self._read_only(node):
            self.complete(node, 0.0005, ev.PieceStoredLocally(effect.tag, effect.piece_id, False, READ_ONLY))
            return
        if not disk.has_room(size):
            self.complete(node, 0.0005, ev.PieceStoredLocally(
                effect.tag, effect.piece_id, False, f"disk full: {size} bytes do not fit"))
            return
        disk.reserved += size
        written = disk.schedule_io(now, size, disk.model.write_bandwidth)
        self.loop.at(written, self._piece_written, node, node.boot, effect, content)

    def _piece_written(self, node: SimNode, boot: int, effect: ev.StorePieceLocal, content: Content) -> None:
        if node.boot != boot or not node.running:
            return
        disk = node.disk
        disk.reserved -= content.size
        disk.written[effect.piece_id] = content
        if node.crash_when_written:
            self.crash(node.node_id, why="torn write: between write and fsync")
            return
        self.loop.after(disk.fsync_time(self.fault_rng), self._piece_durable, node, boot, effect, content)

    def _piece_durable(self, node: SimNode, boot: int, effect: ev.StorePieceLocal, content: Content) -> None:
        if node.boot != boot or not node.running:
            return
        # Each write has its own temp file (as PieceStore's): this write's bytes become
        # durable or not by its own fsync, whatever a concurrent write of the piece did.
        node.disk.written.pop(effect.piece_id, None)
        if node.disk.fsync_fails(self.fault_rng):  # the store removes the temp file
            self.feed(node.node_id, ev.PieceStoredLocally(effect.tag, effect.piece_id, False, FSYNC_EIO), boot)
            return
        node.disk.durable[effect.piece_id] = content
        self.corrupted.discard((node.node_id, effect.piece_id))
        self.feed(node.node_id, ev.PieceStoredLocally(effect.tag, effect.piece_id, True), boot)

    def _read_only(self, node: SimNode) -> bool:
        """As the daemon's shell: a write that fails with EROFS tells the core the store is
        read-only (``StoreHealthChanged``) before the write's own failure arrives."""
        if node.disk.read_only:
            self.complete(node, 0.0005, ev.StoreHealthChanged(False, READ_ONLY))
        return node.disk.read_only

    def _do_ProbeStore(self, node: SimNode, effect: ev.ProbeStore) -> None:
        """PieceStore.probe_writable: a small durable write, then its removal."""
        ok = not node.disk.read_only
        self.complete(node, self._small_write(node, SMALL_IO), ev.StoreProbed(effect.tag, ok, "" if ok else READ_ONLY))

    def _do_DeletePieces(self, node: SimNode, effect: ev.DeletePieces) -> None:
        """As the daemon's PieceStore.remove: unlink each file (no fsync, so until the file
        system commits, ``UNLINK_COMMIT`` seconds, a crash brings them back)."""
        self._check_gc_delete(node, effect)
        if effect.reason == "surplus":  # rebalance dropping a copy nobody knew was rotten
            self.rot_dropped += sum((node.node_id, pid) in self.corrupted for pid in effect.piece_ids)
        if self._read_only(node):  # unlink fails with EROFS: every file stays
            self.complete(node, 0.0005, ev.PiecesDeleted(effect.tag, (), 0, READ_ONLY))
            return
        done = self.loop.now + DELETE_SECONDS * len(effect.piece_ids)

        def deleted(target: SimNode) -> None:
            freed = 0
            for pid in effect.piece_ids:
                content = target.disk.durable.pop(pid, None)
                if content is not None:
                    freed += content.size
                    target.disk.unlinked[pid] = content
                    self.corrupted.discard((target.node_id, pid))
            self.loop.after(UNLINK_COMMIT, self._unlinks_committed, target, target.boot, effect.piece_ids)
            self._feed_core(target, ev.PiecesDeleted(effect.tag, effect.piece_ids, freed))

        self.loop.at(done, self._input, node, node.boot, deleted)

    def _unlinks_committed(self, node: SimNode, boot: int, piece_ids: tuple[bytes, ...]) -> None:
        if node.boot == boot and node.running:
            for pid in piece_ids:
                node.disk.unlinked.pop(pid, None)

    def _do_DeleteManifests(self, node: SimNode, effect: ev.DeleteManifests) -> None:
        def deleted(target: SimNode) -> None:
            for mid in effect.manifest_ids:
                target.disk.manifests.pop(mid, None)
                target.disk.rotten_manifests.pop(mid, None)
            self._feed_core(target, ev.ManifestsDeleted(effect.tag))

        self.loop.at(self.loop.now + DELETE_SECONDS * len(effect.manifest_ids), self._input, node, node.boot, deleted)

    def _do_LoadPiece(self, node: SimNode, effect: ev.LoadPiece) -> None:
        content = node.disk.durable.get(effect.piece_id)
        done = self.loop.now + 0.0001
        if content is not None:
            done = node.disk.schedule_io(self.loop.now, content.size, node.disk.model.read_bandwidth)
        self.loop.at(done, self._input, node, node.boot, self._piece_loaded, effect, content)

    def _piece_loaded(self, node: SimNode, effect: ev.LoadPiece, content: Content | None) -> None:
        handle = self.new_handle(node, content) if content is not None else None
        self._feed_core(node, ev.PieceLoaded(effect.tag, effect.piece_id, handle))

    def _do_VerifyHeldPiece(self, node: SimNode, effect: ev.VerifyHeldPiece) -> None:
        content = node.disk.durable.get(effect.piece_id)
        done = self.loop.now + 0.0001
        if content is not None:
            done = node.disk.schedule_io(self.loop.now, content.size, node.disk.model.read_bandwidth)
            done += content.size / node.disk.model.hash_rate
        self.loop.at(done, self._input, node, node.boot, self._held_piece_checked, effect)

    def _held_piece_checked(self, node: SimNode, effect: ev.VerifyHeldPiece) -> None:
        """As PieceStore.verify: the copy on disk now is hashed; a rotten one is quarantined."""
        content = node.disk.durable.get(effect.piece_id)
        ok = node.disk.genuine(effect.piece_id)
        if not ok and node.disk.durable.pop(effect.piece_id, None) is not None:
            self.corrupted.discard((node.node_id, effect.piece_id))
        self._feed_core(node, ev.HeldPieceVerified(
            effect.tag, effect.piece_id, ok, size=content.size if content else 0, missing=content is None))

    def _do_VerifyPiece(self, node: SimNode, effect: ev.VerifyPiece) -> None:
        content = node.handles.get(effect.handle)
        ok = content is not None and content.true_id == effect.piece_id
        cost = (content.size if content else 0) / node.disk.model.hash_rate
        self.complete(node, cost, ev.PieceVerified(effect.tag, ok))

    def _do_ReleaseHandles(self, node: SimNode, effect: ev.ReleaseHandles) -> None:
        for handle in effect.handles:
            node.handles.pop(handle, None)

    def _small_write(self, node: SimNode, size: int) -> float:
        disk = node.disk
        return disk.schedule_io(self.loop.now, size, disk.model.write_bandwidth) - self.loop.now + disk.fsync_time(
            self.fault_rng)

    def _do_StoreManifestLocal(self, node: SimNode, effect: ev.StoreManifestLocal) -> None:
        size = len(effect.blob) + MANIFEST_OVERHEAD
        if self._read_only(node):
            self.complete(node, 0.0005, ev.ManifestStoredLocally(effect.tag, False, READ_ONLY))
            return
        if not node.disk.has_room(size):
            self.complete(node, 0.0005, ev.ManifestStoredLocally(effect.tag, False, "disk full"))
            return
        node.disk.reserved += size

        def durable(target: SimNode) -> None:
            target.disk.reserved -= size
            if target.disk.fsync_fails(self.fault_rng):
                self._feed_core(target, ev.ManifestStoredLocally(effect.tag, False, FSYNC_EIO))
                return
            target.disk.manifests[effect.manifest_id] = effect.blob
            self._feed_core(target, ev.ManifestStoredLocally(effect.tag, True))

        self.loop.after(self._small_write(node, size), self._input, node, node.boot, durable)

    def _do_LoadManifest(self, node: SimNode, effect: ev.LoadManifest) -> None:
        blob = node.disk.manifests.get(effect.manifest_id)
        self.complete(node, 0.0001, ev.ManifestLoaded(effect.tag, blob))

    def _do_PersistCatalog(self, node: SimNode, effect: ev.PersistCatalog) -> None:
        self._replace_file(node, effect.blob, "catalog", lambda ok, error: ev.CatalogPersisted(effect.tag, ok, error))

    def _do_PersistCounters(self, node: SimNode, effect: ev.PersistCounters) -> None:
        self._replace_file(node, effect.blob, "counters",
                           lambda ok, error: ev.CountersPersisted(effect.tag, ok, error))

    def _do_PersistMembership(self, node: SimNode, effect: ev.PersistMembership) -> None:
        self._replace_file(node, effect.blob, "membership",
                           lambda ok, error: ev.MembershipPersisted(effect.tag, ok, error))

    def _do_RebuildPieces(self, node: SimNode, effect: ev.RebuildPieces) -> None:
        """As the daemon's decode + re-encode: the rebuilt pieces are genuine only if at
        least k distinct genuine pieces went in (the core verifies them before storing)."""
        inputs = {pos: node.handles.get(h) for pos, h in effect.pieces}
        genuine = len(inputs) >= effect.k and all(
            c is not None and c.true_id == effect.piece_ids[pos] for pos, c in inputs.items())
        made = []
        for pos in effect.want:
            size = effect.shard_lengths[pos] if pos < effect.k else effect.shard_lengths[0]
            content = Content(effect.piece_ids[pos], size)
            made.append((pos, self.new_handle(node, content if genuine else rotten(content))))
        work = sum(c.size for c in inputs.values() if c is not None) + sum(effect.shard_lengths)
        self.complete(node, work / node.disk.model.hash_rate, ev.PiecesRebuilt(effect.tag, tuple(made)))

    def _replace_file(self, node: SimNode, blob: bytes, attribute: str, completion: Callable[[bool, str], Any]) -> None:
        """write_file_atomic: the disk holds the old bytes until the new ones are durable."""
        size = len(blob) + SMALL_IO
        if self._read_only(node):
            self.complete(node, 0.0005, completion(False, READ_ONLY))
            return
        if not node.disk.has_room(size):
            self.complete(node, 0.0005, completion(False, "disk full"))
            return

        def durable(target: SimNode) -> None:
            if target.disk.fsync_fails(self.fault_rng):  # the old file stays
                self._feed_core(target, completion(False, FSYNC_EIO))
                return
            setattr(target.disk, attribute, blob)
            self._feed_core(target, completion(True, ""))

        self.loop.after(self._small_write(node, size), self._input, node, node.boot, durable)

    # -- client side of put and get ------------------------------------------------------

    def _do_EncodeStripe(self, node: SimNode, effect: ev.EncodeStripe) -> None:
        record = self.clients[effect.client]
        source = record.sources[effect.file_index]
        shard_size = self.settings.policy.shard_size
        first = effect.offset // shard_size
        data = source.shards[first: first + len(effect.shard_lengths)]
        data_ids = tuple(c.true_id for c in data)
        block = effect.shard_lengths[0]
        parity = [parity_content(data_ids, j, block) for j in range(effect.parity)]
        handles = tuple(self.new_handle(node, c) for c in [*data, *parity])
        size = sum(effect.shard_lengths)
        disk = node.disk
        done = disk.schedule_io(self.loop.now, size, disk.model.read_bandwidth) + size / disk.model.hash_rate
        self.loop.at(done, self.feed, node.node_id, ev.StripeEncoded(
            effect.op, effect.stripe, data_ids, tuple(c.size for c in data),
            tuple(c.true_id for c in parity), handles,
        ), node.boot)

    def _do_FinishFileRead(self, node: SimNode, effect: ev.FinishFileRead) -> None:
        source = self.clients[effect.client].sources[effect.file_index]
        self.complete(node, 0.0, ev.FileRead(effect.op, effect.file_index, source.blake3))

    def _do_DeliverStripe(self, node: SimNode, effect: ev.DeliverStripe) -> None:
        """The client writes the stripe; whether its bytes are what was put is checked here."""
        record = self.clients[effect.client]
        contents = [node.handles.pop(h, None) for _, h in effect.pieces]
        record.delivered[effect.stripe] = self._check_delivery(node, record, effect, contents)
        size = sum(effect.shard_lengths)
        disk = node.disk
        done = disk.schedule_io(self.loop.now, size, disk.model.write_bandwidth)
        self.loop.at(done, self.feed, node.node_id, ev.StripeDelivered(effect.op, effect.stripe, True), node.boot)

    def _do_Reply(self, node: SimNode, effect: ev.Reply) -> None:
        record = self.clients.get(effect.client)
        if record is None or record.done:
            return
        record.replies.append(effect.body)
        if isinstance(effect.body, ev.GetStarted):
            record.manifest = effect.body.manifest
            record.entry = effect.body.entry
        if effect.final:
            record.finished = self.loop.now
            record.final = self._client_check(node, record, effect.body)


def _brief(obj: Any) -> str:
    """A short, deterministic description for the trace."""
    parts = []
    for name in ("peer", "req", "op", "stripe", "tag", "ok", "client"):
        value = getattr(obj, name, None)
        if value is not None:
            parts.append(f"{name}={value!r}")
    message = getattr(obj, "message", None)
    if message is not None:
        parts.append(f"{type(message).__name__}(req={message.req})")
    return " ".join(parts)
