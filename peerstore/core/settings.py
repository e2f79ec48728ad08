"""Tunables of the node core, and the one place their defaults are written.

The config's ``transfer:``, ``gc:``, ``retention:``, ``scrub:`` and ``repair:`` sections
(``peerstore.shell.config``) take their defaults from here, and the daemon builds its core's settings with
:meth:`CoreSettings.from_config`. So a simulated node with ``CoreSettings()`` runs what a
daemon with a default config runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peerstore.core.scrub import DEFAULT_MAX_BYTES_PER_SECOND, DEFAULT_PERIOD
from peerstore.model.policy import MiB, Policy

REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class CoreSettings:
    policy: Policy = Policy()
    request_timeout: float = REQUEST_TIMEOUT  # a peer that has not answered by then is skipped
    retries: int = 5  # attempts per piece transfer before re-placing it elsewhere
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    max_inflight_bytes_per_peer: int = 32 * MiB
    memory_budget: int = 128 * MiB  # stripe buffers held by the shell for this node's ops
    # A put sends each data shard once and its first holder forwards it to the second
    # (core/forwarding.py); False: the coordinator sends every copy itself.
    forward_replicas: bool = True
    commit_timeout: float = REQUEST_TIMEOUT  # per manifest / catalog request during commit
    # status: a peer that has not answered by then is reported as not asked (core/status.py),
    # so one frozen member costs the user this, not request_timeout.
    status_timeout: float = 2.0
    # Garbage collection (config ``gc:``) and retention (config ``retention:``), core/collector.py.
    gc_interval: float = 60.0  # seconds between GC passes on each node
    gc_lease_seconds: float = 120.0  # a piece stored or renewed for a put stays this long
    gc_margin_seconds: float = 60.0  # ... and this much longer before GC may take it
    retention_keep_last: int | None = None  # versions kept per name; None: every version
    # Scrub (config ``scrub:``), core/scrub.py: every held piece re-read once per period.
    scrub_period: float = DEFAULT_PERIOD  # seconds; 0 turns scrub off
    scrub_max_bytes_per_second: int = DEFAULT_MAX_BYTES_PER_SECOND
    # Repair after node loss (config ``repair:``), core/repairer.py.
    repair_grace_seconds: float = 600.0  # a member away this long has its pieces re-created
    repair_max_bytes_per_second: int = 32 * MiB  # repair's writes per node; 0: unlimited
    repair_rebalance: bool = True  # drop surplus copies and even out the nodes' shares

    # The fields the config's ``transfer:`` section sets, under the same names.
    TRANSFER_FIELDS: ClassVar[tuple[str, ...]] = (
        "request_timeout", "retries", "backoff_base", "backoff_max",
        "max_inflight_bytes_per_peer", "memory_budget", "forward_replicas",
    )

    # The config's ``gc:`` and ``retention:`` keys, by the core field each one sets.
    GC_FIELDS: ClassVar[dict[str, str]] = {
        "gc_interval": "interval_seconds", "gc_lease_seconds": "lease_seconds",
        "gc_margin_seconds": "margin_seconds",
    }
    RETENTION_FIELDS: ClassVar[dict[str, str]] = {"retention_keep_last": "keep_last"}
    SCRUB_FIELDS: ClassVar[dict[str, str]] = {
        "scrub_period": "period", "scrub_max_bytes_per_second": "max_bytes_per_second",
    }
    REPAIR_FIELDS: ClassVar[dict[str, str]] = {
        "repair_grace_seconds": "grace_seconds", "repair_max_bytes_per_second": "max_bytes_per_second",
        "repair_rebalance": "rebalance",
    }

    @classmethod
    def from_config(cls, policy: Policy, transfer: Any, *, gc: Any = None, retention: Any = None,
                    scrub: Any = None, repair: Any = None) -> CoreSettings:
        """The settings a daemon runs with: ``transfer`` is the config's
        ``TransferSettings`` (taken by its attributes: the core never imports the config
        reader); its ``request_timeout`` also bounds each commit request. ``gc``,
        ``retention``, ``scrub`` and ``repair`` are the config's sections of those names (None:
        the defaults)."""
        values = {name: getattr(transfer, name) for name in cls.TRANSFER_FIELDS}
        for section, fields in ((gc, cls.GC_FIELDS), (retention, cls.RETENTION_FIELDS),
                                (scrub, cls.SCRUB_FIELDS), (repair, cls.REPAIR_FIELDS)):
            if section is not None:
                values.update({name: getattr(section, key) for name, key in fields.items()})
        return cls(policy=policy, commit_timeout=transfer.request_timeout, **values)
