"""Self-healing scenarios (issue 12, repair after node loss): registered with the others
in ``sim.scenarios.SCENARIOS`` when this module is imported (``sim.chaos`` does).

Every one attaches a ``RepairWatch`` (``sim/repair_watch.py``), so besides the common
invariants each checks that no committed checkpoint stays below the best tolerance the
running nodes allow for longer than the grace period plus repair time, and each checks
what its fault must not cause (a storm of re-created pieces, lost data).
"""

from __future__ import annotations

import itertools

from peerstore.core.settings import CoreSettings
from peerstore.model import placement
from peerstore.model.policy import MiB, Policy
from sim.content import TrainingRun
from sim.repair_watch import RepairWatch
from sim.scenarios import Run, scenario

GRACE = 120.0  # the scenarios' repair.grace_seconds (virtual): long against failure detection
SHARD = 1 * MiB  # big enough to measure rates, small enough that stripes are many
RATE = CoreSettings.repair_max_bytes_per_second
NOTE_PREFIX = "repair:"  # notes sim/repair_figures.py reads back


def repair_settings(grace: float = GRACE, rate: float = RATE, shard: int = SHARD) -> CoreSettings:
    return CoreSettings(policy=Policy(shard_size=shard), repair_grace_seconds=grace,
                        repair_max_bytes_per_second=rate)


def _watch(r: Run) -> RepairWatch:
    settings = r.cluster.settings
    return RepairWatch(r.cluster, settings.repair_grace_seconds, settings.repair_max_bytes_per_second).start()


def _store(r: Run, count: int) -> list:
    training = TrainingRun(r.rng, r.checkpoint)
    puts = [r.put(files=training.next()) for _ in range(count)]
    committed = [p for p in puts if p.ok]
    r.expect(len(committed) == len(puts), f"puts failed on a healthy cluster: {[p.final for p in puts]}")
    return committed


def _stored_on(r: Run, node_ids: set[str] | frozenset[str]) -> int:
    """Genuine piece bytes on the disks of ``node_ids``."""
    return sum(c.size for i in node_ids for pid, c in r.cluster.nodes[i].disk.durable.items() if c.true_id == pid)


def _hardest_loss(r: Run, count: int) -> list[str]:
    """The ``count`` running nodes whose loss leaves the committed checkpoints least tolerance."""
    cluster = r.cluster
    running = cluster.running_ids()
    manifests = [m for c in cluster.ledger.commits if (m := cluster.ledger.manifest(c.manifest_id)) is not None]

    def left(combo: tuple[str, ...]) -> int:
        rest = [n for n in running if n not in combo]
        return min((cluster.durable_tolerance(m, rest) for m in manifests), default=0)

    combos = list(itertools.combinations(running, count))
    worst = min(left(c) for c in combos)
    return list(r.rng.choice([c for c in combos if left(c) == worst]))


def _kill_within_tolerance_and_get(r: Run, committed: list, why: str) -> None:
    """Kill as many running nodes as the survivors' best tolerance allows (the hardest set),
    then every committed checkpoint must come back exact."""
    cluster = r.cluster
    best = placement.best_tolerance(len(cluster.running_ids()), cluster.settings.policy.stripe_width,
                                    cluster.settings.policy.parity)
    victims = _hardest_loss(r, best)
    for victim in victims:
        cluster.crash(victim, power_off=r.rng.random() < 0.5)
    via = r.pick()
    for put in committed:
        commit = next(c for c in cluster.ledger.commits if c.client == put.client)
        r.expect_get(f"{commit.name}@{commit.version}", f"{why}, then {len(victims)} more nodes died", via=via)


@scenario(nodes=5, settings=repair_settings())
def node_loss_repair(r: Run) -> None:
    """A node dies for good (disk gone, never back). Nothing is re-created during the grace
    period; after it every checkpoint returns to the best tolerance the survivors allow
    (2 at 4 nodes), while a put may land meanwhile and must not wait. Then the hardest set
    of that many more nodes dies: every get is byte-identical."""
    cluster = r.cluster
    watch = _watch(r)
    committed = _store(r, r.rng.randint(2, 5))
    if not committed:
        return
    victim = r.pick()
    lost = _stored_on(r, {victim})
    died = cluster.loop.now
    cluster.lose_disk(victim, new_id=True)  # the machine never comes back
    r.run_for(GRACE * 0.9)
    r.expect(watch.total_repair_bytes == 0,
             f"repair stored {watch.total_repair_bytes} bytes before the grace period ended")
    during = None
    if r.rng.random() < 0.5:
        r.run_for(GRACE * 0.1 + r.rng.uniform(0, 10))
        during = r.put(wait=False)
    took = watch.wait_restored(max_time=watch.bound())
    r.expect(took is not None, f"tolerance not back at the best within {watch.bound():.0f}s of the grace "
                               f"period's end: {watch.below_best()}")
    if during is not None:
        r.wait(during)
        r.expect(during.ok, f"a put during repair failed: {during.final}")
        if during.ok:
            committed.append(during)
    repaired = watch.total_repair_bytes
    r.note(f"{NOTE_PREFIX} stored={sum(p.final.size for p in committed)} lost={lost} repaired={repaired} "
           f"restored_after={cluster.loop.now - died:.1f} grace={GRACE:g} "
           f"repair_seconds={(watch.last_repair or 0) - (watch.first_repair or 0):.1f}")
    r.expect(repaired <= 3 * lost + 4 * SHARD,
             f"repair stored {repaired} bytes to replace {lost} lost: more than needed")
    _kill_within_tolerance_and_get(r, committed, "repaired after one node was lost for good")


