"""Prometheus metrics of one node, served on ``/metrics``.

Transfer counters are updated where bytes move. Everything else (store size, members,
checkpoints by tolerance, core event counts) is read from a snapshot the trio side
refreshes every second: the HTTP server runs in its own thread and must never touch
state that trio is changing.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from peerstore.shell.daemon.metrics_http import serve_metrics

log = logging.getLogger("peerstore.metrics")

# Label values that alerts watch (deploy/prometheus/alerts.yml) are exported at 0 from the
# start: an alert on increase() cannot see a series' first sample, only later changes.
ERROR_KINDS = ("send", "disk_full", "disk_io", "store", "corrupt_piece", "auth", "codec", "internal", "memory",
               "handshake_dropped", "local_refused")
ALERTED_OPERATIONS = ("put", "get")
OPERATION_OUTCOMES = ("ok", "failed")
MEMBER_STATES = ("alive", "suspect", "dead", "left")
ALERTED_CORE_EVENTS = (
    "request_timeout", "request_unreachable", "piece_fallbacks",
    "stripes_rebuilt_from_parity", "corrupt_pieces_fetched", "gossip_dropped_AuthError",
    "catalog_conflicts", "held_pieces_corrupt",
)
# Why the watcher could not store a checkpoint (peerstore.shell.watcher.failure_kind and the
# Storers); exported at 0 from the start like ERROR_KINDS.
WATCH_FAILURE_KINDS = ("too_few_nodes", "disk_full", "unreachable", "outcome_unknown", "put_failed", "io_error")


class SnapshotCollector:
    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self):
        snap = self.snapshot  # one reference read: the dict is replaced, never mutated
        stored = GaugeMetricFamily("peerstore_pieces_stored", "Pieces held in this node's store")
        stored.add_metric([], snap.get("pieces", 0))
        yield stored
        stored_bytes = GaugeMetricFamily("peerstore_stored_bytes", "Bytes of pieces held in this node's store")
        stored_bytes.add_metric([], snap.get("bytes", 0))
        yield stored_bytes
        buffers = GaugeMetricFamily("peerstore_buffered_bytes", "Payload bytes held in memory for transfers")
        buffers.add_metric([], snap.get("buffered", 0))
        yield buffers
        members = GaugeMetricFamily("peerstore_members", "Cluster members by state", labels=["state"])
        counts = snap.get("members", {})
        if counts:  # no membership yet: no series, rather than a cluster of zero alive nodes
            counts = {**dict.fromkeys(MEMBER_STATES, 0), **counts}
        for state, count in sorted(counts.items()):
            members.add_metric([state], count)
        yield members
        health = GaugeMetricFamily(
            "peerstore_local_health", "Lifeguard local health score (0 is healthy; higher slows probing)"
        )
        health.add_metric([], snap.get("local_health", 0))
        yield health
        checkpoints = GaugeMetricFamily(
            "peerstore_checkpoints", "Checkpoint versions in the catalog by tolerance at commit",
            labels=["tolerance"],
        )
        for tolerance, count in sorted(snap.get("tolerance", {}).items()):
            checkpoints.add_metric([str(tolerance)], count)
        yield checkpoints
        unrecoverable = GaugeMetricFamily(
            "peerstore_checkpoints_at_risk", "Checkpoint versions stored with tolerance 0 or less"
        )
        unrecoverable.add_metric([], sum(c for t, c in snap.get("tolerance", {}).items() if t <= 0))
        yield unrecoverable
        if snap.get("tolerance"):  # no checkpoints: no lowest tolerance
            lowest = GaugeMetricFamily(
                "peerstore_checkpoints_lowest_tolerance", "Lowest tolerance at commit of any checkpoint version"
            )
            lowest.add_metric([], min(snap["tolerance"]))
            yield lowest
        if "min_tolerance" in snap:
            policy = GaugeMetricFamily("peerstore_policy_min_tolerance", "policy.min_tolerance of this node")
            policy.add_metric([], snap["min_tolerance"])
            yield policy
        yield from _watch_metrics(snap.get("watch") or {})
        yield from _repair_metrics(snap.get("repair") or {}, snap.get("core", {}))
        yield from _series(CounterMetricFamily, FORWARDING_COUNTERS, snap.get("core", {}))
        yield from _gc_metrics(snap.get("gc") or {}, snap.get("disk") or {})
        yield from _scrub_metrics(snap.get("scrub") or {})
        events = CounterMetricFamily("peerstore_core_events", "Protocol events by kind", labels=["kind"])
        for kind, count in sorted({**dict.fromkeys(ALERTED_CORE_EVENTS, 0), **snap.get("core", {})}.items()):
            events.add_metric([kind], count)
        yield events


# Forwarded replication (core/forwarding.py); a sustained rise of fallbacks means relays
# decline (memory, full queues) or fail, and puts cost the coordinator's NIC more.
FORWARDING_COUNTERS = (
    ("peerstore_replicas_forwarded", "Copies of this node's puts that a relay forwarded (acknowledged by "
     "their holder)", "replicas_forwarded"),
    ("peerstore_pieces_forwarded", "Pieces this node passed on for another node's put", "pieces_forwarded"),
    ("peerstore_forward_fallbacks", "Copies this node sent itself after a relay declined or failed to "
     "forward them", "forward_fallbacks"),
)


def _series(family: type, table: tuple[tuple[str, str, str], ...], values: dict[str, Any]):
    """One unlabelled metric per (name, help, key) row of ``table``, valued ``values[key]``
    (0 when absent or None: every series is present from the start)."""
    for name, text, key in table:
        metric = family(name, text)
        metric.add_metric([], float(values.get(key) or 0))
        yield metric


def _watch_metrics(watch: dict[str, Any]):
    """The watcher's series; all present (at 0) on a node that watches nothing."""
    gauges = (
        ("peerstore_watch_dirs", "Directories this node watches (watch.paths)", "dirs"),
        ("peerstore_watch_pending", "Checkpoints the watcher has seen and not stored yet", "pending"),
        ("peerstore_watch_oldest_pending_seconds", "How long the oldest pending checkpoint has waited",
         "oldest_pending"),
        ("peerstore_watch_last_success_timestamp_seconds",
         "Unix time the watcher last stored a checkpoint (0: never)", "last_success"),
    )
    yield from _series(GaugeMetricFamily, gauges, watch)
    counters = (
        ("peerstore_watch_stored", "Checkpoints the watcher stored since the node started", "stored"),
        ("peerstore_watch_unchanged", "Rewritten checkpoints not stored again: same content", "unchanged"),
        ("peerstore_watch_read_changed", "Store attempts abandoned because a file changed while read",
         "read_changed"),
    )
    yield from _series(CounterMetricFamily, counters, watch)
    failures = CounterMetricFamily("peerstore_watch_failures", "Watcher store attempts that failed, by reason",
                                   labels=["reason"])
    for reason, count in sorted({**dict.fromkeys(WATCH_FAILURE_KINDS, 0), **watch.get("failures", {})}.items()):
        failures.add_metric([reason], count)
    yield failures


