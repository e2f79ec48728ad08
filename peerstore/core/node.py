"""The sans-IO node: one state machine per peerstore node.

``NodeCore.handle(now, event)`` takes one input (a client command, a received message, a
completed effect, a membership change) and returns the effects the shell must carry out.
``next_deadline()`` says when ``tick(now)`` must be called for timeouts and retries.

The node serves its peers (store a piece, hand out a piece, store a manifest, merge the
catalog) and coordinates client commands: put, get and status are operation objects
(``core/put.py``, ``core/get.py``, ``core/status.py``) built on ``core/context.py``;
ls and rm answer from the catalog here. All randomness comes from the injected
``random.Random``.
"""

from __future__ import annotations

from typing import Any, Callable

from peerstore.core import events as ev
from peerstore.core.context import NodeContext, Operation
from peerstore.core.get import GetOperation
from peerstore.core.put import PutOperation
from peerstore.core.integrity import bitmap
from peerstore.core.node_report import encode_report
from peerstore.core.status import StatusOperation
from peerstore.core.verify import VerifyOperation
from peerstore.ec import piece_id
from peerstore.errors import FormatError
from peerstore.model.catalog import Catalog, CatalogNotFound
from peerstore.wire import messages as msg


class NodeCore(NodeContext):
    """The protocol logic of one node. Pure: no I/O, no clock, no global randomness."""

    # -- entry points --------------------------------------------------------------------

    def handle(self, now: float, event: ev.Input) -> list[ev.Effect]:
        """Process one input; return the effects to carry out, in order."""
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"NodeCore cannot handle {type(event).__name__}")
        buffered, inflight = self.buffer_bytes, sum(self.inflight.values())
        handler(self, now, event)
        if self._ops and (self.buffer_bytes < buffered or sum(self.inflight.values()) < inflight):
            # Budget or in-flight room was freed: operations waiting for it go on now,
            # not when some unrelated timer fires.
            for op in list(self._ops.values()):
                op.tick(now)
        self.integrity.step(now)  # scrub: the next read may be due, or a piece just arrived
        self.repair.pump(now)  # memory, flow control or a finished step may let repair go on
        return self._drain()

    def tick(self, now: float) -> list[ev.Effect]:
        """Expire overdue requests and run due retries."""
        self.expire(now)
        for op in list(self._ops.values()):
            op.tick(now)
        self.gc.tick(now)
        self.integrity.step(now)
        self.repair.tick(now)
        self.store_health.tick(now)
        return self._drain()

    def next_deadline(self) -> float | None:
        deadlines = [d] if (d := self.request_deadline()) is not None else []
        deadlines += [d for op in self._ops.values() if (d := op.next_deadline()) is not None]
        if (gc_due := self.gc.next_deadline()) is not None:
            deadlines.append(gc_due)
        if (scrub_due := self.integrity.next_deadline()) is not None:
            deadlines.append(scrub_due)
        if (repair_due := self.repair.next_deadline()) is not None:
            deadlines.append(repair_due)
        if (probe_due := self.store_health.next_deadline()) is not None:
            deadlines.append(probe_due)
        return min(deadlines, default=None)

    def _start_operation(self, now: float, op: Operation) -> None:
        previous = self._ops_by_client.get(op.client)
        if previous is not None and not previous.finished:
            self.emit(ev.Reply(op.client, ev.Failed("this client already has an operation running")))
            return
        self._ops[op.op_id] = op
        self._ops_by_client[op.client] = op
        op.start(now)

    # -- input handlers ------------------------------------------------------------------

    def _on_put(self, now: float, cmd: ev.PutCommand) -> None:
        self._start_operation(now, PutOperation(self, self.new_id(), cmd))

    def _on_get(self, now: float, cmd: ev.GetCommand) -> None:
        self._start_operation(now, GetOperation(self, self.new_id(), cmd))

    def _on_verify(self, now: float, cmd: ev.VerifyCommand) -> None:
        self._start_operation(now, VerifyOperation(self, self.new_id(), cmd))

    def _on_status(self, now: float, cmd: ev.StatusCommand) -> None:
        self._start_operation(now, StatusOperation(self, self.new_id(), cmd.client))

    def _on_list(self, now: float, cmd: ev.ListCommand) -> None:
        names = [cmd.name] if cmd.name else self.catalog.names()
        entries = tuple(e for name in names for e in self.catalog.live_versions(name))
        self.emit(ev.Reply(cmd.client, ev.Listing(entries)))

    def _on_remove(self, now: float, cmd: ev.RemoveCommand) -> None:
        try:
            # On a copy: the local merge below must see the tombstones as new, so that
            # they are written to disk before the client hears they are removed.
            versions = self.catalog.copy().rm(cmd.spec)
        except CatalogNotFound as err:
            self.emit(ev.Reply(cmd.client, ev.Failed(str(err))))
            return
        name = cmd.spec.split("@", 1)[0]
        delta = Catalog(tombstones=[(name, v) for v in versions])
        done = ev.Removed(tuple(str(v) for v in versions))
        self.spread_catalog(now, delta, lambda t, acks: self.emit(ev.Reply(cmd.client, done)))

    def _on_cancel(self, now: float, cmd: ev.CancelCommand) -> None:
        op = self._ops_by_client.get(cmd.client)
        if op is not None and not op.finished:
            op.cancel(now)

    def _on_started(self, now: float, event: ev.Started) -> None:
        self.gc.started(now)
        self.repair.start(now)
        self.refresh_catalog(now, lambda t, acks: None)

    def _on_catalog_differs(self, now: float, event: ev.CatalogDiffers) -> None:
        if event.peer in self.alive and event.peer != self.node_id:
            self.refresh_catalog(now, lambda t, answers: None, peers=[event.peer])

    def _on_members(self, now: float, event: ev.MembersChanged) -> None:
        returning = (frozenset(event.alive) - self.alive) - {self.node_id}
        self.alive = frozenset(event.alive) | {self.node_id}
        if returning:
            self.refresh_catalog(now, lambda t, acks: None, peers=sorted(returning))
        for op in list(self._ops.values()):
            op.on_members_changed(now)
        self.repair.on_members_changed(now)

    def _on_store_health(self, now: float, event: ev.StoreHealthChanged) -> None:
        self.store_health.observe(now, event.writable, event.reason)

    def _on_bytes_moved(self, now: float, event: ev.BytesMoved) -> None:
        self.bytes_moved(now, event.peers)

    def _on_unreachable(self, now: float, event: ev.PeerUnreachable) -> None:
        self._fail_request(now, event.req, "unreachable")

    def _on_completion(self, now: float, event: Any) -> None:
        tag = getattr(event, "tag", None)
        if tag is not None:
            waiter = self._waiters.pop(tag, None)
            if waiter is not None:
                waiter(now, event)
            elif isinstance(event, ev.PieceLoaded) and event.handle is not None:
                self.emit(ev.ReleaseHandles((event.handle,)))
            return
        op = self._ops.get(getattr(event, "op", None))  # type: ignore[arg-type]
        if op is not None:
            op.on_completion(now, event)
        else:
            handles = getattr(event, "handles", ())
            if handles:
                self.emit(ev.ReleaseHandles(tuple(handles)))

    def _on_message(self, now: float, event: ev.MessageReceived) -> None:
        message = event.message
        if type(message) in msg.REPLY_TYPES:
            pending = self._pending.get(message.req)
            if pending is None or pending.peer != event.peer:
                if event.payload is not None:  # a late reply: its request already gave up
                    self.emit(ev.ReleaseHandles((event.payload,)))
                if pending is not None and isinstance(message, msg.PieceStored) and not message.ok:
                    self.relay_failed(now, message.req, event.peer, message.error or "not forwarded")
                return
            del self._pending[message.req]
            self._release_inflight(now, pending)
            pending.on_reply(now, message, event.payload)
            return
        serve = self._SERVERS.get(type(message))
        if serve is not None:
            serve(self, now, event.peer, message, event.payload)

    # -- serving peers -------------------------------------------------------------------

    def _serve_store_piece(self, now: float, peer: str, m: msg.StorePiece, payload: Any) -> None:
        if not m.background:
            self.repair.serving_client(now)

        def answer(ok: bool, error: str) -> None:
            self.emit(ev.Send(peer, msg.PieceStored(m.req, ok=ok, error=error)))
            if m.ack_to:  # a forwarded copy: its holder acknowledges to the put's coordinator too
                self.emit(ev.Send(m.ack_to, msg.PieceStored(m.ack_req, ok=ok, error=error)))

        if payload is None:
            answer(False, "no payload")
            if m.forward_to and m.forward_req:
                self.emit(ev.Send(peer, msg.PieceStored(m.forward_req, ok=False, error="no payload")))
            return
        users = [1]

        def release() -> None:
            users[0] -= 1
            if users[0] == 0:
                self.emit(ev.ReleaseHandles((payload,)))

        # A relay forwards even when its own disk refuses the piece: the bytes are here.
        if self.forwarder.start(now, peer, m, payload, release):
            users[0] += 1
        refusal = self.store_health.refusal()
        if refusal is not None and m.piece_id not in self.inventory:  # a held copy is durable already
            release()
            answer(False, refusal)
            return

        def stored(t: float, ok: bool, error: str) -> None:
            release()
            answer(ok, error)

        self.store_piece(m.piece_id, payload, stored, size=m.size)

    def _serve_fetch_piece(self, now: float, peer: str, m: msg.FetchPiece, payload: Any) -> None:
        if not m.background:
            self.repair.serving_client(now)
        found = m.piece_id in self.inventory
        self.emit(
            ev.Send(
                peer,
                msg.PieceData(m.req, piece_id=m.piece_id, found=found),
                payload_piece=m.piece_id if found else None,
            )
        )

    def _serve_store_manifest(self, now: float, peer: str, m: msg.StoreManifest, payload: Any) -> None:
        if piece_id(m.blob) != m.manifest_id:
            self.emit(ev.Send(peer, msg.ManifestStored(m.req, ok=False, error="manifest hash mismatch")))
            return

        def stored(t: float, done: ev.ManifestStoredLocally) -> None:
            self.emit(ev.Send(peer, msg.ManifestStored(m.req, ok=done.ok, error=done.error)))

        self.local(lambda tag: ev.StoreManifestLocal(tag, m.manifest_id, m.blob), stored)

    def _serve_fetch_manifest(self, now: float, peer: str, m: msg.FetchManifest, payload: Any) -> None:
        def loaded(t: float, done: ev.ManifestLoaded) -> None:
            blob = done.blob
            self.emit(ev.Send(peer, msg.ManifestData(m.req, found=blob is not None, blob=blob or b"")))

        self.local(lambda tag: ev.LoadManifest(tag, m.manifest_id), loaded)

    def _serve_catalog_update(self, now: float, peer: str, m: msg.CatalogUpdate, payload: Any) -> None:
        try:
            other = Catalog.decode(m.blob)
        except FormatError as err:
            self.emit(ev.Send(peer, msg.CatalogAck(m.req, ok=False, error=str(err)[:200])))
            return
        self.merge_catalog(
            now, other, lambda t, ok: self.emit(ev.Send(peer, msg.CatalogAck(m.req, ok=ok)))
        )

    def _serve_sync_catalog(self, now: float, peer: str, m: msg.SyncCatalog, payload: Any) -> None:
        try:
            theirs = Catalog.decode(m.blob)
        except FormatError:
            theirs = Catalog()
        self.merge_catalog(
            now, theirs,
            lambda t, ok: self.emit(ev.Send(peer, msg.CatalogState(m.req, blob=self.catalog.encode()))),
        )

    def _serve_query_pieces(self, now: float, peer: str, m: msg.QueryPieces, payload: Any) -> None:
        bits = bytearray((len(m.piece_ids) + 7) // 8)
        for i, pid in enumerate(m.piece_ids):
            if pid in self.inventory:
                bits[i // 8] |= 1 << (i % 8)
        self.emit(ev.Send(peer, msg.PiecesHeld(m.req, held=bytes(bits))))

    def _serve_verify_pieces(self, now: float, peer: str, m: msg.VerifyPieces, payload: Any) -> None:
        self.integrity.serve_verify(now, peer, m)

    def _serve_report_node(self, now: float, peer: str, m: msg.ReportNode, payload: Any) -> None:
        self.emit(ev.Send(peer, msg.NodeReport(m.req, blob=encode_report(self.node_report(now)))))

    def _serve_renew_lease(self, now: float, peer: str, m: msg.RenewLease, payload: Any) -> None:
        held = self.gc.serve_renewal(now, m.piece_ids, float(m.seconds))
        self.emit(ev.Send(peer, msg.PiecesHeld(m.req, held=held)))

    def _serve_drop_pieces(self, now: float, peer: str, m: msg.DropPieces, payload: Any) -> None:
        dropped = self.gc.drop_surplus(now, m.piece_ids, dry_run=m.dry_run)
        self.emit(ev.Send(peer, msg.PiecesDropped(m.req, dropped=bitmap(dropped))))

    _SERVERS = {
        msg.StorePiece: _serve_store_piece,
        msg.FetchPiece: _serve_fetch_piece,
        msg.StoreManifest: _serve_store_manifest,
        msg.FetchManifest: _serve_fetch_manifest,
        msg.CatalogUpdate: _serve_catalog_update,
        msg.SyncCatalog: _serve_sync_catalog,
        msg.QueryPieces: _serve_query_pieces,
        msg.RenewLease: _serve_renew_lease,
        msg.VerifyPieces: _serve_verify_pieces,
        msg.ReportNode: _serve_report_node,
        msg.DropPieces: _serve_drop_pieces,
    }

    _HANDLERS: dict[type, Callable[..., None]] = {
        ev.PutCommand: _on_put,
        ev.GetCommand: _on_get,
        ev.ListCommand: _on_list,
        ev.RemoveCommand: _on_remove,
        ev.StatusCommand: _on_status,
        ev.VerifyCommand: _on_verify,
        ev.CancelCommand: _on_cancel,
        ev.MessageReceived: _on_message,
        ev.PeerUnreachable: _on_unreachable,
        ev.BytesMoved: _on_bytes_moved,
        ev.MembersChanged: _on_members,
        ev.Started: _on_started,
        ev.CatalogDiffers: _on_catalog_differs,
        ev.StripeEncoded: _on_completion,
        ev.FileRead: _on_completion,
        ev.StripeDelivered: _on_completion,
        ev.PieceStoredLocally: _on_completion,
        ev.PieceLoaded: _on_completion,
        ev.PieceVerified: _on_completion,
        ev.HeldPieceVerified: _on_completion,
        ev.CountersPersisted: _on_completion,
        ev.ManifestStoredLocally: _on_completion,
        ev.ManifestLoaded: _on_completion,
        ev.CatalogPersisted: _on_completion,
        ev.PiecesDeleted: _on_completion,
        ev.ManifestsDeleted: _on_completion,
        ev.PiecesRebuilt: _on_completion,
        ev.MembershipPersisted: _on_completion,
        ev.StoreProbed: _on_completion,
        ev.StoreHealthChanged: _on_store_health,
    }
