"""Start a large cluster as if it had been up for hours: every member known, alive.

Forming a 1,000-node cluster through seeds costs SWIM about N² x λ·log N update
transmissions (every node re-gossips every join), minutes of simulation before anything
interesting happens. Measurements of a steady cluster start here instead, through
``Swim.load_members`` (nothing left to gossip, push-pulls spread over their period);
``tests/test_sim_cluster.py`` checks the result matches a cluster formed the slow way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peerstore.core.events import MembersChanged

if TYPE_CHECKING:
    from sim.cluster import Cluster


def warm_start(cluster: Cluster) -> None:
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
