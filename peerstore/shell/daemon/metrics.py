"""Prometheus metrics of one node, served on ``/metrics``.

Transfer counters are updated where bytes move. Everything else (store size, members,
checkpoints by tolerance, core event counts) is read from a snapshot the trio side
refreshes every second: the HTTP server runs in its own thread and must never touch
state that trio is changing.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("peerstore.metrics")

# Label values that alerts watch (deploy/prometheus/alerts.yml) are exported at 0 from the
# start: an alert on increase() cannot see a series' first sample, only later changes.
ERROR_KINDS = ("send", "disk_full", "store", "corrupt_piece", "auth", "codec", "internal")
ALERTED_OPERATIONS = ("put", "get")
OPERATION_OUTCOMES = ("ok", "failed")
MEMBER_STATES = ("alive", "suspect", "dead", "left")
ALERTED_CORE_EVENTS = (
    "request_timeout", "request_unreachable", "piece_fallbacks",
    "stripes_rebuilt_from_parity", "corrupt_pieces_fetched", "gossip_dropped_AuthError",
    "catalog_conflicts", "held_pieces_corrupt",
)


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
        events = CounterMetricFamily("peerstore_core_events", "Protocol events by kind", labels=["kind"])
        for kind, count in sorted({**dict.fromkeys(ALERTED_CORE_EVENTS, 0), **snap.get("core", {})}.items()):
            events.add_metric([kind], count)
        yield events


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

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint in a daemon thread (port 0: disabled)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", host, port)
