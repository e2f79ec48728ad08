"""What must hold, whatever the faults. Checked as the run goes and once it ends.

During the run (in ``sim.cluster``): no get delivers bytes that differ from what was put;
a put reports success only with every piece durable where its manifest says and its
reported tolerance really met; stripe buffers and bytes in flight stay within bounds; a
restarted node announces an incarnation above every one it used before.

At the end (:func:`final_checks`), after every transient fault is lifted:

1. no operation hangs: every client got an answer within a bound;
2. memberships converge: every running node sees exactly the running nodes alive, and
   catalogs converge;
3. a put that reported success is restored byte-identical whenever no more of its
   holders are down than its reported tolerance;
4. with every node back: each version visible in any catalog restores exactly (a failed
   or half-done put never leaves something a get could mistake for data), and a put
   that failed with a definite outcome is visible nowhere;
5. nothing leaks: no handles held, no buffers or bytes in flight accounted, once idle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from peerstore.core import events as ev
from peerstore.manifest import Manifest
from sim.cluster import ClientRecord, Cluster

HANG_BOUND = 180.0  # virtual seconds an operation may still run once faults stop
CONVERGE_BOUND = 120.0  # push-pull every 30 s, suspicion up to 24 s, dissemination
CATALOG_BOUND = 120.0
QUIET = 30.0  # virtual seconds of idling before counting leaks
MAX_FINAL_GETS = 8


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operations: int = 0

    def violation(self, message: str) -> None:
        self.violations.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)


def readable(cluster: Cluster, manifest: Manifest, among: list[str]) -> tuple[bool, str]:
    """Can the checkpoint be rebuilt from genuine durable pieces on ``among``? A stripe
    reads when every data shard has a copy or any k of its pieces do."""
    disks = [cluster.nodes[i].disk for i in among]
    for _, number, stripe in manifest.iter_stripes():
        present = [any(d.genuine(pid) for d in disks) for pid in stripe.piece_ids]
        if not (all(present[: stripe.k]) or sum(present) >= stripe.k):
            return False, f"stripe {number} has {sum(present)} of {len(present)} pieces, needs {stripe.k}"
    return True, ""


def corrupted_pieces(cluster: Cluster, manifest: Manifest) -> bool:
    ids = manifest.piece_ids()
    return any(pid in ids for _, pid in cluster.corrupted)


def get_exact(cluster: Cluster, rng: random.Random, report: Report, spec: str, why: str) -> ClientRecord | None:
    """Get ``spec`` through a random running node; any failure is a violation (the
    delivered bytes are checked against the source by the cluster itself)."""
    running = cluster.running_ids()
    if not running:
        return None
    via = rng.choice(running)
    [record] = cluster.wait(cluster.get(via, spec), max_time=HANG_BOUND)
    report.operations += 1
    if not record.ok:
        report.violation(f"{why}: get {spec} via {via[:4]} failed: {record.final}")
    return record


def final_checks(cluster: Cluster, rng: random.Random, report: Report,
                 restart: Callable[[str], None] | None = None) -> None:
    """Lift faults, then check invariants 1-5 (see the module docstring)."""
    cluster.heal_all()
    _no_hangs(cluster, report)
    _membership_converges(cluster, report, "after faults stopped")
    _restorable_within_tolerance(cluster, rng, report)
    down = [i for i in cluster.ids if not cluster.nodes[i].running]
    for node_id in down:
        (restart or cluster.restart)(node_id)
    if down:
        _membership_converges(cluster, report, "after every node restarted")
    _catalogs_converge(cluster, report)
    _visible_means_restorable(cluster, rng, report)
    _failed_puts_invisible(cluster, report)
    _nothing_leaks(cluster, report)


def _no_hangs(cluster: Cluster, report: Report) -> None:
    pending = [r for r in cluster.clients.values() if not r.done]
    if not pending:
        return
    if not cluster.run_until(lambda: all(r.done for r in pending), max_time=HANG_BOUND, step=1.0):
        stuck = [f"{r.kind} {r.name} via {r.node[:4]} (last reply {r.replies[-1:]})" for r in pending if not r.done]
        report.violation(f"operations still running {HANG_BOUND:.0f}s after faults stopped: {stuck}")


def _membership_converges(cluster: Cluster, report: Report, when: str) -> None:
    if not cluster.run_until(cluster.converged, max_time=CONVERGE_BOUND, step=0.5):
        report.violation(f"memberships did not converge within {CONVERGE_BOUND:.0f}s {when}: "
                         f"alive views {cluster.views()}")


def _catalogs_converge(cluster: Cluster, report: Report) -> None:
    def same() -> bool:
        digests = {cluster.nodes[i].core.catalog.digest() for i in cluster.running_ids()}  # type: ignore[union-attr]
        return len(digests) <= 1

    if cluster.with_cores and not cluster.run_until(same, max_time=CATALOG_BOUND, step=1.0):
        report.violation(f"catalogs differ {CATALOG_BOUND:.0f}s after faults stopped "
                         "(anti-entropy did not reconcile them)")


def _committed(cluster: Cluster) -> list[ClientRecord]:
    return [r for r in cluster.clients.values() if r.kind == "put" and isinstance(r.final, ev.PutDone)]


def _restorable_within_tolerance(cluster: Cluster, rng: random.Random, report: Report) -> None:
    running = cluster.running_ids()
    catalogs = [cluster.nodes[i].core.catalog for i in running]  # type: ignore[union-attr]
    for record in _committed(cluster)[:MAX_FINAL_GETS]:
        done = record.final
        manifest = cluster.find_manifest(done.manifest_id)
        if manifest is None:
            report.violation(f"committed put {done.name} has no manifest on any disk")
            continue
        ids = manifest.piece_ids()
        holders = {i for i in cluster.ids if any(pid in cluster.nodes[i].disk.durable for pid in ids)}
        down = holders - set(running)
        if len(down) > done.tolerance:
            continue
        key = (manifest.name, manifest.version)
        if any(key in c.tombstones for c in catalogs):
            continue  # removed on purpose
        if not any(c.is_live(*key) for c in catalogs):
            report.violation(f"committed put {done.name}@{manifest.version} is in no running node's catalog")
            continue
        ok, why = readable(cluster, manifest, running)
        if not ok:
            if corrupted_pieces(cluster, manifest):
                report.note(f"{done.name}: bit rot plus {len(down)} holders down exceed what parity covers")
            else:
                report.violation(f"committed put {done.name} (tolerance {done.tolerance}) cannot be restored "
                                 f"with only {len(down)} of its holders down: {why}")
            continue
        if cluster.find_manifest(done.manifest_id) is not None and any(
            done.manifest_id in cluster.nodes[i].disk.manifests for i in running
        ):
            get_exact(cluster, rng, report, f"{done.name}@{manifest.version}",
                      f"{len(down)} holders down <= tolerance {done.tolerance}")
        else:
            report.violation(f"committed put {done.name}: no running node has its manifest "
                             f"with {len(down)} holders down")


def _visible_means_restorable(cluster: Cluster, rng: random.Random, report: Report) -> None:
    running = cluster.running_ids()
    visible = {}
    for node_id in running:
        catalog = cluster.nodes[node_id].core.catalog  # type: ignore[union-attr]
        for name in catalog.names():
            for entry in catalog.live_versions(name):
                visible[entry.spec] = entry
    specs = sorted(visible)
    rng.shuffle(specs)
    for spec in specs[:MAX_FINAL_GETS]:
        entry = visible[spec]
        manifest = cluster.find_manifest(entry.manifest_id)
        if manifest is None:
            report.violation(f"{spec} is visible but no node has its manifest")
            continue
        ok, why = readable(cluster, manifest, running)
        if not ok:
            if corrupted_pieces(cluster, manifest):
                report.note(f"{spec}: injected bit rot exceeds what parity covers")
            else:
                report.violation(f"{spec} is visible but cannot be restored with every node up: {why}")
            continue
        get_exact(cluster, rng, report, spec, "visible checkpoint, every node up")


def _failed_puts_invisible(cluster: Cluster, report: Report) -> None:
    for record in cluster.clients.values():
        if record.kind != "put" or not isinstance(record.final, ev.Failed) or record.final.outcome_unknown:
            continue
        if any(r.kind == "put" and r.name == record.name and r.ok for r in cluster.clients.values()):
            continue  # another put of the same name succeeded
        for node_id in cluster.running_ids():
            if cluster.nodes[node_id].core.catalog.latest(record.name) is not None:  # type: ignore[union-attr]
                report.violation(f"failed put of {record.name} ({record.final.reason}) is visible on {node_id[:4]}")
                break


def _nothing_leaks(cluster: Cluster, report: Report) -> None:
    cluster.run_for(QUIET)
    for node_id in cluster.running_ids():
        node = cluster.nodes[node_id]
        core = node.core
        if core is None:
            continue
        if core.operations:
            report.violation(f"node {node_id[:4]} still runs {len(core.operations)} operations when idle")
        if core.buffer_bytes or any(core.inflight.values()):
            report.violation(f"node {node_id[:4]} accounts {core.buffer_bytes} buffered and "
                             f"{sum(core.inflight.values())} in-flight bytes when idle")
        if node.handles:
            held = sum(c.size for c in node.handles.values())
            report.violation(f"node {node_id[:4]} leaks {len(node.handles)} payload handles ({held} bytes) "
                             "when idle")
