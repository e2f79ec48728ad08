"""The books the invariants are checked against: what each client was told, and which
faults could excuse what the nodes now lack. The cluster keeps them from client replies
and fault calls, never from what a node believes.

- Every put the client was told committed (``PutDone``) is a :class:`Commit`: its version,
  manifest id, bytes, tolerance and the nodes that held its pieces then.
- A get is checked against the manifest *committed* as the version it returned, not the
  one its coordinator resolved; ``get NAME`` must not return a version older than the
  newest committed before it started (unless removed with ``rm``).
- After every fault, for every commit: what ``status`` would report (the live nodes'
  inventories) may exceed the genuine copies only by rotten copies still on disk (a
  holder learns of rot only when it re-reads its own copy: today when a put acknowledges
  it again; a get that finds a copy corrupt does not evict it, and there is no scrub).
  And the genuine copies on running nodes must still survive ``tolerance - failed``
  more failures, where ``failed`` counts its holders that are down or lost their disk
  since the put started; rot injected after the put started is forgiven (a fault at the
  very instant a put starts came before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from peerstore.model import placement
from peerstore.core import events as ev
from peerstore.model.manifest import Manifest
from peerstore.model.names import VersionId, parse_spec
from sim.clients import ClientRecord
from sim.loop import EventLoop
from sim.node import SimNode


class Books(Protocol):
    """What the ledger reads of the cluster it keeps the books for (``sim.cluster.Cluster``)."""

    loop: EventLoop
    nodes: dict[str, SimNode]
    clients: dict[int, ClientRecord]
    faults: list[tuple[float, str]]

    def violation(self, key: str, message: str) -> None: ...

    def running_ids(self) -> list[str]: ...

    def find_manifest(self, manifest_id: bytes) -> Manifest | None: ...


@dataclass
class Commit:
    """A put its client was told committed."""

    client: int
    name: str
    version: VersionId
    manifest_id: bytes
    started: float
    finished: float
    tolerance: int
    holders: frozenset[str]  # nodes holding a genuine piece of it at commit
    has_pieces: bool


class Ledger:
    def __init__(self, cluster: Books):
        self.cluster = cluster
        self.commits: list[Commit] = []
        self.by_version: dict[tuple[str, VersionId], list[Commit]] = {}
        self.removed: dict[str, set[VersionId]] = {}
        self.rot: list[tuple[float, str, bytes]] = []  # (when, node, piece)
        self.losses: list[tuple[float, str]] = []  # (when, node): its disk came back empty
        self.lost_pieces: list[tuple[float, str, frozenset[bytes]]] = []  # (when, node, genuine pieces it held)
        self.undecided: list[ClientRecord] = []  # gets whose version's put had not finished
        self.notes: list[str] = []
        self._manifests: dict[bytes, Manifest] = {}
        self._stripe_cache: dict[bytes, list[tuple[tuple[bytes, ...], int]]] = {}

    # -- what happened ---------------------------------------------------------------------

    def manifest(self, manifest_id: bytes) -> Manifest | None:
        """The manifest with this id, from any disk (cached: an id names fixed bytes)."""
        manifest = self._manifests.get(manifest_id)
        if manifest is None:
            manifest = self.cluster.find_manifest(manifest_id)
            if manifest is not None:
                self._manifests[manifest_id] = manifest
        return manifest

    def put_committed(self, record: ClientRecord, done: ev.PutDone) -> None:
        manifest = self.manifest(done.manifest_id)
        if manifest is not None:
            version = manifest.version
            ids = manifest.piece_ids()
            # A holder that acknowledged pieces and lost its disk before the commit still
            # failed: the coordinator could not know in time, so the loss counts against the
            # tolerance it reported, like any failure after the put began.
            holders = frozenset(n.node_id for n in self.cluster.nodes.values()
                                if any(n.disk.genuine(pid) for pid in ids)) | frozenset(
                node for t, node, lost in self.lost_pieces if t > record.started and not lost.isdisjoint(ids))
        else:
            version = VersionId.parse(done.version) if "." in done.version else VersionId(int(done.version), record.node)
            ids, holders = frozenset(), frozenset()
        commit = Commit(record.client, done.name, version, done.manifest_id, record.started,
                        self.cluster.loop.now, done.tolerance, holders, bool(ids))
        key = (commit.name, version)
        for other in self.by_version.get(key, ()):
            if other.manifest_id != commit.manifest_id:
                self.cluster.violation(
                    f"reuse:{commit.name}@{version}",
                    f"version {version} of {commit.name} was committed twice: by put client {other.client} "
                    f"(manifest {other.manifest_id.hex()[:12]}) and by put client {commit.client} (manifest "
                    f"{commit.manifest_id.hex()[:12]}): a version id was reused")
        self.commits.append(commit)
        self.by_version.setdefault(key, []).append(commit)

    def versions_removed(self, record: ClientRecord, done: ev.Removed) -> None:
        name = parse_spec(record.name)[0]
        self.removed.setdefault(name, set()).update(VersionId.parse(v) for v in done.versions)

    def rotted(self, node_id: str, piece_id: bytes) -> None:
        self.rot.append((self.cluster.loop.now, node_id, piece_id))

    def disk_lost(self, node_id: str, genuine: frozenset[bytes]) -> None:
        """``node_id`` lost its disk, which held the ``genuine`` pieces."""
        self.losses.append((self.cluster.loop.now, node_id))
        self.lost_pieces.append((self.cluster.loop.now, node_id, genuine))

    def is_removed(self, name: str, version: VersionId) -> bool:
        """Removed by a client's rm, or tombstoned (by an rm or by retention) in the catalog
        of a running node: then GC may free its pieces."""
        if version in self.removed.get(name, ()):
            return True
        return any(n.running and n.core is not None and n.core.catalog.is_tombstoned(name, version)
                   for n in self.cluster.nodes.values())

    # -- what faults excuse ----------------------------------------------------------------

    def failed(self, holders: Iterable[str], since: float) -> set[str]:
        """``holders`` that are down now or lost their disk after ``since``."""
        lost = {n for t, n in self.losses if t > since}
        return {n for n in holders if n in lost or not self.cluster.nodes[n].running}

    def rot_since(self, since: float) -> set[tuple[str, bytes]]:
        """Copies rotted after ``since`` (on a disk not lost since the rot)."""
        return {(n, pid) for t, n, pid in self.rot if t > since
                and not any(lt >= t and ln == n for lt, ln in self.losses)}

    def tolerance(self, manifest: Manifest, among: Iterable[SimNode],
                  holds: Callable[[SimNode, bytes], bool]) -> int:
        """Exact tolerance of ``manifest`` over the copies ``holds`` counts on ``among``."""
        nodes = list(among)
        stripes = [([frozenset(n.node_id for n in nodes if holds(n, pid)) for pid in stripe.piece_ids], stripe.k)
                   for _, _, stripe in manifest.iter_stripes()]
        return placement.checkpoint_tolerance(stripes, empty=len(nodes) - 1)

    # -- gets ------------------------------------------------------------------------------

    def get_finished(self, record: ClientRecord) -> None:
        """A get reported success: check the version it returned (now, or at the end when
        the put that may have made it has not finished yet)."""
        if record.manifest is not None and not self._check_get(record, final=False):
            self.undecided.append(record)

    def _check_get(self, record: ClientRecord, final: bool) -> bool:
        manifest = record.manifest
        assert manifest is not None
        key, mid = (manifest.name, manifest.version), manifest.id
        what = f"get {record.name} via {record.node[:4]} (client {record.client})"
        wrong = self._not_what_was_asked(record, manifest)
        if wrong:
            self.cluster.violation(f"wrong-version:{record.client}", f"{what} {wrong}")
            return True
        committed = self.by_version.get(key, [])
        for commit in committed:
            if commit.manifest_id != mid:
                self.cluster.violation(
                    f"wrong-version:{record.client}",
                    f"{what} returned {manifest.name}@{manifest.version} as manifest {mid.hex()[:12]}, but put "
                    f"client {commit.client} committed that version as manifest {commit.manifest_id.hex()[:12]}: "
                    "it returned another checkpoint's bytes")
                return True
        if not committed:
            makers = self._puts_that_made(manifest)
            if not final and any(not p.done for p in makers):
                return False
            if not any(p.final is None or (isinstance(p.final, ev.Failed) and p.final.outcome_unknown)
                       for p in makers):
                why = "; ".join(f"put client {p.client} failed: {p.final.reason}" for p in makers
                                if isinstance(p.final, ev.Failed))
                self.cluster.violation(
                    f"uncommitted:{record.client}",
                    f"{what} returned {manifest.name}@{manifest.version}, which no put committed"
                    + (f" ({why})" if why else ""))
                return True
        if parse_spec(record.name)[1] is None:
            self._check_newest(record, manifest)
        return True

    @staticmethod
    def _not_what_was_asked(record: ClientRecord, manifest: Manifest) -> str:
        """Why the manifest a get returned is not the one its spec and the catalog entry
        it resolved name ("" if it is)."""
        name, selector = parse_spec(record.name)
        entry = record.entry
        if manifest.name != name:
            return f"returned a checkpoint named {manifest.name}"
        if entry is not None and (entry.name, entry.version, entry.manifest_id) != (name, manifest.version, manifest.id):
            return (f"resolved {entry.spec} (manifest {entry.manifest_id.hex()[:12]}) but returned "
                    f"{manifest.name}@{manifest.version} (manifest {manifest.id.hex()[:12]})")
        if selector is not None:
            counter, _, prefix = selector.partition(".")
            if int(counter) != manifest.version.counter or not manifest.version.node.startswith(prefix):
                return f"returned version {manifest.version}"
        return ""

    def _puts_that_made(self, manifest: Manifest) -> list[ClientRecord]:
        """Puts whose name, coordinator and bytes match ``manifest``."""
        hashes = tuple(f.blake3 for f in manifest.files)
        return [r for r in self.cluster.clients.values()
                if r.kind == "put" and r.name == manifest.name and r.node == manifest.version.node
                and tuple(f.blake3 for f in r.sources) == hashes]

    def _check_newest(self, record: ClientRecord, manifest: Manifest) -> None:
        name = manifest.name
        if self._rm_uncertain(name):
            return
        before = [c for c in self.commits if c.name == name and c.finished <= record.started
                  and not self.is_removed(name, c.version)]
        if not before:
            return
        newest = max(before, key=lambda c: c.version)
        if manifest.version >= newest.version:
            return
        message = (f"get {record.name} via {record.node[:4]} (client {record.client}) returned version "
                   f"{manifest.version}, older than {newest.version}, which put client {newest.client} "
                   f"committed before the get started")
        faults_since = any(t >= newest.started for t, _ in self.cluster.faults)
        if newest.version not in record.seen and faults_since:
            self.notes.append(message + " (the coordinator had not learned of it yet: faults since)")
        else:
            self.cluster.violation(f"stale:{record.client}", message)

    def _rm_uncertain(self, name: str) -> bool:
        """An rm of ``name`` may have removed versions the books do not know of."""
        for r in self.cluster.clients.values():
            if r.kind == "rm" and r.name and parse_spec(r.name)[0] == name \
                    and not isinstance(r.final, (ev.Removed, ev.Failed)):
                return True
        return False

    # -- status ----------------------------------------------------------------------------

    def status_answered(self, record: ClientRecord, status: ev.Status) -> None:
        """A real ``status`` may report no more than the copies on the disks of the nodes
        it counted: genuine ones, and rotten ones not yet re-read (module docstring)."""
        nodes = [self.cluster.nodes[i] for i in status.alive if i in self.cluster.nodes]
        for row in status.checkpoints:
            manifest = self.manifest(row.entry.manifest_id)
            if row.tolerance < 0 or manifest is None or not manifest.piece_ids():
                continue
            bound = self.tolerance(manifest, nodes, lambda n, pid: pid in n.disk.durable)
            if row.tolerance > bound:
                genuine = self.tolerance(manifest, nodes, lambda n, pid: n.disk.genuine(pid))
                self.cluster.violation(
                    f"status-row:{record.client}:{row.entry.spec}",
                    f"status via {record.node[:4]} reports tolerance {row.tolerance} for {row.entry.spec}, but "
                    f"the disks of the nodes it counted hold its pieces for only {bound} ({genuine} genuine)")

    # -- after every fault -------------------------------------------------------------------

    def check_tolerances(self) -> None:
        """Status never above the copies on disk (so above the genuine ones only by rot);
        a commit keeps the durability it reported, less its failed holders."""
        cluster = self.cluster
        running = [cluster.nodes[i] for i in cluster.running_ids() if cluster.nodes[i].core is not None]
        if not running:
            return
        up = frozenset(n.node_id for n in running)
        listed: dict[bytes, set[str]] = {}  # piece -> running nodes whose inventory lists it
        stored: dict[bytes, set[str]] = {}  # ... whose disk holds it, rotten or not
        genuine: dict[bytes, set[str]] = {}  # ... whose disk holds it intact
        for n in running:
            for pid in n.core.inventory:
                listed.setdefault(pid, set()).add(n.node_id)
            for pid, content in n.disk.durable.items():
                stored.setdefault(pid, set()).add(n.node_id)
                if content.true_id == pid:
                    genuine.setdefault(pid, set()).add(n.node_id)
        anywhere: dict[bytes, set[str]] = {}  # piece -> every node whose disk holds it intact, up or down
        for n in cluster.nodes.values():
            for pid, content in n.disk.durable.items():
                if content.true_id == pid:
                    anywhere.setdefault(pid, set()).add(n.node_id)
        nobody: set[str] = set()

        def held(pid: bytes) -> tuple[set[str], set[str], set[str]]:
            """(in an inventory, on a disk, genuine on a disk) among the running nodes."""
            return listed.get(pid, nobody), stored.get(pid, nobody), genuine.get(pid, nobody)

        for commit in self.commits:
            if not commit.has_pieces or self.is_removed(commit.name, commit.version):
                continue
            stripes = self._stripes(commit.manifest_id)
            if stripes is None:
                continue

            def tolerance(holders: Callable[[bytes], set[str]], stripes=stripes) -> int:
                return placement.checkpoint_tolerance((([holders(pid) for pid in pids], k) for pids, k in stripes),
                                                      empty=len(running) - 1)

            spec = f"{commit.name}@{commit.version}"
            if any(not held(pid)[0] <= held(pid)[1] for pids, _ in stripes for pid in pids):
                claimed, on_disk = tolerance(lambda pid: held(pid)[0]), tolerance(lambda pid: held(pid)[1])
                if claimed > on_disk:
                    cluster.violation(
                        f"status:{commit.manifest_id.hex()}",
                        f"status would report tolerance {claimed} for {spec}, but the running nodes' disks hold "
                        f"its pieces for only {on_disk} ({tolerance(lambda pid: held(pid)[2])} genuine): an "
                        "inventory lists pieces its disk does not hold")
            # Holders now, not only at commit: repair and rebalance move copies to other
            # nodes (a crashed node's disk still holds what it held).
            pieces = {pid for pids, _ in stripes for pid in pids}
            holders = commit.holders | {n for pid in pieces for n in anywhere.get(pid, ())} | {
                node for t, node, lost in self.lost_pieces if t > commit.started and not lost.isdisjoint(pieces)}
            failed = self.failed(holders, commit.started)
            if len(failed) > commit.tolerance:
                continue
            forgiven: dict[bytes, set[str]] = {}
            for node_id, pid in self.rot_since(commit.started):
                if node_id in up:
                    forgiven.setdefault(pid, set()).add(node_id)
            left = tolerance(lambda pid, f=forgiven: held(pid)[2] | f[pid] if pid in f else held(pid)[2])
            if left < commit.tolerance - len(failed):
                cluster.violation(
                    f"durable:{commit.manifest_id.hex()}:{len(failed)}",
                    f"{spec} (tolerance {commit.tolerance} at commit) now survives only {left} more failures "
                    f"with {len(failed)} of its holders failed ({sorted(n[:4] for n in failed)}): genuine "
                    "pieces went missing")

    def _stripes(self, manifest_id: bytes) -> list[tuple[tuple[bytes, ...], int]] | None:
        """(piece ids, k) of each stripe of the manifest (cached)."""
        stripes = self._stripe_cache.get(manifest_id)
        if stripes is None:
            manifest = self.manifest(manifest_id)
            if manifest is None:
                return None
            stripes = self._stripe_cache[manifest_id] = [(s.piece_ids, s.k) for _, _, s in manifest.iter_stripes()]
        return stripes

    # -- at the end ------------------------------------------------------------------------

    def finish(self) -> None:
        """Decide the gets left undecided (every put has finished by now)."""
        undecided, self.undecided = self.undecided, []
        for record in undecided:
            self._check_get(record, final=True)


def claims(cluster: Books, ledger: Ledger) -> dict[tuple[str, VersionId], set[bytes]]:
    """Every manifest id each (name, version) is claimed by: commits, every running
    node's catalog entries (removed ones too) and every manifest on any disk."""
    out: dict[tuple[str, VersionId], set[bytes]] = {}
    for commit in ledger.commits:
        out.setdefault((commit.name, commit.version), set()).add(commit.manifest_id)
    for node in cluster.nodes.values():
        if node.running and node.core is not None:
            for entry in node.core.catalog.entries:
                out.setdefault((entry.name, entry.version), set()).add(entry.manifest_id)
        for mid in list(node.disk.manifests):
            manifest = ledger.manifest(mid)
            if manifest is not None:
                out.setdefault((manifest.name, manifest.version), set()).add(mid)
    return out

