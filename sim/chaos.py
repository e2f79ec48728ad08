"""Run failure scenarios against the real sans-IO machines: ``python -m sim.chaos``.

    python -m sim.chaos --list
    python -m sim.chaos --scenario crash-during-put --seed 7 --nodes 5
    python -m sim.chaos --seeds 500                       # every scenario, seeds 0..499
    python -m sim.chaos --scenario random --seeds 200 --first-seed 1000
    python -m sim.chaos --check-determinism --seeds 20    # each run twice, same trace?
    python -m sim.chaos --scenario big-random --seed 3 --nodes 20 --scale 4   # bigger runs

One run prints a short summary (operations, faults, invariant results, virtual and wall
time); any failure prints the exact command that reproduces it. Exit status 1 if any
run failed (or, with --check-determinism, if any two runs of one seed differed).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Iterable

from sim.scenarios import MIN_NODES, SCENARIOS, Result, run
from sim import repair_scenarios  # noqa: F401 - registers the self-healing scenarios
from sim import scrub_scenarios  # noqa: F401 - registers scrub-finds-rot
from sim import gc_scenarios  # noqa: F401 - registers the garbage-collection scenarios


def summary(result: Result, *, verbose: bool = False) -> str:
    speed = result.virtual_time / result.wall_time if result.wall_time > 0 else float("inf")
    scale = f", scale {result.scale:g}" if result.scale != 1.0 else ""
    lines = [
        f"scenario     {result.name}  (seed {result.seed}, {result.nodes} nodes{scale})",
        f"operations   {result.operations}",
        f"faults       {result.faults}",
    ]
    shown = result.fault_log if verbose else result.fault_log[:8]
    lines += [f"               {line}" for line in shown]
    if len(shown) < len(result.fault_log):
        lines.append(f"               ... {len(result.fault_log) - len(shown)} more (--verbose)")
    if result.ok:
        lines.append("invariants   all held")
    else:
        lines.append(f"invariants   {len(result.violations)} VIOLATED")
        lines += [f"               {v}" for v in result.violations]
    for note in result.notes:
        lines.append(f"note         {note}")
    lines.append(f"time         {result.virtual_time:.1f}s virtual, {result.wall_time:.2f}s wall ({speed:,.0f}x)")
    lines.append(f"trace        {result.digest[:32]}")
    if not result.ok:
        lines.append(f"reproduce:   {result.reproduce}")
    return "\n".join(lines)


def sweep(names: Iterable[str], seeds: range, nodes: int | None, out=None, mdns: bool = True,
          scale: float = 1.0) -> int:
    out = out or sys.stdout
    failures = 0
    for name in names:
        started, bad, noted, virtual = time.monotonic(), 0, 0, 0.0
        for seed in seeds:
            result = run(name, seed, nodes=nodes, mdns=mdns, scale=scale)
            virtual += result.virtual_time
            noted += bool(result.notes)
            if not result.ok:
                bad += 1
                print(f"FAIL {name} seed={seed}: {result.violations[0]}", file=out)
                print(f"     reproduce: {result.reproduce}", file=out)
        failures += bad
        print(f"{name:26s} {len(seeds):5d} seeds  {bad:3d} failed  {noted:4d} with notes  {virtual:9.0f}s virtual  "
              f"{time.monotonic() - started:7.1f}s wall", file=out, flush=True)
    return failures


def check_determinism(names: Iterable[str], seeds: range, nodes: int | None, out=None, mdns: bool = True,
                      scale: float = 1.0) -> int:
    """Run each (scenario, seed) twice; the trace digests and results must match."""
    out = out or sys.stdout
    mismatches = 0
    for name in names:
        for seed in seeds:
            first, second = (run(name, seed, nodes=nodes, mdns=mdns, scale=scale) for _ in range(2))
            same = (first.digest, first.violations, first.operations) == (
                second.digest, second.violations, second.operations)
            if not same:
                mismatches += 1
                print(f"NONDETERMINISTIC {name} seed={seed}: trace {first.digest[:16]} vs {second.digest[:16]}",
                      file=out)
                print(f"     reproduce: {first.reproduce}", file=out)
        print(f"{name:26s} {len(seeds):5d} seeds run twice: "
              f"{'same traces' if not mismatches else f'{mismatches} differ'}", file=out, flush=True)
    return mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.chaos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="scenario to run (repeatable; default with --seeds: all)")
    parser.add_argument("--seed", type=int, help="run one seed and print its summary")
    parser.add_argument("--seeds", type=int, help="sweep this many seeds per scenario")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed of a sweep (default 0)")
    parser.add_argument("--nodes", type=int, help="cluster size (default: the scenario's)")
    parser.add_argument("--check-determinism", action="store_true",
                        help="run every seed twice and compare the trace digests")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply checkpoint sizes (and big-random's length) by this (default 1)")
    parser.add_argument("--no-mdns", action="store_true", help="static seeds only: no multicast discovery")
    parser.add_argument("--verbose", action="store_true", help="show every fault of a single run")
    args = parser.parse_args(argv)

    if args.list:
        width = max(map(len, SCENARIOS))
        for name in sorted(SCENARIOS):
            spec = SCENARIOS[name]
            print(f"{name:{width}s}  {spec.nodes} nodes  {spec.doc}")
        return 0
    unknown = [n for n in args.scenario or [] if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; --list shows them")
    if args.nodes is not None and not MIN_NODES <= args.nodes <= 64:
        parser.error(f"--nodes must be between {MIN_NODES} and 64 for data scenarios")
    if not 0 < args.scale <= 100:
        parser.error("--scale must be above 0 and at most 100")
    if args.seed is not None and args.seeds is not None:
        parser.error("give either --seed (one run) or --seeds (a sweep), not both")
    names = args.scenario or sorted(SCENARIOS)
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    elif args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be at least 1")
        seeds = range(args.first_seed, args.first_seed + args.seeds)
    else:
        parser.error("give --seed S for one run, --seeds N for a sweep, or --list")

    if args.check_determinism:
        return 1 if check_determinism(names, seeds, args.nodes, mdns=not args.no_mdns, scale=args.scale) else 0
    if args.seed is not None and len(names) == 1:
        result = run(names[0], args.seed, nodes=args.nodes, mdns=not args.no_mdns, scale=args.scale)
        print(summary(result, verbose=args.verbose))
        return 0 if result.ok else 1
    return 1 if sweep(names, seeds, args.nodes, mdns=not args.no_mdns, scale=args.scale) else 0


if __name__ == "__main__":
    sys.exit(main())