def _repair_metrics(repair: dict[str, Any], core: dict[str, Any]):
    """Repair after node loss (docs/self-healing.md); present at 0 before the first scan."""
    gauges = (
        ("peerstore_checkpoints_below_policy",
         "Checkpoint versions below their policy at this node's last repair scan", "below_policy"),
        ("peerstore_repair_bytes_left", "Bytes this node's repair still has to re-create", "bytes_left"),
        ("peerstore_repair_cluster_bytes_left",
         "Bytes every node's repair together still has to re-create (this node's last scan)", "cluster_bytes_left"),
        ("peerstore_repair_rate_bytes", "Bytes per second this node's repair stored recently", "rate"),
        ("peerstore_rebalance_left", "Rebalance moves and surplus drops this node still has to carry out",
         "rebalance_left"),
        ("peerstore_rebalance_bytes_left", "Bytes this node's rebalance moves still have to copy",
         "rebalance_bytes_left"),
    )
    yield from _series(GaugeMetricFamily, gauges, repair)
    majority = GaugeMetricFamily(
        "peerstore_repair_majority", "1 while this node sees a majority of the last stable membership (may repair)")
    majority.add_metric([], 1 if repair.get("majority") else 0)
    yield majority
    done = CounterMetricFamily("peerstore_repair_bytes", "Bytes repair re-created on other nodes or here")
    done.add_metric([], core.get("repair_bytes", 0))
    yield done
    counters = (
        ("peerstore_rebalance_bytes_copied", "Bytes rebalance copied to emptier nodes (each old copy then dropped)",
         "rebalance_bytes_copied"),
        ("peerstore_rebalance_pieces_dropped", "Surplus piece copies this node dropped for rebalance",
         "rebalance_pieces_dropped"),
    )
    yield from _series(CounterMetricFamily, counters, core)


