"""Run harness scenarios over many seeds: ``python -m sim.sweep --seeds 300``.

Prints one line per failing (scenario, seed) with the command that reproduces it, and a
summary per scenario. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import sys
import time

from sim.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds per scenario (default 100)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="only these (repeatable)")
    args = parser.parse_args(argv)
    failures = 0
    for name in args.scenario or sorted(SCENARIOS):
        started, bad = time.monotonic(), 0
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            try:
                result = SCENARIOS[name](seed)
                problems = result.violations
            except Exception as err:  # a crash of the harness or core is a finding too
                problems = [f"exception: {type(err).__name__}: {err}"]
            if problems:
                bad += 1
                print(f"FAIL {name} seed={seed}: {problems[0]}")
                print(f"     reproduce: python -m sim.sweep --scenario {name} --first-seed {seed} --seeds 1")
        failures += bad
        print(f"{name:28s} {args.seeds} seeds, {bad} failed, {time.monotonic() - started:.1f}s wall")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
