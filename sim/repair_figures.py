"""Figures for docs/self-healing.md: how long a 5-node cluster takes to get back to full
policy after losing one node for good, by data size and pacing.

    python -m sim.repair_figures                      # 1, 2 and 4 GB, 5 seeds each
    python -m sim.repair_figures --gb 2 --seeds 20 --rate 0   # unlimited pacing
    python -m sim.repair_figures --scenario --seeds 20        # node-loss-repair's own figures

Each run stores ``--gb`` of checkpoints (512 MiB files, 4 MiB shards as by default) on five
simulated nodes (1 GbE, SSDs), loses one node's disk for good, and measures from the
moment of the loss: when the first piece was re-created (the grace period plus failure
detection), when every checkpoint was back at the best tolerance four nodes allow, the
bytes re-created, and the repair rate (bytes re-created / time from first to last piece).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

from peerstore.core.settings import CoreSettings
from peerstore.model.policy import MiB, Policy
from sim.cluster import Cluster
from sim.content import FileModel
from sim.repair_watch import RepairWatch

GiB = 1024 * MiB
FILE = 512 * MiB
GRACE = 600.0  # the default


@dataclass
class Figure:
    seed: int
    stored: int  # checkpoint bytes
    lost: int  # piece bytes on the lost node
    repaired: int  # piece bytes repair stored
    first: float  # seconds from the loss to the first re-created piece
    restored: float  # seconds from the loss to full policy
    repair_seconds: float

    @property
    def rate(self) -> float:
        return self.repaired / self.repair_seconds if self.repair_seconds > 0 else float("nan")


def measure(gb: float, seed: int, rate: float, grace: float = GRACE) -> Figure:
    settings = CoreSettings(policy=Policy(), repair_grace_seconds=grace, repair_max_bytes_per_second=rate)
    cluster = Cluster(5, seed, settings=settings)
    total, index = int(gb * GiB), 0
    while index * FILE < total:
        size = min(FILE, total - index * FILE)
        files = [FileModel.generate("model.safetensors", size, settings.policy.shard_size, seed=(seed, index))]
        [put] = cluster.wait(cluster.put(cluster.ids[index % 5], f"run/step-{index}", files), max_time=3600)
        if not put.ok:
            raise RuntimeError(f"put failed: {put.final}")
        index += 1
    watch = RepairWatch(cluster, grace, rate, period=0.5).start()
    victim = cluster.ids[seed % 5]
    lost = sum(c.size for c in cluster.nodes[victim].disk.durable.values())
    died = cluster.loop.now
    cluster.lose_disk(victim, new_id=True)
    limit = grace + 120 + 10 * total / max(rate or 64 * MiB, 1)
    if not cluster.run_until(lambda: watch.first_repair is not None, max_time=limit, step=0.25):
        raise RuntimeError(f"repair never started (seed {seed})")
    took = watch.wait_restored(max_time=limit)
    if took is None:
        raise RuntimeError(f"not restored within {limit:.0f}s (seed {seed}): {watch.below_best()}")
    if cluster.violations:
        raise RuntimeError(f"invariant violated (seed {seed}): {cluster.violations[0]}")
    repaired = watch.total_repair_bytes
    assert watch.first_repair is not None and watch.last_repair is not None
    return Figure(seed, total, lost, repaired, watch.first_repair - died, cluster.loop.now - died,
                  max(watch.last_repair - watch.first_repair, 0.5))


def scenario_figures(seeds: range) -> list[dict[str, float]]:
    """The figures the node-loss-repair scenario notes (its checkpoints are small: 1 MiB
    shards, a few to a few dozen MiB each), one dict per seed."""
    from sim import repair_scenarios
    from sim.scenarios import run

    out = []
    for seed in seeds:
        result = run("node-loss-repair", seed)
        if not result.ok:
            raise RuntimeError(f"{result.reproduce}: {result.violations[0]}")
        for note in result.notes:
            if note.startswith(repair_scenarios.NOTE_PREFIX):
                fields = dict(part.split("=", 1) for part in note.split()[1:])
                out.append({k: float(v) for k, v in fields.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.repair_figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="data stored (GiB)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=CoreSettings.repair_max_bytes_per_second,
                        help="repair.max_bytes_per_second per node (0: unlimited)")
    parser.add_argument("--grace", type=float, default=GRACE)
    parser.add_argument("--scenario", action="store_true",
                        help="tabulate the node-loss-repair scenario's notes instead (its own sizes and grace)")
    args = parser.parse_args(argv)
    if args.scenario:
        rows = scenario_figures(range(args.first_seed, args.first_seed + args.seeds))
        print(f"node-loss-repair, {len(rows)} seeds (grace {rows[0]['grace']:g}s): median / max")
        for key, label in (("stored", "checkpoint MiB stored"), ("lost", "piece MiB on the lost node"),
                           ("repaired", "piece MiB re-created"), ("restored_after", "s from loss to full policy")):
            values = [r[key] / (MiB if key != "restored_after" else 1) for r in rows]
            print(f"  {label:30s} {statistics.median(values):8.1f} / {max(values):8.1f}")
        ratio = [r["repaired"] / r["lost"] for r in rows if r["lost"]]
        print(f"  {'re-created / lost':30s} {statistics.median(ratio):8.2f} / {max(ratio):8.2f}")
        return 0
    print(f"5 nodes, 1 lost for good; grace {args.grace:g}s, pacing "
          f"{'unlimited' if args.rate <= 0 else f'{args.rate / MiB:g} MiB/s per node'}")
    print(f"{'stored':>8} {'seeds':>5} {'lost MiB':>9} {'re-created MiB':>15} {'first piece s':>14} "
          f"{'full policy s':>14} {'after grace s':>14} {'repair MiB/s':>13}")
    for gb in args.gb:
        figures = [measure(gb, seed, args.rate, args.grace)
                   for seed in range(args.first_seed, args.first_seed + args.seeds)]

        def med(values: list[float]) -> float:
            return statistics.median(values)

        print(f"{gb:>6g}GB {len(figures):>5} {med([f.lost / MiB for f in figures]):>9.0f} "
              f"{med([f.repaired / MiB for f in figures]):>15.0f} {med([f.first for f in figures]):>14.1f} "
              f"{med([f.restored for f in figures]):>14.1f} {med([f.restored - args.grace for f in figures]):>14.1f} "
              f"{med([f.rate / MiB for f in figures]):>13.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
