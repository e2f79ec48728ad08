"""Start a large cluster as if it had been up for hours: every member known, alive.

Forming a 1,000-node cluster through seeds costs SWIM about N² x λ·log N update
transmissions (every node re-gossips every join), minutes of simulation before anything
interesting happens. Measurements of a steady cluster start here instead, through
``Swim.load_members`` (nothing left to gossip, push-pulls spread over their period);
``tests/sim/test_sim_cluster.py`` checks the result matches a cluster formed the slow way.
"""

from __future__ import annotations

from typing import Any, Protocol

from peerstore.core.events import MembersChanged
from sim.loop import EventLoop
from sim.node import SimNode


class Warmable(Protocol):
    """What a warm start needs of the cluster it starts (``sim.cluster.Cluster``)."""

    loop: EventLoop
    nodes: dict[str, SimNode]

    def feed(self, node_id: str, event: Any, boot: int | None = None) -> None: ...

    def _schedule_swim_tick(self, node: SimNode) -> None: ...


def warm_start(cluster: Warmable) -> None:
    """Give every running Swim the full, alive member list and every core the news."""
    now = cluster.loop.now
    known = [n.swim.member(n.node_id) for n in cluster.nodes.values() if n.swim is not None]
    for node in cluster.nodes.values():
        swim = node.swim
        if swim is None:
            continue
        swim.load_members(now, known)  # type: ignore[arg-type]
        if node.glue is not None and node.core is not None:
            node.glue.alive = frozenset(swim.alive_ids())
            cluster.feed(node.node_id, MembersChanged(node.glue.alive))
        cluster._schedule_swim_tick(node)  # noqa: SLF001 - the push-pull timer moved
