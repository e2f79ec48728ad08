"""The sans-IO node: one state machine per peerstore node.

``NodeCore.handle(now, event)`` takes one input (a client command, a received message, a
completed effect, a membership change) and returns the effects the shell must carry out.
``next_deadline()`` says when ``tick(now)`` must be called for timeouts and retries.

The node serves its peers (store a piece, hand out a piece, store a manifest, merge the
catalog) and coordinates client operations (put, get, ls, rm, status), each an object in
``core/put.py``, ``core/get.py`` and ``core/status.py`` that talks to peers through the
request helpers here. All randomness comes from the injected ``random.Random``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.manifest import Catalog, CatalogNotFound
from peerstore.wire import messages as msg

if TYPE_CHECKING:
    from random import Random

SELF_TAG = "self"


@dataclass
class PendingRequest:
    """A request sent to a peer, waiting for its reply or its deadline."""

    req: int
    peer: str
    deadline: float
    on_reply: Callable[[float, msg.Message, Any], None]
    on_failure: Callable[[float, str], None]
    inflight_bytes: int = 0


class Operation:
    """Base for client operations coordinated by this node."""

    def __init__(self, node: "NodeCore", op_id: int, client: ev.ClientRef):
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


class NodeCore:
    """The protocol logic of one node. Pure: no I/O, no clock, no global randomness."""

    def __init__(
        self,
        node_id: str,
        settings: CoreSettings,
        rng: Random,
        *,
        catalog: Catalog | None = None,
        inventory: frozenset[bytes] | set[bytes] = frozenset(),
        alive: frozenset[str] | None = None,
    ):
        self.node_id = node_id
        self.settings = settings
        self.rng = rng
        self.catalog = catalog if catalog is not None else Catalog()
        self.inventory: set[bytes] = set(inventory)
        self.alive: frozenset[str] = (alive or frozenset()) | {node_id}
        self._effects: list[ev.Effect] = []
        self._next_id = 1
        self._pending: dict[int, PendingRequest] = {}
        self._ops: dict[int, Operation] = {}
        self._ops_by_client: dict[ev.ClientRef, Operation] = {}
        self._waiters: dict[Any, Callable[[float, Any], None]] = {}
        self.inflight: dict[str, int] = {}
        self.buffer_bytes = 0  # bytes of stripe buffers held by the shell for our ops
        self.reserved_counters: dict[str, int] = {}  # Lamport counters handed out, per name
        self.stats: Counter[str] = Counter()  # events worth a metric: retries, timeouts, ...

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
        return self._drain()

    def tick(self, now: float) -> list[ev.Effect]:
        """Expire overdue requests and run due retries."""
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._fail_request(now, pending.req, "timeout")
        for op in list(self._ops.values()):
            op.tick(now)
        return self._drain()

    def next_deadline(self) -> float | None:
        deadlines = [p.deadline for p in self._pending.values()]
        deadlines += [d for op in self._ops.values() if (d := op.next_deadline()) is not None]
        return min(deadlines, default=None)

    @property
    def operations(self) -> list[Operation]:
        return list(self._ops.values())

    # -- helpers for operations ----------------------------------------------------------

    def emit(self, effect: ev.Effect) -> None:
        self._effects.append(effect)

    def new_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def request(
        self,
        now: float,
        peer: str,
        make: Callable[[int], msg.Message],
        on_reply: Callable[[float, msg.Message, Any], None],
        on_failure: Callable[[float, str], None],
        *,
        payload: ev.Handle | None = None,
        inflight_bytes: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Send a request to ``peer``; exactly one of the callbacks runs later."""
        req = self.new_id()
        deadline = now + (timeout if timeout is not None else self.settings.request_timeout)
        self._pending[req] = PendingRequest(req, peer, deadline, on_reply, on_failure, inflight_bytes)
        self.inflight[peer] = self.inflight.get(peer, 0) + inflight_bytes
        self.emit(ev.Send(peer, make(req), payload=payload))
        return req

    def local(self, make: Callable[[Any], ev.Effect], on_done: Callable[[float, Any], None]) -> None:
        """Ask the shell for a local effect; ``on_done`` gets its completion."""
        tag = (SELF_TAG, self.new_id())
        self._waiters[tag] = on_done
        self.emit(make(tag))

    def can_send(self, peer: str, size: int) -> bool:
        """Per-peer flow control: bounded bytes in flight (one piece always allowed)."""
        used = self.inflight.get(peer, 0)
        return used == 0 or used + size <= self.settings.max_inflight_bytes_per_peer

    def can_buffer(self, size: int) -> bool:
        """Node-wide memory budget for stripe buffers, shared by every operation; one
        stripe may always be buffered when nothing is, so any stripe size makes progress."""
        return self.buffer_bytes == 0 or self.buffer_bytes + size <= self.settings.memory_budget

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * (2 ** attempt))
        return self.rng.uniform(ceiling / 2, ceiling)

    def is_alive(self, peer: str) -> bool:
        return peer in self.alive

    def forget_operation(self, op: Operation) -> None:
        self._ops.pop(op.op_id, None)
        if self._ops_by_client.get(op.client) is op:
            del self._ops_by_client[op.client]

    def reserve_counter(self, name: str) -> int:
        """The next Lamport counter for ``name``, never reused by this node."""
        counter = max(self.catalog.next_counter(name), self.reserved_counters.get(name, 0) + 1)
        self.reserved_counters[name] = counter
        return counter

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
        blob = self.catalog.encode()
        self.local(lambda tag: ev.PersistCatalog(tag, blob), lambda t, c: on_done(t, c.ok))

    # -- internals -----------------------------------------------------------------------

    def _drain(self) -> list[ev.Effect]:
        effects, self._effects = self._effects, []
        return effects

    def _fail_request(self, now: float, req: int, why: str) -> None:
        pending = self._pending.pop(req, None)
        if pending is None:
            return
        self._release_inflight(pending)
        self.stats[f"request_{why}"] += 1
        pending.on_failure(now, why)

    def _release_inflight(self, pending: PendingRequest) -> None:
        if pending.inflight_bytes:
            left = self.inflight.get(pending.peer, 0) - pending.inflight_bytes
            if left > 0:
                self.inflight[pending.peer] = left
            else:
                self.inflight.pop(pending.peer, None)

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
        from peerstore.core.put import PutOperation

        self._start_operation(now, PutOperation(self, self.new_id(), cmd))

    def _on_get(self, now: float, cmd: ev.GetCommand) -> None:
        from peerstore.core.get import GetOperation

        self._start_operation(now, GetOperation(self, self.new_id(), cmd))

    def _on_status(self, now: float, cmd: ev.StatusCommand) -> None:
        from peerstore.core.status import StatusOperation

        self._start_operation(now, StatusOperation(self, self.new_id(), cmd.client))

    def _on_list(self, now: float, cmd: ev.ListCommand) -> None:
        names = [cmd.name] if cmd.name else self.catalog.names()
        entries = tuple(e for name in names for e in self.catalog.live_versions(name))
        self.emit(ev.Reply(cmd.client, ev.Listing(entries)))

    def _on_remove(self, now: float, cmd: ev.RemoveCommand) -> None:
        try:
            versions = self.catalog.rm(cmd.spec)
        except CatalogNotFound as err:
            self.emit(ev.Reply(cmd.client, ev.Failed(str(err))))
            return
        name = cmd.spec.split("@", 1)[0]
        delta = Catalog(tombstones=[(name, v) for v in versions])
        done = ev.Removed(tuple(str(v) for v in versions))
        self._spread_catalog(now, delta, lambda t, acks: self.emit(ev.Reply(cmd.client, done)))

    def _spread_catalog(self, now: float, delta: Catalog, on_done: Callable[[float, int], None]) -> None:
        """Persist ``delta`` locally, send it to every alive peer; ``on_done(now, acks)``
        once every peer answered or timed out (acks counts durable copies, ours included)."""
        from peerstore.core.broadcast import Broadcast

        blob = delta.encode()
        Broadcast(
            self,
            peers=sorted(self.alive - {self.node_id}),
            make=lambda req: msg.CatalogUpdate(req, blob=blob),
            accept=lambda reply: isinstance(reply, msg.CatalogAck) and reply.ok,
            local=lambda done: self.merge_catalog(now, delta, lambda t, ok: done(t, ok)),
            on_done=on_done,
        ).start(now)

    def _on_cancel(self, now: float, cmd: ev.CancelCommand) -> None:
        op = self._ops_by_client.get(cmd.client)
        if op is not None and not op.finished:
            op.cancel(now)

    def _on_started(self, now: float, event: ev.Started) -> None:
        self.refresh_catalog(now, lambda t, acks: None)

    def refresh_catalog(self, now: float, on_done: Callable[[float, int], None],
                        peers: list[str] | None = None) -> None:
        """Push-pull our whole catalog with ``peers`` (default: every alive peer), merging
        what they answer; ``on_done(now, answers)`` when all answered or timed out."""
        from peerstore.core.broadcast import Broadcast
        from peerstore.errors import FormatError

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
        Broadcast(
            self,
            peers=sorted(self.alive - {self.node_id}) if peers is None else peers,
            make=lambda req: msg.SyncCatalog(req, blob=blob),
            accept=merge,
            local=None,
            on_done=on_done,
            timeout=self.settings.commit_timeout,
        ).start(now)

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
                return
            del self._pending[message.req]
            self._release_inflight(pending)
            pending.on_reply(now, message, event.payload)
            return
        serve = self._SERVERS.get(type(message))
        if serve is not None:
            serve(self, now, event.peer, message, event.payload)

    # -- serving peers -------------------------------------------------------------------

    def _serve_store_piece(self, now: float, peer: str, m: msg.StorePiece, payload: Any) -> None:
        if payload is None:
            self.emit(ev.Send(peer, msg.PieceStored(m.req, ok=False, error="no payload")))
            return
        if m.piece_id in self.inventory:
            self.emit(ev.ReleaseHandles((payload,)))
            self.emit(ev.Send(peer, msg.PieceStored(m.req, ok=True)))
            return

        def stored(t: float, done: ev.PieceStoredLocally) -> None:
            self.emit(ev.ReleaseHandles((payload,)))
            if done.ok:
                self.inventory.add(m.piece_id)
            self.emit(ev.Send(peer, msg.PieceStored(m.req, ok=done.ok, error=done.error)))

        self.local(lambda tag: ev.StorePieceLocal(tag, m.piece_id, payload), stored)

    def _serve_fetch_piece(self, now: float, peer: str, m: msg.FetchPiece, payload: Any) -> None:
        found = m.piece_id in self.inventory
        self.emit(
            ev.Send(
                peer,
                msg.PieceData(m.req, piece_id=m.piece_id, found=found),
                payload_piece=m.piece_id if found else None,
            )
        )

    def _serve_store_manifest(self, now: float, peer: str, m: msg.StoreManifest, payload: Any) -> None:
        from peerstore.ec import piece_id

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
        from peerstore.errors import FormatError

        try:
            other = Catalog.decode(m.blob)
        except FormatError as err:
            self.emit(ev.Send(peer, msg.CatalogAck(m.req, ok=False, error=str(err)[:200])))
            return
        self.merge_catalog(
            now, other, lambda t, ok: self.emit(ev.Send(peer, msg.CatalogAck(m.req, ok=ok)))
        )

    def _serve_sync_catalog(self, now: float, peer: str, m: msg.SyncCatalog, payload: Any) -> None:
        from peerstore.errors import FormatError

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

    _SERVERS = {
        msg.StorePiece: _serve_store_piece,
        msg.FetchPiece: _serve_fetch_piece,
        msg.StoreManifest: _serve_store_manifest,
        msg.FetchManifest: _serve_fetch_manifest,
        msg.CatalogUpdate: _serve_catalog_update,
        msg.SyncCatalog: _serve_sync_catalog,
        msg.QueryPieces: _serve_query_pieces,
    }

    _HANDLERS: dict[type, Callable[..., None]] = {
        ev.PutCommand: _on_put,
        ev.GetCommand: _on_get,
        ev.ListCommand: _on_list,
        ev.RemoveCommand: _on_remove,
        ev.StatusCommand: _on_status,
        ev.CancelCommand: _on_cancel,
        ev.MessageReceived: _on_message,
        ev.PeerUnreachable: _on_unreachable,
        ev.MembersChanged: _on_members,
        ev.Started: _on_started,
        ev.CatalogDiffers: _on_catalog_differs,
        ev.StripeEncoded: _on_completion,
        ev.FileRead: _on_completion,
        ev.StripeDelivered: _on_completion,
        ev.PieceStoredLocally: _on_completion,
        ev.PieceLoaded: _on_completion,
        ev.PieceVerified: _on_completion,
        ev.ManifestStoredLocally: _on_completion,
        ev.ManifestLoaded: _on_completion,
        ev.CatalogPersisted: _on_completion,
    }
