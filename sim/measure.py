"""Membership measurements over many seeds: ``python -m sim.measure``.

Runs the real ``Swim`` machines (default ``GossipSettings``) in the simulator and
measures, for N in {5, 20, 100, 1000}:

- crash -> first suspicion anywhere (mean), crash -> dead on every live node (p50, p99);
- a join and a graceful leave: visible on every node (p50, max);
- false suspicions and false deaths per node-hour at 1%, 5% and 10% datagram loss with no
  real failure, and with one node's event loop stalled 2 s of every 10;
- gossip bytes per second per node in steady state (datagrams, and push-pull exchanges
  amortised over their period);
- after a partition into halves heals: every node sees every node alive again (p50, max).

The table goes to stdout (and with ``--write docs/membership.md`` into that file, with
the command that produced it). ``--quick`` runs a few seeds of everything, for a look.
Every run is a pure function of its seed; ``--jobs`` only spreads them over processes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from peerstore.gossip import MemberChanged, MemberState
from sim.cluster import Cluster
from sim.network import LinkModel

HOUR = 3600.0


class Tracker:
    """Follows every node's view of every member through MemberChanged effects."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.events: list[tuple[float, str, str, MemberState]] = []
        self.state: dict[tuple[str, str], MemberState] = {}
        self.not_alive: dict[str, set[str]] = {}  # observer -> members it holds not alive
        cluster.member_observers.append(self._seen)

    def _seen(self, now: float, observer: str, change: MemberChanged) -> None:
        if change.node_id == observer:
            return
        self.events.append((now, observer, change.node_id, change.new))
        self.state[(observer, change.node_id)] = change.new
        holds = self.not_alive.setdefault(observer, set())
        if change.new is MemberState.ALIVE:
            holds.discard(change.node_id)
        else:
            holds.add(change.node_id)

    def seen_by_all(self, node_id: str, state: MemberState) -> bool:
        return all(self.state.get((o, node_id)) is state for o in self.cluster.running_ids() if o != node_id)

    def first(self, node_id: str, state: MemberState, after: float) -> float | None:
        return next((t for t, _, n, s in self.events if n == node_id and s is state and t >= after), None)

    def last_of_all(self, node_id: str, state: MemberState, after: float) -> float:
        """When the last running observer reached ``state`` for ``node_id``."""
        times = {}
        for t, o, n, s in self.events:
            if n == node_id and t >= after:
                times[o] = t if s is state else None
        observers = [o for o in self.cluster.running_ids() if o != node_id]
        return max(times[o] for o in observers)  # type: ignore[type-var]

    def all_alive(self) -> bool:
        return all(not self.not_alive.get(o) for o in self.cluster.running_ids())

    def count(self, state: MemberState, since: float = 0.0) -> int:
        return sum(1 for t, _, _, s in self.events if s is state and t >= since)


def _cluster(n: int, seed: int, *, booted: int | None = None, loss: float = 0.0) -> tuple[Cluster, Tracker]:
    # mDNS off: these numbers are SWIM's own (with mDNS a joining node is also found by
    # every browser on the LAN, which only makes joins faster).
    cluster = Cluster(n, seed, cores=False, form="warm", wire_roundtrip=n <= 20, booted=booted,
                      link=LinkModel(loss=loss), mdns=False)
    return cluster, Tracker(cluster)


def _warmup(cluster: Cluster, n: int) -> None:
    """Random phase against the probe rounds; short for big clusters (their cost)."""
    rng = cluster.seeds.rng("measure", "phase")
    cluster.run_for(rng.uniform(2.0, 4.0) if n >= 1000 else rng.uniform(5.0, 15.0))


# -- experiments (each returns a small dict; run in worker processes) ---------------------


def detection(n: int, seed: int) -> dict[str, Any]:
    cluster, tracker = _cluster(n, seed)
    _warmup(cluster, n)
    victim = cluster.seeds.rng("measure", "victim").choice(cluster.ids)
    start = cluster.loop.now
    cluster.crash(victim, power_off=True)
    done = cluster.run_until(lambda: tracker.seen_by_all(victim, MemberState.DEAD), max_time=120.0, step=0.1)
    suspected = tracker.first(victim, MemberState.SUSPECT, start)
    return {
        "first_suspicion": None if suspected is None else suspected - start,
        "dead_everywhere": tracker.last_of_all(victim, MemberState.DEAD, start) - start if done else None,
    }


