"""The checks the cluster runs while a simulation goes: what a node or a client is told
must be true the moment it is told.

- a restarted node announces an incarnation above every one it (or anyone, about it) used;
- a node's stripe buffers and bytes in flight per peer stay within their bounds, after
  every batch of effects;
- a stripe a get delivers is made of genuine pieces, enough of them, and of the file that
  was really put;
- a get that reports success delivered every stripe correctly; a put that reports success
  has every slot durable and genuine where its manifest says, its manifest on
  tolerance + 1 nodes and its tolerance really met (rot and disk losses during the put
  excused, from ``sim.ledger``'s books).

Each failure is recorded once per key with :meth:`RunChecks.violation`. The ledger
(``sim.ledger``) checks what needs the history of the run; ``sim.invariants`` checks what
must hold once it ends.

``RunChecks`` is a mixin of ``sim.cluster.Cluster``: the checks read the cluster's state
and are called from the shell (``sim.shell``) at the moment they apply. The annotations
at the top of the class name what they use of the cluster (declarations only; the
cluster's ``__init__`` sets them), so this module does not import the cluster.
"""

from __future__ import annotations

from typing import Any, Iterable

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.errors import FormatError
from peerstore.model import placement
from peerstore.model.manifest import Manifest
from peerstore.model.placement import StripePlacement
from sim.clients import ClientRecord
from sim.content import Content, FileModel
from sim.ledger import Ledger
from sim.loop import EventLoop
from sim.node import SimNode