@scenario(nodes=5, settings=repair_settings())
def repair_interrupted(r: Run) -> None:
    """A node is lost for good; while its pieces are being re-created a second node is lost
    too (often the one repairing). Repair re-plans from what exists: every checkpoint gets
    back to the best tolerance for three nodes, the first repair's work is kept (bytes
    re-created stay within a small multiple of what was lost), and then one more node may
    die without loss."""
    cluster = r.cluster
    watch = _watch(r)
    committed = _store(r, r.rng.randint(2, 4))
    if not committed:
        return
    first = r.pick()
    lost = _stored_on(r, {first})
    cluster.lose_disk(first, new_id=True)
    if watch.below_best():
        started = cluster.run_until(lambda: watch.total_repair_bytes > 0, max_time=watch.bound(), step=0.05)
        r.expect(started, "repair never started after the grace period")
    else:  # it held only copies four nodes can spare (a coordinator's parity chunks, say)
        r.note("the first node lost held nothing the smaller cluster needs: no repair")
    r.run_for(r.rng.uniform(0.0, 1.0))
    repairing = [i for i in cluster.running_ids()
                 if cluster.nodes[i].core is not None and cluster.nodes[i].core.repair.tasks]
    second = r.rng.choice(repairing) if repairing and r.rng.random() < 0.6 else r.pick()
    lost += _stored_on(r, {second})
    cluster.lose_disk(second, new_id=True)
    took = watch.wait_restored(max_time=watch.bound() + GRACE)
    r.expect(took is not None, f"tolerance not back at the best after the second loss: {watch.below_best()}")
    repaired = watch.total_repair_bytes
    r.note(f"{NOTE_PREFIX} interrupted lost={lost} repaired={repaired}")
    r.expect(repaired <= 3 * lost + 8 * SHARD,
             f"repair stored {repaired} bytes to replace {lost} lost: work was thrown away and redone")
    _kill_within_tolerance_and_get(r, committed, "two nodes lost, the second mid-repair")


@scenario(nodes=5, settings=repair_settings())
def flapping_around_grace(r: Run) -> None:
    """One node dies and comes back again and again, each time away for somewhat less or
    somewhat more than the grace period. Absences well inside the grace re-create
    nothing; each longer one re-creates at most a small multiple of what the node holds
    (no storm); nothing is lost."""
    cluster = r.cluster
    watch = _watch(r)
    committed = _store(r, r.rng.randint(2, 4))
    if not committed:
        return
    node = r.pick()
    held = _stored_on(r, {node})
    long_absences = 0
    for _ in range(r.rng.randint(3, 6)):
        away = GRACE * r.rng.uniform(0.4, 1.4)
        before = watch.total_repair_bytes
        cluster.crash(node, power_off=r.rng.random() < 0.5)
        r.run_for(away)
        cluster.restart(node, new_address=r.rng.random() < 0.2)
        r.settle()
        r.run_for(r.rng.uniform(5, 40))
        if away < GRACE - 30:
            r.expect(watch.total_repair_bytes == before,
                     f"an absence of {away:.0f}s (grace {GRACE:g}s) re-created {watch.total_repair_bytes - before} bytes")
        else:
            long_absences += 1
    repaired = watch.total_repair_bytes
    r.note(f"{NOTE_PREFIX} flapping held={held} long_absences={long_absences} repaired={repaired}")
    r.expect(repaired <= long_absences * (3 * held + 4 * SHARD),
             f"{long_absences} absences past the grace re-created {repaired} bytes for a node holding {held}: "
             "a repair storm")
    via = r.pick()
    for put in committed:
        r.expect_get(put.name, "a node flapped around the grace period", via=via)


