"""Tunables of the node core, gathered from the config by the shell."""

from dataclasses import dataclass

from peerstore.policy import MiB, Policy


@dataclass(frozen=True)
class CoreSettings:
    policy: Policy = Policy()
    request_timeout: float = 10.0  # a peer that has not answered by then is skipped
    retries: int = 5  # attempts per piece transfer before re-placing it elsewhere
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    max_inflight_bytes_per_peer: int = 32 * MiB
    memory_budget: int = 128 * MiB  # stripe buffers held by the shell for this node's ops
    commit_timeout: float = 10.0  # per manifest / catalog request during commit
