"""The ``repair`` phase: lose a node for good and time until every checkpoint is back at policy.

One group per repair pacing (``--repair-rate``), each on a fresh cluster whose
``repair.grace_seconds`` is short (``--repair-grace``):

1. put ``CHECKPOINTS`` checkpoints (``--size`` in total) through node 0, one after the
   other: the put rate repair is compared with, measured in the same group;
2. ``kill -9`` the node (never node 0) whose piece bytes are closest to an equal share
   (a fifth on 5 nodes), and delete its data directory: gone for good;
3. from the survivors' metrics, note when they see it dead; the grace counts from there.
   When it ends, get one of the checkpoints while repair runs; then wait until no
   survivor's repair has anything left and ``status --json`` reports every checkpoint at
   ``tolerance_now`` >= the best the survivors allow, none below policy;
4. check that on disk: the survivors' piece files give each checkpoint's exact tolerance,
   the bytes re-created, and (their mtimes) when the first and the last one landed;
5. get the same checkpoint again, nothing repairing (same four nodes): the baseline for
   the get during repair.

Repair rate: bytes re-created (the survivors' ``peerstore_repair_bytes_total``) per second,
from the end of the grace to the last re-created piece file (the survivors' metrics show
the death up to about a second late, so a first piece landing before the grace's end as
estimated moves that end back to it). The repair row's CPU columns cover everything from
the kill to the confirmation, the get during repair included; the get's own row, the
repair's CPU while it ran.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

from peerstore.bench.baselines import stored_factor
from peerstore.bench.commands import Finished, Running, command_timeout, drop_page_cache
from peerstore.bench.report import REPAIR_AIM as AIM, Outcome, PhaseResult
from peerstore.bench.sources import source_bytes
from peerstore.bench.stored import stored_manifest
from peerstore.core.settings import CoreSettings
from peerstore.model import placement
from peerstore.model.manifest import Manifest
from peerstore.model.policy import MiB, Policy
from peerstore.shell.config import RepairSettings
from peerstore.testing.procs import ProcCluster

DEFAULT_RATE = CoreSettings.repair_max_bytes_per_second  # the config default, 32 MiB/s per node
DEFAULT_GRACE = 2.0
CHECKPOINTS = 5
DEFAULT_TOTAL = 1000 ** 3  # bytes over all CHECKPOINTS when --size is not given
SEED = 40  # sources bench/repair-0.. use seeds SEED..SEED+CHECKPOINTS-1
POLL_INTERVAL = 0.25  # seconds between metric reads (nodes refresh their metrics every second)
DETECT_TIMEOUT = 60.0
SLOWEST_REPAIR_RATE = 1e6  # bytes/s: a repair slower than this is stuck

# metric name (with labels) -> key in a node's sample
METRICS = {
    'peerstore_members{state="dead"}': "dead",
    "peerstore_repair_bytes_total": "repair_bytes",
    "peerstore_repair_bytes_left": "bytes_left",
    "peerstore_checkpoints_below_policy": "below_policy",
    "peerstore_repair_cluster_bytes_left": "cluster_bytes_left",
}


class Bench(Protocol):
    """What the phase uses of ``runner.Bench`` (which calls it)."""

    options: Any
    policy: Policy
    results: list[PhaseResult]
    page_cache_requested: bool
    page_cache_dropped: int

    def model(self, seed: int, size: int | None = None) -> Path: ...
    def fresh_cluster(self, shard_size: int | None = None, extra: dict[str, Any] | None = None) -> ProcCluster: ...
    def measure(self, phase: str, kind: str, body: Callable[[], Outcome], meter_nodes: bool = True,
                drop_caches: bool = True) -> PhaseResult: ...
    def get(self, phase: str, name: str, source: Path, *, via: int = 0, notes: str = "",
            drop_caches: bool = True) -> PhaseResult: ...
    def cli(self, *args: str, via: int = 0) -> Running: ...
    def finish(self, running: Running, timeout: float) -> Finished: ...


Sample = dict[int, dict[str, float]]  # survivor index -> figures (a node that did not answer is absent)


def pacing_label(rate: int) -> str:
    return "unpaced" if rate <= 0 else f"{rate / MiB:g} MiB/s per node"


def parse_metrics(text: str) -> dict[str, float]:
    """The figures of ``METRICS`` in a Prometheus text exposition (absent ones left out)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in METRICS:
            try:
                out[METRICS[name]] = float(value)
            except ValueError:
                continue
    return out


