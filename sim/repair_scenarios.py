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
    started = cluster.run_until(lambda: watch.total_repair_bytes > 0, max_time=watch.bound(), step=0.05)
    r.expect(started, "repair never started after the grace period")
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
