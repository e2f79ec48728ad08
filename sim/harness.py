"""A seeded in-memory cluster that drives real ``NodeCore`` objects.

Payloads are modelled, not moved: a piece's "bytes" are a ``Content`` naming what those
bytes really hash to. A corrupt piece is a Content whose true id differs from the id it
is stored under, so hash checks behave exactly as with real bytes.

Disks keep what is durable apart from what is only written: a crash loses the latter, and
a completion reaches a core only once the step it confirms has happened. Nodes can be
crashed, restarted, frozen (they accept messages and never answer) and have pieces
corrupted at any moment. Same seed, same run: ``cluster.loop.digest`` identifies it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import blake3

from peerstore.core import events as ev
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.ec import iter_stripes
from peerstore.manifest import Catalog, Manifest
from peerstore.policy import Policy
from peerstore.wire import messages as msg
from sim.loop import EventLoop


@dataclass(frozen=True)
class Content:
    """Modelled bytes: ``true_id`` is the BLAKE3 those bytes really have."""

    true_id: bytes
    size: int


def model_id(*parts: Any) -> bytes:
    return blake3.blake3(repr(parts).encode()).digest()


@dataclass
class FileModel:
    """A file to put, as a list of data-shard contents (``shard_size`` each, last shorter)."""

    path: str
    size: int
    shards: list[Content]
    mode: int = 0o644

    @classmethod
    def generate(cls, path: str, size: int, shard_size: int, seed: Any = 0, mode: int = 0o644) -> "FileModel":
        shards, offset = [], 0
        while offset < size:
            length = min(shard_size, size - offset)
            shards.append(Content(model_id("shard", seed, path, offset), length))
            offset += length
        return cls(path, size, shards, mode)

    @classmethod
    def repeating(cls, path: str, size: int, shard_size: int, mode: int = 0o644) -> "FileModel":
        """Every full shard has the same bytes (like an all-zero tensor region)."""
        shards, offset = [], 0
        while offset < size:
            length = min(shard_size, size - offset)
            shards.append(Content(model_id("zero", length), length))
            offset += length
        return cls(path, size, shards, mode)

    @property
    def blake3(self) -> bytes:
        return model_id("file", tuple(c.true_id for c in self.shards))


def parity_content(data_ids: Iterable[bytes], j: int, size: int) -> Content:
    return Content(model_id("parity", tuple(data_ids), j), size)


@dataclass
class SimDisk:
    durable: dict[bytes, Content] = field(default_factory=dict)
    written: dict[bytes, Content] = field(default_factory=dict)  # not yet durable
    manifests: dict[bytes, bytes] = field(default_factory=dict)
    catalog: bytes | None = None

    def crash(self) -> None:
        self.written.clear()


@dataclass
class ClientRecord:
    """What one client saw: every reply, and for gets, what it received."""

    kind: str
    node: str
    sources: list[FileModel] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)
    final: Any = None
    manifest: Manifest | None = None
    delivered: dict[int, bool] = field(default_factory=dict)  # stripe -> bytes correct
    disconnected: bool = False

    @property
    def done(self) -> bool:
        return self.final is not None or self.disconnected

    @property
    def ok(self) -> bool:
        return self.final is not None and not isinstance(self.final, ev.Failed)


class SimNode:
    def __init__(self, cluster: "Cluster", node_id: str):
        self.cluster = cluster
        self.node_id = node_id
        self.disk = SimDisk()
        self.state = "up"  # up | down | frozen
        self.boot = 0
        self.core: NodeCore | None = None
        self.handles: dict[int, Content] = {}
        self.next_tick: float | None = None
        self.boot_core()

    def boot_core(self) -> None:
        self.boot += 1
        catalog = Catalog.decode(self.disk.catalog) if self.disk.catalog else Catalog()
        self.handles.clear()
        self.next_tick = None
        self.core = self.cluster.make_core(self, catalog)


class Cluster:
    """N simulated nodes, a network between them, and clients using them."""

    def __init__(
        self,
        n: int = 5,
        seed: int = 0,
        *,
        policy: Policy | None = None,
        settings: CoreSettings | None = None,
        latency: float = 0.0002,
        bandwidth: float = 125e6,  # bytes/s per link (1 GbE)
        disk_bandwidth: float = 200e6,
        fsync_time: float = 0.004,
        core_class: type[NodeCore] = NodeCore,
        oracle_membership: bool = False,
        detection_delay: float = 2.0,
    ):
        self.seed = seed
        self.rng = random.Random(seed)
        self.loop = EventLoop()
        policy = policy or Policy(shard_size=64 * 1024)
        self.settings = settings or CoreSettings(policy=policy)
        self.latency = latency
        self.bandwidth = bandwidth
        self.disk_bandwidth = disk_bandwidth
        self.fsync_time = fsync_time
        self.core_class = core_class
        self.oracle_membership = oracle_membership
        self.detection_delay = detection_delay
        self.ids = [f"{i + 1:02x}" + model_id("node", seed, i).hex()[:14] for i in range(n)]
        self.link_busy: dict[tuple[str, str], float] = {}
        self.clients: dict[int, ClientRecord] = {}
        self.violations: list[str] = []
        self.next_handle = 0
        self.nodes: dict[str, SimNode] = {}
        for node_id in self.ids:
            self.nodes[node_id] = SimNode(self, node_id)

    # -- building cores ------------------------------------------------------------------

    def make_core(self, node: SimNode, catalog: Catalog) -> NodeCore:
        rng = random.Random(f"{self.seed}:{node.node_id}:{node.boot}")
        alive = frozenset(i for i in self.ids if not self.oracle_membership or self.nodes.get(i) is None
                          or self.nodes[i].state != "down")
        return self.core_class(node.node_id, self.settings, rng, catalog=catalog,
                               inventory=frozenset(node.disk.durable), alive=alive)

    # -- driving -------------------------------------------------------------------------

    def feed(self, node_id: str, event: Any, boot: int | None = None) -> None:
        """Give ``event`` to a node's core (dropped if it is down, frozen or rebooted)."""
        node = self.nodes[node_id]
        if node.state != "up" or (boot is not None and boot != node.boot):
            return
        assert node.core is not None
        self.loop.trace(f"{node_id[:4]} <- {type(event).__name__} {_brief(event)}")
        effects = node.core.handle(self.loop.now, event)
        self.execute(node, effects)

    def _tick(self, node_id: str, boot: int, when: float) -> None:
        node = self.nodes[node_id]
        if node.state != "up" or node.boot != boot or node.next_tick != when:
            return
        node.next_tick = None
        assert node.core is not None
        self.execute(node, node.core.tick(self.loop.now))

    def _schedule_tick(self, node: SimNode) -> None:
        assert node.core is not None
        deadline = node.core.next_deadline()
        if deadline is not None and (node.next_tick is None or deadline < node.next_tick):
            node.next_tick = deadline
            self.loop.at(deadline, self._tick, node.node_id, node.boot, deadline)

    def execute(self, node: SimNode, effects: list[Any]) -> None:
        for effect in effects:
            self.loop.trace(f"{node.node_id[:4]} -> {type(effect).__name__} {_brief(effect)}")
            handler = getattr(self, "_do_" + type(effect).__name__)
            handler(node, effect)
        if node.state == "up":
            self._schedule_tick(node)

    def new_handle(self, node: SimNode, content: Content) -> int:
        self.next_handle += 1
        node.handles[self.next_handle] = content
        return self.next_handle

    def complete(self, node: SimNode, delay: float, event: Any) -> None:
        self.loop.after(delay, self.feed, node.node_id, event, node.boot)

    # -- effects: network ----------------------------------------------------------------

    def _do_Send(self, node: SimNode, effect: ev.Send) -> None:
        message = msg.from_header(effect.message.to_header(), effect.message.payload_blob)  # schema check
        content = None
        if effect.payload is not None:
            content = node.handles.get(effect.payload)
        elif effect.payload_piece is not None:
            content = node.disk.durable.get(effect.payload_piece)
            if content is None and isinstance(message, msg.PieceData):
                message = msg.PieceData(message.req, piece_id=message.piece_id, found=False)
        size = 200 + len(message.payload_blob or b"") + (content.size if content else 0)
        dst = self.nodes.get(effect.peer)
        key = (node.node_id, effect.peer)
        start = max(self.loop.now, self.link_busy.get(key, 0.0))
        done = start + size / self.bandwidth
        self.link_busy[key] = done
        if dst is None or dst.state == "down":
            if type(message) not in msg.REPLY_TYPES:
                self.complete(node, self.latency * 2 + 0.001, ev.PeerUnreachable(effect.peer, message.req))
            return
        self.loop.at(done + self.latency, self._arrive, node.node_id, effect.peer, dst.boot, message, content)

    def _arrive(self, src: str, dst_id: str, dst_boot: int, message: msg.Message, content: Content | None) -> None:
        dst = self.nodes[dst_id]
        if dst.state != "up" or dst.boot != dst_boot:
            return  # crashed, rebooted (connection reset) or frozen: nobody answers
        handle = self.new_handle(dst, content) if content is not None else None
        self.feed(dst_id, ev.MessageReceived(src, message, handle))

    # -- effects: disk -------------------------------------------------------------------

    def _do_StorePieceLocal(self, node: SimNode, effect: ev.StorePieceLocal) -> None:
        content = node.handles.get(effect.handle)
        write_time = (content.size if content else 0) / self.disk_bandwidth
        self.loop.after(write_time, self._written, node.node_id, node.boot, effect, content)

    def _written(self, node_id: str, boot: int, effect: ev.StorePieceLocal, content: Content | None) -> None:
        node = self.nodes[node_id]
        if node.boot != boot or node.state == "down":
            return
        if content is None or content.true_id != effect.piece_id:
            self.complete(node, 0.0, ev.PieceStoredLocally(effect.tag, effect.piece_id, False, "hash mismatch"))
            return
        node.disk.written[effect.piece_id] = content
        self.loop.after(self.fsync_time, self._durable, node_id, boot, effect)

    def _durable(self, node_id: str, boot: int, effect: ev.StorePieceLocal) -> None:
        node = self.nodes[node_id]
        if node.boot != boot or node.state == "down":
            return
        content = node.disk.written.pop(effect.piece_id, None)
        if content is not None:
            node.disk.durable.setdefault(effect.piece_id, content)
        self.complete(node, 0.0, ev.PieceStoredLocally(effect.tag, effect.piece_id, True))

    def _do_LoadPiece(self, node: SimNode, effect: ev.LoadPiece) -> None:
        content = node.disk.durable.get(effect.piece_id)
        handle = self.new_handle(node, content) if content else None
        delay = (content.size if content else 0) / self.disk_bandwidth
        self.complete(node, delay, ev.PieceLoaded(effect.tag, effect.piece_id, handle))

    def _do_VerifyPiece(self, node: SimNode, effect: ev.VerifyPiece) -> None:
        content = node.handles.get(effect.handle)
        ok = content is not None and content.true_id == effect.piece_id
        self.complete(node, 0.0, ev.PieceVerified(effect.tag, ok))

    def _do_ReleaseHandles(self, node: SimNode, effect: ev.ReleaseHandles) -> None:
        for handle in effect.handles:
            node.handles.pop(handle, None)

    def _do_StoreManifestLocal(self, node: SimNode, effect: ev.StoreManifestLocal) -> None:
        def durable(node_id: str, boot: int) -> None:
            target = self.nodes[node_id]
            if target.boot == boot and target.state != "down":
                target.disk.manifests[effect.manifest_id] = effect.blob
                self.feed(node_id, ev.ManifestStoredLocally(effect.tag, True), boot)

        self.loop.after(self.fsync_time, durable, node.node_id, node.boot)

    def _do_LoadManifest(self, node: SimNode, effect: ev.LoadManifest) -> None:
        self.complete(node, 0.0001, ev.ManifestLoaded(effect.tag, node.disk.manifests.get(effect.manifest_id)))

    def _do_PersistCatalog(self, node: SimNode, effect: ev.PersistCatalog) -> None:
        def durable(node_id: str, boot: int) -> None:
            target = self.nodes[node_id]
            if target.boot == boot and target.state != "down":
                target.disk.catalog = effect.blob
                self.feed(node_id, ev.CatalogPersisted(effect.tag, True), boot)

        self.loop.after(self.fsync_time, durable, node.node_id, node.boot)

    # -- effects: the client side of put and get -----------------------------------------

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
        self.complete(node, size / self.disk_bandwidth, ev.StripeEncoded(
            effect.op, effect.stripe, data_ids, tuple(c.size for c in data),
            tuple(c.true_id for c in parity), handles,
        ))

    def _do_FinishFileRead(self, node: SimNode, effect: ev.FinishFileRead) -> None:
        source = self.clients[effect.client].sources[effect.file_index]
        self.complete(node, 0.0, ev.FileRead(effect.op, effect.file_index, source.blake3))

    def _do_DeliverStripe(self, node: SimNode, effect: ev.DeliverStripe) -> None:
        record = self.clients[effect.client]
        contents = [node.handles.pop(h, None) for _, h in effect.pieces]
        genuine = all(c is not None and c.true_id == effect.piece_ids[pos]
                      for (pos, _), c in zip(effect.pieces, contents))
        enough = len({pos for pos, _ in effect.pieces}) >= effect.k
        correct = genuine and enough
        if not correct:
            self.violations.append(
                f"node {node.node_id} delivered wrong bytes for stripe {effect.stripe} "
                f"(genuine={genuine}, positions={[p for p, _ in effect.pieces]})"
            )
        record.delivered[effect.stripe] = correct
        size = sum(effect.shard_lengths)
        self.complete(node, size / self.bandwidth, ev.StripeDelivered(effect.op, effect.stripe, True))

    def _do_Reply(self, node: SimNode, effect: ev.Reply) -> None:
        record = self.clients.get(effect.client)
        if record is None:
            return
        record.replies.append(effect.body)
        if isinstance(effect.body, ev.GetStarted):
            record.manifest = effect.body.manifest
        if effect.final:
            record.final = self._client_check(node, record, effect.body)

    def _client_check(self, node: SimNode, record: ClientRecord, body: Any) -> Any:
        """What a real client does at the end: a get verifies every file's bytes; and the
        harness checks a successful put's pieces are really durable where it says."""
        if isinstance(body, ev.GetDone):
            manifest = record.manifest
            expected = sum(len(f.stripes) for f in manifest.files) if manifest else -1
            if len(record.delivered) != expected or not all(record.delivered.values()):
                return ev.Failed("whole-file hash mismatch")
        if isinstance(body, ev.PutDone):
            self._check_put_durable(node, body)
        return body

    def _check_put_durable(self, node: SimNode, done: ev.PutDone) -> None:
        blob = node.disk.manifests.get(done.manifest_id)
        if blob is None:
            self.violations.append(f"put {done.name} reported success without a local manifest")
            return
        manifest = Manifest.decode(blob)
        holders = sum(1 for n in self.nodes.values() if done.manifest_id in n.disk.manifests)
        if holders < done.tolerance + 1:
            self.violations.append(f"put {done.name}: manifest on {holders} nodes < tolerance+1")
        for (_, number, stripe), hint in zip(manifest.iter_stripes(), manifest.placement):
            k = stripe.k
            for slot, node_id in enumerate(hint):
                pid = stripe.data_ids[slot // 2] if slot < 2 * k else stripe.parity_ids[slot - 2 * k]
                if pid not in self.nodes[node_id].disk.durable:
                    self.violations.append(
                        f"put {done.name} reported success but stripe {number} slot {slot} "
                        f"is not durable on {node_id}"
                    )

    # -- what tests call -----------------------------------------------------------------

    def put(self, node_id: str, name: str, files: list[FileModel], *, is_dir: bool = False) -> int:
        client = len(self.clients) + 1
        self.clients[client] = ClientRecord("put", node_id, sources=list(files))
        cmd = ev.PutCommand(client, name, tuple(ev.FileSpec(f.path, f.size, f.mode) for f in files),
                            is_dir=is_dir, created=self.loop.now)
        self.loop.after(0.0, self.feed, node_id, cmd)
        return client

    def get(self, node_id: str, spec: str) -> int:
        client = len(self.clients) + 1
        self.clients[client] = ClientRecord("get", node_id)
        self.loop.after(0.0, self.feed, node_id, ev.GetCommand(client, spec))
        return client

    def command(self, node_id: str, make: Callable[[int], Any], kind: str = "cmd") -> int:
        client = len(self.clients) + 1
        self.clients[client] = ClientRecord(kind, node_id)
        self.loop.after(0.0, self.feed, node_id, make(client))
        return client

    def cancel(self, client: int) -> None:
        self.feed(self.clients[client].node, ev.CancelCommand(client))

    def wait(self, *clients: int, max_time: float = 600.0) -> list[ClientRecord]:
        """Run until every client is done; fail loudly (with the seed) if they are not."""
        records = [self.clients[c] for c in clients]
        finished = self.loop.run(lambda: all(r.done for r in records), max_time=self.loop.now + max_time)
        if not finished:
            raise AssertionError(
                f"clients {clients} not done after {max_time}s virtual (seed={self.seed}): "
                f"{[r.replies[-1:] for r in records]}"
            )
        return records

    def run_for(self, seconds: float) -> None:
        self.loop.run(max_time=self.loop.now + seconds)

    # -- faults --------------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.state == "down":
            return
        self.loop.trace(f"FAULT crash {node_id[:4]}")
        node.state = "down"
        node.disk.crash()
        node.handles.clear()
        for record in self.clients.values():
            if record.node == node_id and not record.done:
                record.disconnected = True
        if self.oracle_membership:
            self.loop.after(self.detection_delay, self._announce)

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self.loop.trace(f"FAULT restart {node_id[:4]}")
        node.state = "up"
        node.boot_core()
        self.loop.after(0.0, self.feed, node_id, ev.Started(), node.boot)
        if self.oracle_membership:
            self.loop.after(0.0, self._announce)

    def freeze(self, node_id: str) -> None:
        self.loop.trace(f"FAULT freeze {node_id[:4]}")
        self.nodes[node_id].state = "frozen"

    def corrupt(self, node_id: str, piece_id: bytes) -> None:
        """Flip bits in a stored piece: its bytes no longer hash to its id."""
        disk = self.nodes[node_id].disk
        content = disk.durable[piece_id]
        disk.durable[piece_id] = Content(model_id("rot", content.true_id), content.size)
        self.loop.trace(f"FAULT corrupt {node_id[:4]} {piece_id.hex()[:8]}")

    def _announce(self) -> None:
        alive = frozenset(i for i, n in self.nodes.items() if n.state != "down")
        for node_id in sorted(alive):
            self.feed(node_id, ev.MembersChanged(alive))

    # -- inspection ----------------------------------------------------------------------

    def holders(self, piece_id: bytes) -> list[str]:
        return [i for i, n in self.nodes.items() if piece_id in n.disk.durable]

    def manifest_of(self, record: ClientRecord) -> Manifest:
        done = record.final
        for node in self.nodes.values():
            if done.manifest_id in node.disk.manifests:
                return Manifest.decode(node.disk.manifests[done.manifest_id])
        raise AssertionError("no node holds the manifest")


def _brief(obj: Any) -> str:
    """A short, deterministic description for the trace."""
    parts = []
    for name in ("peer", "req", "op", "stripe", "tag", "ok", "client"):
        if hasattr(obj, name):
            parts.append(f"{name}={getattr(obj, name)!r}")
    message = getattr(obj, "message", None)
    if message is not None:
        parts.append(f"{type(message).__name__}(req={message.req})")
    return " ".join(parts)
