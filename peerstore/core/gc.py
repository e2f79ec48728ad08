"""Garbage-collection decisions: which local pieces may go, and which versions retention drops.

Pure functions and one small table; no I/O, no clock (``now`` comes in). The pass that
gathers the inputs and carries out the decision is ``core/collector.py``.

The rules a piece must pass before a node deletes its local copy:

1. **Unreferenced.** No committed, non-tombstoned version references it: the caller
   builds ``referenced`` from the manifest of *every* live catalog entry, after syncing
   its catalog with every live peer. If one of those manifests cannot be loaded the pass
   deletes nothing. Pieces are content-addressed and shared by dedup, so a piece a
   tombstone hides stays as long as any live version (an older one, or a concurrent
   put that has committed meanwhile) references it.
2. **Not leased.** An in-progress put may still commit with it. Every piece a node
   stores, or acknowledges as already held, gets a lease of ``lease_seconds``; a running
   put renews the leases of its pieces on every node that holds one (``RenewLease``)
   every third of that. A piece is deletable only ``margin_seconds`` after its lease
   ran out, which covers the catalog entry of a just-committed put reaching this node.
3. **Leases survive restarts conservatively.** A restarted node has forgotten its
   leases, so every piece it holds at boot counts as leased until ``lease_seconds``
   after the boot (measured on the clock the shell supplies as ``now``, which need not
   survive the restart: the boot itself is the reference point).

Retention (``retention_tombstones``) tombstones all but the newest ``keep_last`` live
versions of each name. It is a pure function of the catalog, so every node computes the
same tombstones, and the catalog CRDT (grow-only tombstones) makes applying them twice,
or on two nodes at once, harmless.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from peerstore.model.catalog import Catalog
from peerstore.model.manifest import Manifest
from peerstore.model.names import VersionId

MAX_LEASE_SECONDS = 86_400.0  # a peer cannot ask for a lease longer than a day
DELETE_BATCH = 1024  # piece ids per DeletePieces effect
MAX_DELETES_PER_PASS = 100_000  # a pass never emits more; the next pass goes on


class LeaseTable:
    """Until when each local piece is protected from collection.

    Before ``started`` every piece is protected (the node has not been told the time yet);
    afterwards a piece held at boot is protected until ``boot + lease_seconds + margin``,
    and a piece granted a lease until ``expiry + margin``. Entries exist only for pieces
    leased since boot, and ``prune`` drops those that ran out, so the table never holds
    more than the pieces written or renewed within one lease period.
    """

    def __init__(self, lease_seconds: float, margin_seconds: float):
        if not (lease_seconds > 0 and margin_seconds >= 0):
            raise ValueError(f"need lease_seconds > 0 and margin_seconds >= 0, got {lease_seconds}, {margin_seconds}")
        self.lease_seconds = float(lease_seconds)
        self.margin_seconds = float(margin_seconds)
        self.boot_until = math.inf  # every piece held at boot is leased until then
        self._until: dict[bytes, float] = {}

    def started(self, now: float) -> None:
        """The node has (re)started at ``now``: what it holds is leased for one lease period."""
        if self.boot_until == math.inf:
            self.boot_until = now + self.lease_seconds

    def grant(self, now: float, piece_ids: Iterable[bytes], seconds: float | None = None) -> None:
        """Lease ``piece_ids`` until ``now + seconds`` (never shorter than this node's own
        lease period, never longer than MAX_LEASE_SECONDS); an existing longer lease stays."""
        length = min(max(seconds or 0.0, self.lease_seconds), MAX_LEASE_SECONDS)
        until = now + length
        for pid in piece_ids:
            if self._until.get(pid, -math.inf) < until:
                self._until[pid] = until

    def expires(self, piece_id: bytes) -> float:
        """When the piece's lease runs out (the margin comes on top)."""
        return max(self.boot_until, self._until.get(piece_id, -math.inf))

    def protected(self, piece_id: bytes, now: float) -> bool:
        return now < self.expires(piece_id) + self.margin_seconds

    def prune(self, now: float) -> None:
        """Forget leases whose protection has ended."""
        gone = [pid for pid, until in self._until.items() if until + self.margin_seconds <= now]
        for pid in gone:
            del self._until[pid]

    def __len__(self) -> int:
        return len(self._until)


def live_manifest_ids(catalog: Catalog) -> frozenset[bytes]:
    """The manifest of every live (committed, non-tombstoned) version, conflicting claims included."""
    return frozenset(e.manifest_id for name in catalog.names() for e in catalog.live_versions(name))


