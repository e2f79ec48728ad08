"""SWIM/Lifeguard timing, the ``gossip:`` section of the config.

Pure data: the config reader (``peerstore.shell.config``) fills it from YAML, and both
shells (the daemon and the simulator) hand it to ``Swim``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GossipSettings:
    """SWIM/Lifeguard timing; defaults are HashiCorp memberlist's LAN profile (seconds)."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    awareness_max_multiplier: int = 8
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    retransmit_mult: int = 4
    pushpull_interval: float = 30.0
    dead_reclaim_time: float = 3600.0
    tombstone_lifetime: float = 7 * 86400.0
