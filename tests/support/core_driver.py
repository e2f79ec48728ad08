"""A small synchronous driver for ``NodeCore``: N cores, in-memory disks and wire, real bytes.

For core regression tests that need to say exactly what happens in which order (which
peer is down, which completion arrives last) without writing an effect loop by hand. It
is not the simulator: no latency, no bandwidth, no randomness of its own. Inputs and
effects run one at a time, first in first out, until nothing is left (``run``); time only
moves when the test says (``advance``). Payloads are real bytes: ``put`` encodes stripes
with zfec and names pieces by their BLAKE3, ``get`` rebuilds and writes the files, so a
test can compare bytes.

What the shell does for each effect is the daemon's rule, kept simple: a request to a node
that is down fails at once (``PeerUnreachable``), a reply to it is lost; a piece write is
durable when its effect runs; ``ReleaseHandles`` and ``DeliverStripe`` free handles. Every
message goes through its wire header (``to_header``/``from_header``), so a message the
schema would refuse fails here too.

Hooks, for the test to take over one effect: ``intercept(kind, fn)`` runs ``fn(node_id,
effect)`` instead of the default whenever it returns True; ``hold(match)`` puts matching
effects aside until ``release()``; ``watch(fn)`` sees every effect before it runs.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3

from peerstore.core import events as ev
from peerstore.core.node import NodeCore
from peerstore.core.quorum import decode_stable
from peerstore.core.settings import CoreSettings
from peerstore.core.snapshots import restore_catalog, restore_counters
from peerstore.ec import decode_data, encode_parity, piece_id
from peerstore.ec.rebuild import rebuild_pieces
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg

MAX_STEPS = 200_000  # inputs + effects in one run(); a livelock fails instead of hanging
MAX_TICKS = 10_000  # timer rounds in one advance()
SHARD = 64 * 1024  # the smallest shard size a policy allows: small and fast


@dataclass
class Disk:
    """What a node keeps across a crash: piece files, manifests, catalog and counters."""

    pieces: dict[bytes, bytes] = field(default_factory=dict)
    manifests: dict[bytes, bytes] = field(default_factory=dict)
    catalog: bytes | None = None  # the sealed blob PersistCatalog wrote
    counters: bytes | None = None
    membership: bytes | None = None  # the sealed blob PersistMembership wrote
    boot_epoch: int = 0


@dataclass
class Node:
    node_id: str
    disk: Disk = field(default_factory=Disk)
    core: NodeCore | None = None
    boot: int = 0  # process generation: queued work of an earlier one is void
    handles: dict[int, bytes] = field(default_factory=dict)  # payload bytes the shell holds

    @property
    def up(self) -> bool:
        return self.core is not None


@dataclass
class Client:
    """One client command and everything its node answered."""

    node: str
    sources: list[tuple[str, bytes]] = field(default_factory=list, repr=False)  # put: (path, bytes)
    replies: list[Any] = field(default_factory=list)
    final: Any = None
    disconnected: bool = False  # its node went down before the final answer
    manifest: Any = field(default=None, repr=False)  # get: from GetStarted
    output: dict[int, bytearray] = field(default_factory=dict, repr=False)  # get: file index -> bytes

    @property
    def done(self) -> bool:
        return self.final is not None or self.disconnected

    @property
    def ok(self) -> bool:
        return self.final is not None and not isinstance(self.final, ev.Failed)

    def files(self) -> dict[str, bytes]:
        """A finished get's files by path."""
        assert self.manifest is not None, f"no manifest: {self.replies}"
        return {f.path: bytes(self.output.get(i, b"")) for i, f in enumerate(self.manifest.files)}


MAX_NODES = 64


