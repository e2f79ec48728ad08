"""A seeded simulated cluster that drives the real sans-IO machines.

Every node runs the same ``NodeCore`` and ``Swim`` as the trio daemon. ``Cluster`` holds
the run's state (nodes, network, clients, the books) and composes four parts, one job
each:

- ``sim.shell.NodeShell``: carries out each core's effects over the simulated network
  and disks and feeds back completions;
- ``sim.gossip_shell.GossipShell``: the same for each node's Swim (datagrams, push-pull
  streams, mDNS);
- ``sim.faults.FaultInjection``: the fault API (``crash``, ``restart``, ``partition``,
  ``corrupt``, ``lose_disk``, ``clog``, ...);
- ``sim.checks.RunChecks``: what must hold the moment a node or client is told it.

They are mixins rather than objects the cluster holds, because the cluster *is* their
shared state and its public face: tests and scenarios call ``cluster.crash(...)`` and
``cluster.feed(...)``, and some replace one effect handler on a cluster to inject a bug.
Each mixin declares at its top what it uses of the others, and none imports this module.
Here: construction, running the loop, the client commands (put, get, rm, ...) and
inspection. One master seed fixes the run: ``cluster.loop.digest`` identifies it.

Membership is either ``"swim"`` (the default: each core learns who is alive from its own
Swim view, as in the daemon) or ``"static"`` (every node believes every node is alive;
``announce()`` tells the truth on demand - for unit tests of the core alone).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from peerstore.core import events as ev
from peerstore.core.membership import boot_incarnation
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.errors import PeerstoreError
from peerstore.gossip import MemberChanged, MemberState
from peerstore.gossip.settings import GossipSettings
from peerstore.model.manifest import Manifest
from peerstore.model.policy import Policy
from sim.checks import RunChecks
from sim.clients import ClientRecord
from sim.content import FileModel, model_id
from sim.disk import SSD, DiskModel, SimDisk
from sim.faults import FaultInjection
from sim.gossip_shell import GossipShell
from sim.ledger import Ledger
from sim.loop import EventLoop, Seeds
from sim.network import NIC_1GBE, LinkModel, Network
from sim.node import Addr, SimNode
from sim.shell import NodeShell
from sim.warm import warm_start

__all__ = ["ClientRecord", "Cluster"]

GOSSIP_PORT = 7420


class Cluster(FaultInjection, NodeShell, GossipShell, RunChecks):
    """N simulated nodes, a network between them, and clients using them."""

    def __init__(
        self,
        n: int = 5,
        seed: int = 0,
        *,
        policy: Policy | None = None,
        settings: CoreSettings | None = None,
        gossip: GossipSettings | None = None,
        link: LinkModel | None = None,
        nic: float = NIC_1GBE,
        disk: DiskModel = SSD,
        core_class: type[NodeCore] = NodeCore,
        membership: str = "swim",
        cores: bool = True,
        seeds_per_node: int = 2,
        incarnation: Callable[[int], int] = boot_incarnation,
        wire_roundtrip: bool = True,
        gossip_stream_timeout: float = 5.0,
        form: bool | str = True,
        form_timeout: float = 60.0,
        booted: int | None = None,
        mdns: bool = True,
    ):
        if membership not in ("swim", "static"):
            raise ValueError(f"membership must be 'swim' or 'static', got {membership!r}")
        self.seed = seed
        self.seeds = Seeds(seed)
        self.loop = EventLoop()
        self.net = Network(self.loop, self.seeds.rng("fault", "network"), link=link)
        self.net.on_break = self._connection_broke
        self.fault_rng = self.seeds.rng("fault", "disk")
        policy = policy or Policy(shard_size=64 * 1024)
        self.settings = settings or CoreSettings(policy=policy)
        self.gossip = gossip or GossipSettings()
        self.core_class = core_class
        self.membership = membership
        self.with_cores = cores
        self.seeds_per_node = seeds_per_node
        self.incarnation = incarnation
        self.wire_roundtrip = wire_roundtrip
        self.gossip_stream_timeout = gossip_stream_timeout
        self.mdns = mdns
        self.mdns_rng = self.seeds.rng("fault", "mdns")
        self.ids = [f"{i + 1:02x}" + model_id("node", seed, i).hex()[:14] for i in range(n)]
        self.nodes: dict[str, SimNode] = {}
        self.addr_owner: dict[Addr, str] = {}
        self._addresses = 0
        self.clients: dict[int, ClientRecord] = {}
        self.sources: dict[bytes, FileModel] = {}  # whole-file hash -> what was put
        self.violations: list[str] = []
        self._violation_keys: set[str] = set()
        self.faults: list[tuple[float, str]] = []
        self.corrupted: set[tuple[str, bytes]] = set()
        self.rot_dropped = 0  # rotten copies rebalance dropped as surplus before anyone re-read them
        self.ledger = Ledger(self)  # what clients were told and what faults excuse: see sim.ledger
        self.retired: set[str] = set()  # ids whose disk was lost for good (the machine got a new id)
        self.member_observers: list[Callable[[float, str, MemberChanged], None]] = []
        self.stats: Counter[str] = Counter()
        self.next_handle = 0
        self.highest_incarnation: dict[str, int] = {}  # announced by each node, any boot
        self._gc_refs: dict[bytes, frozenset[bytes]] = {}  # manifest id -> its pieces (GC check)
        for index, node_id in enumerate(self.ids):
            node = SimNode(node_id, index, self._new_addr(node_id), SimDisk(model=disk))
            self.nodes[node_id] = node
            self.net.add_host(node_id, nic)
        warm = form == "warm"
        for node in self.nodes.values():
            if booted is not None and node.index >= booted:
                node.running = False  # never started: unknown to everyone until join()
                self.net.hosts[node.node_id].listening = False
                continue
            self._boot(node, [] if warm else self._initial_seeds(node))
        if warm and membership == "swim":
            warm_start(self)
        elif form and membership == "swim" and n > 1:
            if not self.run_until(self.converged, max_time=form_timeout, step=0.1):
                raise AssertionError(f"membership did not form within {form_timeout}s (seed={seed})")

    # -- addresses and seeds -------------------------------------------------------------

    def _new_addr(self, node_id: str) -> Addr:
        self._addresses += 1
        addr = (f"10.{self._addresses // 250}.{self._addresses % 250}.1", GOSSIP_PORT)
        self.addr_owner[addr] = node_id
        return addr

    def _initial_seeds(self, node: SimNode) -> list[Addr]:
        """A couple of earlier nodes, as a static ``seeds:`` list would name."""
        earlier = self.ids[max(0, node.index - self.seeds_per_node): node.index]
        if not earlier and node.index == 0 and len(self.ids) > 1:
            earlier = self.ids[1: 1 + self.seeds_per_node]
        return [self.nodes[i].addr for i in earlier]

    # -- running -------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        self.loop.run(max_time=self.loop.now + seconds)

    def run_until(self, predicate: Callable[[], bool], *, max_time: float, step: float = 0.25) -> bool:
        """Advance in ``step``s until ``predicate()`` (checked between steps); False if
        ``max_time`` more virtual seconds pass first."""
        deadline = self.loop.now + max_time
        while True:
            if predicate():
                return True
            if self.loop.now >= deadline:
                return False
            self.loop.run(max_time=min(deadline, self.loop.now + step))

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

    # -- what tests call -----------------------------------------------------------------

    def _client(self, record: ClientRecord) -> int:
        client = len(self.clients) + 1
        record.started = self.loop.now
        record.client = client
        self.clients[client] = record
        return client

    def put(self, node_id: str, name: str, files: list[FileModel], *, is_dir: bool = False) -> int:
        for f in files:
            self.sources[f.blake3] = f
        client = self._client(ClientRecord("put", node_id, sources=list(files), name=name))
        cmd = ev.PutCommand(client, name, tuple(ev.FileSpec(f.path, f.size, f.mode) for f in files),
                            is_dir=is_dir, created=self.loop.now)
        self.loop.after(0.0, self.feed, node_id, cmd)
        return client

    def get(self, node_id: str, spec: str) -> int:
        record = ClientRecord("get", node_id, name=spec)
        node = self.nodes[node_id]
        if node.running and node.core is not None and "@" not in spec:
            try:
                record.seen = frozenset(e.version for e in node.core.catalog.live_versions(spec))
            except PeerstoreError:
                pass
        client = self._client(record)
        self.loop.after(0.0, self.feed, node_id, ev.GetCommand(client, spec))
        return client

    def command(self, node_id: str, make: Callable[[int], Any], kind: str = "cmd") -> int:
        record = ClientRecord(kind, node_id)
        client = self._client(record)
        command = make(client)
        if isinstance(command, ev.RemoveCommand):
            record.name = command.spec
        self.loop.after(0.0, self.feed, node_id, command)
        return client

    def rm(self, node_id: str, spec: str) -> int:
        return self.command(node_id, lambda c: ev.RemoveCommand(c, spec), "rm")

    def cancel(self, client: int) -> None:
        self.feed(self.clients[client].node, ev.CancelCommand(client))

    # -- membership ----------------------------------------------------------------------

    def announce(self) -> None:
        """Static membership: tell every core the truth about who is running."""
        alive = frozenset(i for i, n in self.nodes.items() if n.running)
        for node_id in sorted(alive):
            self.feed(node_id, ev.MembersChanged(alive))


    # -- inspection ----------------------------------------------------------------------

    def running_ids(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].running]

    def converged(self) -> bool:
        """Every running node's Swim view of who is alive is exactly the running nodes."""
        if self.membership != "swim":
            return True
        up = sorted(self.running_ids())
        return all(self.nodes[i].swim.alive_ids() == up for i in up)  # type: ignore[union-attr]

    def views(self) -> dict[str, list[str]]:
        return {i[:4]: [a[:4] for a in n.swim.alive_ids()] for i, n in self.nodes.items()
                if n.running and n.swim is not None}

    def holders(self, piece_id: bytes) -> list[str]:
        return [i for i, n in self.nodes.items() if piece_id in n.disk.durable]

    def manifest_of(self, record: ClientRecord) -> Manifest:
        done = record.final
        for node in self.nodes.values():
            if done.manifest_id in node.disk.manifests:
                return Manifest.decode(node.disk.manifests[done.manifest_id])
        raise AssertionError("no node holds the manifest")

    def find_manifest(self, manifest_id: bytes) -> Manifest | None:
        for node in self.nodes.values():
            blob = node.disk.manifests.get(manifest_id)
            if blob is not None:
                return Manifest.decode(blob)
        return None

    def member_state(self, observer: str, node_id: str) -> MemberState | None:
        swim = self.nodes[observer].swim
        member = swim.member(node_id) if swim is not None else None
        return member.state if member else None

    def gossip_bytes(self) -> int:
        """Bytes of gossip sent so far by running nodes: datagrams and push-pull streams."""
        return sum(n.swim.stats["bytes_out"] + n.gossip_stream_bytes for n in self.nodes.values()
                   if n.swim is not None)