def tombstoned_manifest_ids(catalog: Catalog) -> frozenset[bytes]:
    """Manifests of versions a tombstone hides, that no live version also names."""
    hidden = {e.manifest_id for e in catalog.entries if not catalog.is_live(e.name, e.version)}
    return frozenset(hidden - live_manifest_ids(catalog))


def referenced_pieces(manifests: Iterable[Manifest]) -> frozenset[bytes]:
    """Every piece id any of ``manifests`` needs."""
    out: set[bytes] = set()
    for manifest in manifests:
        out |= manifest.piece_ids()
    return frozenset(out)


def plan_deletions(
    inventory: Iterable[bytes],
    referenced: Collection[bytes],
    leases: LeaseTable,
    now: float,
    *,
    busy: Collection[bytes] = (),
    limit: int = MAX_DELETES_PER_PASS,
) -> list[bytes]:
    """The local pieces that may be deleted now, in id order, at most ``limit``:
    unreferenced, with no lease in force, and not ``busy`` (a delete already underway)."""
    out = []
    for pid in sorted(inventory):
        if len(out) >= limit:
            break
        if pid in referenced or pid in busy or leases.protected(pid, now):
            continue
        out.append(pid)
    return out


@dataclass(frozen=True)
class Unreferenced:
    """What a node holds that no live version needs, in bytes (pieces of unknown size
    count 0): ``awaiting`` may be collected at the next pass, ``leased`` waits for a
    lease (a running put's pieces, or anything held at boot, for one lease period)."""

    awaiting: int = 0
    awaiting_pieces: int = 0
    leased: int = 0
    leased_pieces: int = 0


def unreferenced(
    inventory: Iterable[bytes],
    referenced: Collection[bytes],
    leases: LeaseTable,
    now: float,
    sizes: Mapping[bytes, int],
) -> Unreferenced:
    """Bytes held but no longer needed, split by whether a lease still protects them."""
    awaiting = awaiting_n = leased = leased_n = 0
    for pid in inventory:
        if pid in referenced:
            continue
        size = sizes.get(pid, 0)
        if leases.protected(pid, now):
            leased, leased_n = leased + size, leased_n + 1
        else:
            awaiting, awaiting_n = awaiting + size, awaiting_n + 1
    return Unreferenced(awaiting, awaiting_n, leased, leased_n)


def retention_tombstones(catalog: Catalog, keep_last: int | None) -> list[tuple[str, VersionId]]:
    """The (name, version) pairs retention removes: for each name, every live version
    older than its newest ``keep_last`` (None: keep everything). Deterministic, so every
    node that has seen the same catalog removes the same versions."""
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"retention keep_last must be at least 1 (or None to keep everything), got {keep_last}")
    out = []
    for name in catalog.names():
        versions = sorted({e.version for e in catalog.live_versions(name)})
        out += [(name, v) for v in versions[: max(0, len(versions) - keep_last)]]
    return out


def has_majority(alive: Collection[str], members: Collection[str]) -> bool:
    """True if ``alive`` holds more than half of the last known membership (``members``,
    the nodes seen alive, suspect or dead and not yet forgotten; the alive ones count
    whether or not ``members`` lists them). A node that sees no majority may be on the
    small side of a partition, where catalog entries it has not seen may exist: it
    collects nothing."""
    everyone = set(members) | set(alive)
    return 2 * len(set(alive)) > len(everyone)


def batches(piece_ids: list[bytes], size: int = DELETE_BATCH) -> list[list[bytes]]:
    """``piece_ids`` cut into effects of at most ``size`` ids."""
    return [piece_ids[i: i + size] for i in range(0, len(piece_ids), size)]


def cluster_summary(reports: Iterable[tuple[str, Mapping | None]]) -> dict:
    """The cluster's GC figures for ``status``, from each node's report (its ``"gc"``
    key, see ``collector.GcReport``): bytes awaiting collection summed over the nodes that
    answered, and which nodes' collectors are blocked and why."""
    out = {"awaiting_bytes": 0, "awaiting_pieces": 0, "leased_bytes": 0, "freed_bytes": 0,
           "nodes": 0, "blocked": {}}
    for node, report in reports:
        section = report.get("gc") if isinstance(report, Mapping) else None
        if not isinstance(section, Mapping):
            continue
        out["nodes"] += 1
        for key in ("awaiting_bytes", "awaiting_pieces", "leased_bytes", "freed_bytes"):
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[key] += value
        blocked = section.get("blocked")
        if isinstance(blocked, str) and blocked:
            out["blocked"][node] = blocked[:200]
    return out
