"""Named failure scenarios, each a pure function of its seed.

A scenario is a function of a :class:`Run` (a fresh cluster, a seeded RNG, helpers for
puts, gets and faults) registered with ``@scenario``. It does its operations and faults;
the framework then lifts every transient fault and checks the invariants of
``sim.invariants``. Adding one:

    @scenario(nodes=5)
    def my_failure(run: Run) -> None:
        \"\"\"What goes wrong.\"\"\"
        put = run.put(wait=False)
        run.later(run.rng.uniform(0, 0.02), run.cluster.crash, run.pick())
        run.wait(put)

``run(name, seed)`` returns a :class:`Result`; ``python -m sim.chaos`` runs them.

One module, though long: the scenarios are a catalogue, each a short independent function;
the Run helpers they share are at the top.
"""

from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from peerstore.model import placement
from peerstore.core import events as ev
from peerstore.core.membership import boot_incarnation
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.core.snapshots import restore_catalog
from peerstore.model.manifest import Manifest
from peerstore.model.policy import Policy
from sim.clients import ClientRecord
from sim.cluster import Cluster
from sim.content import FileModel, TrainingRun
from sim.disk import SD_CARD, SSD, DiskModel
from sim.invariants import HANG_BOUND, Report, final_checks, readable
from sim.network import NIC_100MBIT

OP_BOUND = 600.0  # virtual seconds any single operation may take in a scenario
MIN_NODES = 2  # every scenario needs a second node to fail or to fail over to


@dataclass
class Result:
    name: str
    seed: int
    nodes: int = 0
    violations: list[str] = field(default_factory=list)
    digest: str = ""
    operations: int = 0
    faults: int = 0
    virtual_time: float = 0.0
    wall_time: float = 0.0
    notes: list[str] = field(default_factory=list)
    fault_log: list[str] = field(default_factory=list)
    mdns: bool = True
    scale: float = 1.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def reproduce(self) -> str:
        flags = ("" if self.mdns else " --no-mdns") + (f" --scale {self.scale:g}" if self.scale != 1.0 else "")
        return f"python -m sim.chaos --scenario {self.name} --seed {self.seed} --nodes {self.nodes}{flags}"