def join(n: int, seed: int) -> dict[str, Any]:
    cluster, tracker = _cluster(n, seed, booted=n - 1)
    _warmup(cluster, n)
    newcomer = cluster.ids[-1]
    start = cluster.loop.now
    cluster.join(newcomer)
    done = cluster.run_until(lambda: tracker.seen_by_all(newcomer, MemberState.ALIVE), max_time=60.0, step=0.05)
    return {"join": tracker.last_of_all(newcomer, MemberState.ALIVE, start) - start if done else None}


def leave(n: int, seed: int) -> dict[str, Any]:
    cluster, tracker = _cluster(n, seed)
    _warmup(cluster, n)
    leaver = cluster.seeds.rng("measure", "leaver").choice(cluster.ids)
    start = cluster.loop.now
    cluster.leave(leaver)

    def everyone() -> bool:
        return all(tracker.state.get((o, leaver)) is MemberState.LEFT for o in cluster.ids if o != leaver)

    done = cluster.run_until(everyone, max_time=60.0, step=0.05)
    return {"leave": max(t for t, o, m, s in tracker.events if m == leaver and s is MemberState.LEFT) - start
            if done else None}


def false_positives(n: int, seed: int, loss: float, duration: float, stalled: bool = False) -> dict[str, Any]:
    cluster, tracker = _cluster(n, seed, loss=loss)
    stall_node = cluster.ids[0] if stalled else None
    if stall_node is not None:
        def stall_again() -> None:
            cluster.stall(stall_node, 2.0)
            cluster.loop.after(10.0, stall_again)

        cluster.loop.after(cluster.seeds.rng("measure", "stall").uniform(0, 10), stall_again)
    warm = 10.0
    cluster.run_for(warm)
    since = cluster.loop.now
    cluster.run_for(duration)
    deaths = [(o, m) for t, o, m, s in tracker.events if s is MemberState.DEAD and t >= since]
    return {
        "node_hours": n * duration / HOUR,
        "suspicions": tracker.count(MemberState.SUSPECT, since),
        "deaths": len(deaths),
        "healthy_deaths": sum(1 for _, m in deaths if m != stall_node),
        "stalled_deaths": sum(1 for _, m in deaths if m == stall_node),
    }


def push_pull_period(n: int, interval: float) -> float:
    """memberlist's pushPullScale, as Swim applies it: slower beyond 32 members."""
    return interval if n <= 32 else interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


def gossip_traffic(n: int, seed: int, seconds: float) -> dict[str, Any]:
    """Steady-state gossip bytes per node per second: the datagram rate measured over
    ``seconds``, plus one push-pull exchange (request and reply, measured) per node per
    push-pull period. Measuring the exchanges over a whole period would take minutes at
    N=1000, and a short window right after start would count the first, staggered round
    of exchanges (all within one unscaled interval) as if it were steady."""
    cluster, _ = _cluster(n, seed)
    cluster.run_for(5.0)
    nodes = [node for node in cluster.nodes.values() if node.swim is not None]
    datagrams_before = sum(node.swim.stats["bytes_out"] for node in nodes)
    cluster.run_for(seconds)
    datagram_rate = (sum(node.swim.stats["bytes_out"] for node in nodes) - datagrams_before) / n / seconds
    exchanges = sum(node.swim.stats["push_pulls_sent"] for node in nodes)
    exchange_bytes = sum(node.gossip_stream_bytes for node in nodes) / max(1, exchanges)
    period = push_pull_period(n, cluster.gossip.pushpull_interval)
    return {"datagram_rate": datagram_rate, "exchange_bytes": exchange_bytes,
            "bytes_per_node_s": datagram_rate + exchange_bytes / period}


