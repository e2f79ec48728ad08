"""``python -m peerstore.bench``: argument parsing, the run, the printed table and JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from peerstore.bench.codec import codec_line, codec_throughput
from peerstore.bench.commands import can_drop_page_cache
from peerstore.bench.lan import LanBench, lan_summary, parse_rate, unavailable_reason
from peerstore.bench.report import aims, aims_block, notes_block, phase_json, phase_table, sweep_table
from peerstore.bench.runner import DEFAULT_PHASES, DEFAULT_REPAIR_RATE, PHASES, Bench, Options, log
from peerstore.shell.config import format_size, parse_size
from peerstore.model.policy import MAX_SHARD_SIZE, MIN_SHARD_SIZE, MiB

SWEEP_DEFAULT_SIZE = 512 * 1000 * 1000
MAX_NODES = 16
EPILOG = """\
phases (--only, comma-separated): baselines, put, put_stream, get, get_stream, get_1down, get_2down,
dir, slow, concurrent, and repair (not in the default run: name it). The get phases and
put_stream also run put; get_2down runs get_1down first (it kills one more node).
repair: on a fresh cluster with a short repair.grace_seconds (--repair-grace), put 5
checkpoints (--size in total, default 1 GB), kill -9 a node holding about a fifth of the
data and delete its data directory, and time until every checkpoint is back at the best
tolerance (status --json and the piece files agree); repair MB/s are bytes re-created per
second from the end of the grace, compared with the put of the same group; a get runs
during the repair and again after it. One group per --repair-rate.

examples:
  python -m peerstore.bench                                  every phase but repair, Llama-3.2-1B size
  python -m peerstore.bench --size 1GB --only baselines,put,get --json out.json
  python -m peerstore.bench --sweep-shard-size 256KiB,1MiB,4MiB,16MiB --size 512MB
  python -m peerstore.bench --only repair --size 1GB --repair-rate 32MiB,0
