"""How fast the simulator runs: ``python -m sim.speed``.

- a 5-node put and get of a 2.5 GB checkpoint in 4 MiB shards over simulated 1 GbE
  (target: at least 100x faster than real time);
- 1,000 gossiping nodes (started warm) for 60 virtual seconds (target: well under a
  minute of wall time).

``--profile`` prints where the wall time goes (cProfile, top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from peerstore.core.settings import CoreSettings
from peerstore.model.policy import MiB, Policy
from sim.cluster import Cluster
from sim.content import FileModel


def big_checkpoint(size: int = 2_500_000_000, nodes: int = 5) -> str:
    shard = 4 * MiB
    cluster = Cluster(nodes, seed=1, settings=CoreSettings(policy=Policy(shard_size=shard)))
    files = [FileModel.generate("model.safetensors", size, shard, seed=1)]
    v0, w0, c0 = cluster.loop.now, time.perf_counter(), time.process_time()
    [put] = cluster.wait(cluster.put(cluster.ids[0], "bench/big", files))
    v1, w1 = cluster.loop.now, time.perf_counter()
    [get] = cluster.wait(cluster.get(cluster.ids[3], "bench/big"))
    v2, w2, c2 = cluster.loop.now, time.perf_counter(), time.process_time()
    ok = put.ok and get.ok and not cluster.violations
    return (f"{size / 1e9:.1f} GB put+get on {nodes} nodes, 1 GbE, 4 MiB shards: put {v1 - v0:.1f}s virtual in "
            f"{w1 - w0:.2f}s, get {v2 - v1:.1f}s virtual in {w2 - w1:.2f}s; {(v2 - v0) / (w2 - w0):.0f}x real "
            f"time by the wall clock, {(v2 - v0) / (c2 - c0):.0f}x by CPU time"
            f"{'' if ok else '  (FAILED: ' + str(cluster.violations) + ')'}")


def many_nodes(nodes: int = 1000, seconds: float = 60.0) -> str:
    w0 = time.perf_counter()
    cluster = Cluster(nodes, seed=1, cores=False, form="warm", wire_roundtrip=False)
    w1, c1 = time.perf_counter(), time.process_time()
    cluster.run_for(seconds)
    w2, c2 = time.perf_counter(), time.process_time()
    return (f"{nodes} gossiping nodes, {seconds:.0f}s virtual: {w2 - w1:.1f}s wall, {c2 - c1:.1f}s CPU "
            f"(+{w1 - w0:.1f}s warm start), "
            f"{cluster.loop.events_run:,} events, converged={cluster.converged()}, "
            f"{cluster.gossip_bytes() / nodes / seconds:.0f} gossip bytes/s per node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["big", "nodes"], help="run one of the two")
    parser.add_argument("--nodes", type=int, default=1000, help="gossiping nodes (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="virtual seconds of gossip (default 60)")
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = parser.parse_args(argv)
    jobs = [("big", big_checkpoint, ()), ("nodes", many_nodes, (args.nodes, args.seconds))]
    for name, func, params in jobs:
        if args.only and args.only != name:
            continue
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        line = func(*params)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