@scenario(nodes=5, settings=repair_settings())
def partition_no_repair_storm(r: Run) -> None:
    """The network splits for several grace periods (one or two nodes cut off), or every
    node reboots within the grace period. A minority side never re-creates anything (it
    sees no majority of the last stable membership); a mass reboot re-creates nothing;
    after the partition heals nothing more is re-created and every checkpoint is exact."""
    cluster = r.cluster
    watch = _watch(r)
    committed = _store(r, r.rng.randint(2, 4))
    if not committed:
        return
    ids = list(cluster.running_ids())
    if r.rng.random() < 0.3:
        for node in r.rng.sample(ids, len(ids)):  # a mass reboot (a power cut), staggered
            cluster.crash(node, power_off=True)
            r.run_for(r.rng.uniform(0, GRACE / 10))
        for node in r.rng.sample(ids, len(ids)):
            cluster.restart(node)
            r.run_for(r.rng.uniform(0, GRACE / 5))
        r.settle(max_time=120)
        r.run_for(GRACE * 2)
        r.expect(watch.total_repair_bytes == 0,
                 f"a mass reboot within the grace period re-created {watch.total_repair_bytes} bytes")
    else:
        # Mostly the biggest minority: a lone node could not re-create anything anyway.
        size = (len(ids) - 1) // 2 if r.rng.random() < 0.75 else 1
        minority = set(r.rng.sample(ids, max(1, size)))
        majority = set(ids) - minority
        held = _stored_on(r, minority)
        cluster.partition(sorted(minority), sorted(majority))
        r.run_for(GRACE * r.rng.uniform(2.0, 4.0))
        r.expect(watch.repair_bytes_of(minority) == 0,
                 f"the minority side {sorted(n[:4] for n in minority)} re-created "
                 f"{watch.repair_bytes_of(minority)} bytes")
        before = watch.total_repair_bytes
        r.expect(before <= 3 * held + 4 * SHARD,
                 f"the majority re-created {before} bytes to cover {held} on the cut-off side")
        cluster.heal()
        r.settle(max_time=120)
        r.run_for(GRACE * 1.5)
        r.expect(watch.total_repair_bytes - before <= 4 * SHARD,
                 f"{watch.total_repair_bytes - before} bytes re-created after the partition healed")
        r.note(f"{NOTE_PREFIX} partition minority={len(minority)} held={held} repaired={before}")
    via = r.pick()
    for put in committed:
        r.expect_get(put.name, "after a partition or a mass reboot", via=via)


# -- rebalance ---------------------------------------------------------------------------

def _referenced_bytes(r: Run, node_ids) -> dict[str, int]:
    """Genuine bytes of committed, not removed checkpoints' pieces on each of ``node_ids``."""
    cluster = r.cluster
    refs: set[bytes] = set()
    for c in cluster.ledger.commits:
        if not cluster.ledger.is_removed(c.name, c.version) and (m := cluster.ledger.manifest(c.manifest_id)):
            refs |= m.piece_ids()
    return {i: sum(c.size for pid, c in cluster.nodes[i].disk.durable.items()
                   if pid in refs and c.true_id == pid) for i in node_ids}


class _DipWatch:
    """Samples, every ``period`` virtual seconds, each commit's exact tolerance over the
    running nodes' disks and keeps the lowest seen: data on the move must never dip."""

    def __init__(self, r: Run, period: float = 0.5):
        self.r, self.period = r, period
        self.lowest: dict[bytes, int] = {}
        self.active = True
        r.cluster.loop.after(period, self._sample)

    def _sample(self) -> None:
        if not self.active:
            return
        cluster = self.r.cluster
        running = [cluster.nodes[i] for i in cluster.running_ids()]
        for c in cluster.ledger.commits:
            if (m := cluster.ledger.manifest(c.manifest_id)) is not None:
                t = cluster.ledger.tolerance(m, running, lambda n, pid: n.disk.genuine(pid))
                self.lowest[c.manifest_id] = min(self.lowest.get(c.manifest_id, t), t)
        cluster.loop.after(self.period, self._sample)


def _rebalance_idle(r: Run) -> bool:
    nodes = [r.cluster.nodes[i] for i in r.cluster.running_ids()]
    return all(n.core is not None and not n.core.repair.moves and not n.core.repair.moving
               and not n.core.repair.queue and not n.core.repair.tasks
               and not n.core.repair.rebalance_plan.drops and not n.core.repair.rebalance_plan.moves
               and n.core.repair.last_scan is not None for n in nodes)


def _stat(r: Run, name: str) -> int:
    return sum(n.core.stats.get(name, 0) for n in r.cluster.nodes.values() if n.running and n.core is not None)


