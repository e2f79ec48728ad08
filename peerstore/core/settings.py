"""Tunables of the node core, and the one place their defaults are written.

The config's ``transfer:`` section (``peerstore.shell.config.TransferSettings``) takes its
defaults from here, and the daemon builds its core's settings with
:meth:`CoreSettings.from_config`. So a simulated node with ``CoreSettings()`` runs what a
daemon with a default config runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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
    commit_timeout: float = REQUEST_TIMEOUT  # per manifest / catalog request during commit

    # The fields the config's ``transfer:`` section sets, under the same names.
    TRANSFER_FIELDS: ClassVar[tuple[str, ...]] = (
        "request_timeout", "retries", "backoff_base", "backoff_max",
        "max_inflight_bytes_per_peer", "memory_budget",
    )

    @classmethod
    def from_config(cls, policy: Policy, transfer: Any) -> CoreSettings:
        """The settings a daemon runs with: ``transfer`` is the config's
        ``TransferSettings`` (taken by its attributes: the core never imports the config
        reader); its ``request_timeout`` also bounds each commit request."""
        values = {name: getattr(transfer, name) for name in cls.TRANSFER_FIELDS}
        return cls(policy=policy, commit_timeout=transfer.request_timeout, **values)