"""


def _size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not MiB <= value <= 1 << 40:
        raise argparse.ArgumentTypeError(f"expected a size from 1MiB to 1TiB, got {text}")
    return value


def _shard_size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not MIN_SHARD_SIZE <= value <= MAX_SHARD_SIZE:
        raise argparse.ArgumentTypeError(
            f"shard size must be {format_size(MIN_SHARD_SIZE)} to {format_size(MAX_SHARD_SIZE)}, got {text}")
    return value


def _shard_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(_shard_size(part.strip()) for part in text.split(",") if part.strip())
    if not 1 <= len(sizes) <= 12:
        raise argparse.ArgumentTypeError("give 1 to 12 comma-separated shard sizes, like 1MiB,4MiB")
    return sizes


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _phases(text: str) -> frozenset[str]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(PHASES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown phase(s) {', '.join(sorted(unknown)) or '(none given)'}; choose from {', '.join(PHASES)}")
    return frozenset(names)


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(parse_size(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not 1 <= len(rates) <= 4 or any(r < 0 or r > 1 << 36 for r in rates):
        raise argparse.ArgumentTypeError("give 1 to 4 comma-separated rates of 0 (unpaced) to 64GiB, like 32MiB,0")
    return rates


def _bounded(kind: type, low: float, high: float) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low:g} to {high:g}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m peerstore.bench",
        description="Measure put and get on a local cluster of real peerstore nodes against cp+sync "
                    "baselines in the same run: MB/s of checkpoint bytes, CPU seconds, peak RSS per node.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=_size, help="checkpoint size, like 1GB or 512MiB (default: the real "
                   f"Llama-3.2-1B, 2.47 GB; {SWEEP_DEFAULT_SIZE // 1000 ** 2} MB with --sweep-shard-size)")
    p.add_argument("--nodes", type=_bounded(int, 3, MAX_NODES), default=5, help="cluster size (default 5)")
    p.add_argument("--shard-size", type=_shard_size, default=4 * MiB, help="policy.shard_size (default 4MiB)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "peerstore-bench",
                   help="work directory: sources are cached in DIR/sources, each run uses DIR/run-PID "
                        "(default %(default)s; put it on the file system you want to measure)")
    p.add_argument("--only", type=_phases, default=frozenset(DEFAULT_PHASES), metavar="PHASES",
                   help="run only these phases (see below; default: all but repair)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the cluster data directories")
    p.add_argument("--clean", action="store_true", help="also delete the cached sources at the end")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--drop-caches", dest="drop_caches", action="store_true", default=None,
                       help="drop the page cache before every phase (default when root)")
    cache.add_argument("--no-drop-caches", dest="drop_caches", action="store_false")
    p.add_argument("--verify", action="store_true", help="compare every restored checkpoint with its source")
    p.add_argument("--dir-size", type=_size, help="directory checkpoint size (default: --size)")
    p.add_argument("--concurrent", type=_bounded(int, 2, 16), default=4, help="puts at once (default 4)")
    p.add_argument("--concurrent-size", type=_size, help="size of each concurrent put (default --size / 8)")
    p.add_argument("--slow-fraction", type=_bounded(float, 0.0, 0.95), default=0.5,
                   help="share of each period the slow node is stopped (default 0.5)")
    p.add_argument("--slow-period", type=_bounded(float, 0.01, 10.0), default=0.2,
                   help="the slow node's stop/continue period in seconds (default 0.2)")
    p.add_argument("--repeat", type=_bounded(int, 1, 9), default=1,
                   help="with --sweep-shard-size: rounds over all sizes; rows show the median (default 1)")
    p.add_argument("--repair-rate", type=_rates, default=(DEFAULT_REPAIR_RATE,), metavar="RATES",
                   help="repair.max_bytes_per_second of the repair phase, comma-separated for one run each, "
                        f"0 = unpaced (default {format_size(DEFAULT_REPAIR_RATE)}, the config default)")
    p.add_argument("--repair-grace", type=_bounded(float, 0.5, 120.0), default=2.0, metavar="SECONDS",
                   help="repair.grace_seconds of the repair phase (default 2)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record every node with py-spy (pip install py-spy) during each phase into DIR "
                        "and print where the time goes; profiled figures are slower")
    p.add_argument("--link", type=_rate, metavar="RATE",
                   help="root on Linux: run the nodes in network namespaces whose links are shaped to RATE "
                        "(tc tbf, like 100mbit or 1gbit) both ways; measure a plain transfer, then put and get "
                        "against the NIC limits the stored layout implies")
    p.add_argument("--sweep-shard-size", type=_shard_sizes, metavar="LIST",
                   help="instead of the phases: put and get once per shard size, like 256KiB,1MiB,4MiB,16MiB")
    return p


def options_from(args: argparse.Namespace) -> Options:
    size = args.size
    if args.sweep_shard_size and size is None:
        size = SWEEP_DEFAULT_SIZE
    return Options(
        size=size, nodes=args.nodes, shard_size=args.shard_size, workdir=args.dir.resolve(), only=args.only,
        keep=args.keep, drop_caches=can_drop_page_cache() if args.drop_caches is None else args.drop_caches,
        verify=args.verify, dir_size=args.dir_size, concurrent=args.concurrent,
        concurrent_size=args.concurrent_size, slow_period=args.slow_period, slow_fraction=args.slow_fraction,
        sweep=args.sweep_shard_size or (), repeat=args.repeat,
        repair_rates=args.repair_rate, repair_grace=args.repair_grace,
        profile_dir=args.profile.resolve() if args.profile else None,
    )


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo")
    mem = meminfo.read_text().split("\n", 1)[0] if meminfo.exists() else ""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "memory": " ".join(mem.split()[1:]), "load_average": os.getloadavg()}


def report_json(bench: Bench, argv: Sequence[str], started: float,
                codec: dict[str, Any] | None = None) -> dict[str, Any]:
    options = asdict(bench.options)
    options["workdir"] = str(options["workdir"])
    options["only"] = sorted(options["only"])
    return {
        "command": "python -m peerstore.bench " + " ".join(argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {**machine(), "free_disk_bytes": shutil.disk_usage(bench.options.workdir).free},
        "options": options,
        "page_cache": {"drop_requested": bench.options.drop_caches,
                       "allowed": can_drop_page_cache(), "dropped_times": bench.page_cache_dropped},
        "phases": [phase_json(r, bench.results) for r in bench.results],
        "aims": aims(bench.results),
        "sweep": bench.sweep_rows,
        "codec": codec,
        "failures": bench.failures,
    }


def print_report(bench: Bench, data: dict[str, Any]) -> None:
    print(f"\n{data['command']}")
    m = data["machine"]
    dropped = data["page_cache"]["dropped_times"]
    print(f"{m['cpus']} CPUs, {m['memory']}, {m['platform']}, load {m['load_average'][0]:.2f}; "
          f"{bench.options.nodes} nodes, shard size {format_size(bench.options.shard_size)}; page cache "
          + (f"dropped before each of {dropped} phases" if dropped else "NOT dropped (reads may be warm)"))
    print()
    print(phase_table(bench.results, bench.options.nodes))
    notes = notes_block(bench.results)
    if notes:
        print("\nnotes:\n" + notes)
    link = lan_summary(bench.results)
    if link:
        print("\nagainst the NIC limits (--link):\n" + link)
    if data["aims"]:
        print("\naims (issue 5; repair: issue 12):\n" + aims_block(data["aims"]))
    if bench.sweep_rows:
        print("\nshard-size sweep:\n" + sweep_table(bench.sweep_rows))
    if data["codec"]:
        print("\nerasure coding (no I/O):\n" + codec_line(data["codec"]))
    if bench.profiles and bench.options.profile_dir is not None:
        summary = bench.options.profile_dir / "summary.txt"
        summary.write_text("\n\n".join(bench.profiles) + "\n")
        print(f"\npy-spy profiles and their summary: {summary}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if not sys.platform.startswith("linux"):
        print("peerstore.bench: needs Linux (/proc) to meter the nodes", file=sys.stderr)
        return 2
    options = options_from(args)
    if args.link is not None:
        reason = "--link does not combine with --sweep-shard-size" if options.sweep else unavailable_reason()
        if reason:
            print(f"peerstore.bench: {reason}", file=sys.stderr)
            return 2
    options.workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(options) if args.link is None else LanBench(options, args.link)
    started = time.time()
    try:
        bench.run_sweep() if options.sweep else bench.run()
    except KeyboardInterrupt:
        print("\npeerstore.bench: interrupted; nodes stopped", file=sys.stderr)
        return 130
    finally:
        if args.clean:
            shutil.rmtree(bench.cache, ignore_errors=True)
    # after the cluster phases, so the nodes do not compete with it for the CPU
    policy = bench.policy
    data = report_json(bench, argv, started, codec_throughput(policy.shard_size, policy.stripe_width, policy.parity))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if bench.results:
        print_report(bench, data)
    if not args.clean:
        log(f"sources cached in {bench.cache} (delete it, or pass --clean, to free the disk)")
    if bench.failures:
        print("\npeerstore.bench: failed: " + "; ".join(bench.failures), file=sys.stderr)
        return 1
    return 0