def partition_heal(n: int, seed: int) -> dict[str, Any]:
    cluster, tracker = _cluster(n, seed)
    _warmup(cluster, n)
    ids = cluster.seeds.rng("measure", "split").sample(cluster.ids, n)
    left, right = ids[: n // 2], ids[n // 2:]
    cluster.partition(left, right)

    def sides_dead() -> bool:
        return all(tracker.state.get((o, m)) is MemberState.DEAD
                   for side, other in ((left, right), (right, left)) for o in side for m in other)

    split_ok = cluster.run_until(sides_dead, max_time=120.0, step=0.5)
    start = cluster.loop.now
    cluster.heal()
    done = cluster.run_until(tracker.all_alive, max_time=300.0, step=0.1)
    return {"heal": cluster.loop.now - start if done else None, "split_complete": split_ok}


# -- orchestration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    seeds: dict[int, int]  # detection/join/leave seeds per N
    partition_seeds: dict[int, int]
    loss_runs: dict[float, tuple[int, int, float]]  # loss -> (N, runs, seconds per run)
    stall_runs: tuple[int, int, float]
    bytes_runs: dict[int, tuple[int, float]]  # N -> (runs, seconds)


FULL = Plan(
    sizes=(5, 20, 100, 1000),
    seeds={5: 200, 20: 100, 100: 20, 1000: 3},
    partition_seeds={5: 50, 20: 20, 100: 5},
    loss_runs={0.01: (10, 100, 2 * HOUR), 0.05: (10, 20, HOUR), 0.10: (10, 20, HOUR)},
    stall_runs=(10, 20, 1800.0),
    bytes_runs={5: (3, 120.0), 20: (3, 120.0), 100: (2, 60.0), 1000: (1, 20.0)},
)
QUICK = Plan(
    sizes=(5, 20, 100),
    seeds={5: 20, 20: 10, 100: 3},
    partition_seeds={5: 5, 20: 3, 100: 1},
    loss_runs={0.01: (10, 4, 600.0), 0.05: (10, 2, 600.0), 0.10: (10, 2, 600.0)},
    stall_runs=(10, 2, 600.0),
    bytes_runs={5: (1, 60.0), 20: (1, 60.0), 100: (1, 30.0)},
)


def _call(task: tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]) -> dict[str, Any]:
    func, args = task
    return func(*args)


def _run_all(tasks: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]], jobs: int) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [_call(t) for t in tasks]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_call, tasks, chunksize=1)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _fmt(values: list[float | None], how: str) -> str:
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return "n/a"
    text = {
        "mean": lambda: f"{statistics.fmean(got):.2f}",
        "p50": lambda: f"{percentile(got, 50):.2f}",
        "p99": lambda: f"{percentile(got, 99):.2f}",
        "max": lambda: f"{max(got):.2f}",
    }[how]()
    return text + (f" ({missing} never)" if missing else "")