def read_metrics(c: ProcCluster, nodes: list[int]) -> Sample:
    sample: Sample = {}
    for i in nodes:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{c.nodes[i].metrics_port}/metrics", timeout=2) as r:
                sample[i] = parse_metrics(r.read().decode())
        except OSError:
            continue
    return sample


def poll(c: ProcCluster, nodes: list[int], done: Callable[[Sample], bool], timeout: float,
         what: str) -> tuple[float, Sample]:
    """Read the nodes' metrics until ``done``; (wall-clock time of that read, the read)."""
    deadline = time.monotonic() + timeout
    while True:
        at = time.time()
        sample = read_metrics(c, nodes)
        if len(sample) == len(nodes) and done(sample):
            return at, sample
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}; last metrics: {sample}\n"
                               f"{c.log_tails()}")
        time.sleep(POLL_INTERVAL)


def inventory(data_dir: Path) -> dict[str, tuple[int, float]]:
    """Piece id (hex) -> (size, mtime) of every piece file under ``data_dir/pieces``."""
    out: dict[str, tuple[int, float]] = {}
    root = data_dir / "pieces"
    for sub in os.scandir(root) if root.is_dir() else ():
        if not sub.is_dir():
            continue
        for entry in os.scandir(sub.path):
            if len(entry.name) != 64:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            out[entry.name] = (st.st_size, st.st_mtime)
    return out


def choose_victim(held: dict[int, int], spare: int) -> int:
    """The node, not ``spare``, whose piece bytes are closest to an equal share of all."""
    share = sum(held.values()) / len(held)
    return min((i for i in held if i != spare), key=lambda i: (abs(held[i] - share), i))


def disk_tolerance(manifest: Manifest, holdings: dict[int, set[str]]) -> int:
    """Exact tolerance of ``manifest`` over what ``holdings`` (node -> piece ids held) hold."""
    stripes = []
    for _, _, stripe in manifest.iter_stripes():
        holders = [{str(i) for i, held in holdings.items() if pid.hex() in held} for pid in stripe.piece_ids]
        stripes.append((holders, stripe.k))
    return placement.checkpoint_tolerance(stripes, empty=len(holdings) - 1)


