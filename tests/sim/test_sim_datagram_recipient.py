"""The simulator drops a datagram that lands at a node other than the one it was sealed
for, as the daemon's MAC does (peerstore.wire.datagram); Swim names the recipient of
every datagram it sends, on every path (probe, ack, ping-req, forwarded ack, nack, gossip)."""

from __future__ import annotations

from peerstore.gossip import MemberState, SendDatagram
from sim.cluster import Cluster


def test_a_datagram_sealed_for_another_node_is_dropped_and_counted():
    cluster = Cluster(3, seed=2, cores=False)
    a, b, c = (cluster.nodes[i] for i in cluster.ids)
    before = b.swim.stats["messages_in"]
    cluster._send_datagram(a, SendDatagram(b.addr, {"t": "gossip", "f": a.node_id, "g": []}, c.node_id))
    cluster.run_for(0.01)
    assert cluster.stats["gossip_dropped_AuthError"] == 1
    assert b.swim.stats["messages_in"] == before


def test_indirect_probes_name_their_recipients():
    """a cannot reach b directly: its probes of b go through helpers (ping-req, the
    helper's ping, the forwarded ack); then c freezes for a while, so helpers nack. No
    datagram is dropped for a wrong recipient, and b stays alive in a's view."""
    cluster = Cluster(5, seed=4, cores=False)
    a, b, c = cluster.ids[0], cluster.ids[1], cluster.ids[2]
    cluster.block(a, b)
    cluster.block(b, a)
    sent: list[SendDatagram] = []
    for node in cluster.nodes.values():
        for entry in ("tick", "on_datagram"):
            original = getattr(node.swim, entry)

            def wrapped(*args, original=original, **kwargs):
                effects = original(*args, **kwargs)
                sent.extend(e for e in effects if isinstance(e, SendDatagram))
                return effects

            setattr(node.swim, entry, wrapped)
    cluster.run_for(20.0)
    assert cluster.member_state(a, b) is MemberState.ALIVE
    cluster.freeze(c)
    cluster.run_for(4.0)
    cluster.thaw(c)
    cluster.run_for(10.0)
    kinds = {e.message.get("t") for e in sent}
    assert {"ping", "ack", "preq", "nack", "gossip"} <= kinds, kinds
    assert all(e.to == cluster.addr_owner.get(e.addr, e.to) for e in sent)
    assert cluster.stats["gossip_dropped_AuthError"] == 0