def measure(plan: Plan, jobs: int, out=None) -> str:
    out = out or sys.stdout
    started = time.monotonic()
    tasks: list[tuple[str, int, tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]]] = []
    for n in plan.sizes:
        for seed in range(plan.seeds[n]):
            tasks += [("detect", n, (detection, (n, seed))), ("join", n, (join, (n, seed))),
                      ("leave", n, (leave, (n, seed)))]
        for seed in range(plan.partition_seeds.get(n, 0)):
            tasks.append(("partition", n, (partition_heal, (n, seed))))
        runs, seconds = plan.bytes_runs.get(n, (0, 0.0))
        for seed in range(runs):
            tasks.append(("bytes", n, (gossip_traffic, (n, 10_000 + seed, seconds))))
    for loss, (n, runs, seconds) in plan.loss_runs.items():
        for seed in range(runs):
            tasks.append((f"loss{loss}", n, (false_positives, (n, 20_000 + seed, loss, seconds))))
    n, runs, seconds = plan.stall_runs
    for seed in range(runs):
        tasks.append(("stall", n, (false_positives, (n, 30_000 + seed, 0.01, seconds, True))))
    # Longest first, so the pool does not end on one slow straggler.
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][1])
    results_in_order = _run_all([tasks[i][2] for i in order], jobs)
    results: list[dict[str, Any]] = [{}] * len(tasks)
    for i, result in zip(order, results_in_order):
        results[i] = result

    def pick(kind: str, n: int, key: str) -> list[Any]:
        return [r[key] for (k, size, _), r in zip(tasks, results) if k == kind and size == n]

    lines = ["| N | seeds | crash -> first suspicion, mean (s) | crash -> dead everywhere, p50 / p99 (s) "
             "| join visible everywhere, p50 / max (s) | leave visible everywhere, p50 / max (s) "
             "| partition heal -> converged, p50 / max (s) | gossip bytes/s per node |",
             "|---|---|---|---|---|---|---|---|"]
    for n in plan.sizes:
        heal = pick("partition", n, "heal")
        lines.append(
            f"| {n} | {plan.seeds[n]} | {_fmt(pick('detect', n, 'first_suspicion'), 'mean')} "
            f"| {_fmt(pick('detect', n, 'dead_everywhere'), 'p50')} / {_fmt(pick('detect', n, 'dead_everywhere'), 'p99')} "
            f"| {_fmt(pick('join', n, 'join'), 'p50')} / {_fmt(pick('join', n, 'join'), 'max')} "
            f"| {_fmt(pick('leave', n, 'leave'), 'p50')} / {_fmt(pick('leave', n, 'leave'), 'max')} "
            f"| {(_fmt(heal, 'p50') + ' / ' + _fmt(heal, 'max') + f' ({len(heal)} seeds)') if heal else 'not run'} "
            f"| {_fmt(pick('bytes', n, 'bytes_per_node_s'), 'mean') if pick('bytes', n, 'bytes_per_node_s') else 'not run'} |"
        )
    lines += ["", "| datagram loss | N | node-hours | false suspicions per node-hour | false deaths per node-hour "
              "| false deaths (total) |", "|---|---|---|---|---|---|"]
    for loss, (n, _, _) in plan.loss_runs.items():
        rows = [r for (k, _, _), r in zip(tasks, results) if k == f"loss{loss}"]
        hours = sum(r["node_hours"] for r in rows)
        suspicions, deaths = sum(r["suspicions"] for r in rows), sum(r["deaths"] for r in rows)
        lines.append(f"| {loss:.0%} | {n} | {hours:,.0f} | {suspicions / hours:.3f} | {deaths / hours:.4f} | {deaths} |")
    rows = [r for (k, _, _), r in zip(tasks, results) if k == "stall"]
    hours = sum(r["node_hours"] for r in rows)
    lines += ["", "| one node stalled 2 s of every 10 (1% loss) | N | node-hours | false suspicions per node-hour "
              "| healthy nodes declared dead | stalled node declared dead |", "|---|---|---|---|---|---|",
              f"| | {plan.stall_runs[0]} | {hours:,.0f} | {sum(r['suspicions'] for r in rows) / hours:.3f} "
              f"| {sum(r['healthy_deaths'] for r in rows)} | {sum(r['stalled_deaths'] for r in rows)} |"]
    lines += ["", f"_{len(tasks)} runs, {time.monotonic() - started:.0f} s wall with {jobs} process(es)._"]
    table = "\n".join(lines)
    print(table, file=out)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seeds of everything (minutes, not tens)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (results do not depend on it)")
    parser.add_argument("--write", metavar="FILE", help="also write the table, with this command, to FILE")
    args = parser.parse_args(argv)
    if not 1 <= args.jobs <= 64:
        parser.error("--jobs must be between 1 and 64")
    table = measure(QUICK if args.quick else FULL, args.jobs)
    if args.write:
        command = "python -m sim.measure" + (" --quick" if args.quick else "") + f" --jobs {args.jobs}"
        write_section(args.write, f"Produced by `{command}`:\n\n{table}")
    return 0


BEGIN, END = "<!-- measure:begin -->", "<!-- measure:end -->"


def write_section(path: str, text: str) -> None:
    """Replace the generated part of ``path`` (between the markers), keeping the prose."""
    try:
        with open(path, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = (current + "\n\n" if current else "") + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(current)


if __name__ == "__main__":
    sys.exit(main())
