"""Coordinating a get: manifest, then every stripe from the best sources, in order.

For each stripe the data pieces are asked of their primary holders (this node first when
it holds them). A piece that is missing, corrupt, or whose holder is dead or does not
answer in time is asked of its other replica; when a data position has no holder left,
one more parity position is fetched instead, so any k verified positions rebuild the
stripe. As a last resort every live node is asked. Every piece is verified against its
BLAKE3 id before use. Stripes are delivered to the client strictly in order, with a
bounded number buffered ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peerstore.model import placement
from peerstore.core import events as ev
from peerstore.core.manifests import ManifestFetch
from peerstore.core.context import NodeContext, Operation
from peerstore.errors import FormatError
from peerstore.model.catalog import CatalogEntry, CatalogNotFound
from peerstore.model.manifest import Manifest, StripeEntry
from peerstore.wire import messages as msg


@dataclass
class Position:
    """One position of a stripe: where to look for its piece, and what we have."""

    index: int
    piece_id: bytes
    candidates: list[str]  # in order of preference; consumed as we go
    tried: set[str] = field(default_factory=set)
    handle: Any = None  # verified bytes
    busy: bool = False
    retried: bool = False  # asked a peer again after its connection broke
    widened: bool = False  # every live node became a candidate for it

    @property
    def settled_or_busy(self) -> bool:
        return self.busy or self.handle is not None


@dataclass
class StripeFetch:
    number: int
    file_index: int
    offset: int
    entry: StripeEntry
    positions: list[Position]
    buffered: int
    fallbacks: int = 0
    widened: bool = False  # every live node was added as a candidate

    @property
    def verified(self) -> list[Position]:
        return [p for p in self.positions if p.handle is not None]

    @property
    def ready(self) -> bool:
        data = [p for p in self.positions[: self.entry.k] if p.handle is not None]
        return len(data) == self.entry.k or len(self.verified) >= self.entry.k


class GetOperation(Operation):
    def __init__(self, node: NodeContext, op_id: int, cmd: ev.GetCommand):
        super().__init__(node, op_id, cmd.client)
        self.cmd = cmd
        self.entry: CatalogEntry | None = None
        self.manifest: Manifest | None = None
        self.layout: list[tuple[int, int, StripeEntry, tuple[str, ...]]] = []
        self.fetching: dict[int, StripeFetch] = {}
        self.next_fetch = 0
        self.next_deliver = 0
        self.delivering = False
        self.held = 0
        self.failed_peers: set[str] = set()
        self.resets: dict[str, tuple[int, float]] = {}  # peer -> (breaks, when last)
        self.degraded = 0
        self.fallbacks = 0

    # -- manifest ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self._resolve(now, refreshed=False)

    def _resolve(self, now: float, refreshed: bool) -> None:
        """Find the version asked for; if this node does not know it (it may have just
        come back), catch up with the peers' catalogs once and look again."""
        if self.finished:
            return
        try:
            self.entry = self.node.catalog.resolve(self.cmd.spec)
        except (CatalogNotFound, FormatError) as err:
            if refreshed or isinstance(err, FormatError):
                alone = self.node.alive == {self.node.node_id}
                hint = (" (this node sees no other members yet: if it just started, retry in a few "
                        "seconds)") if alone and not isinstance(err, FormatError) else ""
                self.finish(ev.Failed(f"{err}{hint}"))
            else:
                self.node.refresh_catalog(now, lambda t, acks: self._resolve(t, refreshed=True))
            return
        ManifestFetch(self.node, self.entry.manifest_id, self._manifest).start()

    def _manifest(self, now: float, manifest: Manifest | None) -> None:
        if self.finished:
            return
        if manifest is None:
            assert self.entry is not None
            self.finish(ev.Failed(
                f"no live node has the manifest of {self.entry.name}@{self.entry.version.counter}; "
                "it may come back when more nodes are up"
            ))
            return
        self._begin(now, manifest)

    def _begin(self, now: float, manifest: Manifest) -> None:
        self.manifest = manifest
        self.layout = [(file_index, offset, stripe, hint) for (file_index, offset, stripe), hint
                       in zip(manifest.stripe_offsets(), manifest.placement, strict=True)]
        assert self.entry is not None
        self.reply(ev.GetStarted(manifest, self.entry))
        self._pump(now)

    # -- fetching ------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        if self.finished or self.manifest is None:
            return
        while self.next_fetch < len(self.layout):
            _, _, entry, _ = self.layout[self.next_fetch]
            cost = entry.block_size * (entry.k + entry.p)
            if not self.node.can_buffer(cost):
                break
            self.node.buffer_bytes += cost
            self.held += cost
            self._open_stripe(now, self.next_fetch, cost)
            self.next_fetch += 1
        self._deliver(now)

    def _open_stripe(self, now: float, number: int, cost: int) -> None:
        file_index, offset, entry, hint = self.layout[number]
        hinted = placement.StripePlacement.from_hint(hint, entry.k, entry.p).positions()
        positions = [Position(index, pid, self._order(pid, list(hinted[index])))
                     for index, pid in enumerate(entry.piece_ids)]
        fetch = StripeFetch(number, file_index, offset, entry, positions, cost)
        self.fetching[number] = fetch
        self._schedule(now, fetch)

    def _order(self, pid: bytes, hinted: list[str]) -> list[str]:
        """Hinted holders in order, with this node first when it holds the piece."""
        ordered = [n for n in dict.fromkeys(hinted) if n != self.node.node_id]
        if pid in self.node.inventory:
            ordered.insert(0, self.node.node_id)
        return ordered

    def _usable(self, peer: str, position: Position) -> bool:
        if peer == self.node.node_id:
            return position.piece_id in self.node.inventory
        return self.node.is_alive(peer) and peer not in self.failed_peers

    def _schedule(self, now: float, fetch: StripeFetch) -> None:
        """Keep at least k positions verified or being fetched: data positions first (each
        from its primary, then its other replica), then parity; when no hinted source is
        left, every live node becomes a candidate (once per position). Fail when nothing is left."""
        if self._handed_over(fetch):
            return  # its pieces are with the shell, on their way to the client
        k = fetch.entry.k
        while not self.finished and sum(p.settled_or_busy for p in fetch.positions) < k:
            started = False
            for position in fetch.positions:
                if position.settled_or_busy:
                    continue
                peer = self._next_source(position)
                if peer is not None:
                    if position.tried:
                        fetch.fallbacks += 1
                        self.node.stats["piece_fallbacks"] += 1
                    position.tried.add(peer)
                    position.busy = True
                    self._fetch(now, fetch, position, peer)
                    started = True
                    break
            if started:
                continue
            # Once per position, and also for one that was busy when the others ran dry:
            # repair re-creates pieces on nodes the placement hint does not name.
            unwidened = [p for p in fetch.positions if not p.settled_or_busy and not p.widened]
            if unwidened:
                fetch.widened = True
                for position in unwidened:
                    position.widened = True
                    position.candidates = [n for n in sorted(self.node.alive) if n not in position.tried]
                continue
            if not any(p.busy for p in fetch.positions):
                self._fail_stripe(fetch)
            return

    def _next_source(self, position: Position) -> str | None:
        while position.candidates:
            peer = position.candidates.pop(0)
            if peer not in position.tried and self._usable(peer, position):
                return peer
            position.tried.add(peer)
        return None

    def _fetch(self, now: float, fetch: StripeFetch, position: Position, peer: str) -> None:
        number = fetch.number
        if peer == self.node.node_id:
            self.node.local(
                lambda tag: ev.LoadPiece(tag, position.piece_id),
                lambda t, done: self._arrived(t, number, position, peer, done.handle),
            )
            return
        size = fetch.entry.block_size
        self.node.request(
            now, peer,
            lambda req: msg.FetchPiece(req, piece_id=position.piece_id),
            lambda t, reply, payload: self._arrived(
                t, number, position, peer,
                payload if isinstance(reply, msg.PieceData) and reply.found else None,
                release=payload,
            ),
            lambda t, why: self._source_failed(t, number, position, peer, why),
            inflight_bytes=size,
        )

    def _arrived(self, now: float, number: int, position: Position, peer: str,
                 handle: Any, release: Any = None) -> None:
        if handle is None:
            if release is not None:
                self.node.emit(ev.ReleaseHandles((release,)))
            self._source_failed(now, number, position, peer, "not found")
            return
        if self.finished or number not in self.fetching:
            self.node.emit(ev.ReleaseHandles((handle,)))
            return
        self.node.local(
            lambda tag: ev.VerifyPiece(tag, position.piece_id, handle),
            lambda t, done: self._verified(t, number, position, peer, handle, done.ok),
        )

    def _verified(self, now: float, number: int, position: Position, peer: str,
                  handle: Any, ok: bool) -> None:
        fetch = self.fetching.get(number)
        if self.finished or fetch is None or self._handed_over(fetch):
            self.node.emit(ev.ReleaseHandles((handle,)))
            return
        if not ok:
            self.node.stats["corrupt_pieces_fetched"] += 1
            self.node.emit(ev.ReleaseHandles((handle,)))
            self.node.integrity.suspect(now, peer, position.piece_id)  # quarantine and repair it there
            self._source_failed(now, number, position, peer, "corrupt")
            return
        position.busy = False
        position.handle = handle
        if not fetch.ready:
            # Sources may have run out while this piece was being verified: look again,
            # so a hopeless stripe fails now instead of waiting forever.
            self._schedule(now, fetch)
        self._deliver(now)

    def _source_failed(self, now: float, number: int, position: Position, peer: str, why: str) -> None:
        if peer != self.node.node_id:
            if why == "timeout":
                self.failed_peers.add(peer)  # frozen or gone: do not wait on it again
            elif why == "unreachable":
                # A broken connection is not a dead node: ask it once more (a new
                # connection) after the other sources; a second break and it is skipped.
                # Every request on a broken connection fails at the same moment: one break.
                count, when = self.resets.get(peer, (0, None))
                if when != now:
                    count += 1
                    self.resets[peer] = (count, now)
                if count > 1:
                    self.failed_peers.add(peer)
                elif not position.retried and self.node.is_alive(peer):
                    position.retried = True
                    position.tried.discard(peer)
                    position.candidates.append(peer)
        position.busy = False
        fetch = self.fetching.get(number)
        if not self.finished and fetch is not None:
            self._schedule(now, fetch)

    def _handed_over(self, fetch: StripeFetch) -> bool:
        """Is this the stripe whose DeliverStripe the shell is carrying out?"""
        return self.delivering and fetch.number == self.next_deliver

    def _fail_stripe(self, fetch: StripeFetch) -> None:
        k = fetch.entry.k
        self.finish(ev.Failed(
            f"cannot restore {self.entry.name if self.entry else self.cmd.spec}: stripe {fetch.number} "
            f"has {len(fetch.verified)} of the {k} pieces it needs on reachable nodes; "
            "bring more nodes back and retry"
        ))

    # -- delivery ------------------------------------------------------------------------

    def _deliver(self, now: float) -> None:
        if self.finished or self.delivering or self.manifest is None:
            return
        if self.next_deliver >= len(self.layout):
            self._done()
            return
        fetch = self.fetching.get(self.next_deliver)
        if fetch is None or not fetch.ready:
            return
        entry = fetch.entry
        data = [p for p in fetch.positions[: entry.k] if p.handle is not None]
        chosen = data if len(data) == entry.k else fetch.verified[: entry.k]
        if len(data) < entry.k:
            self.degraded += 1
            self.node.stats["stripes_rebuilt_from_parity"] += 1
        self.fallbacks += fetch.fallbacks
        keep = {id(p) for p in chosen}
        spare = tuple(p.handle for p in fetch.positions if p.handle is not None and id(p) not in keep)
        if spare:
            self.node.emit(ev.ReleaseHandles(spare))
        self.delivering = True
        self.node.emit(ev.DeliverStripe(
            op=self.op_id, client=self.client, stripe=fetch.number, file_index=fetch.file_index, offset=fetch.offset,
            k=entry.k, p=entry.p, shard_lengths=entry.data_lengths,
            pieces=tuple((p.index, p.handle) for p in chosen), piece_ids=entry.piece_ids,
        ))
        for position in fetch.positions:
            position.handle = None  # the shell owns them now; it releases after delivery

    def on_completion(self, now: float, event: Any) -> None:
        if not isinstance(event, ev.StripeDelivered) or event.stripe != self.next_deliver:
            return
        self.delivering = False
        fetch = self.fetching.pop(event.stripe)
        self.node.buffer_bytes -= fetch.buffered
        self.held -= fetch.buffered
        if not event.ok:
            self.finish(ev.Failed(f"delivering the data failed: {event.error}"))
            return
        self.next_deliver += 1
        self._pump(now)

    def _done(self) -> None:
        assert self.entry is not None and self.manifest is not None
        self.finish(ev.GetDone(
            name=self.entry.name, version=str(self.entry.version.counter),
            size=self.manifest.total_size(), degraded_stripes=self.degraded,
            fallbacks=self.fallbacks,
        ))

    def tick(self, now: float) -> None:
        self._pump(now)  # memory another operation freed may let more stripes open

    def on_members_changed(self, now: float) -> None:
        for fetch in list(self.fetching.values()):
            self._schedule(now, fetch)

    def cleanup(self) -> None:
        handles = tuple(p.handle for f in self.fetching.values() for p in f.positions if p.handle is not None)
        if handles:
            self.node.emit(ev.ReleaseHandles(handles))
        self.fetching.clear()
        self.node.buffer_bytes -= self.held
        self.held = 0
