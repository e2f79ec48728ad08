"""Send one request to many peers plus a local step, and count who acknowledged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from peerstore.core.messenger import Messenger
    from peerstore.wire.messages import Message


class Fanout:
    """Ask every peer in ``peers`` (and ourselves, via ``local``) to do one thing.

    ``on_done(now, acks)`` runs once, after every peer answered, failed or timed out;
    ``acks`` counts successes including the local one. Peers in ``optional`` are asked
    too but not waited for (a straggler behind a deep queue): their answers count only if
    they come first.
    """

    def __init__(
        self,
        node: "Messenger",
        *,
        peers: list[str],
        make: Callable[[int], "Message"],
        accept: Callable[["Message"], bool],
        local: Callable[[Callable[[float, bool], None]], None] | None,
        on_done: Callable[[float, int], None],
        timeout: float | None = None,
        optional: frozenset[str] = frozenset(),
    ):
        self.node = node
        self.peers = peers
        self.make = make
        self.accept = accept
        self.local = local
        self.on_done = on_done
        self.timeout = timeout if timeout is not None else node.settings.commit_timeout
        self.optional = optional - {node.node_id}  # the local step is always waited for
        self.waiting = sum(1 for p in peers if p not in optional) + (1 if local else 0)
        self.acked: list[str] = []
        self.done = False

    def start(self, now: float) -> None:
        if self.waiting == 0:
            self.done = True
            self.on_done(now, 0)
            return
        for peer in self.peers:
            self._ask(now, peer, retry=True)
        if self.local:
            self.local(lambda t, ok: self._answer(t, self.node.node_id, ok))

    def _ask(self, now: float, peer: str, retry: bool) -> None:
        def failed(t: float, why: str) -> None:
            if why == "unreachable" and retry and self.node.is_alive(peer):
                self._ask(t, peer, retry=False)  # a broken connection: once more, on a new one
            else:
                self._answer(t, peer, False)

        self.node.request(
            now, peer, self.make,
            lambda t, reply, payload: self._answer(t, peer, self.accept(reply)),
            failed, timeout=self.timeout,
        )

    def _answer(self, now: float, peer: str, ok: bool) -> None:
        if self.done:
            return
        if ok:
            self.acked.append(peer)
        if peer in self.optional:
            return
        self.waiting -= 1
        if self.waiting == 0:
            self.done = True
            self.on_done(now, len(self.acked))


