"""The benchmark run: baselines, then puts and gets on a real local cluster, phase by phase.

Each phase starts from a dropped page cache (when allowed), is timed end to end through
the real CLI, and is metered (CPU seconds and peak RSS of every node, plus the CLI's own
usage). The cluster is replaced by a fresh one between groups of phases, so a source can
be stored again without being deduplicated and the disk holds one group at a time.

One module, though long: the phases share one cluster lifecycle and one metering loop.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerstore.bench import baselines, profile, repair, report
from peerstore.bench.commands import (CommandFailed, Finished, Running, can_drop_page_cache, command_timeout,
                                      drop_page_cache)
from peerstore.bench.procstat import Meter, Usage, machine_busy_seconds
from peerstore.bench.report import COPY_ONCE, POLICY_COPIES, Outcome, PhaseResult
from peerstore.bench.sources import checkpoint_dir_source, safetensors_source, same_bytes, source_bytes
from peerstore.bench.stored import replica_pair, share_times, stored_manifest
from peerstore.bench.throttle import DutyCycle
from peerstore.shell.config import format_size
from peerstore.model.policy import MiB, Policy
from peerstore.testing.procs import NodeProc, ProcCluster, wait_for

PHASES = ("baselines", "put", "put_stream", "get", "get_stream", "get_1down", "get_2down", "dir", "slow", "concurrent", "repair")
# Run only when named in --only: each pacing adds a cluster, five puts, a node loss and its repair.
OPTIONAL_PHASES = ("repair",)
DEFAULT_PHASES = tuple(p for p in PHASES if p not in OPTIONAL_PHASES)
DEFAULT_REPAIR_RATE = repair.DEFAULT_RATE  # repair.max_bytes_per_second's default, 32 MiB/s per node
NEEDS_STORED_MODEL = ("get", "get_stream", "get_1down", "get_2down")
CLUSTER_START_TIMEOUT = 60.0
CLUSTER_START_ATTEMPTS = 3
MEMBERSHIP_TIMEOUT = 60.0


@dataclass
class Options:
    size: int | None = None  # None: the real Llama-3.2-1B shape (2.47 GB)
    nodes: int = 5
    shard_size: int = 4 * MiB
    workdir: Path = Path("/tmp/peerstore-bench")
    only: frozenset[str] = frozenset(DEFAULT_PHASES)
    keep: bool = False
    drop_caches: bool = False
    verify: bool = False
    dir_size: int | None = None  # directory checkpoint total; None: same as size
    concurrent: int = 4
    concurrent_size: int | None = None  # each; None: size / 8
    slow_period: float = 0.2
    slow_fraction: float = 0.5
    sweep: tuple[int, ...] = ()
    profile_dir: Path | None = None  # py-spy every node during each cluster phase
    repeat: int = 1  # sweep rounds
    repair_rates: tuple[int, ...] = (DEFAULT_REPAIR_RATE,)  # one repair group each; 0: unpaced
    repair_grace: float = repair.DEFAULT_GRACE  # repair.grace_seconds of the repair groups' clusters


# What a phase may fail with and the run survive (the next group starts a fresh cluster).
PHASE_FAILURES = (CommandFailed, TimeoutError, RuntimeError, OSError, ValueError, KeyError)


def first_line(err: BaseException) -> str:
    """The headline of an error (its log tails go to stderr, not into the JSON)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cli_env() -> dict[str, str]:
    """The CLI's environment: this one, with bytecode caching on (an installed CLI has its
    modules compiled; some machines turn caching off, which would time compiling them)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


class Bench:
    """One benchmark run in ``<workdir>/run-<pid>/``; sources cached in ``<workdir>/sources``."""

    def __init__(self, options: Options):
        self.options = options
        self.run_dir = options.workdir / f"run-{os.getpid()}"
        self.cache = options.workdir / "sources"
        self.policy = Policy(shard_size=options.shard_size)
        self.results: list[PhaseResult] = []
        self.sweep_rows: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.profiles: list[str] = []  # py-spy summaries, with --profile
        self.cluster: ProcCluster | None = None
        self.clusters_started = 0
        self.page_cache_dropped = 0
        self.page_cache_requested = options.drop_caches and can_drop_page_cache()

    # -- cluster ------------------------------------------------------------------------

    def fresh_cluster(self, shard_size: int | None = None, extra: dict[str, Any] | None = None) -> ProcCluster:
        """Replace the cluster with a new, empty one and wait until all nodes see each other.
        ``extra``: config sections every node gets (like ``{"repair": {...}}``).

        A node that exits while starting (its free port taken by another process in the
        meantime) fails the attempt at once; the next attempt picks new ports.
        """
        for attempt in range(1, CLUSTER_START_ATTEMPTS + 1):
            self.close_cluster()
            self.clusters_started += 1
            root = self.run_dir / f"cluster-{self.clusters_started}"
            c = self.cluster = self.new_cluster(root, format_size(shard_size or self.options.shard_size),
                                                dict(extra or {}))
            log(f"starting {self.options.nodes} nodes in {root}")
            for node in c.nodes:
                c.start(node.index)
            try:
                wait_for(lambda: self._all_see_all(c), CLUSTER_START_TIMEOUT,
                         f"{self.options.nodes} nodes to see each other", interval=0.5)
                return c
            except (TimeoutError, RuntimeError) as err:
                if attempt == CLUSTER_START_ATTEMPTS:
                    raise RuntimeError(f"the cluster did not start: {err}\n{c.log_tails()}") from None
                log(f"the cluster did not start ({first_line(err)}); trying again with new ports")
        raise AssertionError("unreachable")

    def new_cluster(self, root: Path, shard_size: str, extra: dict[str, Any]) -> ProcCluster:
        """The nodes of a fresh cluster (``--link`` puts them in network namespaces, lan.py)."""
        return ProcCluster(root, self.options.nodes, shard_size=shard_size, extra=extra)

    def _all_see_all(self, c: ProcCluster) -> bool:
        exited = [n.index for n in c.nodes if not n.running]
        if exited:
            raise RuntimeError(f"node(s) {exited} exited while starting")
        return all(len(c.alive_seen_by(n.index)) == len(c.nodes) for n in c.nodes)

    def close_cluster(self) -> None:
        if self.cluster is None:
            return
        self.cluster.close()
        if not self.options.keep:
            shutil.rmtree(self.cluster.root, ignore_errors=True)
        self.cluster = None

    def cleanup(self) -> None:
        """Stop every node; remove this run's directory unless --keep."""
        try:
            self.close_cluster()
        finally:
            if not self.options.keep:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def _cluster(self) -> ProcCluster:
        if self.cluster is None:
            raise RuntimeError("no cluster is running")
        return self.cluster

    def cli(self, *args: str, via: int = 0) -> Running:
        c = self._cluster()
        return Running([sys.executable, "-m", "peerstore", "--config", str(c.nodes[via].config_path),
                        "--quiet", *args], env=cli_env())

    def finish(self, running: Running, timeout: float) -> Finished:
        """Wait for a CLI command; a failure carries the node log tails."""
        try:
            finished = running.wait(timeout)
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n{self._cluster().log_tails()}") from None
        if finished.returncode != 0:
            raise CommandFailed(finished, self._cluster().log_tails())
        return finished

    def wait_seen_alive(self, count: int, via: int) -> bool:
        """Until node ``via`` sees exactly ``count`` alive members; False on timeout."""
        c = self._cluster()
        try:
            wait_for(lambda: len(c.alive_seen_by(via)) == count, MEMBERSHIP_TIMEOUT,
                     f"node {via} to see {count} alive members", interval=0.5)
        except TimeoutError:
            return False
        return True

    # -- measuring ------------------------------------------------------------------------

    def measure(self, phase: str, kind: str, body: Callable[[], Outcome], meter_nodes: bool = True,
                drop_caches: bool = True) -> PhaseResult:
        """Run ``body`` from a cold page cache (unless ``drop_caches`` is False: a phase that
        starts while others run), metering every running node."""
        if drop_caches and self.page_cache_requested and drop_page_cache():
            self.page_cache_dropped += 1
        meter = Meter()
        nodes = self.cluster.nodes if (self.cluster is not None and meter_nodes) else []
        for node in nodes:
            if node.running and node.proc is not None:
                meter.watch(f"node-{node.index}", node.proc.pid)
        log(f"{phase} ...")
        recorder = self._profiler(phase, nodes)
        started, machine_before = time.monotonic(), machine_busy_seconds()
        try:
            with meter:
                outcome = body()
        except PHASE_FAILURES as err:
            outcome = Outcome(0, time.monotonic() - started)
            self._record(phase, kind, outcome, meter.stop(), nodes, error=first_line(err))
            raise
        finally:
            if recorder is not None:
                self.profiles += [profile.summarise(path) for path in recorder.stop().values()]
        machine_after = machine_busy_seconds()
        if machine_before is not None and machine_after is not None:
            outcome.extra["machine_cpu_seconds"] = round(machine_after - machine_before, 2)
        result = self._record(phase, kind, outcome, meter.stop(), nodes)
        if recorder is not None:
            result.notes = "; ".join(filter(None, [result.notes, "profiled (py-spy running): slower"]))
        return result

    def _profiler(self, phase: str, nodes: list[NodeProc]) -> profile.Recorder | None:
        if self.options.profile_dir is None or not nodes:
            return None
        exe = profile.py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        pids = {f"node-{n.index}": n.proc.pid for n in nodes if n.running and n.proc is not None}
        return profile.Recorder(exe, self.options.profile_dir, phase, pids)

    def _record(self, phase: str, kind: str, outcome: Outcome, usage: Usage, nodes: list[NodeProc],
                error: str = "") -> PhaseResult:
        peaks: dict[str, float | None] = {f"node-{n.index}": usage.peak_rss_mib.get(f"node-{n.index}")
                                          for n in nodes}
        cpu = {"nodes": round(sum(usage.cpu_seconds.values()), 3)} if nodes else {}
        cpu["cli" if kind != "baseline" else "tools"] = round(
            sum(f.cpu_seconds for f in outcome.commands) + outcome.tool_cpu_seconds, 3)
        cli_peak = max((f.peak_rss_mib for f in outcome.commands), default=None)
        result = PhaseResult(phase, kind, outcome.bytes, outcome.seconds, cpu, peaks,
                             cli_peak if kind != "baseline" else None, outcome.notes, outcome.extra, error)
        result.extra.setdefault("peak_rss_from_hwm", usage.peak_from_hwm)
        if nodes:
            result.extra["cpu_seconds_per_node"] = {k: round(v, 2) for k, v in usage.cpu_seconds.items()}
            result.extra["system_cpu_seconds_per_node"] = {k: round(v, 2)
                                                           for k, v in usage.system_cpu_seconds.items()}
            result.extra["peak_anon_mib"] = {k: round(v, 1) for k, v in usage.peak_anon_mib.items()}
        self.results.append(result)
        if error:
            log(f"{phase}: FAILED after {result.seconds:.1f} s: {error}")
        else:
            log(f"{phase}: {result.bytes / 1e6:.0f} MB in {result.seconds:.1f} s = {result.mb_s:.0f} MB/s, "
                f"CPU {result.cpu_total:.1f} s, peak node RSS {result.max_peak_rss_mib or 0:.0f} MiB")
        return result

    # -- sources --------------------------------------------------------------------------

    def model(self, seed: int, size: int | None = None) -> Path:
        size = size if size is not None else self.options.size
        path = safetensors_source(self.cache, size, seed)
        log(f"source: {path} ({source_bytes(path) / 1e6:.0f} MB)")
        return path

    # -- phases -----------------------------------------------------------------------------

    def put(self, phase: str, source: Path, name: str, *, stream: bool = False, via: int = 0,
            throttle: DutyCycle | None = None) -> PhaseResult:
        nbytes = source_bytes(source)

        def body() -> Outcome:
            args = ["put", str(source), "--name", name, "--json"] + (["--stream"] if stream else [])
            started = time.time()
            running = self.cli(*args, via=via)
            if throttle is None:
                finished = self.finish(running, command_timeout(nbytes))
            else:
                with throttle:
                    finished = self.finish(running, command_timeout(nbytes) * 4)
            done = json.loads(finished.stdout)
            extra = {"client_seconds": done.get("seconds"), "pieces": done.get("pieces"),
                     "tolerance": done.get("tolerance"), "streamed": done.get("streamed"),
                     "wall_clock_start": started}
            return Outcome(int(done["size"]), finished.seconds, [finished], extra=extra)

        return self.measure(phase, "put", body)

    def get(self, phase: str, name: str, source: Path, *, via: int = 0, notes: str = "",
            drop_caches: bool = True, stream: bool = False) -> PhaseResult:
        out = self.run_dir / "restored"
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
        nbytes = source_bytes(source)

        def body() -> Outcome:
            args = ["get", name, "--out", str(out), "--json"] + (["--stream"] if stream else [])
            finished = self.finish(self.cli(*args, via=via), command_timeout(nbytes))
            done = json.loads(finished.stdout)
            extra = {"client_seconds": done.get("seconds"), "degraded_stripes": done.get("degraded", 0),
                     "second_replica_pieces": done.get("fallbacks", 0), "files": done.get("files"),
                     "node_wrote": done.get("node_wrote")}
            return Outcome(int(done["bytes"]), finished.seconds, [finished], notes, extra)

        try:
            result = self.measure(phase, "get", body, drop_caches=drop_caches)
            if self.options.verify:
                if not same_bytes(source, out):
                    raise RuntimeError(f"{phase}: the restored {out} differs from {source}")
                result.extra["verified_against_source"] = True
            return result
        finally:
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)

    def run_baselines(self, source: Path, suffix: str = "") -> None:
        timeout = command_timeout(3 * source_bytes(source))
        scratch = self.run_dir / "baselines"

        def copy_once() -> Outcome:
            run = baselines.copy_once(source, scratch, timeout)
            return Outcome(source_bytes(source), run.seconds, notes=(
                f"cp {run.copy_seconds:.1f} s + sync {run.sync_seconds:.1f} s"),
                extra=self._baseline_extra(run), tool_cpu_seconds=run.cpu_seconds)

        def policy_copies() -> Outcome:
            run = baselines.policy_copies(source, scratch, self.options.nodes, self.policy, timeout)
            return Outcome(source_bytes(source), run.seconds, notes=(
                f"{run.writers} writers at once ({self.policy.replicas} cp + dd of the parity share), "
                f"{run.written_bytes / source_bytes(source):.2f}x the bytes, {run.copy_seconds:.1f} s + sync "
                f"{run.sync_seconds:.1f} s"),
                extra=self._baseline_extra(run), tool_cpu_seconds=run.cpu_seconds)

        self.measure(COPY_ONCE + suffix, "baseline", copy_once, meter_nodes=False)
        self.measure(POLICY_COPIES + suffix, "baseline", policy_copies, meter_nodes=False)
        shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _baseline_extra(run: baselines.BaselineRun) -> dict[str, Any]:
        return {"copy_seconds": run.copy_seconds, "sync_seconds": run.sync_seconds,
                "bytes_written": run.written_bytes, "writers": run.writers}

    def run_single_file_group(self, model: Path, want: frozenset[str]) -> None:
        """put, put --stream, then gets healthy, with one node down, with two down."""
        c = self.fresh_cluster()
        nodes = self.options.nodes
        self.put("put", model, "bench/model")
        if "put_stream" in want:
            self.put("put --stream", self.model(seed=1), "bench/model-streamed", stream=True, via=1)
        if "get" in want:
            self.get("get", "bench/model", model)
        if "get_stream" in want:  # the same get, its bytes streamed through the CLI (issue 14)
            self.get("get --stream", "bench/model", model, stream=True)
        if not want & {"get_1down", "get_2down"}:
            return
        manifest = stored_manifest(c.nodes[0].data_dir, "bench/model")
        if manifest is None:
            raise RuntimeError(f"node 0 holds no manifest of bench/model\n{c.log_tails()}")
        first, twin = (c.index_of(n) for n in replica_pair(manifest, c.nodes[0].node_id))
        c.kill(first)
        seen = self.wait_seen_alive(nodes - 1, via=0)
        down = f"node {first} killed (-9) after the put" + ("" if seen else "; not yet seen dead")
        self.get("get, 1 node down", "bench/model", model, notes=down)
        if "get_2down" in want:
            if nodes < 4:
                log("get_2down needs at least 4 nodes (tolerance 2); skipped")
            else:
                c.kill(twin)
                seen = self.wait_seen_alive(nodes - 2, via=0)
                result = self.get("get, 2 nodes down", "bench/model", model, notes=(
                    f"nodes {first} and {twin} (both replicas of a data shard) killed"
                    + ("" if seen else "; not yet seen dead")))
                if not result.extra.get("degraded_stripes"):
                    result.notes += "; no stripe needed parity"
        for index in (first, twin):
            if not c.nodes[index].running:
                c.start(index)
        c.wait_alive(nodes, timeout=MEMBERSHIP_TIMEOUT)

    def run_dir_group(self) -> None:
        total = self.options.dir_size or self.options.size or source_bytes(self.model(seed=0))
        source = checkpoint_dir_source(self.cache, total, seed=2)
        log(f"source: {source} ({source_bytes(source) / 1e6:.0f} MB)")
        self.fresh_cluster()
        self.put("put directory", source, "bench/checkpoint-500")
        self.get("get directory", "bench/checkpoint-500", source)

    def run_slow_group(self, model: Path, want: frozenset[str]) -> None:
        c = self.fresh_cluster()
        if "slow" in want:
            slow = self.options.nodes - 1
            proc = c.nodes[slow].proc
            assert proc is not None
            throttle = DutyCycle(proc.pid, self.options.slow_period, self.options.slow_fraction)
            result = self.put("put, 1 slow node", model, "bench/model-slow-peer", throttle=throttle)
            shares = share_times(self._cluster(), "bench/model-slow-peer", result.extra["wall_clock_start"])
            result.extra.update(throttled_node=slow, throttle=throttle.describe(), throttle_cycles=throttle.cycles,
                                **shares)
            result.notes = f"node {slow}: {throttle.describe()}"
            done = shares.get("share_done_seconds", {})
            others = [v for k, v in done.items() if k != f"node-{slow}" and v is not None]
            if done.get(f"node-{slow}") is not None and others:
                result.notes += (f"; its last piece landed at {done[f'node-{slow}']:.1f} s, "
                                 f"the other nodes' by {max(others):.1f} s")
            healthy = report.find(self.results, "put")
            if healthy is not None and healthy.mb_s > 0:
                result.extra["ratio_to_unthrottled_put"] = result.mb_s / healthy.mb_s
                result.notes += f"; {result.mb_s / healthy.mb_s:.2f}x the unthrottled put"
        if "concurrent" in want:
            self.concurrent_puts()

    def run_repair_group(self, rate: int) -> None:
        repair.run_group(self, rate)

    def concurrent_puts(self) -> None:
        count = self.options.concurrent
        each = self.options.concurrent_size or max((self.options.size or source_bytes(self.model(0))) // 8, MiB)
        sources = [self.model(seed=10 + i, size=each) for i in range(count)]
        total = sum(source_bytes(s) for s in sources)

        def body() -> Outcome:
            started = time.monotonic()
            running = [self.cli("put", str(s), "--name", f"bench/concurrent-{i}", "--json")
                       for i, s in enumerate(sources)]
            try:
                finished = [self.finish(r, command_timeout(total)) for r in running]
            finally:
                for r in running:
                    r.kill()
            seconds = time.monotonic() - started
            return Outcome(total, seconds, finished,
                           notes=f"{count} CLI puts at once via node 0, {total // count / 1e6:.0f} MB each",
                           extra={"each_seconds": [round(f.seconds, 2) for f in finished]})

        self.measure(f"{count} puts at once", "put", body)

    # -- whole runs ------------------------------------------------------------------------

    def run(self) -> None:
        """Every selected phase, in order. A failed group is recorded (its error in
        ``failures``, node log tails on stderr) and the run goes on with the next group
        on a fresh cluster; everything is cleaned up whatever happens."""
        want = set(self.options.only)
        if want & {*NEEDS_STORED_MODEL, "put_stream"}:
            want.add("put")  # the gets read what it stored; put --stream is compared with it
        selected = frozenset(want)
        groups: list[tuple[str, Callable[[], None]]] = []
        if "baselines" in want:
            groups.append(("baselines", lambda: self.run_baselines(self.model(seed=0))))
        if "put" in want:
            groups.append(("single file", lambda: self.run_single_file_group(self.model(seed=0), selected)))
        if "dir" in want:
            groups.append(("directory", self.run_dir_group))
        if want & {"slow", "concurrent"}:
            groups.append(("slow node and concurrency", lambda: self.run_slow_group(self.model(seed=0), selected)))
        for rate in self.options.repair_rates if "repair" in want else ():
            groups.append((f"repair at {format_size(rate)}/s" if rate else "repair unpaced",
                           lambda rate=rate: self.run_repair_group(rate)))
        if "baselines" in want and len(groups) > 1:  # bracket the cluster phases: the machine may drift
            groups.append(("baselines again", lambda: self.run_baselines(self.model(seed=0), report.AGAIN)))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            for label, group in groups:
                self.run_group(label, group)
        finally:
            self.cleanup()

    def run_group(self, label: str, group: Callable[[], None]) -> None:
        try:
            group()
        except PHASE_FAILURES as err:
            self.failures.append(f"{label}: {first_line(err)}")
            print(f"\npeerstore.bench: {label} failed:\n{err}", file=sys.stderr)
            if self.cluster is not None:
                if self.cluster.log_tails() not in str(err):
                    print(self.cluster.log_tails(), file=sys.stderr)
                kept = self.keep_evidence(label)
                log(f"node logs, manifests and piece lists kept in {kept}")
            self.close_cluster()

    def keep_evidence(self, label: str) -> Path:
        """Copy what explains a failure (small files only) out of the cluster before it
        is deleted: each node's log, id, manifests and the list of pieces it holds."""
        c = self._cluster()
        out = self.options.workdir / f"failed-{os.getpid()}-{profile.slug(label)}"
        for node in c.nodes:
            dest = out / f"node-{node.index}"
            dest.mkdir(parents=True, exist_ok=True)
            if node.log_path.exists():  # not config.yaml: it holds the cluster key
                shutil.copy2(node.log_path, dest / "node.log")
            if (node.data_dir / "node.id").exists():
                shutil.copy2(node.data_dir / "node.id", dest / "node.id")
            if (node.data_dir / "manifests").is_dir():
                shutil.copytree(node.data_dir / "manifests", dest / "manifests", dirs_exist_ok=True)
            pieces = sorted(p.name for p in (node.data_dir / "pieces").rglob("*") if p.is_file()) \
                if (node.data_dir / "pieces").is_dir() else []
            (dest / "pieces.txt").write_text("".join(f"{name}\n" for name in pieces))
        return out

    def run_sweep(self) -> None:
        """put and get of one source per shard size, each on a fresh cluster; with
        ``repeat`` the sizes are run round after round (so drift in the machine's load
        hits every size alike) and each row reports the median."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        runs: dict[int, list[tuple[PhaseResult, PhaseResult]]] = {size: [] for size in self.options.sweep}
        try:
            if "baselines" in self.options.only:
                self.run_group("baselines", lambda: self.run_baselines(self.model(seed=0)))
            for round_ in range(1, self.options.repeat + 1):
                for shard_size in self.options.sweep:
                    label = format_size(shard_size) + (f" #{round_}" if self.options.repeat > 1 else "")
                    self.run_group(f"shard size {label}", lambda size=shard_size, label=label: runs[size].append(
                        self.sweep_once(size, label)))
        finally:
            self.cleanup()
        self.sweep_rows = [sweep_row(size, done) for size, done in runs.items() if done]

    def sweep_once(self, shard_size: int, label: str) -> tuple[PhaseResult, PhaseResult]:
        model = self.model(seed=0)
        self.fresh_cluster(shard_size)
        put = self.put(f"put, shards {label}", model, "bench/sweep")
        get = self.get(f"get, shards {label}", "bench/sweep", model)
        return put, get


def sweep_row(shard_size: int, runs: list[tuple[PhaseResult, PhaseResult]]) -> dict[str, Any]:
    """One shard size: median rates and CPU over its runs, the highest peaks."""
    puts, gets = [p for p, _ in runs], [g for _, g in runs]
    return {
        "shard_size": format_size(shard_size), "shard_bytes": shard_size, "runs": len(runs),
        "put_mb_s": statistics.median(p.mb_s for p in puts), "get_mb_s": statistics.median(g.mb_s for g in gets),
        "put_mb_s_all": [round(p.mb_s, 1) for p in puts], "get_mb_s_all": [round(g.mb_s, 1) for g in gets],
        "put_cpu_seconds": statistics.median(p.cpu_total for p in puts),
        "get_cpu_seconds": statistics.median(g.cpu_total for g in gets),
        "put_peak_rss_mib": max((p.max_peak_rss_mib or 0.0) for p in puts),
        "get_peak_rss_mib": max((g.max_peak_rss_mib or 0.0) for g in gets),
        "put_peak_anon_mib": max(max(p.extra.get("peak_anon_mib", {}).values(), default=0.0) for p in puts),
        "pieces": puts[0].extra.get("pieces"),
    }
