"""Watching repair from the outside: the self-healing invariant and the bytes repair moved.

``RepairWatch`` samples a cluster every ``period`` virtual seconds and keeps books from
ground truth (what the disks of running nodes hold), never from what a node
believes:

- **Invariant**: no committed checkpoint's tolerance stays below the policy's best
  longer than the grace period plus repair time. For every commit that is not removed and
  is still readable, its exact tolerance over the pieces on running nodes' disks is
  compared with the best the running nodes allow. A shortfall starts a clock; the clock
  restarts with every fault (a new failure starts its own grace) and is excused while no
  repair is allowed: while the running nodes are no strict majority of the last stable
  set of running nodes (the majority rule, recomputed here from the truth). A clock past
  ``grace + DETECTION + repair_time`` is a violation.
- **One owner**: two running nodes never repair the same stripe at once (checked every
  ``owner_period``; stripes a scrub or a get asked a node to repair are exempt).
- **Meter**: the bytes each node's repair stored (``repair_bytes`` in its core's stats),
  summed over every boot of every node, and when repairs started and finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peerstore.model import placement
from peerstore.core.quorum import majority_of

if TYPE_CHECKING:
    from sim.cluster import Cluster

DETECTION = 60.0  # virtual seconds for every node to mark a dead member gone (suspicion + dissemination)
SCAN_SLACK = 30.0  # a scan, a confirm scan and the last stripe's round trips
STABLE_SETTLE = 60.0  # as core/repairer.py's STABLE_SETTLE_MAX


@dataclass
class Shortfall:
    since: float
    tolerance: int
    best: int


@dataclass
class RepairWatch:
    cluster: Cluster
    grace: float
    rate: float  # the repair bytes per second a node may use (0: unlimited)
    period: float = 2.0
    owner_period: float = 0.02
    slack: float = 0.0  # extra seconds the caller knows it needs (big checkpoints)
    shortfalls: dict[bytes, Shortfall] = field(default_factory=dict)
    restored_at: dict[bytes, float] = field(default_factory=dict)
    repair_bytes: dict[tuple[str, int], int] = field(default_factory=dict)  # (node, boot) -> bytes
    first_repair: float | None = None
    last_repair: float | None = None
    _faults_seen: int = 0
    _running: frozenset[str] = frozenset()
    _running_since: float = 0.0
    _stable: frozenset[str] | None = None
    _started: bool = False

    def start(self) -> RepairWatch:
        if not self._started:
            self._started = True
            self._running = frozenset(self.cluster.running_ids())
            self.cluster.loop.after(self.period, self._sample)
            self.cluster.loop.after(self.owner_period, self._check_owners)
        return self

    # -- books -----------------------------------------------------------------------------

    @property
    def total_repair_bytes(self) -> int:
        self._meter()
        return sum(self.repair_bytes.values())

    def repair_bytes_of(self, node_ids: set[str] | frozenset[str]) -> int:
        self._meter()
        return sum(b for (n, _), b in self.repair_bytes.items() if n in node_ids)

    def _meter(self) -> None:
        now = self.cluster.loop.now
        for node_id, node in self.cluster.nodes.items():
            if node.running and node.core is not None:
                done = node.core.stats.get("repair_bytes", 0)
                key = (node_id, node.boot)
                if done > self.repair_bytes.get(key, 0):
                    self.repair_bytes[key] = done
                    self.first_repair = now if self.first_repair is None else self.first_repair
                    self.last_repair = now

    def below_best(self) -> dict[bytes, tuple[int, int]]:
        """manifest id -> (tolerance now, best) for every live commit below the best the
        running nodes allow, over the copies on their disks. Rotten copies count: finding
        rot is scrub's job, and repair re-creates what scrub or a get reports."""
        cluster = self.cluster
        running = cluster.running_ids()
        nodes = [cluster.nodes[i] for i in running]
        out: dict[bytes, tuple[int, int]] = {}
        for commit in cluster.ledger.commits:
            if not commit.has_pieces or cluster.ledger.is_removed(commit.name, commit.version):
                continue
            manifest = cluster.ledger.manifest(commit.manifest_id)
            if manifest is None:
                continue
            best = min(placement.best_tolerance(len(running), s.k, s.p) if len(running) >= 2 else -1
                       for _, _, s in manifest.iter_stripes())
            now = cluster.ledger.tolerance(manifest, nodes, lambda n, pid: pid in n.disk.durable)
            if now < best:
                out[commit.manifest_id] = (now, best)
        return out

    def bound(self) -> float:
        """Grace plus repair time: detection, one scan, and every committed byte at the
        paced rate of one node (a loose bound: several owners share the work)."""
        stored = sum(c.final.size for c in self.cluster.clients.values()
                     if c.kind == "put" and c.ok)  # type: ignore[union-attr]
        repair = 2.5 * stored / self.rate if self.rate > 0 else 0.0
        return self.grace + DETECTION + SCAN_SLACK + repair + self.slack

    # -- sampling ----------------------------------------------------------------------------

    def _sample(self) -> None:
        cluster = self.cluster
        now = cluster.loop.now
        self._meter()
        self._track_stable(now)
        if len(cluster.faults) != self._faults_seen:  # a new fault restarts every clock
            self._faults_seen = len(cluster.faults)
            for shortfall in self.shortfalls.values():
                shortfall.since = now
        allowed = self._stable is not None and majority_of(self._running, self._stable)
        below = self.below_best()
        for mid in list(self.shortfalls):
            if mid not in below:
                del self.shortfalls[mid]
                self.restored_at[mid] = now
        for mid, (tolerance, best) in below.items():
            shortfall = self.shortfalls.get(mid)
            if shortfall is None or tolerance < 0 or not allowed:
                self.shortfalls[mid] = Shortfall(now, tolerance, best)
                continue
            if now - shortfall.since > self.bound():
                commit = next(c for c in cluster.ledger.commits if c.manifest_id == mid)
                cluster.violation(
                    f"repair-deadline:{mid.hex()}",
                    f"{commit.name}@{commit.version} has stayed at tolerance {tolerance}, below the best "
                    f"{best} that {len(self._running)} running nodes allow, for {now - shortfall.since:.0f}s "
                    f"(grace {self.grace:.0f}s + repair time: bound {self.bound():.0f}s)")
        cluster.loop.after(self.period, self._sample)

    def _check_owners(self) -> None:
        cluster = self.cluster
        repairing: dict[tuple[bytes, int], str] = {}
        for node_id, node in cluster.nodes.items():
            service = getattr(node.core, "repair", None) if node.running else None
            for task in getattr(service, "tasks", ()):
                if task.requested:
                    continue
                key = (task.stripe.manifest_id, task.stripe.index)
                other = repairing.setdefault(key, node_id)
                if other != node_id:
                    cluster.violation(
                        f"two-owners:{key[0].hex()}:{key[1]}",
                        f"nodes {other[:4]} and {node_id[:4]} repair stripe {key[1]} of manifest "
                        f"{key[0].hex()[:12]} at once: the owner rule is broken")
        cluster.loop.after(self.owner_period, self._check_owners)

    def _track_stable(self, now: float) -> None:
        """The majority rule from the truth: the set of running nodes, once unchanged for
        STABLE_SETTLE seconds, is adopted if it holds a majority of the previous one."""
        running = frozenset(self.cluster.running_ids())
        if running != self._running:
            self._running, self._running_since = running, now
        if now - self._running_since >= STABLE_SETTLE and running != self._stable and (
                self._stable is None or majority_of(running, self._stable)):
            self._stable = running

    def wait_restored(self, max_time: float) -> float | None:
        """Run until no commit is below the best; the virtual seconds it took, or None."""
        start = self.cluster.loop.now
        ok = self.cluster.run_until(lambda: not self.below_best(), max_time=max_time, step=1.0)
        return self.cluster.loop.now - start if ok else None


def back_at_policy(cluster: Cluster) -> str:
    """The end-of-run form of the invariant (``sim.invariants.final_checks``, every node up):
    every committed checkpoint that can still be read gets back to the best tolerance the
    nodes allow within the grace period plus repair time. "" when it does, else why not."""
    settings = cluster.settings
    watch = RepairWatch(cluster, settings.repair_grace_seconds, settings.repair_max_bytes_per_second)

    def repairable() -> dict[bytes, tuple[int, int]]:
        return {mid: tb for mid, tb in watch.below_best().items() if tb[0] >= 0}

    if not repairable():
        return ""
    bound = watch.bound()
    if cluster.run_until(lambda: not repairable(), max_time=bound, step=5.0):
        return ""
    names = {c.manifest_id: f"{c.name}@{c.version}" for c in cluster.ledger.commits}
    rows = ", ".join(f"{names.get(mid, mid.hex()[:12])} at {t} (best {b})" for mid, (t, b) in repairable().items())
    return f"with every node up, still below the best tolerance {bound:.0f}s later: {rows}"