class RunChecks:
    """Checks run as the simulation goes (mixin of ``sim.cluster.Cluster``)."""

    # What the checks use of the cluster (set by Cluster.__init__).
    loop: EventLoop
    nodes: dict[str, SimNode]
    ids: list[str]
    settings: CoreSettings
    sources: dict[bytes, FileModel]
    ledger: Ledger
    violations: list[str]
    _violation_keys: set[str]
    highest_incarnation: dict[str, int]
    _gc_refs: dict[bytes, frozenset[bytes]]

    def violation(self, key: str, message: str) -> None:
        """Record an invariant violation once per ``key``."""
        if key not in self._violation_keys:
            self._violation_keys.add(key)
            self.violations.append(f"t={self.loop.now:.3f} {message}")
            self.loop.trace(f"VIOLATION {message}")

    # -- nodes ---------------------------------------------------------------------------

    def _check_incarnation(self, node: SimNode, incarnation: int) -> None:
        """A node must come back above every incarnation it (or anyone, about it) used,
        or old suspicions and deaths beat its fresh 'alive'."""
        held = [n.swim.member(node.node_id) for n in self.nodes.values() if n.swim is not None and n is not node]
        previous = max([m.incarnation for m in held if m is not None] + [self.highest_incarnation.get(node.node_id, -1)])
        if incarnation <= previous:
            self.violation(
                f"incarnation:{node.node_id}",
                f"node {node.node_id[:4]} restarted with incarnation {incarnation}, not above {previous} "
                "(its own or others' view from before): the incarnation did not survive the restart",
            )
        self.highest_incarnation[node.node_id] = max(incarnation, previous)

    def _check_bounds(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        policy = self.settings.policy
        stripe = policy.shard_size * (policy.stripe_width + policy.parity)
        if not 0 <= core.buffer_bytes <= self.settings.memory_budget + stripe:
            self.violation(f"buffer:{node.node_id}",
                           f"node {node.node_id[:4]} holds {core.buffer_bytes} bytes of stripe buffers; the "
                           f"bound is the memory budget {self.settings.memory_budget} + one stripe {stripe}")
        limit = self.settings.max_inflight_bytes_per_peer + policy.shard_size
        for peer, used in core.inflight.items():
            if not 0 <= used <= limit:
                self.violation(f"inflight:{node.node_id}:{peer}",
                               f"node {node.node_id[:4]} has {used} bytes in flight to {peer[:4]}; the bound is "
                               f"{limit} (limit + one piece)")

    # -- clients -------------------------------------------------------------------------

    def _check_delivery(self, node: SimNode, record: ClientRecord, effect: ev.DeliverStripe,
                        contents: list[Content | None]) -> bool:
        """Whether the stripe a get delivers (``contents``, from ``effect.pieces``) is right:
        genuine pieces, enough of them, and the data shards of the file really put."""
        genuine = all(c is not None and c.true_id == effect.piece_ids[pos]
                      for (pos, _), c in zip(effect.pieces, contents))
        enough = len({pos for pos, _ in effect.pieces}) >= effect.k
        expected = self._source_shards(record, effect)
        matches = expected is not None and tuple(effect.piece_ids[: effect.k]) == expected
        correct = genuine and enough and matches
        if not correct:
            self.violation(
                f"wrong:{effect.client}:{effect.stripe}",
                f"node {node.node_id[:4]} delivered wrong bytes for stripe {effect.stripe} of client "
                f"{effect.client} (pieces genuine={genuine}, enough={enough}, match what was put={matches})",
            )
        return correct

    def _source_shards(self, record: ClientRecord, effect: ev.DeliverStripe) -> tuple[bytes, ...] | None:
        """The data-shard ids the stripe must have: from the file that was really put."""
        manifest = record.manifest
        if manifest is None or effect.file_index >= len(manifest.files):
            return None
        source = self.sources.get(manifest.files[effect.file_index].blake3)
        if source is None:
            return None
        shard = manifest.policy.shard_size
        first = effect.offset // shard
        return tuple(c.true_id for c in source.shards[first: first + effect.k])

    def _client_check(self, node: SimNode, record: ClientRecord, body: Any) -> Any:
        """What a real client does at the end: a get verifies every file's bytes; and the
        harness checks a successful put's pieces are really durable where it says."""
        if isinstance(body, ev.GetDone):
            manifest = record.manifest
            expected = sum(len(f.stripes) for f in manifest.files) if manifest else -1
            if len(record.delivered) != expected or not all(record.delivered.values()):
                self.violation(f"getdone:{id(record)}", f"get via {node.node_id[:4]} reported success with "
                               f"{len(record.delivered)}/{expected} stripes delivered correctly")
                return ev.Failed("whole-file hash mismatch")
            self.ledger.get_finished(record)
        if isinstance(body, ev.PutDone):
            self._check_put_durable(node, record, body)
            self.ledger.put_committed(record, body)
        if isinstance(body, ev.Removed):
            self.ledger.versions_removed(record, body)
        if isinstance(body, ev.Status):
            self.ledger.status_answered(record, body)
        return body

    def _check_put_durable(self, node: SimNode, record: ClientRecord, done: ev.PutDone) -> None:
        """Every slot durable and genuine, the tolerance met, the manifest on tolerance + 1
        nodes; but for rot and disk losses that happened while the put ran."""
        if self._removed_already(done.manifest_id):
            return  # removed (a concurrent rm NAME@V, or retention) before its client heard: GC may free it
        lost = {n for t, n in self.ledger.losses if t > record.started}
        forgiven = self.ledger.rot_since(record.started)
        holders = [n for n in self.nodes.values() if done.manifest_id in n.disk.manifests]
        if len(holders) + len(lost) < done.tolerance + 1:
            self.violation(f"put-manifest:{done.manifest_id.hex()}",
                           f"put {done.name} reported success with its manifest on {len(holders)} nodes "
                           f"< tolerance+1 = {done.tolerance + 1}")
        if not holders:
            return
        manifest = Manifest.decode(holders[0].disk.manifests[done.manifest_id])
        for (_, number, stripe), hint in zip(manifest.iter_stripes(), manifest.placement):
            try:
                positions = StripePlacement.from_hint(hint, stripe.k, stripe.p).positions()
            except FormatError as err:
                self.violation(f"put-hint:{done.manifest_id.hex()}",
                               f"put {done.name} reported success with a damaged placement hint for stripe "
                               f"{number}: {err}")
                continue
            slots = ((pid, node_id) for pid, nodes in zip(stripe.piece_ids, positions) for node_id in nodes)
            for slot, (pid, node_id) in enumerate(slots):  # slot order: data0 A, data0 B, ..., parity0, ...
                if not self.nodes[node_id].disk.genuine(pid) and node_id not in lost \
                        and (node_id, pid) not in forgiven:
                    self.violation(f"put-durable:{done.manifest_id.hex()}",
                                   f"put {done.name} reported success but stripe {number} slot {slot} "
                                   f"is not durable on {node_id[:4]}")
        actual = self.durable_tolerance(manifest, forgive=forgiven)
        if actual < done.tolerance - len(lost & {n for hint in manifest.placement for n in hint}):
            self.violation(f"put-tolerance:{done.manifest_id.hex()}",
                           f"put {done.name} reported tolerance {done.tolerance} but its durable pieces "
                           f"only survive {actual} failures")

    def _check_gc_delete(self, node: SimNode, effect: ev.DeletePieces) -> None:
        """GC never removes a referenced piece: when a node decides to delete pieces, none
        may belong to a version that is live (committed or listed by any running node, and
        tombstoned by no running node nor removed by a client's rm) if the deleting node
        lists that version as live itself, or the version's placement puts that piece on
        this node (its commit counted the copy). Other deletions (``reason`` not "gc", such
        as surplus copies after repair) are not garbage collection."""
        if effect.reason == "surplus":
            self._check_surplus_drop(node, effect)
            return
        if effect.reason != "gc" or not effect.piece_ids:
            return
        doomed = set(effect.piece_ids)
        running = [n for n in self.nodes.values() if n.running and n.core is not None]
        versions: dict[bytes, tuple[str, Any]] = {}
        for other in running:
            for entry in other.core.catalog.entries:  # type: ignore[union-attr]
                versions.setdefault(entry.manifest_id, (entry.name, entry.version))
        for commit in self.ledger.commits:
            versions.setdefault(commit.manifest_id, (commit.name, commit.version))
        mine = node.core.catalog if node.core is not None else None
        for mid, (name, version) in versions.items():
            if self.ledger.is_removed(name, version):
                continue
            manifest = self.ledger.manifest(mid)
            if manifest is None or doomed.isdisjoint(refs := self._piece_refs(manifest)):
                continue
            hits = doomed & refs
            placed = {pid for pid in hits if node.node_id in self._placed_on(manifest, pid)}
            known = mine is not None and mine.is_live(name, version)
            if known or placed:
                why = "which it lists as live" if known else "whose placement puts them on it"
                self.violation(f"gc-referenced:{node.node_id}:{mid.hex()}",
                               f"GC on {node.node_id[:4]} deleted {len(hits)} piece(s) of live version "
                               f"{name}@{version}, {why}")

    def _check_surplus_drop(self, node: SimNode, effect: ev.DeletePieces) -> None:
        """Rebalance never takes a checkpoint below its policy: dropping these copies leaves
        every live committed checkpoint that uses them at least at the best tolerance the
        running nodes allow, or, if it was already below that, where it was. The copies of
        a dropped piece that stay must be genuine."""
        doomed = set(effect.piece_ids)
        running = [self.nodes[i] for i in self.ids if self.nodes[i].running]
        for commit in self.ledger.commits:
            if not commit.has_pieces or self.ledger.is_removed(commit.name, commit.version):
                continue
            manifest = self.ledger.manifest(commit.manifest_id)
            if manifest is None or doomed.isdisjoint(self._piece_refs(manifest)):
                continue
            best = min(placement.best_tolerance(len(running), s.k, s.p) if len(running) >= 2 else -1
                       for _, _, s in manifest.iter_stripes())
            # The copies that stay of a dropped piece must be genuine (they are re-read before
            # the drop); other pieces count as on disk: rot nobody has re-read yet is scrub's
            # to find, as in every other tolerance check here.
            def holds(n: SimNode, pid: bytes) -> bool:
                return n.disk.genuine(pid) if pid in doomed else pid in n.disk.durable

            before = self.ledger.tolerance(manifest, running, holds)
            after = self.ledger.tolerance(manifest, running,
                                          lambda n, pid: holds(n, pid) and not (n is node and pid in doomed))
            if after < min(before, best):
                self.violation(f"surplus-drop:{node.node_id}:{commit.manifest_id.hex()}",
                               f"rebalance on {node.node_id[:4]} dropped {len(doomed)} piece copies of "
                               f"{commit.name}@{commit.version}: tolerance {before} -> {after}, "
                               f"below the policy's {best} with {len(running)} running nodes")

    def _removed_already(self, manifest_id: bytes) -> bool:
        """Is the version of ``manifest_id`` tombstoned in some running node's catalog?"""
        for node in self.nodes.values():
            if node.running and node.core is not None:
                catalog = node.core.catalog
                for entry in catalog.entries:
                    if entry.manifest_id == manifest_id and catalog.is_tombstoned(entry.name, entry.version):
                        return True
        return False

    def _piece_refs(self, manifest: Manifest) -> frozenset[bytes]:
        refs = self._gc_refs.get(manifest.id)
        if refs is None:
            refs = self._gc_refs[manifest.id] = manifest.piece_ids()
        return refs

    def _placed_on(self, manifest: Manifest, pid: bytes) -> set[str]:
        """The nodes the manifest's placement hint names for piece ``pid``."""
        out: set[str] = set()
        for (_, _, stripe), hint in zip(manifest.iter_stripes(), manifest.placement):
            if pid in stripe.piece_ids:
                positions = StripePlacement.from_hint(hint, stripe.k, stripe.p).positions()
                for piece, nodes in zip(stripe.piece_ids, positions):
                    if piece == pid:
                        out.update(nodes)
        return out

    def durable_tolerance(self, manifest: Manifest, nodes: Iterable[str] | None = None,
                          forgive: set[tuple[str, bytes]] | frozenset = frozenset()) -> int:
        """Exact tolerance of what is durable and genuine on ``nodes`` (default: all),
        counting the (node, piece) copies in ``forgive`` as genuine."""
        among = [self.nodes[i] for i in (nodes if nodes is not None else self.ids)]
        return self.ledger.tolerance(manifest, among,
                                     lambda n, pid: n.disk.genuine(pid) or (n.node_id, pid) in forgive)