class Run:
    """One scenario run: the cluster, a seeded RNG, and helpers that keep the books."""

    def __init__(self, name: str, seed: int, nodes: int, cluster_options: dict[str, Any], scale: float = 1.0):
        self.name = name
        self.scale = scale  # checkpoint sizes and run lengths grow with it (``--scale``)
        self.cluster = Cluster(nodes, seed, **cluster_options)
        self.rng = self.cluster.seeds.rng("scenario", name)
        self.report = Report()
        self.scheduled = 0
        self._names = 0

    # -- choosing ------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return self.cluster.ids

    def pick(self, *, exclude: tuple[str, ...] | set[str] = (), running: bool = True) -> str:
        choices = [i for i in self.ids if i not in exclude and (not running or self.cluster.nodes[i].running)]
        return self.rng.choice(choices)

    def checkpoint(self, *, files: int | None = None, max_shards: int = 14) -> list[FileModel]:
        """A directory-like checkpoint: a big model file, small JSON files, maybe an empty one."""
        rng, shard = self.rng, self.cluster.settings.policy.shard_size
        count = files if files is not None else rng.randint(1, 3)
        most = max(1, round(max_shards * self.scale))
        out = [FileModel.generate("model.safetensors", rng.randint(shard, shard * most), shard, seed=rng.random())]
        for i in range(1, count):
            size = rng.choice([0, rng.randint(1, shard // 2), rng.randint(shard, shard * 5)])
            out.append(FileModel.generate(f"extra-{i}.bin", size, shard, seed=rng.random()))
        return out

    # -- operations ----------------------------------------------------------------------

    def put(self, via: str | None = None, name: str | None = None, files: list[FileModel] | None = None,
            *, wait: bool = True) -> ClientRecord:
        if name is None:
            self._names += 1
            name = f"run/ckpt-{self._names}"
        files = files if files is not None else self.checkpoint()
        client = self.cluster.put(via or self.pick(), name, files, is_dir=len(files) > 1)
        self.report.operations += 1
        record = self.cluster.clients[client]
        if wait:
            self.wait(record)
        return record

    def get(self, spec: str, via: str | None = None, *, wait: bool = True) -> ClientRecord:
        client = self.cluster.get(via or self.pick(), spec)
        self.report.operations += 1
        record = self.cluster.clients[client]
        if wait:
            self.wait(record)
        return record

    def expect_get(self, spec: str, why: str, via: str | None = None) -> ClientRecord:
        record = self.get(spec, via)
        if record.done and not record.ok:
            self.violation(f"{why}: get {spec} via {record.node[:4]} failed: {record.final}")
        return record

    def wait(self, *records: ClientRecord, max_time: float = OP_BOUND) -> bool:
        finished = self.cluster.loop.run(lambda: all(r.done for r in records), max_time=self.cluster.loop.now + max_time)
        if not finished:
            self.violation(f"operation hung: {[f'{r.kind} {r.name}' for r in records if not r.done]} "
                           f"not answered within {max_time:.0f}s")
        return finished

    def settle(self, max_time: float = 60.0) -> bool:
        """Wait until memberships agree (a user waits for `peerstore status` after a restart)."""
        return self.cluster.run_until(self.cluster.converged, max_time=max_time, step=0.25)

    # -- faults and time -----------------------------------------------------------------

    def later(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` after ``delay`` virtual seconds (a scheduled fault)."""
        self.scheduled += 1

        def fire() -> None:
            self.scheduled -= 1
            action(*args)

        self.cluster.loop.after(delay, fire)

    def drain(self, max_time: float = 300.0) -> None:
        """Let every scheduled fault happen before the final checks lift them."""
        self.cluster.run_until(lambda: self.scheduled == 0, max_time=max_time, step=1.0)

    def run_for(self, seconds: float) -> None:
        self.cluster.run_for(seconds)

    def violation(self, message: str) -> None:
        self.report.violation(message)

    def expect(self, ok: bool, message: str, *, min_nodes: int = 2) -> bool:
        """A scenario's own expectation; below ``min_nodes`` nodes it is only a note
        (a cluster that small has no room to work around the fault)."""
        if not ok:
            (self.violation if len(self.ids) >= min_nodes else self.note)(message)
        return ok

    def note(self, message: str) -> None:
        self.report.note(message)


@dataclass(frozen=True)
class Scenario:
    name: str
    func: Callable[[Run], None]
    nodes: int
    doc: str
    options: dict[str, Any]

    def __call__(self, seed: int, **kw: Any) -> Result:
        return run(self.name, seed, **kw)


SCENARIOS: dict[str, Scenario] = {}


def scenario(nodes: int = 5, **cluster_options: Any) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    """Register a scenario under its function name with dashes (``frozen_node`` ->
    ``frozen-node``); ``cluster_options`` go to ``Cluster``."""

    def register(func: Callable[[Run], None]) -> Callable[[Run], None]:
        name = func.__name__.replace("_", "-")
        doc = " ".join((func.__doc__ or "").strip().split("\n\n")[0].split())
        SCENARIOS[name] = Scenario(name, func, nodes, doc, cluster_options)
        return func

    return register


def run(name: str, seed: int, *, nodes: int | None = None, core_class: type[NodeCore] = NodeCore,
        incarnation: Callable[[int], int] = boot_incarnation, final: bool = True, mdns: bool = True,
        scale: float = 1.0) -> Result:
    """Run scenario ``name`` with ``seed``; the Result lists every invariant violation.
    ``mdns=False`` models static ``seeds:`` only (no multicast discovery); ``scale``
    multiplies checkpoint sizes (and the big scenarios' run lengths)."""
    spec = SCENARIOS[name]
    count = nodes if nodes is not None else spec.nodes
    if count < MIN_NODES:
        raise ValueError(f"scenario {name} needs at least {MIN_NODES} nodes, got {count}")
    if not 0 < scale <= 100:
        raise ValueError(f"scale must be in (0, 100], got {scale}")
    result = Result(name, seed, count, mdns=mdns, scale=scale)
    started = time.monotonic()
    options = {**spec.options, "core_class": core_class, "incarnation": incarnation, "mdns": mdns}
    the_run: Run | None = None
    try:
        the_run = Run(name, seed, count, options, scale)
        spec.func(the_run)
        the_run.drain()
        if final:
            final_checks(the_run.cluster, the_run.rng, the_run.report)
    except Exception as err:  # a crash of the simulator or of the core is a finding too
        where = traceback.extract_tb(err.__traceback__)[-1]
        result.violations.append(f"exception {type(err).__name__}: {err} (at {where.filename}:{where.lineno})")
    if the_run is not None:
        cluster = the_run.cluster
        result.violations[:0] = cluster.violations + the_run.report.violations
        result.notes = the_run.report.notes
        result.operations = the_run.report.operations
        result.faults = len(cluster.faults)
        result.fault_log = [f"{t:9.3f}s {what}" for t, what in cluster.faults]
        result.digest = cluster.loop.digest
        result.virtual_time = cluster.loop.now
    result.wall_time = time.monotonic() - started
    return result


# -- the scenarios ------------------------------------------------------------------------


@scenario()
def roundtrip(r: Run) -> None:
    """Healthy cluster: put, then get through another node."""
    put = r.put()
    r.expect(put.ok, f"healthy put failed: {put.final}")


@scenario()
def one_node_dead(r: Run) -> None:
    """A node crashes after a put; a get through a survivor returns the checkpoint."""
    put = r.put()
    if put.ok:
        dead = r.pick()
        r.cluster.crash(dead, power_off=r.rng.random() < 0.5)
        r.expect_get(put.name, "one node dead", via=r.pick(exclude={dead}))


@scenario()
def double_failure_get(r: Run) -> None:
    """Both holders of one data shard die, so a stripe must be rebuilt from parity."""
    put = r.put()
    if not put.ok:
        return
    manifest = r.cluster.manifest_of(put)
    stripe, hint = r.rng.choice([(s, h) for (_, _, s), h in zip(manifest.iter_stripes(), manifest.placement)])
    shard = r.rng.randrange(stripe.k)
    dead = set(placement.StripePlacement.from_hint(hint, stripe.k, stripe.p).data[shard])
    for node in sorted(dead):
        r.cluster.crash(node, power_off=r.rng.random() < 0.5)
    if put.final.tolerance < 2:
        r.note(f"tolerance {put.final.tolerance} does not cover two dead nodes (at {len(r.ids)} nodes)")
        return
    record = r.expect_get(put.name, f"two holders of a shard dead (tolerance {put.final.tolerance})",
                          via=r.pick(exclude=dead))
    if record.ok and record.final.degraded_stripes == 0:
        r.violation("expected at least one stripe rebuilt from parity")


@scenario()
def frozen_node(r: Run) -> None:
    """A node freezes (accepts connections, never answers): a get costs a bounded wait."""
    put = r.put()
    if not put.ok:
        return
    frozen = r.pick()
    r.cluster.freeze(frozen)
    start = r.cluster.loop.now
    r.expect_get(put.name, "one node frozen", via=r.pick(exclude={frozen}))
    bound = 3 * r.cluster.settings.request_timeout
    if r.cluster.loop.now - start > bound:
        r.violation(f"get with a frozen node took {r.cluster.loop.now - start:.1f}s > {bound}s")


@scenario()
def bitrot(r: Run) -> None:
    """Bits flip in stored pieces (two data shards of a stripe, one copy each)."""
    put = r.put()
    if not put.ok:
        return
    manifest = r.cluster.manifest_of(put)
    _, _, stripe = r.rng.choice(list(manifest.iter_stripes()))
    for pid in r.rng.sample(sorted(set(stripe.data_ids)), min(2, len(set(stripe.data_ids)))):
        r.cluster.corrupt(r.rng.choice(r.cluster.holders(pid)), pid)
    record = r.expect_get(put.name, "corrupt pieces")
    if record.ok and record.final.fallbacks == 0 and record.final.degraded_stripes == 0:
        r.note("the corrupt copies were not on the first-choice path")


@scenario()
def put_while_node_down(r: Run) -> None:
    """A node is dead (not yet detected) when a put starts: it is placed around."""
    dead = r.pick()
    r.cluster.crash(dead)
    put = r.put(via=r.pick(exclude={dead}))
    live = len(r.ids) - 1
    policy = r.cluster.settings.policy
    best = placement.best_tolerance(live, policy.stripe_width, policy.parity) if live >= 2 else -1
    if best < policy.min_tolerance:
        r.expect(not put.ok, f"put with {live} live node(s) should fail, got {put.final}")
        return
    if not r.expect(put.ok, f"put with {live} of {len(r.ids)} nodes up failed: {put.final}"):
        return
    r.expect(put.final.tolerance == best, f"{live} live nodes should give tolerance {best}, got {put.final.tolerance}")
    if any(dead in hint for hint in r.cluster.manifest_of(put).placement):
        r.violation("a piece was placed on the dead node")
    r.cluster.restart(dead)
    r.settle()
    r.expect_get(put.name, "get via the restarted node", via=dead)


@scenario()
def crash_during_put(r: Run) -> None:
    """A target node crashes at a random moment of a put, sometimes between a write and
    its fsync (a torn write). The put commits with the policy met, or fails cleanly."""
    coordinator = r.pick()
    victim = r.pick(exclude={coordinator})
    put = r.put(via=coordinator, wait=False)
    if r.rng.random() < 0.3:
        r.cluster.crash_mid_write(victim)
    else:
        r.later(r.rng.uniform(0, 0.02), r.cluster.crash, victim)
    r.wait(put)
    r.run_for(0.05)
    if put.ok:
        r.expect_get(put.name, "after a target crashed mid-put", via=coordinator)
        r.cluster.restart(victim)
        r.settle()
        r.expect_get(put.name, "via the restarted victim", via=victim)


@scenario()
def relay_fails_mid_forward(r: Run) -> None:
    """A node passing a put's pieces on to their second holders (forwarded replication)
    crashes, or is cut off from one holder, while forwards are in flight. The put commits
    with every copy acknowledged by its own holder (the ledger checks the disks), or fails
    cleanly."""
    coordinator = r.pick()
    put = r.put(via=coordinator, files=r.checkpoint(max_shards=28), wait=False)
    forwarding = lambda: [n for n in r.cluster.running_ids()  # noqa: E731
                          if n != coordinator and r.cluster.nodes[n].core.forwarder.held > 0]
    if not r.cluster.run_until(lambda: bool(forwarding()) or put.done, max_time=30.0, step=0.002):
        r.violation("no node forwarded within 30 s")
        return
    relays = forwarding()
    if not relays:
        r.note("the put ended before any forward")
        return
    relay = r.rng.choice(relays)
    mode = r.rng.choice(["crash", "crash_mid_write", "cut_off"])
    if mode == "crash":
        r.cluster.crash(relay, power_off=r.rng.random() < 0.5)
    elif mode == "crash_mid_write":
        r.cluster.crash_mid_write(relay)
    else:  # the relay still talks to the coordinator, not to the other nodes
        r.cluster.partition([relay, coordinator], [n for n in r.ids if n not in (relay, coordinator)])
        r.later(5.0, r.cluster.heal)
    r.wait(put)
    r.run_for(0.05)
    if put.ok:
        r.expect_get(put.name, f"after the relay's {mode}", via=coordinator)
    if mode != "cut_off":
        r.cluster.restart(relay)
        r.settle()
        if put.ok:
            r.expect_get(put.name, "via the restarted relay", via=relay)


@scenario()
def coordinator_dies_mid_put(r: Run) -> None:
    """The coordinator crashes at a random moment: no node may show a checkpoint that
    cannot be restored (checked at the end), and a committed one is not lost."""
    coordinator = r.pick()
    put = r.put(via=coordinator, wait=False)
    power_off = r.rng.random() < 0.5
    r.later(r.rng.uniform(0, 0.03), lambda: r.cluster.crash(coordinator, power_off=power_off))
    r.wait(put)
    r.run_for(30.0)
    if put.ok:
        r.note("the put committed before the coordinator crashed")
        visible = [n for n in r.cluster.running_ids() if r.cluster.nodes[n].core.catalog.latest(put.name)]
        if not visible:
            r.violation("a committed put is not visible on any surviving node")


@scenario()
def concurrent_same_name(r: Run) -> None:
    """Two coordinators put the same name at once: two versions, one deterministic latest."""
    a, b = r.rng.sample(r.ids, 2)
    p1 = r.put(via=a, name="run/same", files=r.checkpoint(files=1), wait=False)
    p2 = r.put(via=b, name="run/same", files=r.checkpoint(files=1), wait=False)
    r.wait(p1, p2)
    if not r.expect(p1.ok and p2.ok, f"concurrent puts failed: {p1.final} / {p2.final}"):
        return
    r.run_for(1.0)
    latest = {r.cluster.nodes[n].core.catalog.latest("run/same") for n in r.ids}
    if len({e.version for e in latest if e}) != 1:
        r.violation(f"nodes disagree on the latest version: {latest}")
    live = r.cluster.nodes[a].core.catalog.live_versions("run/same")
    if len(live) != 2:
        r.violation(f"expected two versions, found {[str(e.version) for e in live]}")


@scenario()
def shared_pieces(r: Run) -> None:
    """Concurrent puts of checkpoints with identical (all-zero-like) shards, then a crash."""
    shard = r.cluster.settings.policy.shard_size
    size = r.rng.randint(shard * 4, shard * 12)
    a, b = r.rng.sample(r.ids, 2)
    p1 = r.put(via=a, name="zeros/a", files=[FileModel.repeating("model.safetensors", size, shard)], wait=False)
    p2 = r.put(via=b, name="zeros/b", files=[FileModel.repeating("model.safetensors", size + shard, shard)],
               wait=False)
    r.wait(p1, p2)
    for put in (p1, p2):
        r.expect(put.ok, f"put of shared pieces failed: {put.final}")
    if p1.ok and p2.ok:
        dead = r.pick()
        r.cluster.crash(dead)
        r.expect_get("zeros/a", "shared pieces, one node dead", via=r.pick(exclude={dead}))
        r.expect_get("zeros/b", "shared pieces, one node dead", via=r.pick(exclude={dead}))


@scenario()
def cancel_before_commit(r: Run) -> None:
    """The client goes away during the transfer: the put aborts and nothing is visible."""
    coordinator = r.pick()
    shard = r.cluster.settings.policy.shard_size
    put = r.put(via=coordinator, files=[FileModel.generate("model.safetensors", shard * 40, shard, seed=r.rng.random())],
                wait=False)
    client = next(c for c, rec in r.cluster.clients.items() if rec is put)
    r.later(r.rng.uniform(0.0005, 0.01), r.cluster.cancel, client)
    r.wait(put)
    r.run_for(5.0)
    if put.ok:
        r.note("the put committed before the cancel arrived")
    elif r.cluster.nodes[coordinator].core.buffer_bytes != 0:
        r.violation("an aborted put left stripe buffers accounted")


@scenario()
def rejoin_mid_transfer(r: Run) -> None:
    """A node vanishes in the middle of a put (its network drops, or its process dies
    and comes back at a new address) and rejoins while the transfer is still going;
    then the same during a get."""
    shard = r.cluster.settings.policy.shard_size
    big = [FileModel.generate("model.safetensors", shard * r.rng.randint(30, 60), shard, seed=r.rng.random())]
    coordinator = r.pick()
    victim = r.pick(exclude={coordinator})
    put = r.put(via=coordinator, files=big, wait=False)
    _vanish_and_return(r, victim, at=r.rng.uniform(0.001, 0.03), away=r.rng.uniform(0.2, 12.0))
    r.wait(put)
    r.run_for(15.0)
    r.settle()
    if not put.ok:
        return
    get = r.get(put.name, via=r.pick(exclude={victim}), wait=False)
    _vanish_and_return(r, r.pick(exclude={get.node}), at=r.rng.uniform(0.0, 0.02), away=r.rng.uniform(0.2, 12.0))
    r.wait(get)
    r.expect(get.ok, f"get with one node vanishing and returning failed: {get.final}", min_nodes=3)


def _vanish_and_return(r: Run, node_id: str, *, at: float, away: float) -> None:
    if r.rng.random() < 0.5:
        r.later(at, r.cluster.isolate, node_id)
        r.later(at + away, r.cluster.heal)
    else:
        r.later(at, r.cluster.crash, node_id)
        r.later(at + away, lambda: r.cluster.restart(node_id, new_address=True))


@scenario()
def partition_during_put(r: Run) -> None:
    """The network splits (random halves, one node cut off, or one direction only) while
    a put runs, and heals later."""
    coordinator = r.pick()
    put = r.put(via=coordinator, wait=False)
    kind = r.rng.choice(["halves", "isolate", "asymmetric"])
    at, heal = r.rng.uniform(0.0, 0.02), r.rng.uniform(1.0, 40.0)
    if kind == "halves":
        shuffled = r.rng.sample(r.ids, len(r.ids))
        cut = r.rng.randint(1, len(shuffled) - 1)
        r.later(at, r.cluster.partition, shuffled[:cut], shuffled[cut:])
    elif kind == "isolate":
        r.later(at, r.cluster.isolate, r.pick())
    else:
        a, b = r.rng.sample(r.ids, 2)
        r.later(at, r.cluster.block, a, b)
    r.later(at + heal, r.cluster.heal)
    r.wait(put)
    r.run_for(max(0.0, at + heal - (r.cluster.loop.now)) + 1.0)
    if put.ok:
        r.settle()
        r.expect_get(put.name, f"after a {kind} partition healed")


@scenario()
def address_change(r: Run) -> None:
    """Running nodes get new addresses (DHCP renewals) during a put and a get: their old
    connections go silent, they re-announce, and the cluster follows."""
    put = r.put(files=r.checkpoint(max_shards=40), wait=False)
    for _ in range(r.rng.randint(1, 3)):
        r.later(r.rng.uniform(0.0, 0.03), r.cluster.readdress, r.pick())
    r.wait(put)
    if not put.ok:
        # Allowed (a commit request whose connection reset is not retried), as long as it
        # says so and a put once the addresses settled works.
        r.note(f"put while nodes changed address failed: {put.final}")
        r.drain()
        r.settle()
        put = r.put()
        if not r.expect(put.ok, f"put after the address changes failed: {put.final}", min_nodes=4):
            return
    get = r.get(put.name, wait=False)
    r.later(r.rng.uniform(0.0, 0.02), r.cluster.readdress, r.pick())
    r.wait(get)
    if not get.ok:
        r.note(f"get while a node changed address failed: {get.final}")
        r.drain()
        r.settle()
        r.expect_get(put.name, "retry after the address change")


@scenario()
def slow_sd_card(r: Run) -> None:
    """Raspberry Pis: some nodes on 100 Mbit with ~20 MB/s SD cards and slow fsyncs.
    Transfers back-pressure; buffers stay bounded; put and get complete."""
    slow = r.rng.sample(r.ids, r.rng.randint(1, len(r.ids)))
    for node_id in slow:
        r.cluster.slow_disk(node_id, SD_CARD)
        r.cluster.slow_nic(node_id, NIC_100MBIT)
    shard = r.cluster.settings.policy.shard_size
    files = [FileModel.generate("model.safetensors", shard * r.rng.randint(40, 120), shard, seed=r.rng.random())]
    put = r.put(files=files)
    if not r.expect(put.ok, f"put over slow disks failed: {put.final}"):
        return
    r.expect_get(put.name, "slow disks", via=r.rng.choice(slow))


@scenario()
def disk_full(r: Run) -> None:
    """One or two nodes' disks fill up before or during a put: their slots move to nodes
    with room (or the put fails saying why); nothing partial becomes visible."""
    full = r.rng.sample(r.ids, r.rng.randint(1, 2))
    for node_id in full:
        r.later(r.rng.choice([0.0, r.rng.uniform(0.0, 0.01)]), r.cluster.fill_disk, node_id,
                r.rng.choice([0, r.cluster.settings.policy.shard_size * r.rng.randint(1, 6)]))
    put = r.put(via=r.pick(), wait=True)
    if put.ok:
        r.expect_get(put.name, "after disks filled")
    elif "full" not in str(put.final) and "tolerance" not in str(put.final):
        r.note(f"put failed with disks full: {put.final}")


@scenario()
def flapping_node(r: Run) -> None:
    """A node crashes and restarts again and again (sometimes at a new address) while
    puts and gets run: memberships still converge; incarnations only grow."""
    flapper = r.pick()
    t = 0.0
    for _ in range(r.rng.randint(3, 6)):
        t += r.rng.uniform(0.5, 8.0)
        r.later(t, r.cluster.crash, flapper)
        t += r.rng.uniform(0.2, 6.0)
        r.later(t, lambda: r.cluster.restart(flapper, new_address=r.rng.random() < 0.3))
    puts = []
    while r.cluster.loop.now < t:
        puts.append(r.put(via=r.pick(exclude={flapper})))
        r.run_for(r.rng.uniform(0.5, 4.0))
    r.run_for(max(0.0, t - r.cluster.loop.now) + 1.0)
    r.settle()
    for put in puts[-2:]:
        if put.ok:
            r.expect_get(put.name, "after the flapping stopped")


@scenario()
def stream_breaks(r: Run) -> None:
    """Connections reset in the middle of transfers: outstanding requests fail over,
    later messages reconnect."""
    shard = r.cluster.settings.policy.shard_size
    files = [FileModel.generate("model.safetensors", shard * r.rng.randint(20, 50), shard, seed=r.rng.random())]
    put = r.put(files=files, wait=False)
    for _ in range(r.rng.randint(2, 8)):
        r.later(r.rng.uniform(0.0, 0.05), r.cluster.break_streams, r.pick())
    r.wait(put)
    if not put.ok:
        r.note(f"put with connection resets failed: {put.final}")
        return
    get = r.get(put.name, wait=False)
    for _ in range(r.rng.randint(2, 8)):
        r.later(r.rng.uniform(0.0, 0.05), r.cluster.break_streams, r.pick())
    r.wait(get)
    if not get.ok:
        # Allowed (the get gives up on a peer whose connection reset), as long as it
        # says so and a retry once the resets stop works.
        r.note(f"get with connection resets failed: {get.final}")
        r.drain()
        r.expect_get(put.name, "retry after connection resets")


@scenario()
def stalled_node(r: Run) -> None:
    """Event-loop stalls: nodes stop processing for seconds, then catch up, during a put
    and a get."""
    put = r.put(wait=False)
    for _ in range(r.rng.randint(1, 4)):
        r.later(r.rng.uniform(0.0, 0.05), r.cluster.stall, r.pick(), r.rng.uniform(0.5, 6.0))
    r.wait(put)
    if put.ok:
        get = r.get(put.name, wait=False)
        r.later(r.rng.uniform(0.0, 0.01), r.cluster.stall, r.pick(), r.rng.uniform(0.5, 6.0))
        r.wait(get)
        r.expect(get.ok, f"get with a stalled node failed: {get.final}", min_nodes=3)


@scenario()
def lossy_network(r: Run) -> None:
    """Gossip datagrams lost, duplicated and reordered; links clogged: membership holds,
    put and get work."""
    r.cluster.degrade_links(jitter=0.002, loss=r.rng.uniform(0.02, 0.2), duplicate=r.rng.uniform(0, 0.05),
                            reorder=r.rng.uniform(0, 0.2))
    a, b = r.rng.sample(r.ids, 2)
    r.cluster.clog(a, b, r.rng.uniform(0.01, 0.3), r.rng.uniform(0.05, 1.0))
    put = r.put()
    if put.ok:
        r.run_for(r.rng.uniform(0, 30))
        r.expect_get(put.name, "lossy network")


@scenario()
def frozen_coordinator(r: Run) -> None:
    """The coordinator freezes in the middle of a put (or a get) long enough to be
    declared dead, then thaws and carries on from a stale view of the world."""
    coordinator = r.pick()
    put = r.put(via=coordinator, files=r.checkpoint(max_shards=40), wait=False)
    r.later(r.rng.uniform(0.0, 0.02), r.cluster.stall, coordinator, r.rng.uniform(0.5, 30.0))
    r.wait(put)
    if put.ok:
        get = r.get(put.name, via=coordinator, wait=False)
        r.later(r.rng.uniform(0.0, 0.01), r.cluster.stall, coordinator, r.rng.uniform(0.5, 30.0))
        r.wait(get)
        if not get.ok:
            r.note(f"get through a node that froze failed: {get.final}")


@scenario()
def rm_while_node_away(r: Run) -> None:
    """A checkpoint is removed while a node that holds it is down; when the node returns
    it must learn the removal, not resurrect the checkpoint."""
    put = r.put()
    if not put.ok:
        return
    away = r.pick()
    r.cluster.crash(away, power_off=r.rng.random() < 0.5)
    r.run_for(r.rng.uniform(0.0, 20.0))
    [rm] = r.cluster.wait(r.cluster.command(r.pick(exclude={away}), lambda c: ev.RemoveCommand(c, put.name), "rm"))
    r.report.operations += 1
    if not isinstance(rm.final, ev.Removed):
        r.violation(f"rm {put.name} failed: {rm.final}")
        return
    r.run_for(r.rng.uniform(0.0, 20.0))
    r.cluster.restart(away, new_address=r.rng.random() < 0.3)
    r.settle()
    r.run_for(r.rng.uniform(1.0, 40.0))
    for node_id in r.cluster.running_ids():
        if r.cluster.nodes[node_id].core.catalog.latest(put.name) is not None:
            r.violation(f"{put.name} was removed but is live again on {node_id[:4]}")


@scenario(settings=CoreSettings(policy=Policy(shard_size=64 * 1024), memory_budget=1024 * 1024,
                                max_inflight_bytes_per_peer=256 * 1024))
def many_puts_small_memory(r: Run) -> None:
    """Many concurrent puts and gets through one node with a small memory budget (1 MiB,
    256 KiB in flight per peer): buffers stay within bounds and everything completes."""
    via = r.pick()
    records = [r.put(via=via, wait=False) for _ in range(r.rng.randint(3, 8))]
    r.wait(*records)
    for put in records:
        r.expect(put.ok, f"put {put.name} failed: {put.final}")
    gets = [r.get(p.name, via=via, wait=False) for p in records if p.ok]
    r.wait(*gets)
    for get in gets:
        r.expect(get.ok, f"get {get.name} failed: {get.final}")


@scenario(nodes=6)
def random(r: Run) -> None:
    """A random schedule of puts, gets and faults drawn from the seed (in the spirit of
    FoundationDB's and TigerBeetle's simulators); then every invariant is checked."""
    cluster, rng = r.cluster, r.rng
    duration = rng.uniform(30.0, 120.0)
    for _ in range(rng.randint(6, 24)):
        r.later(rng.uniform(0.0, duration), _random_fault, r)
    ops: list[ClientRecord] = []
    training = TrainingRun(rng, r.checkpoint)  # repeated content: dedup paths run in every run
    end = cluster.loop.now + duration
    while cluster.loop.now < end:
        done = [p for p in ops if p.kind == "put" and p.ok]
        if done and rng.random() < 0.4:
            ops.append(r.get(rng.choice(done).name, via=r.pick(), wait=False))
        else:
            name = rng.choice(done).name if done and rng.random() < 0.15 else None  # a new version
            ops.append(r.put(via=r.pick(), name=name, files=training.next(), wait=False))
        cluster.run_for(rng.uniform(0.05, 10.0))
    cluster.run_until(lambda: all(o.done for o in ops), max_time=HANG_BOUND, step=1.0)


def _random_fault(r: Run) -> None:
    cluster, rng = r.cluster, r.rng
    running = cluster.running_ids()
    down = [i for i in cluster.ids if i not in running]
    kind = rng.choice(["crash", "crash", "restart", "isolate", "partition", "block", "heal", "stall",
                       "freeze", "breaks", "clog", "corrupt", "disk", "torn", "loss", "readdress",
                       "streams", "fsync", "rot-manifest", "rot-file"])
    if kind in ("crash", "torn") and len(running) > 2:
        target = rng.choice(running)
        if kind == "torn":
            cluster.crash_mid_write(target)
        else:
            cluster.crash(target, power_off=rng.random() < 0.4)
        r.later(rng.uniform(1.0, 40.0), lambda: cluster.restart(target, new_address=rng.random() < 0.3))
    elif kind == "restart" and down:
        cluster.restart(rng.choice(down), new_address=rng.random() < 0.3)
    elif kind == "isolate" and running:
        cluster.isolate(rng.choice(running))
        r.later(rng.uniform(0.5, 30.0), cluster.heal)
    elif kind == "partition":
        shuffled = rng.sample(cluster.ids, len(cluster.ids))
        cut = rng.randint(1, len(shuffled) - 1)
        cluster.partition(shuffled[:cut], shuffled[cut:])
        r.later(rng.uniform(0.5, 30.0), cluster.heal)
    elif kind == "block":
        a, b = rng.sample(cluster.ids, 2)
        cluster.block(a, b)
        r.later(rng.uniform(0.5, 30.0), cluster.heal)
    elif kind == "heal":
        cluster.heal()
    elif kind == "stall" and running:
        cluster.stall(rng.choice(running), rng.uniform(0.2, 5.0))
    elif kind == "freeze" and running:
        target = rng.choice(running)
        cluster.freeze(target)
        r.later(rng.uniform(1.0, 30.0), cluster.thaw, target)
    elif kind == "breaks" and running:
        cluster.break_streams(rng.choice(running))
    elif kind == "clog":
        a, b = rng.sample(cluster.ids, 2)
        cluster.clog(a, b, rng.uniform(0.005, 0.5), rng.uniform(0.01, 1.0))
        r.later(rng.uniform(1.0, 30.0), cluster.unclog)
    elif kind == "corrupt":
        _corrupt_one_safely(r)
    elif kind == "disk" and running:
        target = rng.choice(running)
        if rng.random() < 0.5:
            cluster.slow_disk(target, SD_CARD)
        else:
            cluster.fill_disk(target, rng.choice([0, cluster.settings.policy.shard_size * 3]))
            r.later(rng.uniform(1.0, 30.0), cluster.free_disk, target)
    elif kind == "readdress" and running:
        cluster.readdress(rng.choice(running))
    elif kind == "loss":
        cluster.set_loss(rng.choice([0.01, 0.05, 0.2]))
        r.later(rng.uniform(1.0, 30.0), cluster.set_loss, 0.0)
    elif kind == "streams":
        cluster.stream_faults(loss=rng.choice([0.0005, 0.002, 0.01]), straggle=rng.uniform(0.0, 1.0),
                              redeliver=rng.uniform(0.0, 0.5))
        r.later(rng.uniform(1.0, 30.0), cluster.stream_faults)
    elif kind == "fsync" and running:
        target = rng.choice(running)
        cluster.fail_fsync(target, rng.choice([0.2, 1.0]))
        r.later(rng.uniform(1.0, 30.0), cluster.fail_fsync, target, 0.0)
    elif kind == "rot-manifest":
        _rot_one_manifest_safely(r)
    elif kind == "rot-file":
        # A rotten catalog file costs a node its catalog (peers refill it); a rotten
        # counters file keeps it down for good, so at most one node gets that.
        target = rng.choice(cluster.ids)
        refused = [i for i in cluster.ids if cluster.boot_refusal(i) is not None]
        name = "counters" if not refused and rng.random() < 0.3 else "catalog"
        cluster.corrupt_file(target, name, unreadable=rng.random() < 0.5)


def _corrupt_one_safely(r: Run) -> None:
    """Flip bits in one copy of a committed piece, at most one corruption per stripe,
    so parity always covers it."""
    cluster = r.cluster
    done = [c for c in cluster.clients.values() if c.kind == "put" and c.ok]
    if not done:
        return
    manifest = cluster.find_manifest(r.rng.choice(done).final.manifest_id)
    if manifest is None:
        return
    _, _, stripe = r.rng.choice(list(manifest.iter_stripes()))
    if any(pid in stripe.piece_ids for _, pid in cluster.corrupted):
        return
    pid = r.rng.choice(stripe.piece_ids)
    holders = [i for i in cluster.holders(pid) if cluster.nodes[i].disk.genuine(pid)]
    if holders:
        cluster.corrupt(r.rng.choice(holders), pid)




# -- stream and disk faults, bigger runs ----------------------------------------------------


@scenario()
def stream_faults(r: Run) -> None:
    """The data path's TCP misbehaves: lost segments make messages late by retransmission
    timeouts; connections reset with messages straggling in after the break (late
    replies, requests served after their sender gave up, order lost across connections);
    messages delivered twice on a new connection. Puts and gets still complete."""
    cluster = r.cluster
    cluster.stream_faults(loss=r.rng.choice([0.0005, 0.002, 0.01]), straggle=r.rng.uniform(0.3, 1.0),
                          redeliver=r.rng.uniform(0.2, 1.0))
    shard = cluster.settings.policy.shard_size
    files = [FileModel.generate("model.safetensors", shard * r.rng.randint(20, 60), shard, seed=r.rng.random())]
    puts = [r.put(files=files, wait=False), r.put(wait=False)]
    for _ in range(r.rng.randint(2, 8)):
        r.later(r.rng.uniform(0.0, 0.1), cluster.break_streams, r.pick())
    r.wait(*puts)
    r.drain()
    done = [p for p in puts if p.ok]
    for put in puts:
        if not put.ok:
            r.note(f"put with stream faults failed: {put.final}")
    if not done:
        done = [r.put()]  # the faults go on: only the resets have stopped
        if not r.expect(done[0].ok, f"put after the connection resets failed: {done[0].final}"):
            return
    gets = [r.get(p.name, wait=False) for p in done]
    for _ in range(r.rng.randint(2, 8)):
        r.later(r.rng.uniform(0.0, 0.05), cluster.break_streams, r.pick())
    r.wait(*gets)
    r.drain()
    for get in gets:
        if not get.ok:
            r.note(f"get with stream faults failed: {get.final}")
            r.expect_get(get.name, "retry after the connection resets")


@scenario()
def reply_after_restart(r: Run) -> None:
    """A coordinator crashes and comes back at once while a peer (stalled, on a slow SD
    card) still holds its requests: the peer answers them late, to the new process, whose
    request ids start over; then the peer loses power. A late reply must never count as
    the answer to a new request: a put must not commit on a piece the peer never stored."""
    cluster = r.cluster
    coordinator = r.pick()
    slow = r.pick(exclude={coordinator})
    cluster.slow_disk(slow, SD_CARD)
    first = r.put(via=coordinator, files=r.checkpoint(max_shards=30), wait=False)
    at, stalled = r.rng.uniform(0.002, 0.03), r.rng.uniform(1.0, 4.0)
    r.later(at, cluster.stall, slow, stalled)
    r.later(at + r.rng.uniform(0.001, 0.02), cluster.crash, coordinator)
    r.later(at + r.rng.uniform(0.05, 0.6), cluster.restart, coordinator)
    r.later(at + stalled + r.rng.uniform(0.0, 0.3), lambda: cluster.crash(slow, power_off=True))
    r.wait(first)
    node = cluster.nodes[coordinator]
    cluster.run_until(lambda: node.running and node.core is not None and len(node.core.alive) == len(r.ids),
                      max_time=5.0, step=0.01)
    again = r.put(via=coordinator, files=r.checkpoint(max_shards=30))
    r.drain()
    if again.ok:
        r.expect_get(again.name, "put right after the coordinator restarted, one node off since")
    else:
        r.note(f"put right after a restart failed: {again.final}")


@scenario()
def disk_faults(r: Run) -> None:
    """Disks misbehave beyond bit rot in pieces: fsyncs fail with EIO (nothing becomes
    durable; the put places around the node or fails saying why); manifest files rot on
    some holders; a node's catalog file rots (it boots empty and catches up from its
    peers); a node's counters file rots (it refuses to start, as the daemon does). Every
    checkpoint is still served within tolerance."""
    cluster = r.cluster
    sick = r.rng.sample(r.ids, r.rng.randint(1, 2))
    for node_id in sick:
        cluster.fail_fsync(node_id, r.rng.choice([0.3, 1.0]))
    put = r.put()
    if put.ok:
        r.expect_get(put.name, "after fsyncs failed")
    else:
        r.expect(any(w in str(put.final) for w in ("fsync", "tolerance", "reached only")),
                 f"put with failing fsyncs failed without saying why: {put.final}")
    for node_id in sick:
        cluster.fail_fsync(node_id, 0.0)
    healthy = r.put()
    if not r.expect(healthy.ok, f"put once the disks work again failed: {healthy.final}"):
        return
    puts = [p for p in (put, healthy) if p.ok]
    # Rot in manifest files on some holders: two intact copies stay, as one node goes down below.
    mid = healthy.final.manifest_id
    holders = [i for i in r.ids if mid in cluster.nodes[i].disk.manifests]
    if len(holders) >= 3:
        rotten = r.rng.sample(holders, r.rng.randint(1, len(holders) - 2))
        for node_id in rotten:
            cluster.corrupt_manifest(node_id, mid)
        r.expect_get(healthy.name, "manifest rotten on the node serving the get", via=r.rng.choice(rotten))
    # Rot in the catalog file: found on boot; the node starts empty and catches up.
    victim = r.pick()
    cluster.crash(victim, power_off=r.rng.random() < 0.5)
    cluster.corrupt_file(victim, "catalog", unreadable=r.rng.random() < 0.5)
    cluster.restart(victim)
    core = cluster.nodes[victim].core
    if r.expect(cluster.nodes[victim].running, "a node with a rotten catalog file did not start"):
        caught_up = cluster.run_until(lambda: all(core.catalog.latest(p.name) for p in puts), max_time=60.0)
        r.expect(caught_up, "a node that booted with an empty catalog did not catch up from its peers")
    # Rot in the counters file: the node must not start (a version id could repeat).
    owners = [i for i in cluster.running_ids() if cluster.nodes[i].disk.counters]
    if owners:
        stuck = r.rng.choice(owners)
        cluster.crash(stuck)
        cluster.corrupt_file(stuck, "counters", unreadable=r.rng.random() < 0.5)
        cluster.restart(stuck)
        r.expect(not cluster.nodes[stuck].running, "a node with a rotten counters file started")
        r.settle()
        for done in puts:
            r.expect_get(done.name, "one node refuses to start (rotten counters file)", via=r.pick())
        later = r.put()
        r.expect(later.ok, f"put with one node that refuses to start failed: {later.final}", min_nodes=4)


@scenario(nodes=20)
def big_random(r: Run) -> None:
    """The random schedule at size: 20 nodes (``--nodes``), checkpoints of hundreds of
    stripes (``--scale`` multiplies them and the run's length), and faults that overlap
    (a crash during a partition during a stall, ...)."""
    cluster, rng = r.cluster, r.rng
    duration = rng.uniform(45.0, 90.0) * r.scale
    for _ in range(round(rng.randint(12, 30) * r.scale)):
        r.later(rng.uniform(0.0, duration), _random_fault, r)
    shard, stripe = cluster.settings.policy.shard_size, cluster.settings.policy.stripe_width
    stripes = round(rng.randint(100, 250) * r.scale)
    big = FileModel.generate("model.safetensors", shard * stripe * stripes, shard, seed=rng.random())
    ops: list[ClientRecord] = [r.put(files=[big], wait=False)]
    end = cluster.loop.now + duration
    while cluster.loop.now < end:
        done = [p for p in ops if p.kind == "put" and p.ok]
        if done and rng.random() < 0.4:
            ops.append(r.get(rng.choice(done).name, via=r.pick(), wait=False))
        else:
            ops.append(r.put(via=r.pick(), files=r.checkpoint(max_shards=stripe * rng.choice([4, 25, 100])),
                             wait=False))
        cluster.run_for(rng.uniform(1.0, 15.0))
    cluster.run_until(lambda: all(o.done for o in ops), max_time=HANG_BOUND, step=1.0)


# -- issue 10: version reuse, re-put over rot, disk loss -------------------------------------

SLOW_FSYNC = DiskModel(fsync=2.0, fsync_jitter=0.0)  # this node's writes become durable late


def _durably_lists(cluster: Cluster, node_id: str, name: str) -> bool:
    """Does the node's catalog file on disk list a version of ``name``?"""
    catalog, _ = restore_catalog(cluster.nodes[node_id].disk.catalog)
    return any(e.name == name for e in catalog.entries)


@scenario()
def version_reuse_after_crash(r: Run) -> None:
    """Coordinator X crashes after two peers made its put's catalog entry durable, before
    X did; X restarts while those peers are partitioned away and stores the same name
    again; the partition heals. A version id must name one checkpoint for all time, and
    `get NAME@V` must return what was committed as V (issue 10, section 1)."""
    cluster, name = r.cluster, "run/reused"
    if len(r.ids) < 4:
        r.note("needs 4 nodes: the coordinator, two peers to partition away and one to commit with")
        return
    x, a, b, *rest = r.rng.sample(r.ids, len(r.ids))
    cluster.partition([x, a, b], rest)  # the others must not learn of the first put
    if not cluster.run_until(lambda: cluster.nodes[x].core.alive == {x, a, b}, max_time=90.0, step=0.5):
        r.violation(f"{x[:4]} did not see the partition within 90s: {cluster.views()}")
        return
    cluster.slow_disk(x, SLOW_FSYNC)
    first = r.put(via=x, name=name, files=r.checkpoint(files=1), wait=False)
    cluster.run_until(lambda: first.done or (_durably_lists(cluster, a, name) and _durably_lists(cluster, b, name)),
                      max_time=OP_BOUND, step=0.01)
    if first.done or _durably_lists(cluster, x, name):
        r.note(f"schedule missed: the first put {first.final} or its coordinator's catalog write was durable")
        return
    cluster.crash(x, power_off=True, why="before its own catalog write was durable")
    cluster.slow_disk(x, SSD)
    cluster.heal()
    cluster.partition([a, b], [x, *rest])
    cluster.restart(x)
    if not cluster.run_until(lambda: cluster.nodes[x].core.alive == {x, *rest}, max_time=90.0, step=0.5):
        r.violation(f"restarted {x[:4]} did not see its side of the partition within 90s: {cluster.views()}")
        return
    second = r.put(via=x, name=name, files=r.checkpoint(files=1))
    if not r.expect(second.ok, f"put through the restarted coordinator failed: {second.final}"):
        return
    cluster.heal()
    r.settle()
    r.run_for(60.0)  # anti-entropy brings the catalogs together
    r.expect_get(f"{name}@{second.final.version}", "the version the second put committed")
    r.expect_get(name, "the newest version after the partition healed")


def _most_harmful_rot(r: Run, manifest: Manifest, where: Callable[[str], bool] = lambda node: True
                      ) -> tuple[str, bytes]:
    """The (node, piece) whose rot lowers the checkpoint's true tolerance most, among the
    nodes ``where`` accepts."""
    nodes = list(r.cluster.nodes.values())
    options = sorted({(n.node_id, pid) for _, _, stripe in manifest.iter_stripes() for pid in stripe.piece_ids
                      for n in nodes if n.disk.genuine(pid) and where(n.node_id)})

    def left(option: tuple[str, bytes]) -> int:
        return r.cluster.ledger.tolerance(
            manifest, nodes, lambda n, pid: n.disk.genuine(pid) and (n.node_id, pid) != option)

    worst = min(left(o) for o in options)
    return r.rng.choice([o for o in options if left(o) == worst])


def _worst_loss(r: Run, manifest: Manifest, count: int) -> list[str]:
    """``count`` running nodes whose loss leaves the checkpoint unreadable from genuine
    pieces, if any such set exists (a tolerance above the truth); else any ``count``."""
    running = r.cluster.running_ids()
    for combo in itertools.combinations(running, count):
        if not readable(r.cluster, manifest, [n for n in running if n not in combo])[0]:
            return list(combo)
    return r.rng.sample(running, count)


@scenario()
def reput_over_rot(r: Run) -> None:
    """One replica of a piece rots; the same bytes are put again under a new name (frozen
    layers, unchanged since the last step), through the node with the rotten copy or
    through another. The new put may not count the rotten copy: its reported tolerance
    must be the truth, and losing that many nodes (the worst ones) must leave it
    restorable (issue 10, section 2)."""
    cluster = r.cluster
    files = r.checkpoint(files=r.rng.randint(1, 2), max_shards=12)
    # Both puts go through one node, so the second places every piece where the first
    # did (a coordinator takes its own role in each stripe) and meets the rotten copy.
    via = r.pick()
    first = r.put(via=via, name="run/step-1", files=files)
    if not r.expect(first.ok, f"first put failed: {first.final}"):
        return
    local = r.rng.random() < 0.5  # the rotten copy is on the coordinator itself
    rotten, pid = _most_harmful_rot(r, cluster.manifest_of(first), lambda n: (n == via) == local)
    cluster.corrupt(rotten, pid)
    r.note(f"rotten copy on {'the coordinator' if local else 'a remote target'} {rotten[:4]}")
    second = r.put(via=via, name="run/step-2", files=files)
    if not r.expect(second.ok, f"put of the same bytes again failed: {second.final}"):
        return
    [status] = cluster.wait(cluster.command(via, lambda c: ev.StatusCommand(c), "status"))
    r.report.operations += 1
    if not isinstance(status.final, ev.Status):
        r.violation(f"status via {via[:4]} failed: {status.final}")
    tolerance = second.final.tolerance
    dead = _worst_loss(r, cluster.manifest_of(second), tolerance)
    for node_id in dead:
        cluster.crash(node_id, power_off=r.rng.random() < 0.5)
    r.expect_get("run/step-2", f"{tolerance} nodes lost, the reported tolerance", via=r.pick(exclude=set(dead)))


@scenario(nodes=6)
def disk_loss(r: Run) -> None:
    """Disks die for good, one after another (no repair in between): a node comes back
    empty with its old id, or as a new node (a fresh id, maybe at its old address),
    sometimes while a put runs. Committed checkpoints stay restorable while the losses
    stay within their reported tolerance; new puts use the replacement."""
    cluster = r.cluster
    training = TrainingRun(r.rng, r.checkpoint)
    puts = [r.put(files=training.next()) for _ in range(r.rng.randint(2, 4))]
    committed = [p for p in puts if p.ok]
    if not r.expect(bool(committed), f"no put committed on a healthy cluster: {[p.final for p in puts]}"):
        return
    budget = min(p.final.tolerance for p in committed)
    for _ in range(r.rng.randint(1, max(1, budget))):
        victim = r.pick()
        new_id = r.rng.random() < 0.5
        during = r.put(files=training.next(), wait=False) if r.rng.random() < 0.3 else None
        if during is not None:
            r.run_for(r.rng.uniform(0.0, 0.03))
        back = cluster.lose_disk(victim, new_id=new_id, new_address=r.rng.random() < 0.3)
        r.run_for(r.rng.uniform(0.5, 20.0))
        (cluster.join if new_id else cluster.restart)(back)
        r.settle()
        if during is not None:
            r.wait(during)
            puts.append(during)
        puts.append(r.put(via=back, name=r.rng.choice(puts).name, files=training.next()))  # a new version
    via = r.pick()
    [status] = cluster.wait(cluster.command(via, lambda c: ev.StatusCommand(c), "status"))  # checked by the ledger
    r.report.operations += 1
    r.expect(isinstance(status.final, ev.Status), f"status via {via[:4]} failed: {status.final}")
    for put in puts:
        if not put.ok:
            continue
        commit = next(c for c in cluster.ledger.commits if c.client == put.client)
        failed = cluster.ledger.failed(commit.holders, commit.started)
        if len(failed) <= commit.tolerance:
            r.expect_get(f"{commit.name}@{commit.version}",
                         f"{len(failed)} of its holders lost their disks, tolerance {commit.tolerance}")


def _rot_one_manifest_safely(r: Run) -> None:
    """Rot one copy of a committed put's manifest, only while tolerance + 1 intact copies
    remain (rot plus failures must stay within what the put promised)."""
    cluster = r.cluster
    done = [c for c in cluster.clients.values() if c.kind == "put" and c.ok]
    if not done:
        return
    final = r.rng.choice(done).final
    holders = [i for i in cluster.ids if final.manifest_id in cluster.nodes[i].disk.manifests]
    if len(holders) - 1 >= final.tolerance + 1:
        cluster.corrupt_manifest(r.rng.choice(holders), final.manifest_id)
