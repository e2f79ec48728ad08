"""Named failure scenarios over the in-memory cluster, each a pure function of its seed.

Every scenario returns a ``Result`` listing invariant violations (empty means it passed);
tests run a fixed sample of seeds, ``python -m sim.sweep`` runs hundreds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from peerstore.core import events as ev
from peerstore.core.node import NodeCore
from sim.harness import ClientRecord, Cluster, FileModel


@dataclass
class Result:
    name: str
    seed: int
    violations: list[str] = field(default_factory=list)
    digest: str = ""
    operations: int = 0
    virtual_time: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


SCENARIOS: dict[str, Callable[..., Result]] = {}


def scenario(func: Callable[..., Result]) -> Callable[..., Result]:
    SCENARIOS[func.__name__.replace("_", "-")] = func
    return func


def random_checkpoint(rng: random.Random, shard: int, *, files: int | None = None) -> list[FileModel]:
    """A directory-like checkpoint: a big model file, small JSON files, maybe an empty one."""
    count = files if files is not None else rng.randint(1, 3)
    out = [FileModel.generate("model.safetensors", rng.randint(shard, shard * 14), shard, seed=rng.random())]
    for i in range(1, count):
        size = rng.choice([0, rng.randint(1, shard // 2), rng.randint(shard, shard * 5)])
        out.append(FileModel.generate(f"extra-{i}.bin", size, shard, seed=rng.random()))
    return out


def check_get(cluster: Cluster, node: str, spec: str, result: Result, why: str) -> ClientRecord:
    [record] = cluster.wait(cluster.get(node, spec))
    result.operations += 1
    if not record.ok:
        result.violations.append(f"{why}: get {spec} via {node[:4]} failed: {record.final}")
    return record


def finish(cluster: Cluster, result: Result) -> Result:
    result.violations.extend(cluster.violations)
    result.digest = cluster.loop.digest
    result.virtual_time = cluster.loop.now
    if result.violations:
        result.violations.append(f"reproduce with seed={result.seed} (scenario {result.name})")
    return result


def _setup(name: str, seed: int, n: int = 5, core_class: type[NodeCore] = NodeCore, **kw) -> tuple[Cluster, random.Random, Result]:
    cluster = Cluster(n, seed, core_class=core_class, **kw)
    return cluster, random.Random(f"{name}:{seed}"), Result(name, seed)


def _put(cluster: Cluster, rng: random.Random, result: Result, name: str = "run/ckpt",
         node: str | None = None) -> ClientRecord:
    files = random_checkpoint(rng, cluster.settings.policy.shard_size)
    [record] = cluster.wait(cluster.put(node or rng.choice(cluster.ids), name, files, is_dir=len(files) > 1))
    result.operations += 1
    return record


@scenario
def roundtrip(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    cluster, rng, result = _setup("roundtrip", seed, core_class=core_class)
    put = _put(cluster, rng, result)
    if not put.ok:
        result.violations.append(f"healthy put failed: {put.final}")
    else:
        check_get(cluster, rng.choice(cluster.ids), "run/ckpt", result, "healthy cluster")
    return finish(cluster, result)


@scenario
def one_node_dead(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    cluster, rng, result = _setup("one-node-dead", seed, core_class=core_class)
    put = _put(cluster, rng, result)
    if put.ok:
        dead = rng.choice(cluster.ids)
        cluster.crash(dead)
        check_get(cluster, rng.choice([i for i in cluster.ids if i != dead]), "run/ckpt", result, "one node dead")
    return finish(cluster, result)


@scenario
def double_failure_get(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """Kill both holders of one data shard, so that stripe needs parity."""
    cluster, rng, result = _setup("double-failure-get", seed, core_class=core_class)
    put = _put(cluster, rng, result)
    if put.ok:
        manifest = cluster.manifest_of(put)
        hint = rng.choice(manifest.placement)
        shard = rng.randrange((len(hint) - manifest.policy.parity) // 2)
        dead = {hint[2 * shard], hint[2 * shard + 1]}
        for node in sorted(dead):
            cluster.crash(node)
        via = rng.choice([i for i in cluster.ids if i not in dead])
        record = check_get(cluster, via, "run/ckpt", result, f"two holders of a shard dead (tolerance {put.final.tolerance})")
        if record.ok and record.final.degraded_stripes == 0:
            result.violations.append("expected at least one stripe rebuilt from parity")
    return finish(cluster, result)


@scenario
def frozen_node(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    cluster, rng, result = _setup("frozen-node", seed, core_class=core_class)
    put = _put(cluster, rng, result)
    if put.ok:
        frozen = rng.choice(cluster.ids)
        cluster.freeze(frozen)
        start = cluster.loop.now
        check_get(cluster, rng.choice([i for i in cluster.ids if i != frozen]), "run/ckpt", result, "one node frozen")
        bound = 3 * cluster.settings.request_timeout
        if cluster.loop.now - start > bound:
            result.violations.append(f"get with a frozen node took {cluster.loop.now - start:.1f}s > {bound}s")
    return finish(cluster, result)


@scenario
def bitrot(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """Corrupt a piece on one node (a few of them, on distinct pieces)."""
    cluster, rng, result = _setup("bitrot", seed, core_class=core_class)
    put = _put(cluster, rng, result)
    if put.ok:
        manifest = cluster.manifest_of(put)
        _, _, stripe = rng.choice(list(manifest.iter_stripes()))
        for pid in rng.sample(list(stripe.data_ids), min(2, stripe.k)):
            cluster.corrupt(rng.choice(cluster.holders(pid)), pid)
        record = check_get(cluster, rng.choice(cluster.ids), "run/ckpt", result, "corrupt pieces")
        if record.ok and record.final.fallbacks == 0 and record.final.degraded_stripes == 0:
            result.notes.append("the corrupt copies were not on the first-choice path")
    return finish(cluster, result)


@scenario
def put_while_node_down(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    cluster, rng, result = _setup("put-while-node-down", seed, core_class=core_class)
    dead = rng.choice(cluster.ids)
    cluster.crash(dead)
    put = _put(cluster, rng, result, node=rng.choice([i for i in cluster.ids if i != dead]))
    if not put.ok:
        result.violations.append(f"put with 4 of 5 nodes up failed: {put.final}")
    else:
        if put.final.tolerance < 2:
            result.violations.append(f"4 live nodes should give tolerance 2, got {put.final.tolerance}")
        manifest = cluster.manifest_of(put)
        if any(dead in hint for hint in manifest.placement):
            result.violations.append("a piece was placed on the dead node")
        cluster.restart(dead)
        check_get(cluster, dead, "run/ckpt", result, "get via the restarted node")
    return finish(cluster, result)


@scenario
def crash_during_put(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """A target node crashes at a random moment of a put. The put must either commit with
    the policy met (checked at success) or fail; a committed put must be restorable."""
    cluster, rng, result = _setup("crash-during-put", seed, core_class=core_class)
    coordinator = rng.choice(cluster.ids)
    victim = rng.choice([i for i in cluster.ids if i != coordinator])
    files = random_checkpoint(rng, cluster.settings.policy.shard_size)
    client = cluster.put(coordinator, "run/ckpt", files, is_dir=len(files) > 1)
    cluster.loop.after(rng.uniform(0, 0.02), cluster.crash, victim)
    [put] = cluster.wait(client)
    cluster.run_for(0.05)  # the crash happens even when the put was faster
    result.operations += 1
    if put.ok:
        check_get(cluster, coordinator, "run/ckpt", result, "after a target crashed mid-put")
        cluster.restart(victim)
        check_get(cluster, victim, "run/ckpt", result, "via the restarted victim")
    else:
        _nothing_visible(cluster, "run/ckpt", result)
    return finish(cluster, result)


@scenario
def coordinator_dies_mid_put(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """The coordinator crashes at a random moment: no node may show a checkpoint that
    cannot be restored."""
    cluster, rng, result = _setup("coordinator-dies-mid-put", seed, core_class=core_class)
    coordinator = rng.choice(cluster.ids)
    files = random_checkpoint(rng, cluster.settings.policy.shard_size)
    client = cluster.put(coordinator, "run/ckpt", files, is_dir=len(files) > 1)
    cluster.loop.after(rng.uniform(0, 0.02), cluster.crash, coordinator)
    [put] = cluster.wait(client)
    cluster.run_for(30.0)
    result.operations += 1
    others = [i for i in cluster.ids if i != coordinator]
    visible = [n for n in others if cluster.nodes[n].core.catalog.latest("run/ckpt") is not None]
    if put.ok:
        result.notes.append("the put committed before the coordinator crashed")
        if not visible:
            result.violations.append("a committed put is not visible on any surviving node")
    for node in visible[:1]:
        check_get(cluster, node, "run/ckpt", result, "visible after the coordinator died")
    return finish(cluster, result)


@scenario
def concurrent_same_name(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """Two coordinators put the same name at once: two versions, one deterministic latest."""
    cluster, rng, result = _setup("concurrent-same-name", seed, core_class=core_class)
    a, b = rng.sample(cluster.ids, 2)
    shard = cluster.settings.policy.shard_size
    c1 = cluster.put(a, "run/ckpt", random_checkpoint(rng, shard, files=1))
    c2 = cluster.put(b, "run/ckpt", random_checkpoint(rng, shard, files=1))
    p1, p2 = cluster.wait(c1, c2)
    result.operations += 2
    if not (p1.ok and p2.ok):
        result.violations.append(f"concurrent puts failed: {p1.final} / {p2.final}")
        return finish(cluster, result)
    cluster.run_for(1.0)
    latest = {n: cluster.nodes[n].core.catalog.latest("run/ckpt") for n in cluster.ids}
    versions = {e.version for e in latest.values() if e}
    if len(versions) != 1:
        result.violations.append(f"nodes disagree on the latest version: {versions}")
    live = cluster.nodes[a].core.catalog.live_versions("run/ckpt")
    if len(live) != 2:
        result.violations.append(f"expected two versions, found {[str(e.version) for e in live]}")
    for entry in live:
        check_get(cluster, rng.choice(cluster.ids), f"run/ckpt@{entry.version}", result, "each concurrent version")
    return finish(cluster, result)


@scenario
def shared_pieces(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """Concurrent puts of checkpoints with identical (all-zero-like) shards."""
    cluster, rng, result = _setup("shared-pieces", seed, core_class=core_class)
    shard = cluster.settings.policy.shard_size
    size = rng.randint(shard * 4, shard * 12)
    a, b = rng.sample(cluster.ids, 2)
    c1 = cluster.put(a, "zeros/a", [FileModel.repeating("model.safetensors", size, shard)])
    c2 = cluster.put(b, "zeros/b", [FileModel.repeating("model.safetensors", size + shard, shard)])
    p1, p2 = cluster.wait(c1, c2)
    result.operations += 2
    for put in (p1, p2):
        if not put.ok:
            result.violations.append(f"put of shared pieces failed: {put.final}")
    if p1.ok and p2.ok:
        dead = rng.choice(cluster.ids)
        cluster.crash(dead)
        alive = [i for i in cluster.ids if i != dead]
        check_get(cluster, rng.choice(alive), "zeros/a", result, "shared pieces, one node dead")
        check_get(cluster, rng.choice(alive), "zeros/b", result, "shared pieces, one node dead")
    return finish(cluster, result)


@scenario
def cancel_before_commit(seed: int, core_class: type[NodeCore] = NodeCore) -> Result:
    """The client goes away during the transfer: the put aborts and nothing is visible."""
    cluster, rng, result = _setup("cancel-before-commit", seed, core_class=core_class)
    coordinator = rng.choice(cluster.ids)
    files = [FileModel.generate("model.safetensors", cluster.settings.policy.shard_size * 40,
                                cluster.settings.policy.shard_size, seed=seed)]
    client = cluster.put(coordinator, "run/ckpt", files)
    cluster.loop.after(rng.uniform(0.0005, 0.01), cluster.cancel, client)
    [put] = cluster.wait(client)
    cluster.run_for(5.0)
    result.operations += 1
    if put.ok:
        result.notes.append("the put committed before the cancel arrived")
    else:
        _nothing_visible(cluster, "run/ckpt", result)
        if cluster.nodes[coordinator].core.buffer_bytes != 0:
            result.violations.append("an aborted put left stripe buffers accounted")
    return finish(cluster, result)


def _nothing_visible(cluster: Cluster, name: str, result: Result) -> None:
    for node_id, node in cluster.nodes.items():
        if node.core and node.state == "up" and node.core.catalog.latest(name) is not None:
            result.violations.append(f"failed put of {name} is visible on {node_id[:4]}")


def run(name: str, seed: int, **kw) -> Result:
    return SCENARIOS[name](seed, **kw)