def _wait_balanced(r: Run, max_time: float) -> bool:
    """Run until every node's last plan had nothing to move or drop, for two scan intervals
    (drops of copies a recent put leased wait for the lease: a plan keeps them until then)."""
    quiet_since = None
    end = r.cluster.loop.now + max_time
    while r.cluster.loop.now < end:
        r.run_for(5.0)
        if _rebalance_idle(r):
            quiet_since = r.cluster.loop.now if quiet_since is None else quiet_since
            if r.cluster.loop.now - quiet_since >= 130:
                return True
        else:
            quiet_since = None
    return False


@scenario(nodes=4, settings=repair_settings())
def join_rebalance(r: Run) -> None:
    """A new, empty machine joins a four-node cluster (and sometimes a sixth after it). It
    gets about its fair share of the stored bytes and nothing more moves than that; no
    checkpoint's tolerance ever dips while data moves; every copy a node gives up was
    copied and verified elsewhere first. At six nodes repair raises every checkpoint to
    the best tolerance there (3) and rebalance drops what the raise left surplus. Then
    the hardest set of nodes the tolerance allows dies: every get is byte-identical."""
    cluster = r.cluster
    committed = _store(r, r.rng.randint(3, 6))
    if not committed:
        return
    watch = _watch(r)
    dips = _DipWatch(r)
    before = {c.manifest_id: c.tolerance for c in cluster.ledger.commits}
    old = list(cluster.running_ids())
    held = _referenced_bytes(r, old)
    total = sum(held.values())
    joins = 2 if r.rng.random() < 0.4 else 1
    for _ in range(joins):
        new = cluster.add_node()
        cluster.join(new)
        r.settle()
        balanced = _wait_balanced(r, max_time=1500)
        r.expect(balanced, "rebalance never went quiet after a node joined")
        running = cluster.running_ids()
        now_held = _referenced_bytes(r, running)
        share = sum(now_held.values()) / len(running)
        r.expect(abs(now_held[new] - share) <= max(3 * SHARD, 0.15 * share),
                 f"the new node holds {now_held[new]} bytes, its fair share is {share:.0f}: {now_held}")
    moved = _stat(r, "rebalance_bytes_copied")
    final = _referenced_bytes(r, cluster.running_ids())
    r.note(f"{NOTE_PREFIX} rebalance joins={joins} stored={total} moved={moved} "
           f"new_share={sum(final[n] for n in final if n not in held)} after={sum(final.values())}")
    if joins == 1:
        r.expect(moved <= total / 5 + 4 * SHARD, f"rebalance copied {moved} bytes to give a fifth node "
                                                 f"its share of {total}: more than needed")
        r.expect(sum(final.values()) <= total + 4 * SHARD,
                 f"copies on the disks grew from {total} to {sum(final.values())} bytes: surplus left behind")
    dips.active = False
    for mid, lowest in dips.lowest.items():
        r.expect(lowest >= min(before.get(mid, lowest), 2),
                 f"a checkpoint's tolerance dipped to {lowest} (was {before.get(mid)}) while data moved")
    r.expect(not watch.below_best(), f"below the best tolerance after rebalancing: {watch.below_best()}")
    _kill_within_tolerance_and_get(r, committed, f"{joins} node(s) joined and data moved")


@scenario(nodes=5, settings=repair_settings())
def return_surplus(r: Run) -> None:
    """A node is away past the grace period, its pieces are re-created on the others, and
    then it comes back with its disk intact. The copies that are now surplus are dropped
    (never below the policy: the surplus-drop invariant checks every drop) until the
    disks hold about what they held before the failure; nothing is lost."""
    cluster = r.cluster
    watch = _watch(r)
    committed = _store(r, r.rng.randint(2, 5))
    if not committed:
        return
    stored = sum(_referenced_bytes(r, cluster.running_ids()).values())
    node = r.pick()
    cluster.crash(node, power_off=r.rng.random() < 0.5)
    took = watch.wait_restored(max_time=watch.bound())
    r.expect(took is not None, f"tolerance not back at the best after a node left: {watch.below_best()}")
    grown = sum(_referenced_bytes(r, cluster.running_ids()).values()) + _referenced_bytes(r, [node])[node]
    cluster.restart(node)
    r.settle()
    r.expect(_wait_balanced(r, max_time=1500), "rebalance never went quiet after the node came back")
    after = sum(_referenced_bytes(r, cluster.running_ids()).values())
    r.note(f"{NOTE_PREFIX} surplus stored={stored} with_surplus={grown} after={after} "
           f"dropped={_stat(r, 'rebalance_pieces_dropped')}")
    r.expect(after <= stored + 6 * SHARD, f"the disks hold {after} bytes after the surplus was dropped; "
                                          f"{stored} before the failure, {grown} with the surplus")
    r.expect(not watch.below_best(), f"below the best tolerance after dropping surplus: {watch.below_best()}")
    via = r.pick()
    for put in committed:
        r.expect_get(put.name, "a node came back after its pieces were re-created", via=via)
