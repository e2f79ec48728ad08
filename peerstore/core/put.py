"""Coordinating a put: read, encode, place, transfer, then commit in two phases.

1. Stripes are read and encoded by the shell in order, a window at a time (bounded by the
   node's memory budget). Each encoded stripe is placed on the live members by rendezvous
   hash + template (``placement.py``) and its pieces are sent in parallel, with bounded
   bytes in flight per peer.
2. A failed transfer is retried with exponential backoff and jitter; a peer that times
   out, is unreachable too often, or leaves the membership loses its slots, which are
   re-placed on other live nodes (keeping a shard's two replicas on distinct nodes).
3. When every piece is durably acknowledged, and the version's counter is durably
   reserved, the manifest is sent to every live node that did not fail during the put
   and must be durable on at least tolerance + 1 of them (phase 1: not yet visible);
   then the catalog entry is spread the same way (phase 2: visible). Only then is the
   client told the put succeeded. Cancelling before phase 2 aborts cleanly.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from peerstore.model import placement
from peerstore.core import events as ev
from peerstore.core.collector import LeaseHolder
from peerstore.core.fanout import Fanout
from peerstore.core.store_health import READ_ONLY
from peerstore.core.context import NodeContext, Operation
from peerstore.ec import iter_stripes
from peerstore.errors import PeerstoreError
from peerstore.model.catalog import Catalog, CatalogEntry
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId, validate_name, validate_paths
from peerstore.wire import messages as msg


class Phase(Enum):
    TRANSFER = "sending pieces"
    MANIFEST = "storing the manifest"  # phase 1: invisible, may still abort
    CATALOG = "spreading the catalog entry"  # phase 2: may be visible, never aborts


@dataclass
class PlannedStripe:
    file_index: int
    offset: int
    shard_lengths: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.shard_lengths)


@dataclass
class Slot:
    """One place a piece must be durably stored: a data replica or a parity chunk."""

    position: int
    piece_id: bytes
    target: str
    acked: bool = False


@dataclass
class Transfer:
    """Moving one piece to one node; several slots may wait on it (identical pieces)."""

    target: str
    piece_id: bytes
    handle: Any
    size: int
    slots: list[tuple[int, Slot]] = field(default_factory=list)  # (stripe number, slot)
    attempts: int = 0
    retry_at: float = 0.0
    in_flight: bool = False
    waiting_room: bool = False  # due, but its target's window is full
    via: str = ""  # in flight as a forward through this node (its pending request: req)
    req: int = 0
    carries: Transfer | None = None  # the sibling this send asked its target to forward


@dataclass
class EncodedStripe:
    entry: StripeEntry
    handles: tuple[Any, ...]
    key: bytes
    slots: list[Slot]
    buffered: int

    @property
    def done(self) -> bool:
        return all(slot.acked for slot in self.slots)


ROOM_POLL = 0.05  # seconds between looks at a full per-peer window (see _pump)
# A straggler (issue 14): a peer that takes our pieces at under half the median rate of the
# others, measured over at least STRAGGLER_EVIDENCE seconds of its busy time, while most of
# the transfers the put waits for are its own (the stripes buffered are all held up by it),
# loses the slots it has not acknowledged yet when the others can take them at no cost in
# tolerance.
STRAGGLER_RATIO = 2.0
STRAGGLER_EVIDENCE = 1.0
STRAGGLER_CHECK = 0.25  # seconds between two looks
STRAGGLER_PERSIST = 0.25  # ... and it must look like one for this long (not a passing jam)
MOVE_OFF_LAYOUTS = 4096  # layouts tried when moving a straggler's slots (else: re-place the stripe)


class PutOperation(Operation):
    def __init__(self, node: NodeContext, op_id: int, cmd: ev.PutCommand):
        super().__init__(node, op_id, cmd.client)
        self.cmd = cmd
        self.policy = node.settings.policy
        self.plan: list[PlannedStripe] = []
        self.file_last_stripe: dict[int, int] = {}
        self.next_read = 0  # next planned stripe to ask the shell for
        self.next_file_finish = 0  # files whose FinishFileRead was issued
        self.stripes: dict[int, EncodedStripe] = {}
        self.entries: dict[int, StripeEntry] = {}
        self.file_hashes: dict[int, bytes] = {}
        self.transfers: dict[tuple[str, bytes], Transfer] = {}  # every transfer, for dedup
        self.unfinished: dict[tuple[str, bytes], Transfer] = {}  # those with slots to ack
        self.stripes_done = 0
        self.held = 0  # bytes of our stripes buffered in the shell
        self.stored_bytes = 0  # checkpoint bytes whose stripe is fully acknowledged
        self.failed_peers: set[str] = set()
        self.failures: dict[str, str] = {}  # why each failed peer was dropped, in words
        self.phase = Phase.TRANSFER
        self.version: VersionId | None = None
        self.next_straggler_check = 0.0
        self.suspects: dict[str, float] = {}  # peer -> since when it looks like a straggler

    # -- start ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        try:
            validate_name(self.cmd.name)
            validate_paths([f.path for f in self.cmd.files])
        except PeerstoreError as err:
            self.finish(ev.Failed(str(err)))
            return
        clash = self.node.catalog.case_clash(self.cmd.name)
        if clash is not None:
            self.finish(ev.Failed(
                f"checkpoint name {self.cmd.name} differs from the existing {clash} only by case; the two "
                f"would collide on macOS: store it as {clash}, or rm {clash} first"
            ))
            return
        refusal = self.node.store_health.refusal()
        if refusal is not None:  # the new version's counter must be written durably here
            self.finish(ev.Failed(f"this node cannot coordinate a put: its {refusal}; put through another node"))
            return
        alive = len(self.node.alive)
        k, p = self.policy.stripe_width, self.policy.parity
        if alive < 2:
            self.finish(ev.Failed(
                f"only {alive} live node: peerstore keeps two replicas on two different machines; "
                "start another node (or check that the nodes can reach each other)"
            ))
            return
        best = placement.best_tolerance(alive, k, p)
        if best < self.policy.min_tolerance:
            self.finish(ev.Failed(
                f"{alive} live nodes give tolerance {best}, below min_tolerance "
                f"{self.policy.min_tolerance}; start more nodes or lower policy.min_tolerance"
            ))
            return
        for index, spec in enumerate(self.cmd.files):
            for span in iter_stripes(spec.size, self.policy.shard_size, k):
                self.plan.append(PlannedStripe(index, span.offset, tuple(s.length for s in span.shards)))
            self.file_last_stripe[index] = len(self.plan)  # stripes below this belong to files <= index
        # Until this put ends, garbage collection leaves its pieces alone on every node.
        self.node.gc.hold(now, self.op_id, LeaseHolder(self._lease_pieces, self._pieces_lost))
        self.node.reserve_version(self.cmd.name, self._version_reserved)
        self._pump(now)

    def _version_reserved(self, now: float, version: VersionId | None, error: str) -> None:
        if self.finished:
            return
        if version is None:
            self._fail(f"cannot record the new version's counter durably on this node: {error}")
            return
        self.version = version
        self._maybe_commit(now)

    # -- reading -------------------------------------------------------------------------

    def _read_more(self) -> None:
        while self.next_read < len(self.plan) or self.next_file_finish < len(self.cmd.files):
            # Finish every file whose stripes have all been requested, in order.
            if self.next_file_finish < len(self.cmd.files) and (
                self.file_last_stripe[self.next_file_finish] <= self.next_read
            ):
                f = self.next_file_finish
                self.node.emit(ev.FinishFileRead(self.op_id, self.client, f, self.cmd.files[f].size))
                self.next_file_finish += 1
                continue
            planned = self.plan[self.next_read]
            cost = planned.shard_lengths[0] * (len(planned.shard_lengths) + self.policy.parity)
            if not self.node.can_buffer(cost):
                return
            self.node.buffer_bytes += cost
            self.held += cost
            self.node.emit(ev.EncodeStripe(
                self.op_id, self.client, self.next_read, planned.file_index, planned.offset,
                planned.shard_lengths, self.policy.parity,
            ))
            self.next_read += 1

    def on_completion(self, now: float, event: Any) -> None:
        if isinstance(event, ev.StripeEncoded):
            self._stripe_encoded(now, event)
        elif isinstance(event, ev.FileRead):
            if event.error:
                self._fail(f"reading {self.cmd.files[event.file_index].path} failed: {event.error}")
                return
            self.file_hashes[event.file_index] = event.blake3
            self._maybe_commit(now)

    def _stripe_encoded(self, now: float, event: ev.StripeEncoded) -> None:
        planned = self.plan[event.stripe]
        if event.error:
            self.node.emit(ev.ReleaseHandles(tuple(event.handles)))
            self._fail(f"reading {self.cmd.files[planned.file_index].path} failed: {event.error}")
            return
        k = len(planned.shard_lengths)
        entry = StripeEntry(
            k=k, p=self.policy.parity, block_size=planned.shard_lengths[0],
            data_ids=tuple(event.data_ids), data_lengths=tuple(event.data_lengths),
            parity_ids=tuple(event.parity_ids),
        )
        key = b"".join(entry.piece_ids)
        try:
            where = self._place(key, k, self.policy.parity)
        except PeerstoreError as err:
            self.node.emit(ev.ReleaseHandles(tuple(event.handles)))
            self._fail(f"cannot place stripe {event.stripe}: {err}")
            return
        slots = []
        for i, (a, b) in enumerate(where.data):
            slots += [Slot(i, entry.data_ids[i], a), Slot(i, entry.data_ids[i], b)]
        for j, node in enumerate(where.parity):
            slots.append(Slot(k + j, entry.parity_ids[j], node))
        cost = planned.shard_lengths[0] * (k + self.policy.parity)
        stripe = EncodedStripe(entry, tuple(event.handles), key, slots, cost)
        self.stripes[event.stripe] = stripe
        self.entries[event.stripe] = entry
        for slot in slots:
            self._attach(event.stripe, stripe, slot)
        self._stripe_progress(event.stripe)  # every piece may already be durable (identical bytes)
        self._pump(now)

    # -- transfers -----------------------------------------------------------------------

    def _candidates(self) -> list[str]:
        return sorted(self.node.alive - self.failed_peers)

    def _place(self, key: bytes, k: int, p: int) -> placement.StripePlacement:
        """The stripe's placement over the candidates. With forwarding, this node takes
        the role holding the most parity chunks: each data shard leaves it once whatever
        it holds, a parity chunk only if it is elsewhere. Swapping two nodes' roles
        changes no tolerance (PlacementError if the candidates cannot hold a stripe)."""
        where = placement.place_stripe(key, self._candidates(), k, p)
        me = self.node.node_id
        if not self.node.settings.forward_replicas or me not in self._candidates() or not where.parity:
            return where
        mine = where.parity.count(me)
        best = max(set(where.parity), key=lambda node: (where.parity.count(node), node))
        if where.parity.count(best) <= mine:
            return where
        swap = {me: best, best: me}
        return placement.StripePlacement(
            tuple((swap.get(a, a), swap.get(b, b)) for a, b in where.data),
            tuple(swap.get(node, node) for node in where.parity),
        )

    def _attach(self, number: int, stripe: EncodedStripe, slot: Slot) -> None:
        """Route ``slot`` through the transfer of its piece to its target (shared if any)."""
        key = (slot.target, slot.piece_id)
        transfer = self.transfers.get(key)
        if transfer is None:
            size = stripe.entry.data_lengths[slot.position] if slot.position < stripe.entry.k \
                else stripe.entry.block_size
            transfer = Transfer(slot.target, slot.piece_id, stripe.handles[slot.position], size)
            self.transfers[key] = transfer
        elif transfer.in_flight is False and transfer.slots and all(s.acked for _, s in transfer.slots):
            slot.acked = True  # already durable there (identical piece earlier in this put)
            return
        transfer.slots.append((number, slot))
        self.unfinished[key] = transfer

    def _settle(self, transfer: Transfer) -> None:
        """Forget a transfer in the scans once no slot waits on it (keeps _pump linear)."""
        if all(slot.acked for _, slot in transfer.slots):
            self.unfinished.pop((transfer.target, transfer.piece_id), None)

    def _pump(self, now: float) -> None:
        if self.finished or self.phase is not Phase.TRANSFER:
            return
        if now >= self.next_straggler_check:
            self.next_straggler_check = now + STRAGGLER_CHECK
            self._drop_stragglers(now)
            if self.finished:
                return
        for transfer in list(self.unfinished.values()):
            if transfer.in_flight or (transfer.retry_at > now and not transfer.waiting_room):
                continue
            transfer.waiting_room = False
            if transfer.target == self.node.node_id:
                self._store_locally(transfer)
            elif self.node.can_send(transfer.target, transfer.size):
                self._send(now, transfer)
            else:
                # Waiting for room: an answer frees it (NodeCore.handle ticks the operations),
                # and a look every ROOM_POLL seconds makes sure no lost wake-up can stall the put.
                transfer.retry_at = now + ROOM_POLL
                transfer.waiting_room = True
        self._read_more()
        self._maybe_commit(now)

    def _send(self, now: float, transfer: Transfer) -> None:
        transfer.in_flight = True
        sibling = self._sibling_to_forward(now, transfer)
        forward_to, forward_req = "", 0
        if sibling is not None:
            forward_to = sibling.target
            forward_req = self.node.expect(
                now, sibling.target, transfer.target,
                lambda t, reply, payload: self._answered(t, sibling, reply),
                lambda t, why: self._not_forwarded(t, sibling, why),
            )
            sibling.in_flight, sibling.via, sibling.req = True, transfer.target, forward_req
            transfer.carries = sibling

        def failed(t: float, why: str) -> None:
            self._carrier_failed(t, transfer)
            self._transfer_answered(t, transfer, False, why)

        self.node.request(
            now,
            transfer.target,
            lambda req: msg.StorePiece(req, piece_id=transfer.piece_id, size=transfer.size,
                                       forward_to=forward_to, forward_req=forward_req),
            lambda t, reply, payload: self._answered(t, transfer, reply),
            failed,
            payload=transfer.handle,
            inflight_bytes=transfer.size,
        )

    def _answered(self, now: float, transfer: Transfer, reply: msg.Message) -> None:
        ok = isinstance(reply, msg.PieceStored) and reply.ok
        if transfer.via and ok:
            self.node.stats["replicas_forwarded"] += 1
        self._transfer_answered(now, transfer, ok, getattr(reply, "error", "") or "refused")

    # -- forwarded replication (core/forwarding.py is the relay's side) -----------------

    def _sibling_to_forward(self, now: float, transfer: Transfer) -> Transfer | None:
        """Another copy of ``transfer``'s piece, due for a node other than us, that its
        target can forward instead of us sending it too."""
        if not self.node.settings.forward_replicas:
            return None
        for number, slot in transfer.slots:
            stripe = self.stripes.get(number)
            for other in stripe.slots if stripe is not None else ():
                if other.piece_id != transfer.piece_id or other.target in (
                        transfer.target, self.node.node_id) or other.acked:
                    continue
                sibling = self.unfinished.get((other.target, other.piece_id))
                if (sibling is not None and not sibling.in_flight
                        and (sibling.retry_at <= now or sibling.waiting_room)  # not backing off
                        and other.target not in self.failed_peers
                        and self.node.is_alive(other.target)):
                    return sibling
        return None

    def _drop_stragglers(self, now: float) -> None:
        """Re-place the unacknowledged slots of a peer far slower than the others (a node
        stopped most of the time, a failing disk), if the nodes left give every stripe the
        same best tolerance. It stays a member; repair and rebalance even things out later."""
        waiting = Counter(t.target for t in self.unfinished.values() if t.target != self.node.node_id)
        if not waiting:
            return
        candidates = self._candidates()
        k, p = self.policy.stripe_width, self.policy.parity
        if len(candidates) < 3 or (placement.best_tolerance(len(candidates) - 1, k, p)
                                   < placement.best_tolerance(len(candidates), k, p)):
            return
        measured = {peer: rate for peer, rate in self.node.rates.items()
                    if peer in candidates and rate.rate_at(now) is not None}
        rates = {peer: rate.rate_at(now) or 0.0 for peer, rate in measured.items()}
        for peer in sorted(p for p in waiting if p in measured
                           and measured[p].busy_seconds(now) >= STRAGGLER_EVIDENCE):
            others = sorted(r for other, r in rates.items() if other != peer)
            if len(others) < 2:
                return
            median = others[len(others) // 2]
            if rates[peer] * STRAGGLER_RATIO >= median or 2 * waiting[peer] <= sum(waiting.values()):
                self.suspects.pop(peer, None)
                continue
            if now - self.suspects.setdefault(peer, now) < STRAGGLER_PERSIST:
                continue
            self.node.stats["put_stragglers_replaced"] += 1
            self.failed_peers.add(peer)
            self.failures[peer] = (f"node {peer} was slow: {rates[peer] / 1e6:.1f} MB/s against "
                                   f"{median / 1e6:.1f} MB/s for the others")
            numbers = sorted({n for t in self.unfinished.values() if t.target == peer
                              for n, slot in t.slots if not slot.acked})
            relayed = [t for t in self.unfinished.values() if t.in_flight and t.via == peer]
            for number in numbers:
                if not self._move_off(number, peer) and not self._replan(number):
                    return  # the put failed: the stripe fits on no other nodes
            for transfer in relayed:  # what it was asked to forward goes out directly
                if transfer.in_flight and transfer.via == peer:
                    self._withdraw_forward(now, transfer, f"relay {peer} is a straggler")
            self._pump(now)
            return  # one at a time: the rates of the others change as they take its share

    def _move_off(self, number: int, peer: str) -> bool:
        """Move stripe ``number``'s unacknowledged slots on ``peer`` to other candidates,
        each slot alone (what ``peer`` acknowledged stays there, durable), choosing the
        targets that keep the stripe's tolerance highest and its copies most spread. False
        (nothing moved) if no such layout reaches the best tolerance the other nodes give
        (the caller re-places the whole stripe), or if there are too many to try."""
        stripe = self.stripes[number]
        movable = [slot for slot in stripe.slots if slot.target == peer and not slot.acked]
        others = self._candidates()
        if not movable:
            return True
        if not others or len(others) ** len(movable) > MOVE_OFF_LAYOUTS:
            return False
        best: tuple[Any, ...] | None = None
        for targets in itertools.product(others, repeat=len(movable)):
            where = {id(slot): target for slot, target in zip(movable, targets)}
            layout = [(slot, where.get(id(slot), slot.target)) for slot in stripe.slots]
            pairs: dict[int, list[str]] = {}
            for slot, target in layout:
                pairs.setdefault(slot.position, []).append(target)
            if any(len(set(nodes)) < len(nodes) for nodes in pairs.values()):
                continue  # two copies of one position on one node
            holders: dict[bytes, set[str]] = {}
            for slot, target in layout:
                holders.setdefault(slot.piece_id, set()).add(target)
            tolerance = placement.stripe_tolerance(
                [holders[pid] for pid in stripe.entry.piece_ids], stripe.entry.k)
            load = Counter(target for _, target in layout)
            key = (-tolerance, max(load.values()), targets)
            if best is None or key < best:
                best = key
        if best is None or -best[0] < placement.best_tolerance(len(others), stripe.entry.k, stripe.entry.p):
            return False
        self.node.stats["stripes_replanned"] += 1
        for slot, target in zip(movable, best[2]):
            old = self.transfers.get((slot.target, slot.piece_id))
            if old is not None:
                old.slots = [(n, s) for n, s in old.slots if s is not slot]
                self._settle(old)
            slot.target = target
            self._attach(number, stripe, slot)
        self._stripe_progress(number)
        return True

    def _carrier_failed(self, now: float, carrier: Transfer) -> None:
        """The node asked to forward a sibling never answered: send that copy ourselves."""
        sibling, carrier.carries = carrier.carries, None
        if sibling is not None and sibling.via == carrier.target and sibling.in_flight:
            self._withdraw_forward(now, sibling, f"node {carrier.target} did not answer")

    def _withdraw_forward(self, now: float, transfer: Transfer, why: str) -> None:
        """Stop waiting for a forward still pending and send that copy ourselves."""
        self.node.cancel_request(now, transfer.req)
        self._not_forwarded(now, transfer, why)

    def _not_forwarded(self, now: float, transfer: Transfer, why: str) -> None:
        """A forward was declined, failed or went unanswered: no fault of the target's,
        so this is not an attempt against it; the copy goes out directly."""
        transfer.in_flight, transfer.via, transfer.req = False, "", 0
        transfer.retry_at = 0.0
        self.node.stats["forward_fallbacks"] += 1
        self._pump(now)

    def _store_locally(self, transfer: Transfer) -> None:
        transfer.in_flight = True
        self.node.store_piece(
            transfer.piece_id, transfer.handle,
            lambda t, ok, error: self._transfer_answered(t, transfer, ok, error or "local store failed"),
            size=transfer.size,
        )

    def _transfer_answered(self, now: float, transfer: Transfer, ok: bool, why: str) -> None:
        transfer.in_flight, transfer.via, transfer.req, transfer.carries = False, "", 0, None
        if self.finished:
            return
        if ok:
            for number, slot in transfer.slots:
                slot.acked = True
            self._settle(transfer)
            for number, _ in transfer.slots:
                self._stripe_progress(number)
            self._pump(now)
            return
        transfer.attempts += 1
        give_up = (
            why == "timeout"
            or "full" in why
            or READ_ONLY in why  # the target takes no pieces until its disk is writable again
            or transfer.attempts >= self.node.settings.retries
            or not self.node.is_alive(transfer.target)
        )
        if give_up:
            self.failed_peers.add(transfer.target)
            self.failures.setdefault(transfer.target, self.node.failure_detail(transfer.target, why))
            self._replace(now, transfer)
        else:
            self.node.stats["piece_retries"] += 1
            transfer.retry_at = now + self.node.backoff(transfer.attempts)
        self._pump(now)

    def _replace(self, now: float, transfer: Transfer) -> None:
        """The transfer's target failed: re-plan every stripe still waiting on it."""
        waiting = sorted({n for n, s in transfer.slots if not s.acked})
        transfer.slots = [(n, s) for n, s in transfer.slots if s.acked]
        self._settle(transfer)
        for number in waiting:
            if not self._replan(number):
                return

    def _replan(self, number: int) -> bool:
        """Place stripe ``number`` again over the nodes still usable, with the template for
        that many nodes (re-placing pieces one by one would lower tolerance). Slots whose
        node stays the same keep their progress; the others are sent again."""
        stripe = self.stripes[number]
        k, p = stripe.entry.k, stripe.entry.p
        self.node.stats["stripes_replanned"] += 1
        try:
            where = self._place(stripe.key, k, p)
        except PeerstoreError as err:
            dropped = "; ".join(self.failures.get(peer, f"node {peer} left")
                                for peer in sorted(self.failed_peers))
            self._fail(f"cannot re-place stripe {number} after failures ({err}); dropped from this put: {dropped}")
            return False
        wanted: dict[int, list[str]] = {i: list(pair) for i, pair in enumerate(where.data)}
        wanted.update({k + j: [node] for j, node in enumerate(where.parity)})
        moved = []
        for slot in stripe.slots:  # keep slots already on a node the new plan wants there
            if slot.target in wanted[slot.position] and slot.target not in self.failed_peers:
                wanted[slot.position].remove(slot.target)
            else:
                moved.append(slot)
        for slot in moved:
            old = self.transfers.get((slot.target, slot.piece_id))
            if old is not None:
                old.slots = [(n, s) for n, s in old.slots if s is not slot]
                self._settle(old)
            slot.target = wanted[slot.position].pop(0)
            slot.acked = False
            self._attach(number, stripe, slot)
        # A moved slot may be acknowledged at once (its new target already holds the same
        # bytes: a k = 1 tail stripe's parity is a copy of its data): nothing else would
        # notice that the stripe is now complete.
        self._stripe_progress(number)
        return True

    def _stripe_progress(self, number: int) -> None:
        stripe = self.stripes.get(number)
        if stripe is not None and stripe.done and stripe.handles:
            self.stripes_done += 1
            self.stored_bytes += sum(stripe.entry.data_lengths)
            self.reply(ev.Progress(self.stored_bytes, sum(f.size for f in self.cmd.files)))
            self.node.emit(ev.ReleaseHandles(stripe.handles))
            stripe.handles = ()
            self.node.buffer_bytes -= stripe.buffered
            self.held -= stripe.buffered
            stripe.buffered = 0

    def tick(self, now: float) -> None:
        self._pump(now)

    def next_deadline(self) -> float | None:
        if self.finished or self.phase is not Phase.TRANSFER:
            return None
        due = [t.retry_at for t in self.unfinished.values() if not t.in_flight and t.retry_at > 0]
        if any(t.in_flight for t in self.unfinished.values()):
            due.append(self.next_straggler_check)  # a straggler that never answers is judged too
        return min(due, default=None)

    def on_members_changed(self, now: float) -> None:
        if self.phase is not Phase.TRANSFER:
            return
        for transfer in list(self.unfinished.values()):
            if transfer.via and transfer.in_flight:  # a forward: its target or relay left?
                if not self.node.is_alive(transfer.target):
                    self.node.cancel_request(now, transfer.req)
                    transfer.in_flight, transfer.via, transfer.req = False, "", 0
                elif not self.node.is_alive(transfer.via):
                    self._withdraw_forward(now, transfer, f"relay {transfer.via} left")
            if not self.node.is_alive(transfer.target) and not transfer.in_flight:
                self.failed_peers.add(transfer.target)
                self._replace(now, transfer)
        self._pump(now)

    # -- commit --------------------------------------------------------------------------

    def _maybe_commit(self, now: float) -> None:
        if self.finished or self.phase is not Phase.TRANSFER or self.version is None:
            return
        if len(self.entries) < len(self.plan) or len(self.file_hashes) < len(self.cmd.files):
            return
        if self.stripes_done < len(self.plan):
            return
        self.phase = Phase.MANIFEST
        manifest = self._manifest(now)
        if manifest.tolerance < self.policy.min_tolerance:
            self._fail(
                f"stored with tolerance {manifest.tolerance}, below min_tolerance "
                f"{self.policy.min_tolerance} (too few live nodes took pieces)"
            )
            return
        blob = manifest.encode()
        mid = manifest.id
        Fanout(
            self.node,
            peers=sorted(self.node.alive - {self.node.node_id} - self.failed_peers),
            make=lambda req: msg.StoreManifest(req, manifest_id=mid, blob=blob),
            accept=lambda reply: isinstance(reply, msg.ManifestStored) and reply.ok,
            local=lambda done: self.node.local(
                lambda tag: ev.StoreManifestLocal(tag, mid, blob), lambda t, c: done(t, c.ok)
            ),
            on_done=lambda t, acks: self._manifest_stored(t, manifest, acks),
        ).start(now)

    def _manifest(self, now: float) -> Manifest:
        holders: dict[bytes, set[str]] = {}
        for stripe in self.stripes.values():
            for slot in stripe.slots:
                holders.setdefault(slot.piece_id, set()).add(slot.target)
        files = []
        hints = []
        for index, spec in enumerate(self.cmd.files):
            numbers = [n for n in range(len(self.plan)) if self.plan[n].file_index == index]
            files.append(FileEntry(
                path=spec.path, size=spec.size, mode=spec.mode & 0o7777,
                blake3=self.file_hashes[index],
                stripes=tuple(self.entries[n] for n in numbers),
            ))
            for n in numbers:
                hints.append(self._hint(self.stripes[n]))
        tolerance = placement.checkpoint_tolerance(
            (
                ([frozenset(holders[pid]) for pid in s.entry.piece_ids], s.entry.k)
                for s in self.stripes.values()
            ),
            empty=len(self.node.alive) - 1,
        )
        assert self.version is not None
        return Manifest(
            name=self.cmd.name, version=self.version, policy=self.policy, files=tuple(files),
            placement=tuple(hints), tolerance=tolerance, created=self.cmd.created,
            is_dir=self.cmd.is_dir,
        )

    @staticmethod
    def _hint(stripe: EncodedStripe) -> tuple[str, ...]:
        k = stripe.entry.k
        targets = [[s.target for s in stripe.slots if s.position == i] for i in range(k + stripe.entry.p)]
        where = placement.StripePlacement(tuple(tuple(t) for t in targets[:k]), tuple(t[0] for t in targets[k:]))
        return where.as_hint()

    def _manifest_stored(self, now: float, manifest: Manifest, acks: int) -> None:
        if self.finished:
            return
        if acks < manifest.tolerance + 1:
            self._fail(f"the manifest reached only {acks} nodes; it needs {manifest.tolerance + 1}")
            return
        self.phase = Phase.CATALOG  # from here on the put may become visible: no more aborts
        delta = Catalog(entries=[CatalogEntry.for_manifest(manifest)])
        # Nodes dropped from this put (a straggler's queue may still be deep) get the entry
        # too, but the put does not wait for them.
        self.node.spread_catalog(now, delta, lambda t, acks: self._committed(t, manifest, acks),
                                 optional=frozenset(self.failed_peers))

    def _committed(self, now: float, manifest: Manifest, acks: int) -> None:
        if acks < manifest.tolerance + 1:
            self.finish(ev.Failed(
                f"the catalog entry reached only {acks} nodes; the checkpoint may or may not be "
                f"visible: check with 'peerstore ls {manifest.name}'",
                outcome_unknown=True,
            ))
            return
        self.finish(ev.PutDone(
            name=manifest.name, version=str(manifest.version.counter), manifest_id=manifest.id,
            tolerance=manifest.tolerance, size=manifest.total_size(),
            pieces=sum(len(s.slots) for s in self.stripes.values()),
        ))

    # -- ending --------------------------------------------------------------------------

    def cancel(self, now: float) -> None:
        if self.phase is Phase.CATALOG:
            return  # may already be visible somewhere: finish the commit
        self.finish(ev.Failed("cancelled: the client disconnected before the put committed"))

    def _fail(self, reason: str) -> None:
        self.finish(ev.Failed(f"put {self.cmd.name} failed: {reason}"))

    # -- leases --------------------------------------------------------------------------

    def _lease_pieces(self) -> dict[str, set[bytes]]:
        """Every node this put sent (or is sending) pieces to, and those pieces."""
        out: dict[str, set[bytes]] = {}
        for target, pid in self.transfers:
            out.setdefault(target, set()).add(pid)
        return out

    def _pieces_lost(self, now: float, target: str, piece_ids: list[bytes]) -> None:
        """A lease renewal found acknowledged pieces gone from ``target`` (a disk lost, a
        rotten copy moved aside, or a lease that lapsed): the count of durable copies
        this put would commit with is wrong, so it fails rather than claim it."""
        if self.finished or self.phase is Phase.CATALOG:
            return
        gone = [pid for pid in piece_ids
                if (t := self.transfers.get((target, pid))) is not None and not t.in_flight
                and t.slots and all(slot.acked for _, slot in t.slots)]
        if gone:
            self._fail(f"{len(gone)} acknowledged piece(s) are no longer on node {target} "
                       f"(first {gone[0].hex()[:16]}); try again")

    def cleanup(self) -> None:
        self.node.gc.release(self.op_id)
        handles = tuple(h for s in self.stripes.values() for h in s.handles)
        if handles:
            self.node.emit(ev.ReleaseHandles(handles))
        for stripe in self.stripes.values():
            stripe.handles = ()
        self.node.buffer_bytes -= self.held
        self.held = 0