class CoreDriver:
    """``ids`` (or that many generated ids) NodeCores on in-memory disks and wire; started
    unless ``start=False`` (seed the disks first, then ``start()``)."""

    def __init__(
        self,
        ids: Iterable[str] | int = 5,
        *,
        settings: CoreSettings | None = None,
        seed: int = 1,
        start: bool = True,
    ):
        ids = [f"{i + 1:02x}" * 8 for i in range(ids)] if isinstance(ids, int) else list(ids)
        if not 1 <= len(ids) <= MAX_NODES or len(set(ids)) != len(ids):
            raise ValueError(f"need 1 to {MAX_NODES} distinct node ids, got {ids}")
        self.settings = settings or CoreSettings(policy=Policy(shard_size=SHARD))
        self.seed = seed
        self.now = 0.0
        self.ids = ids
        self.nodes = {node_id: Node(node_id) for node_id in ids}
        self.clients: dict[int, Client] = {}
        self.steps = 0
        self._queue: deque[tuple[str, int, Callable[[], None]]] = deque()
        self._next_handle = 0
        self._intercepts: list[tuple[type | Callable[[str, Any], bool], Callable[[str, Any], bool]]] = []
        self._holds: list[list[Any]] = []  # [match, remaining]
        self.held: list[tuple[str, Any]] = []  # (node id, effect) put aside by hold()
        self._held_boots: list[int] = []
        self._watchers: list[Callable[[str, Any], None]] = []
        if start:
            self.start()

    # -- nodes ---------------------------------------------------------------------------

    def core(self, node_id: str) -> NodeCore:
        core = self.nodes[node_id].core
        assert core is not None, f"node {node_id} is down"
        return core

    def up_ids(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].up]

    def start(self, *node_ids: str) -> None:
        """Boot the given nodes (default: all that are down) from their disks, each
        believing every running node alive, and let them settle."""
        for node_id in node_ids or [i for i in self.ids if not self.nodes[i].up]:
            self._boot(self.nodes[node_id])
        self.announce()
        self.run()

    def _boot(self, node: Node) -> None:
        assert not node.up, f"node {node.node_id} is already running"
        node.boot += 1
        node.disk.boot_epoch += 1
        catalog, problem = restore_catalog(node.disk.catalog)
        assert not problem, f"node {node.node_id}: {problem}"
        node.core = NodeCore(
            node.node_id, self.settings, random.Random(f"core:{self.seed}:{node.node_id}:{node.boot}"),
            catalog=catalog, inventory=frozenset(node.disk.pieces),
            alive=frozenset(self.up_ids()) | {node.node_id},
            counters=restore_counters(node.disk.counters), boot_epoch=node.disk.boot_epoch,
            stable_members=decode_stable(node.disk.membership),
        )
        self.feed(node.node_id, ev.Started())

    def crash(self, node_id: str) -> None:
        """Kill the process: its core, handles and queued work are gone, its disk stays.
        Peers are not told; their requests to it fail from now on."""
        node = self.nodes[node_id]
        node.core = None
        node.handles.clear()
        for client in self.clients.values():
            if client.node == node_id and not client.done:
                client.disconnected = True

    def restart(self, node_id: str) -> None:
        """Boot a crashed node from its disk and tell every node who is running."""
        self._boot(self.nodes[node_id])
        self.announce()
        self.run()

    def announce(self, alive: Iterable[str] | None = None, to: Iterable[str] | None = None) -> None:
        """Feed ``MembersChanged``: ``alive`` (default: the running nodes) to ``to`` (default:
        every running node). Not run: call ``run``."""
        view = frozenset(alive if alive is not None else self.up_ids())
        for node_id in to if to is not None else self.up_ids():
            self.feed(node_id, ev.MembersChanged(view | {node_id}))

    # -- clients -------------------------------------------------------------------------

    def put(self, node_id: str, name: str, files: Mapping[str, bytes], *, is_dir: bool = False) -> int:
        """Start a put of ``files`` (path -> bytes) through ``node_id``; returns the client."""
        client = self._client(Client(node_id, sources=list(files.items())))
        specs = tuple(ev.FileSpec(path, len(data)) for path, data in files.items())
        self.feed(node_id, ev.PutCommand(client, name, specs, is_dir=is_dir, created=self.now))
        return client

    def get(self, node_id: str, spec: str) -> int:
        return self.command(node_id, lambda c: ev.GetCommand(c, spec))

    def command(self, node_id: str, make: Callable[[int], Any]) -> int:
        """Any client command: ``make(client)`` builds it."""
        client = self._client(Client(node_id))
        self.feed(node_id, make(client))
        return client

    def _client(self, record: Client) -> int:
        client = len(self.clients) + 1
        self.clients[client] = record
        return client

    def result(self, client: int) -> Client:
        """Run until quiet; the client's record (fails if it got no final answer)."""
        self.run()
        record = self.clients[client]
        assert record.done, (f"client {client} got no final answer (the operation hangs); it got "
                             f"{[type(r).__name__ for r in record.replies]}")
        return record

    # -- hooks ---------------------------------------------------------------------------

    def intercept(self, kind: type | Callable[[str, Any], bool], handler: Callable[[str, Any], bool]) -> None:
        """Before the default runs for an effect of type ``kind`` (or for which
        ``kind(node_id, effect)`` is true), call ``handler(node_id, effect)``; when it
        returns True it has dealt with the effect and the default does not run."""
        self._intercepts.append((kind, handler))

    def hold(self, match: Callable[[str, Any], bool], count: int = 1) -> None:
        """Put the next ``count`` effects for which ``match(node_id, effect)`` aside."""
        self._holds.append([match, count])

    def release(self) -> None:
        """Run the effects held so far (queued now, in the order they were held)."""
        held, boots, self.held, self._held_boots = self.held, self._held_boots, [], []
        for (node_id, effect), boot in zip(held, boots):  # void if its process died meanwhile
            self._queue.append((node_id, boot, lambda n=node_id, e=effect: self._do(n, e)))

    def watch(self, fn: Callable[[str, Any], None]) -> None:
        """Call ``fn(node_id, effect)`` for every effect before anything runs it."""
        self._watchers.append(fn)

    # -- running -------------------------------------------------------------------------

    def feed(self, node_id: str, event: Any) -> None:
        """Queue an input for a node's core (void if the node restarts or dies first)."""
        node = self.nodes[node_id]
        self._queue.append((node_id, node.boot, lambda: self._handle(node_id, event)))

    def run(self, max_steps: int = MAX_STEPS) -> int:
        """Run queued inputs and effects until there are none; how many ran (work queued
        for a process that has died since is dropped, not run)."""
        ran = 0
        for _ in range(max_steps):
            if not self._queue:
                return ran
            node_id, boot, action = self._queue.popleft()
            node = self.nodes[node_id]
            if node.up and node.boot == boot:
                self.steps += 1
                ran += 1
                action()
        raise AssertionError(f"not quiet after {max_steps} steps: a livelock between the cores?")

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, running every core timer that falls due in order."""
        target = self.now + seconds
        self.run()
        for _ in range(MAX_TICKS):
            due = [(d, i) for i in self.up_ids() if (d := self.core(i).next_deadline()) is not None and d <= target]
            if not due:
                self.now = target
                return
            when, node_id = min(due)
            self.now = max(self.now, when)
            self._effects(node_id, self.core(node_id).tick(self.now))
            self.run()
        raise AssertionError(f"timers still due after {MAX_TICKS} rounds: a deadline that never moves?")

    def _handle(self, node_id: str, event: Any) -> None:
        self._effects(node_id, self.core(node_id).handle(self.now, event))

    def _effects(self, node_id: str, effects: list[Any]) -> None:
        boot = self.nodes[node_id].boot
        for effect in effects:
            self._queue.append((node_id, boot, lambda e=effect: self._do(node_id, e)))

    def _do(self, node_id: str, effect: Any) -> None:
        for fn in self._watchers:
            fn(node_id, effect)
        for hold in self._holds:
            if hold[1] > 0 and hold[0](node_id, effect):
                hold[1] -= 1
                self.held.append((node_id, effect))
                self._held_boots.append(self.nodes[node_id].boot)
                return
        for kind, handler in self._intercepts:
            matches = isinstance(effect, kind) if isinstance(kind, type) else kind(node_id, effect)
            if matches and handler(node_id, effect):
                return
        do = getattr(self, "_do_" + type(effect).__name__, None)
        if do is None:
            raise TypeError(f"the core driver cannot carry out {type(effect).__name__}: add _do_{type(effect).__name__}")
        do(self.nodes[node_id], effect)

    def _handle_of(self, node: Node, data: bytes) -> int:
        self._next_handle += 1
        node.handles[self._next_handle] = data
        return self._next_handle

    # -- effects: the wire ---------------------------------------------------------------

    def _do_Send(self, node: Node, effect: ev.Send) -> None:
        message = msg.from_header(effect.message.to_header(), effect.message.payload_blob)
        payload = None
        if effect.payload is not None:
            payload = node.handles.get(effect.payload)
        elif effect.payload_piece is not None:
            payload = node.disk.pieces.get(effect.payload_piece)
            if payload is None and isinstance(message, msg.PieceData):  # gone since the core looked
                message = msg.PieceData(message.req, piece_id=message.piece_id, found=False)
        peer = self.nodes.get(effect.peer)
        if peer is None or not peer.up:
            if type(message) not in msg.REPLY_TYPES:
                self.feed(node.node_id, ev.PeerUnreachable(effect.peer, message.req))
            return
        handle = self._handle_of(peer, payload) if payload is not None else None
        self.feed(peer.node_id, ev.MessageReceived(node.node_id, message, handle))

    # -- effects: the disk ---------------------------------------------------------------

    def _do_StorePieceLocal(self, node: Node, effect: ev.StorePieceLocal) -> None:
        data = node.handles.get(effect.handle)
        ok = data is not None and piece_id(data) == effect.piece_id
        if ok:
            node.disk.pieces[effect.piece_id] = data
        self.feed(node.node_id, ev.PieceStoredLocally(effect.tag, effect.piece_id, ok, "" if ok else "hash mismatch"))

    def _do_LoadPiece(self, node: Node, effect: ev.LoadPiece) -> None:
        data = node.disk.pieces.get(effect.piece_id)
        handle = self._handle_of(node, data) if data is not None else None
        self.feed(node.node_id, ev.PieceLoaded(effect.tag, effect.piece_id, handle))

    def _do_VerifyHeldPiece(self, node: Node, effect: ev.VerifyHeldPiece) -> None:
        data = node.disk.pieces.get(effect.piece_id)
        ok = data is not None and piece_id(data) == effect.piece_id
        if not ok:
            node.disk.pieces.pop(effect.piece_id, None)  # quarantined
        self.feed(node.node_id, ev.HeldPieceVerified(effect.tag, effect.piece_id, ok,
                                                     size=len(data) if data is not None else 0,
                                                     missing=data is None))

    def _do_VerifyPiece(self, node: Node, effect: ev.VerifyPiece) -> None:
        data = node.handles.get(effect.handle)
        self.feed(node.node_id, ev.PieceVerified(effect.tag, data is not None and piece_id(data) == effect.piece_id))

    def _do_ReleaseHandles(self, node: Node, effect: ev.ReleaseHandles) -> None:
        for handle in effect.handles:
            node.handles.pop(handle, None)

    def _do_StoreManifestLocal(self, node: Node, effect: ev.StoreManifestLocal) -> None:
        node.disk.manifests[effect.manifest_id] = effect.blob
        self.feed(node.node_id, ev.ManifestStoredLocally(effect.tag, True))

    def _do_LoadManifest(self, node: Node, effect: ev.LoadManifest) -> None:
        self.feed(node.node_id, ev.ManifestLoaded(effect.tag, node.disk.manifests.get(effect.manifest_id)))

    def _do_PersistCatalog(self, node: Node, effect: ev.PersistCatalog) -> None:
        node.disk.catalog = effect.blob
        self.feed(node.node_id, ev.CatalogPersisted(effect.tag, True))

    def _do_PersistCounters(self, node: Node, effect: ev.PersistCounters) -> None:
        node.disk.counters = effect.blob
        self.feed(node.node_id, ev.CountersPersisted(effect.tag, True))

    def _do_PersistMembership(self, node: Node, effect: ev.PersistMembership) -> None:
        node.disk.membership = effect.blob
        self.feed(node.node_id, ev.MembershipPersisted(effect.tag, True))

    def _do_RebuildPieces(self, node: Node, effect: ev.RebuildPieces) -> None:
        pieces = {pos: node.handles.get(handle) for pos, handle in effect.pieces}
        if any(data is None for data in pieces.values()):
            self.feed(node.node_id, ev.PiecesRebuilt(effect.tag, (), "a handle was gone"))
            return
        made = rebuild_pieces(pieces, effect.k, effect.p, effect.shard_lengths, effect.want)  # type: ignore[arg-type]
        handles = tuple((pos, self._handle_of(node, data)) for pos, data in sorted(made.items()))
        self.feed(node.node_id, ev.PiecesRebuilt(effect.tag, handles))

    def _do_DeletePieces(self, node: Node, effect: ev.DeletePieces) -> None:
        freed = sum(len(node.disk.pieces.pop(pid, b"")) for pid in effect.piece_ids)
        self.feed(node.node_id, ev.PiecesDeleted(effect.tag, effect.piece_ids, freed))

    def _do_DeleteManifests(self, node: Node, effect: ev.DeleteManifests) -> None:
        for mid in effect.manifest_ids:
            node.disk.manifests.pop(mid, None)
        self.feed(node.node_id, ev.ManifestsDeleted(effect.tag))

    # -- effects: the client -------------------------------------------------------------

    def _do_EncodeStripe(self, node: Node, effect: ev.EncodeStripe) -> None:
        data = self.clients[effect.client].sources[effect.file_index][1]
        shards, offset = [], effect.offset
        for length in effect.shard_lengths:
            shards.append(data[offset: offset + length])
            offset += length
        parity = encode_parity(shards, effect.parity) if effect.parity else []
        handles = tuple(self._handle_of(node, piece) for piece in [*shards, *parity])
        self.feed(node.node_id, ev.StripeEncoded(
            effect.op, effect.stripe, tuple(piece_id(s) for s in shards), tuple(effect.shard_lengths),
            tuple(piece_id(p) for p in parity), handles,
        ))

    def _do_FinishFileRead(self, node: Node, effect: ev.FinishFileRead) -> None:
        data = self.clients[effect.client].sources[effect.file_index][1]
        self.feed(node.node_id, ev.FileRead(effect.op, effect.file_index, blake3.blake3(data).digest()))

    def _do_DeliverStripe(self, node: Node, effect: ev.DeliverStripe) -> None:
        pieces = {pos: node.handles.pop(handle, None) for pos, handle in effect.pieces}
        if any(data is None for data in pieces.values()):
            self.feed(node.node_id, ev.StripeDelivered(effect.op, effect.stripe, False, "a handle was gone"))
            return
        if effect.needs_decode:
            shards = decode_data(pieces, effect.k, effect.p, effect.shard_lengths)  # type: ignore[arg-type]
        else:
            shards = [pieces[i][:length] for i, length in enumerate(effect.shard_lengths)]  # type: ignore[index]
        out = self.clients[effect.client].output.setdefault(effect.file_index, bytearray())
        stripe = b"".join(shards)
        out[effect.offset: effect.offset + len(stripe)] = stripe
        self.feed(node.node_id, ev.StripeDelivered(effect.op, effect.stripe, True))

    def _do_Reply(self, node: Node, effect: ev.Reply) -> None:
        record = self.clients.get(effect.client)  # type: ignore[call-overload]
        if record is None or record.done:
            return
        record.replies.append(effect.body)
        if isinstance(effect.body, ev.GetStarted):
            record.manifest = effect.body.manifest
        if effect.final:
            record.final = effect.body
