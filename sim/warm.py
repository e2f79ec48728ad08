"""Start a large cluster as if it had been up for hours: every member known, alive.

Forming a 1,000-node cluster through seeds costs SWIM about N² x λ·log N update
transmissions (every node re-gossips every join), minutes of simulation before anything
interesting happens. Measurements of a steady cluster start here instead. Swim has no
public way to load a member table, so this writes its internals (``_members``,
``_queue``, the push-pull timer); ``tests/test_sim_cluster.py`` checks the result matches
a cluster formed the slow way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peerstore.core.events import MembersChanged
from peerstore.gossip import Member, MemberState
from peerstore.gossip.broadcast import BroadcastQueue

if TYPE_CHECKING:
    from sim.cluster import Cluster


def warm_start(cluster: Cluster) -> None:
    now = cluster.loop.now
    rng = cluster.seeds.rng("warm")
    known = [(n.node_id, n.addr, n.swim.incarnation) for n in cluster.nodes.values() if n.swim is not None]
    for node in cluster.nodes.values():
        swim = node.swim
        if swim is None:
            continue
        members = swim._members  # noqa: SLF001 - see the module docstring
        for node_id, addr, incarnation in known:
            if node_id != node.node_id:
                members[node_id] = Member(node_id, addr, incarnation, MemberState.ALIVE, now, now, {})
        swim._queue = BroadcastQueue()  # noqa: SLF001 - nothing left to disseminate
        # Hours in, push-pulls are spread over the whole (size-scaled) period, not bunched
        # in the first unscaled interval as right after everyone started together.
        swim._push_pull_at = now + rng.random() * swim._push_pull_period()  # noqa: SLF001
        if node.glue is not None and node.core is not None:
            node.glue.alive = frozenset(swim.alive_ids())
            cluster.feed(node.node_id, MembersChanged(node.glue.alive))