def _scrub_metrics(scrub: dict[str, Any]):
    """Scrub (core/scrub.py, docs/self-healing.md): this node's re-reads of its own pieces.
    The counters are present at 0 from the start; the last pass's age only once one ended."""
    counters = (
        ("peerstore_scrub_passes", "Scrub passes over every held piece completed since the node started",
         "passes"),
        ("peerstore_scrub_pieces_checked", "Pieces scrub re-read and hashed", "pieces_checked"),
        ("peerstore_scrub_bytes_checked", "Bytes scrub re-read and hashed", "bytes_checked"),
        ("peerstore_scrub_corrupt_found",
         "Held pieces scrub found corrupt (moved to quarantine, re-created from other copies)", "corrupt_found"),
    )
    yield from _series(CounterMetricFamily, counters, scrub)
    gauges = (
        ("peerstore_scrub_period_seconds", "scrub.period: every piece is re-read once in this time (0: off)",
         "period"),
        ("peerstore_scrub_rate_bytes", "Bytes per second scrub re-reads at now (paced by scrub.period)", "rate"),
        ("peerstore_scrub_behind",
         "1 if a pass at scrub.max_bytes_per_second takes longer than scrub.period", "behind"),
    )
    yield from _series(GaugeMetricFamily, gauges, scrub)
    progress = GaugeMetricFamily("peerstore_scrub_pass_progress_ratio", "Fraction of the current pass done")
    total = scrub.get("pass_total") or 0
    progress.add_metric([], (scrub.get("pass_done") or 0) / total if total else 0.0)
    yield progress
    age = GaugeMetricFamily("peerstore_scrub_last_pass_age_seconds",
                            "Seconds since the last scrub pass ended (before the first: since it began; 0: none yet)")
    age.add_metric([], scrub.get("overdue_age") or 0.0)
    yield age


def _gc_metrics(gc: dict[str, Any], disk: dict[str, Any]):
    """Garbage collection and the store's file system (docs/self-healing.md); present at 0
    before the first GC pass."""
    gauges = (
        ("peerstore_gc_awaiting_bytes",
         "Bytes of pieces no live version needs, not yet deleted (freed at the next GC pass)", "awaiting_bytes"),
        ("peerstore_gc_leased_bytes",
         "Bytes of pieces no live version needs yet, held by a running put's lease (or the boot lease)",
         "leased_bytes"),
    )
    yield from _series(GaugeMetricFamily, gauges, gc)
    blocked = GaugeMetricFamily("peerstore_gc_blocked",
                                "1 if this node's last GC pass stopped before deleting (see peerstore status)")
    blocked.add_metric([], 1 if gc.get("blocked") else 0)
    yield blocked
    freed = CounterMetricFamily("peerstore_gc_freed_bytes", "Bytes of pieces garbage collection deleted here")
    freed.add_metric([], gc.get("freed_bytes", 0) or 0)
    yield freed
    if disk:  # only once the file system was measured
        for name, text, key in (
            ("peerstore_disk_free_bytes", "Free bytes on the file system of data_dir (for non-root users)", "free"),
            ("peerstore_disk_size_bytes", "Size in bytes of the file system of data_dir", "total"),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], disk.get(key, 0))
            yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["peer"]
        self.bytes_sent = Counter("peerstore_bytes_sent", "Payload bytes sent", labels, registry=self.registry)
        self.bytes_received = Counter("peerstore_bytes_received", "Payload bytes received", labels, registry=self.registry)
        self.pieces_sent = Counter("peerstore_pieces_sent", "Pieces sent", labels, registry=self.registry)
        self.pieces_received = Counter("peerstore_pieces_received", "Pieces received", labels, registry=self.registry)
        self.transfer_seconds = Histogram(
            "peerstore_piece_send_seconds", "Time to send one piece", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter("peerstore_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.operations = Counter("peerstore_operations", "Client operations by kind and outcome",
                                  ["kind", "outcome"], registry=self.registry)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for kind in ALERTED_OPERATIONS:
            for outcome in OPERATION_OUTCOMES:
                self.operations.labels(kind, outcome)
        self.snapshot = SnapshotCollector()
        self.registry.register(self.snapshot)

    def serve(self, host: str, port: int, discovery: Any = None) -> None:
        """Start the HTTP endpoint in a daemon thread (port 0: disabled); ``discovery``
        returns the http_sd target list served on /discovery (metrics_http.py)."""
        if port:
            # Bounded: idle connections time out and at most a few are served at once.
            self.server = serve_metrics(self.registry, host, port, discovery=discovery)
            log.info("metrics on http://%s:%d/metrics", host, port)