def pacing_bound(per_node: dict[str, float], rate: int, burst: int) -> float | None:
    """About the fastest rate (bytes/s over the whole repair) pacing allows for this split
    of the work between nodes: each node's bucket starts full (``burst``) and then refills
    at ``rate`` (approximate: a piece is paid for when its transfer starts, and its file
    lands later). None: unpaced, or all within the burst."""
    if rate <= 0:
        return None
    seconds = max((max(0.0, b - burst) / rate for b in per_node.values()), default=0.0)
    return sum(per_node.values()) / seconds if seconds > 0 else None


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The share of interval ``a`` that ``b`` covers (0 to 1)."""
    length = a[1] - a[0]
    if length <= 0:
        return 0.0
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0])) / length


def at_policy(status: dict[str, Any] | None, names: list[str], best: int) -> bool:
    """``status --json`` reports every one of ``names`` at tolerance ``best`` or more (a small
    checkpoint's layout may happen to do better), none below policy."""
    if not status:
        return False
    rows = {row["name"]: row for row in status.get("checkpoints", [])}

    def good(row: dict[str, Any]) -> bool:
        now = row.get("tolerance_now")
        return isinstance(now, int) and now >= best and not row.get("below_policy")

    return all(name in rows and good(rows[name]) for name in names)


def repair_config(grace: float, rate: int) -> dict[str, Any]:
    """The nodes' ``repair`` section. Rebalancing (where the config has it) is off: it
    starts once nothing is left to repair and would move pieces, blurring when the repair
    ended on disk."""
    section: dict[str, Any] = {"grace_seconds": grace, "max_bytes_per_second": rate}
    if "rebalance" in {f.name for f in fields(RepairSettings)}:
        section["rebalance"] = False
    return section


def run_group(bench: Bench, rate: int) -> None:
    """Put, lose a node, time the repair and a get during it (see the module docstring)."""
    o = bench.options
    label = pacing_label(rate)
    each = max((o.size or DEFAULT_TOTAL) // CHECKPOINTS, MiB)
    sources = [bench.model(seed=SEED + i, size=each) for i in range(CHECKPOINTS)]
    names = [f"bench/repair-{i}" for i in range(CHECKPOINTS)]
    c = bench.fresh_cluster(extra={"repair": repair_config(o.repair_grace, rate)})
    put = bench.measure(f"repair: put x{CHECKPOINTS} [{label}]", "put", lambda: _puts(bench, sources, names))

    before = {n.index: inventory(n.data_dir) for n in c.nodes}
    held = {i: sum(size for size, _ in pieces.values()) for i, pieces in before.items()}
    victim = choose_victim(held, spare=0)
    survivors = [i for i in held if i != victim]
    probe, probe_source = names[-1], sources[-1]
    if bench.page_cache_requested and drop_page_cache():
        bench.page_cache_dropped += 1
    killed_at = time.time()
    c.kill(victim)
    shutil.rmtree(c.nodes[victim].data_dir)
    lost = {"victim": victim, "victim_piece_bytes": held[victim], "victim_share": held[victim] / sum(held.values()),
            "killed_at": killed_at}
    meanwhile: list[PhaseResult] = []

    def body() -> Outcome:
        return _repair(bench, c, survivors, names, before, lost, rate, label, probe, probe_source, meanwhile)

    repaired = bench.measure(f"repair [{label}]", "repair", body, drop_caches=False)
    # the get ran inside the repair's measurement: show it after the repair's row
    bench.results.remove(repaired)
    bench.results.insert(bench.results.index(meanwhile[0]), repaired)
    after = bench.get(f"repair: get after [{label}]", probe, probe_source,
                      notes="the same get, nothing repairing (4 nodes, after the repair)")
    _conclude(put, repaired, meanwhile[0], after, rate, stored_factor(bench.policy))


def _puts(bench: Bench, sources: list[Path], names: list[str]) -> Outcome:
    finished, client_seconds, nbytes = [], 0.0, 0
    for source, name in zip(sources, names, strict=True):
        done = bench.finish(bench.cli("put", str(source), "--name", name, "--json"),
                            command_timeout(source_bytes(source)))
        reply = json.loads(done.stdout)
        finished.append(done)
        nbytes += int(reply["size"])
        client_seconds += float(reply.get("seconds") or done.seconds)
    seconds = sum(f.seconds for f in finished)
    return Outcome(nbytes, seconds, finished, notes=(
        f"{len(names)} checkpoints of {nbytes / len(names) / 1e6:.0f} MB, one after the other; "
        f"{nbytes / client_seconds / 1e6:.0f} MB/s without CLI start-up"),
        extra={"client_seconds": round(client_seconds, 3), "checkpoints": len(names),
               "client_mb_s": round(nbytes / client_seconds / 1e6, 2)})


def _repair(bench: Bench, c: ProcCluster, survivors: list[int], names: list[str],
            before: dict[int, dict[str, tuple[int, float]]], lost: dict[str, Any], rate: int, label: str,
            probe: str, probe_source: Path, meanwhile: list[PhaseResult]) -> Outcome:
    grace = bench.options.repair_grace
    victim = lost["victim"]
    dead_seen, _ = poll(c, survivors, lambda s: any(m.get("dead", 0) >= 1 for m in s.values()),
                        DETECT_TIMEOUT, f"the survivors to see node {victim} dead")
    grace_end = dead_seen + grace
    time.sleep(max(0.0, grace_end - time.time()))
    get_started = time.time()
    meanwhile.append(bench.get(f"repair: get meanwhile [{label}]", probe, probe_source, drop_caches=False))
    get_ended = time.time()

    timeout = 120.0 + 3 * lost["victim_piece_bytes"] / SLOWEST_REPAIR_RATE
    # Nothing queued anywhere, then ask status (it reads every inventory afresh); the nodes'
    # own below-policy counts wait for their next scan, up to a minute later.
    poll(c, survivors, lambda s: sum(m.get("repair_bytes", 0) for m in s.values()) > 0
         and all(m.get("bytes_left", 1) == 0 for m in s.values()),
         timeout, "every survivor's repair to have nothing left")
    best = placement.best_tolerance(len(survivors), bench.policy.stripe_width, bench.policy.parity)
    deadline = time.monotonic() + timeout
    while not at_policy(status := c.status(0), names, best):
        if time.monotonic() > deadline:
            rows = {r["name"]: (r.get("tolerance_now"), r.get("below_policy")) for r in (status or {}).get(
                "checkpoints", [])}
            raise TimeoutError(f"status never reported tolerance {best} for every checkpoint: {rows}\n"
                               f"{c.log_tails()}")
        time.sleep(1.0)
    time.sleep(1.2)  # the nodes' metrics are refreshed every second
    final = read_metrics(c, survivors)

    after = {i: inventory(c.nodes[i].data_dir) for i in survivors}
    new = [(size, mtime) for i in survivors for pid, (size, mtime) in after[i].items() if pid not in before[i]]
    if not new:
        raise RuntimeError(f"repair re-created no piece file on nodes {survivors}\n{c.log_tails()}")
    holdings = {i: set(pieces) for i, pieces in after.items()}
    disk = {}
    for name in names:
        manifest = stored_manifest(c.nodes[0].data_dir, name)
        if manifest is None:
            raise RuntimeError(f"node 0 holds no manifest of {name}")
        disk[name] = disk_tolerance(manifest, holdings)
    if any(t < best for t in disk.values()):
        raise RuntimeError(f"status reports tolerance {best} but the piece files give {disk}")

    first_piece = min(m for _, m in new)
    last_piece = max(m for _, m in new)
    # The survivors' metrics show the death up to about a second late; repair cannot start
    # before the grace ends, so a first piece before our estimate corrects it.
    clamped = first_piece < grace_end
    grace_end = min(grace_end, first_piece)
    per_node = {f"node-{i}": final.get(i, {}).get("repair_bytes", 0.0) for i in survivors}
    metric_bytes = int(sum(per_node.values()))
    disk_bytes = sum(size for size, _ in new)
    nbytes = metric_bytes or disk_bytes
    seconds = last_piece - grace_end
    burst = max(rate, 2 * bench.policy.shard_size)
    extra = {
        **lost, "grace_seconds": grace, "pacing_bytes_per_second": rate, "default_pacing": rate == DEFAULT_RATE,
        "seen_dead_after_kill_seconds": round(dead_seen - lost["killed_at"], 2),
        "grace_end_after_kill_seconds": round(grace_end - lost["killed_at"], 2),
        "grace_end_from_first_piece": clamped,
        "first_piece_after_grace_seconds": round(first_piece - grace_end, 2),
        "repair_seconds_from_grace_end": round(seconds, 2),
        "total_seconds_from_kill": round(last_piece - lost["killed_at"], 2),
        "active_seconds_first_to_last_piece": round(last_piece - first_piece, 2),
        "bytes_recreated_metric": metric_bytes, "bytes_recreated_disk": disk_bytes, "pieces_recreated": len(new),
        "repair_bytes_per_node": per_node,
        "recreated_over_lost": round(nbytes / lost["victim_piece_bytes"], 3) if lost["victim_piece_bytes"] else None,
        "pacing_bound_bytes_per_second": pacing_bound(per_node, rate, burst),
        "tolerance_best": best, "tolerance_now": {r["name"]: r.get("tolerance_now") for r in status["checkpoints"]
                                                  if r["name"] in names},
        "disk_tolerance": disk, "get_meanwhile_window": (get_started, get_ended),
        # what repair kept doing while the get ran: bytes whose piece files landed meanwhile
        "repair_bytes_during_get": sum(size for size, mtime in new if get_started <= mtime <= get_ended),
        "repair_window": (first_piece, last_piece),
    }
    return Outcome(nbytes, seconds, extra=extra)


def _conclude(put: PhaseResult, repaired: PhaseResult, during: PhaseResult, after: PhaseResult, rate: int,
              factor: float) -> None:
    """The ratios (repair to put, get during repair to get after it) and the notes."""
    x = repaired.extra
    put_rate = put.extra.get("client_mb_s") or put.mb_s
    x["put_mb_s"] = put_rate
    x["ratio_to_put"] = round(repaired.mb_s / put_rate, 3) if put_rate else None
    x["ratio_to_put_stored_bytes"] = (round(repaired.mb_s / (put_rate * factor), 3)
                                      if put_rate else None)
    window = tuple(x.pop("get_meanwhile_window"))
    share = overlap(window, tuple(x.pop("repair_window")))
    alongside = x["repair_bytes_during_get"] / (window[1] - window[0]) / 1e6 if window[1] > window[0] else 0.0
    slowdown = during.seconds / after.seconds if after.seconds > 0 and not during.error else None
    x["get_during_over_after_seconds"] = round(slowdown, 3) if slowdown else None
    x["get_overlap_with_repair"] = round(share, 3)
    bound = x["pacing_bound_bytes_per_second"]
    busiest = max(x["repair_bytes_per_node"].values(), default=0)
    repaired.notes = (
        f"node {x['victim']} ({100 * x['victim_share']:.0f}% of the piece bytes) killed -9 and wiped; "
        f"seen dead {x['seen_dead_after_kill_seconds']:.1f} s later, grace {x['grace_seconds']:g} s; "
        + ("the first piece landed before the grace's end as the metrics showed it (taken as the end); "
           if x["grace_end_from_first_piece"] else
           f"first piece {x['first_piece_after_grace_seconds']:.1f} s after the grace; ")
        + "policy back "
        f"{x['repair_seconds_from_grace_end']:.1f} s after it ({x['total_seconds_from_kill']:.1f} s after the kill); "
        f"{repaired.bytes / 1e6:.0f} MB re-created ({x['recreated_over_lost'] or 0:.2f}x the {x['victim_piece_bytes'] / 1e6:.0f} MB "
        f"lost); {x['ratio_to_put']}x the put's {put_rate:.0f} MB/s (aim {AIM}), "
        f"{x['ratio_to_put_stored_bytes']}x its stored bytes/s; pacing {pacing_label(rate)}"
        + (f", which allows about {bound / 1e6:.0f} MB/s for this split of the work "
           f"(busiest node {busiest / 1e6:.0f} MB)" if bound else "")
        + (f"; that caps repair below {AIM}x put: see the run with --repair-rate raised"
           if bound and put_rate and bound / 1e6 < AIM * put_rate else ""))
    during.extra["overlap_with_repair"] = round(share, 3)
    during.extra["repair_mb_s_meanwhile"] = round(alongside, 1)
    during.extra["seconds_over_get_after"] = x["get_during_over_after_seconds"]
    during.notes = (f"started at the end of the grace; repair ran during {100 * share:.0f}% of it and "
                    f"re-created {alongside:.0f} MB/s meanwhile ({repaired.mb_s:.0f} over the whole repair); "
                    + (f"{slowdown:.2f}x the time of the same get after the repair ({after.seconds:.1f} s)"
                       if slowdown else "no baseline"))
