"""What must hold, whatever the faults. Checked as the run goes and once it ends.

During the run (in ``sim.checks`` and ``sim.ledger``): no get delivers bytes that differ
from what was put, nor another version's bytes than the put committed as the version it
returned, nor (for ``get NAME``) a version older than one committed before it started; a
put reports success only with every piece durable and genuine where its manifest says and
its reported tolerance really met (rot and disk losses during the put excused); after
every fault, ``status`` (the live inventories) never reports more than the genuine copies
plus rotten ones still on disk, and each commit keeps its tolerance less its failed
holders; stripe buffers and bytes in flight stay within bounds; a restarted node
announces an incarnation above every one it used before.

At the end (:func:`final_checks`), after every transient fault is lifted:

1. no operation hangs: every client got an answer within a bound;
2. memberships converge: every running node sees exactly the running nodes alive, and
   catalogs converge;
3. every put that reported success is restored byte-identical whenever its genuine
   pieces on running nodes can rebuild it, and must be rebuildable while no more of its
   holders failed (down, or disk lost since it started) than its reported tolerance.
   Only rot injected after it started may excuse a shortfall within tolerance (noted);
4. with every node back: each version visible in any catalog restores exactly unless
   disk losses beyond its tolerance or rot since it was stored explain why not (a failed
   or half-done put never leaves something a get could mistake for data), a put that
   failed with a definite outcome is visible nowhere, and no version id names two
   different checkpoints, and every readable committed checkpoint gets back to the best
   tolerance the nodes allow within the grace period plus repair time
   (``sim.repair_watch.back_at_policy``);
5. nothing leaks: no handles held, no buffers or bytes in flight accounted, once idle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from peerstore.core import events as ev
from peerstore.model.catalog import CatalogEntry
from peerstore.model.manifest import Manifest
from sim.clients import ClientRecord
from sim.cluster import Cluster
from sim.ledger import claims
from sim.repair_watch import back_at_policy

HANG_BOUND = 180.0  # virtual seconds an operation may still run once faults stop
CONVERGE_BOUND = 120.0  # push-pull every 30 s, suspicion up to 24 s, dissemination
CATALOG_BOUND = 120.0
QUIET = 30.0  # virtual seconds of idling before counting leaks


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operations: int = 0

    def violation(self, message: str) -> None:
        self.violations.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)


def readable(cluster: Cluster, manifest: Manifest, among: list[str],
             forgive: set[tuple[str, bytes]] | frozenset = frozenset()) -> tuple[bool, str]:
    """Can the checkpoint be rebuilt from genuine durable pieces on ``among`` (counting
    the (node, piece) copies in ``forgive`` as genuine)? A stripe reads when every data
    shard has a copy or any k of its pieces do."""
    nodes = [cluster.nodes[i] for i in among]
    for _, number, stripe in manifest.iter_stripes():
        present = [any(n.disk.genuine(pid) or (n.node_id, pid) in forgive for n in nodes)
                   for pid in stripe.piece_ids]
        if not (all(present[: stripe.k]) or sum(present) >= stripe.k):
            return False, f"stripe {number} has {sum(present)} of {len(present)} pieces, needs {stripe.k}"
    return True, ""


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
    cluster.ledger.finish()
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
    _versions_unique(cluster, report)
    if cluster.with_cores and (why := back_at_policy(cluster)):
        report.violation(why)
    _nothing_leaks(cluster, report)
    cluster.ledger.finish()
    report.notes.extend(cluster.ledger.notes)


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


def _restorable_within_tolerance(cluster: Cluster, rng: random.Random, report: Report) -> None:
    running = cluster.running_ids()
    catalogs = [cluster.nodes[i].core.catalog for i in running if cluster.nodes[i].core is not None]
    ledger = cluster.ledger
    for commit in ledger.commits:
        key = (commit.name, commit.version)
        spec = f"{commit.name}@{commit.version}"
        if ledger.is_removed(*key) or any(key in c.tombstones for c in catalogs):
            continue  # removed on purpose
        failed = ledger.failed(commit.holders, commit.started)
        within = len(failed) <= commit.tolerance
        state = f"{len(failed)} of its holders failed, tolerance {commit.tolerance}"
        manifest = ledger.manifest(commit.manifest_id)
        if manifest is None:
            if within:
                report.violation(f"committed put {spec} has no manifest on any disk ({state})")
            continue
        ok, why = readable(cluster, manifest, running)
        if not ok:
            if not within:
                continue  # more failures than it promised to survive
            if readable(cluster, manifest, running, ledger.rot_since(commit.started))[0]:
                report.note(f"{spec}: bit rot since it was stored plus {state} exceed what parity covers")
            else:
                report.violation(f"committed put {spec} cannot be restored with {state}: {why}")
            continue
        if not any(c.is_live(*key) for c in catalogs):
            if within:
                report.violation(f"committed put {spec} is in no running node's catalog ({state})")
            continue
        if not any(commit.manifest_id in cluster.nodes[i].disk.manifests for i in running):
            if within:
                report.violation(f"committed put {spec}: no running node has its manifest ({state})")
            continue
        get_exact(cluster, rng, report, spec, f"its genuine pieces on running nodes suffice ({state})")


def _origin(cluster: Cluster, manifest: Manifest | None, entry: CatalogEntry) -> tuple[float, int]:
    """When the put of ``entry`` started (0 if unknown) and the tolerance it promised."""
    for commit in cluster.ledger.commits:
        if commit.manifest_id == entry.manifest_id:
            return commit.started, commit.tolerance
    makers = cluster.ledger._puts_that_made(manifest) if manifest is not None else []
    since = min((p.started for p in makers), default=0.0)
    return since, (manifest.tolerance if manifest is not None else entry.tolerance)


def _visible_means_restorable(cluster: Cluster, rng: random.Random, report: Report) -> None:
    running = cluster.running_ids()
    ledger = cluster.ledger
    visible: dict[str, CatalogEntry] = {}
    for node_id in running:
        catalog = cluster.nodes[node_id].core.catalog  # type: ignore[union-attr]
        for name in catalog.names():
            for entry in catalog.live_versions(name):
                visible.setdefault(entry.spec, entry)
    for spec in sorted(visible):
        entry = visible[spec]
        manifest = ledger.manifest(entry.manifest_id)
        since, tolerance = _origin(cluster, manifest, entry)
        lost = {n for t, n in ledger.losses if t > since}
        if manifest is None:
            if lost:
                report.note(f"{spec} is visible but its manifest was lost with disks {sorted(n[:4] for n in lost)}")
            else:
                report.violation(f"{spec} is visible but no node has its manifest")
            continue
        ok, why = readable(cluster, manifest, running)
        if not ok:
            lost_holders = lost & {n for hint in manifest.placement for n in hint}
            if len(lost_holders) > tolerance:
                report.note(f"{spec}: {len(lost_holders)} of its holders lost their disks, tolerance {tolerance}")
            elif readable(cluster, manifest, running, ledger.rot_since(since))[0]:
                report.note(f"{spec}: bit rot since it was stored exceeds what parity covers")
            else:
                report.violation(f"{spec} is visible but cannot be restored with every node up "
                                 f"({len(lost_holders)} holders lost their disks, tolerance {tolerance}): {why}")
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


def _versions_unique(cluster: Cluster, report: Report) -> None:
    """A version id names one checkpoint for all time (commits, catalogs, manifests)."""
    for (name, version), ids in sorted(claims(cluster, cluster.ledger).items(), key=lambda kv: kv[0]):
        if len(ids) > 1:
            listed = ", ".join(sorted(i.hex()[:12] for i in ids))
            report.violation(f"version {version} of {name} names {len(ids)} different checkpoints "
                             f"(manifests {listed}): a version id was reused")


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
