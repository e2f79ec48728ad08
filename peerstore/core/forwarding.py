"""Forwarded replication, the relay's side (pure, no I/O).

A put's coordinator sends a data shard to the first holder of its two replicas and asks it
to pass the piece on to the second (``StorePiece.forward_to``), as in the HDFS write
pipeline: the coordinator's NIC then carries each shard once instead of twice. The second
holder acknowledges its copy **straight to the coordinator** (``ack_to``): a slot counts
only when its own holder says it is durable, forwarded or not. The relay only ever
reports that it could *not* forward, so the coordinator sends that copy itself
(core/put.py).

A relay holds each forwarded piece's buffer until the second holder answered. Those
buffers are bounded (``budget``, a quarter of the node's memory budget, so the rest of
its receive budget always drains by local writes alone and two relays can never wait on
each other's memory) and so are the bytes queued to each peer (its send window): past
either bound the relay declines at once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Protocol

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.wire import messages as msg


class ForwardingHost(Protocol):
    """What :class:`Forwarder` needs of its node (``NodeContext``)."""

    node_id: str
    settings: CoreSettings
    stats: Counter[str]

    def emit(self, effect: Any) -> None: ...
    def is_alive(self, peer: str) -> bool: ...
    def can_send(self, peer: str, size: int) -> bool: ...
    def request(self, now: float, peer: str, make: Callable[[int], msg.Message],
                on_reply: Callable[[float, msg.Message, Any], None],
                on_failure: Callable[[float, str], None], **options: Any) -> int: ...


class Forwarder:
    """Passes pieces on for other nodes' puts, within a memory bound."""

    def __init__(self, node: ForwardingHost):
        self.node = node
        self.held = 0  # bytes of received pieces kept until their forward is answered

    @property
    def budget(self) -> int:
        return self.node.settings.memory_budget // 4

    def refusal(self, sender: str, m: msg.StorePiece) -> str:
        """Why this node will not forward ``m`` now ("" if it will)."""
        target = m.forward_to
        if target in (self.node.node_id, sender):
            return f"cannot forward to node {target}: it is the sender or this node"
        if not self.node.is_alive(target):
            return f"node {target} is not alive in node {self.node.node_id}'s view"
        if self.held and self.held + m.size > self.budget:
            return "this node's forwarding buffers are full"
        if not self.node.can_send(target, m.size):
            return f"this node's queue to node {target} is full"
        return ""

    def start(self, now: float, sender: str, m: msg.StorePiece, payload: Any,
              release: Callable[[], None]) -> bool:
        """Forward ``m`` (its bytes named by ``payload``) if it asks for it and this node
        can. True: ``release()`` runs once the forward is answered. False: nothing was
        forwarded (the sender is told when it asked)."""
        if not m.forward_to or not m.forward_req:
            return False
        why = self.refusal(sender, m)
        if why:
            self.node.stats["forwards_declined"] += 1
            self._tell_failed(sender, m, why)
            return False
        self.held += m.size

        def done(t: float, failure: str) -> None:
            self.held -= m.size
            release()
            if failure:
                self._tell_failed(sender, m, f"forwarding to node {m.forward_to} failed: {failure}")
            else:
                self.node.stats["pieces_forwarded"] += 1

        self.node.request(
            now, m.forward_to,
            lambda req: msg.StorePiece(req, piece_id=m.piece_id, size=m.size, background=m.background,
                                       ack_to=sender, ack_req=m.forward_req),
            # Its answer, good or bad, also went straight to the sender (ack_to).
            lambda t, reply, _payload: done(t, ""),
            done,
            payload=payload,
            inflight_bytes=m.size,
        )
        return True

    def _tell_failed(self, sender: str, m: msg.StorePiece, why: str) -> None:
        self.node.emit(ev.Send(sender, msg.PieceStored(m.forward_req, ok=False, error=why[:msg.MAX_ERROR_LEN])))
