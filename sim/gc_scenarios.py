"""Garbage-collection scenarios (issue 12 §5, §6): registered with the others in
``sim.scenarios.SCENARIOS`` when this module is imported (``sim.chaos`` does).

Besides the common invariants, the shell checks every GC decision as it is made
(``sim.checks.RunChecks._check_gc_delete``: GC never removes a piece of a live version it
knows of or that the version's placement put on that node), and each scenario checks at
its end that GC left nothing behind: once the cluster is healthy and quiet for a lease and
a few passes, every piece on every running node belongs to a live version.
"""

from __future__ import annotations

from peerstore.core.gc import live_manifest_ids
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from sim.content import FileModel
from sim.disk import DiskModel
from sim.scenarios import Run, scenario

SHARD = 64 * 1024
INTERVAL, LEASE, MARGIN = 2.0, 6.0, 3.0  # virtual seconds: short, so puts outlive their leases
KEEP_LAST = 2
GRACE = 20.0  # repair's grace: the stable membership (GC's majority) settles in half of it
# A worn SD card: every piece fsync takes ~0.3 s, so a put with pieces there outlives its lease.
WORN_CARD = DiskModel(write_bandwidth=5e6, read_bandwidth=20e6, fsync=0.3, fsync_jitter=0.5, hash_rate=0.4e9)
NOTE_PREFIX = "gc:"


def gc_settings(keep_last: int | None = KEEP_LAST) -> CoreSettings:
    return CoreSettings(policy=Policy(shard_size=SHARD), gc_interval=INTERVAL, gc_lease_seconds=LEASE,
                        gc_margin_seconds=MARGIN, retention_keep_last=keep_last, repair_grace_seconds=GRACE)


@scenario(nodes=5, settings=gc_settings())
def gc_vs_concurrent_put(r: Run) -> None:
    """``rm`` and retention (keep_last=2) race puts of the same content under the same and
    other names, many slowed by worn SD cards so they last several lease periods, while a
    target and then a coordinator crash mid-put and come back: no committed piece is ever
    removed, every committed version that is not removed reads back, and at the end nothing
    unreferenced is left on any disk."""
    cluster = r.cluster
    r.run_for(GRACE)  # the stable membership is adopted: GC may act from now on
    for node_id in r.rng.sample(cluster.ids, 2):
        cluster.slow_disk(node_id, WORN_CARD)
    contents = [r.checkpoint(files=1, max_shards=40) for _ in range(2)]
    names = ["run1/latest", "run2/latest", "run3/latest"]
    for name in names[:2]:
        r.put(name=name, files=contents[0])
    records = []
    for step in range(14):
        if r.rng.random() < 0.4:  # new bytes: what an rm of them frees is really freed
            contents.append(r.checkpoint(files=1, max_shards=40))
        content = r.rng.choice(contents)
        name = r.rng.choice(names)
        via = r.pick()
        records.append(r.put(via=via, name=name, files=content, wait=False))
        if r.rng.random() < 0.5:  # an rm of the same content racing the put
            victim = r.rng.choice(names)
            spec = victim if r.rng.random() < 0.5 else f"{victim}@{r.rng.randint(1, 6)}"
            r.later(r.rng.uniform(0, 2 * INTERVAL), _rm, r, spec)
        if step == 5:  # a target dies mid-put and comes back: its pieces are orphans or leased
            victim = r.pick(exclude=(via,))
            r.later(r.rng.uniform(0.05, 1.0), cluster.crash, victim)
            r.later(r.rng.uniform(2.0, 8.0), cluster.restart, victim)
        if step == 9:  # the coordinator of a put dies: its put is abandoned, its pieces orphans
            r.later(r.rng.uniform(0.05, 0.5), cluster.crash, via)
            r.later(r.rng.uniform(5.0, 10.0), cluster.restart, via)
        r.run_for(r.rng.uniform(0.2, 1.5 * INTERVAL))
    r.wait(*records)
    r.drain()
    cluster.heal_all()
    for node_id in cluster.ids:
        cluster.restart(node_id)
    r.settle()
    _nothing_left_behind(r)
    committed = sum(1 for p in records if p.ok)
    r.note(f"{NOTE_PREFIX} {committed}/{len(records)} puts committed; "
           f"{sum(n.core.gc.report.freed_bytes for n in cluster.nodes.values() if n.core)} bytes freed by the "
           f"running processes")


def _rm(r: Run, spec: str) -> None:
    r.cluster.rm(r.pick(), spec)
    r.report.operations += 1


def _nothing_left_behind(r: Run) -> None:
    """After a quiet spell (every lease and the boot lease over, several passes): every
    running node holds only pieces of live versions, and every name keeps at most
    KEEP_LAST live versions."""
    cluster = r.cluster
    keep_last = cluster.settings.retention_keep_last
    cluster.run_for(GRACE + LEASE + MARGIN + 4 * INTERVAL)
    running = cluster.running_ids()
    live: set[bytes] = set()
    for node_id in running:
        live |= live_manifest_ids(cluster.nodes[node_id].core.catalog)  # type: ignore[union-attr]
    referenced: set[bytes] = set()
    for mid in live:
        manifest = cluster.ledger.manifest(mid)
        if manifest is None:
            r.violation(f"live version's manifest {mid.hex()[:12]} is on no disk")
            continue
        referenced |= manifest.piece_ids()
    for node_id in running:
        node = cluster.nodes[node_id]
        left = set(node.disk.durable) - referenced
        if left:
            size = sum(node.disk.durable[p].size for p in left)
            r.violation(f"GC left {len(left)} unreferenced piece(s) ({size} bytes) on {node_id[:4]} "
                        f"(its collector: {node.core.gc.report.blocked or 'not blocked'})")  # type: ignore[union-attr]
        catalog = node.core.catalog  # type: ignore[union-attr]
        for name in catalog.names():
            count = len({e.version for e in catalog.live_versions(name)})
            if keep_last is not None and count > keep_last:
                r.violation(f"{name} has {count} live versions on {node_id[:4]}; retention keeps {keep_last}")


@scenario(nodes=5, settings=gc_settings(keep_last=None))
def rm_frees_space(r: Run) -> None:
    """Checkpoints are stored and removed one after another (``rm NAME`` and ``rm NAME@V``),
    a node is down during one removal and comes back: after a quiet spell, every removed
    version's pieces are gone from every disk and the rest reads back."""
    cluster = r.cluster
    r.run_for(GRACE)
    stored = [r.put(name=f"run/{i}", files=r.checkpoint(files=1, max_shards=20)) for i in range(4)]
    again = r.put(name="run/0", files=[FileModel.generate("model.bin", 5 * SHARD, SHARD, seed=r.rng.random())])
    down = r.pick()
    cluster.crash(down)
    r.wait(r.cluster.clients[cluster.rm(r.pick(), "run/1")])
    cluster.restart(down)
    r.settle()
    r.wait(r.cluster.clients[cluster.rm(r.pick(), f"run/0@{stored[0].final.version}")])
    r.report.operations += 2
    _nothing_left_behind(r)
    for record in [again, stored[2], stored[3]]:
        if record.ok:
            spec = f"{record.name}@{record.final.version}"
            r.expect_get(spec, "a version nobody removed")
