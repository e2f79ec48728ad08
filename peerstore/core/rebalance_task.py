"""Carrying out one rebalance action: a move (copy, verify, then drop the old copy) or a
drop of a surplus copy. Pure: it works through the node's requests and local effects.

A drop goes ahead only after the copies that stay have been re-read and hashed by their
holders (``VerifyPieces``, or this node's own check), every live node has said again which
of the stripes' other pieces it holds (``QueryPieces``), and, with exactly those copies
and the nodes alive now, every stripe holding the piece is still at policy
(``rebalance.still_spare``). The holder then deletes its copy unless a running put holds a
lease on it (it may have counted that copy) or it is being stored (``DropPieces``). A move
is a repair addition first (``StripeTask``: fetched from a holder, verified, stored and
verified again on the target) and a drop second. Any failure ends the action with nothing
dropped; the next scan plans again from what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from peerstore.core import checkup
from peerstore.core.integrity import bit
from peerstore.core.rebalance import Drop, Move, spare_on_return, still_spare
from peerstore.core.repair import Addition, State, StripeRef, StripeRepair
from peerstore.core.repair_task import Budget, RepairHost, StripeTask
from peerstore.wire import messages as msg


class RebalanceTask:
    """One move or drop; ``on_done(now, task)`` runs once when it ended (``ok`` says how)."""

    def __init__(self, node: RepairHost, action: Drop | Move, stripes: list[StripeRef],
                 holders: Mapping[bytes, frozenset[str]], budget: Budget,
                 on_done: Callable[[float, RebalanceTask], None],
                 absent: Mapping[bytes, frozenset[str]] | None = None):
        self.node = node
        self.absent = dict(absent or {})  # copies nodes not alive now were last seen holding
        self.action = action
        self.stripes = [s for s in stripes if action.piece_id in s.piece_ids]
        self.holders = {pid: set(h) for pid, h in holders.items()}
        self.budget = budget
        self.on_done = on_done
        self.copy: StripeTask | None = None
        self.ok = False
        self.why = ""
        self.ended = False
        self.moved_bytes = 0

    @property
    def piece_id(self) -> bytes:
        return self.action.piece_id

    @property
    def victim(self) -> str:
        return self.action.source if isinstance(self.action, Move) else self.action.node

    def start(self, now: float) -> None:
        action = self.action
        if isinstance(action, Drop):
            self._confirm(now)
            return
        self._ask_giver(now)

    def _ask_giver(self, now: float) -> None:
        """Before copying, ask the giver whether it could drop its copy now (not leased to
        a running put): a copy it would keep anyway is not worth sending."""
        pid, giver = self.piece_id, self.victim
        if giver == self.node.node_id:
            self._giver_answered(now, getattr(self.node, "gc").drop_surplus(now, (pid,), dry_run=True)[0])
            return
        self.node.request(
            now, giver, lambda req: msg.DropPieces(req, piece_ids=(pid,), dry_run=True),
            lambda t, reply, payload: self._giver_answered(t, _first_bit(reply)),
            lambda t, why: self._end(t, False, f"the giver did not answer: {why}"),
        )

    def _giver_answered(self, now: float, can_drop: bool) -> None:
        if not can_drop:
            self._end(now, False, "the giver's copy is leased to a running put (or busy)")
            return
        action = self.action
        assert isinstance(action, Move)
        sources = tuple(n for n in sorted(self.holders.get(action.piece_id, ()))
                        if n != action.target and self.node.is_alive(n))
        addition = Addition(action.position, action.piece_id, action.size, action.target)
        repair = StripeRepair(action.stripe, State.REPAIR, 0, 0, self.node.node_id, (addition,),
                              {action.piece_id: sources})
        self.copy = StripeTask(self.node, repair, self.budget, self._copied, self._copy_done)
        self.copy.advance(now)

    def advance(self, now: float) -> None:
        if self.copy is not None and not self.copy.ended:
            self.copy.advance(now)

    def waiting_for(self) -> int | None:
        return self.copy.waiting_for() if self.copy is not None and not self.copy.ended else None

    def abort(self) -> None:
        if self.copy is not None and not self.copy.ended:
            self.copy.abort()
        self._end(None, False, "aborted")

    # -- the move's copy -----------------------------------------------------------------

    def _copied(self, now: float, addition: Addition) -> None:
        self.moved_bytes += addition.size
        self.node.stats["rebalance_bytes_copied"] += addition.size
        self.holders.setdefault(addition.piece_id, set()).add(addition.target)

    def _copy_done(self, now: float, task: StripeTask) -> None:
        if task.failed or now is None:
            self._end(now, False, "the copy to the new holder failed")
            return
        self._confirm(now)

    # -- confirm, then drop ----------------------------------------------------------------

    def _confirm(self, now: float) -> None:
        """Have every copy that stays re-read and hashed by its holder, and ask every live
        node again which of the stripes' other pieces it holds: what the scan saw may be
        stale (a rotten copy quarantined since, a repair that moved one)."""
        pid = self.piece_id
        keepers = sorted(n for n in self.holders.get(pid, ()) if n != self.victim and self.node.is_alive(n))
        if not keepers:
            self._end(now, False, "no other live copy")
            return
        others = sorted({q for ref in self.stripes for q in ref.piece_ids} - {pid})
        chunks = [tuple(others[i:i + msg.MAX_QUERY_IDS]) for i in range(0, len(others), msg.MAX_QUERY_IDS)]
        peers = sorted(self.node.alive - {self.node.node_id})
        verdicts: dict[str, bool] = {}
        held: dict[bytes, set[str]] = {q: set() for q in others}
        for q in others:
            if q in self.node.inventory:
                held[q].add(self.node.node_id)
        waiting = [len(keepers) + len(chunks) * len(peers)]

        def one_done(t: float) -> None:
            waiting[0] -= 1
            if waiting[0] == 0:
                self._decide(t, {n for n, good in verdicts.items() if good}, held)

        def answer(t: float, keeper: str, ok: bool) -> None:
            verdicts[keeper] = ok
            one_done(t)

        def holdings(t: float, peer: str, chunk: tuple[bytes, ...], reply: Any) -> None:
            if isinstance(reply, msg.PiecesHeld):  # no answer: counted as holding none of them
                for i, q in enumerate(chunk):
                    if bit(reply.held, i):
                        held[q].add(peer)
            one_done(t)

        for chunk in chunks:
            for peer in peers:
                self.node.request(
                    now, peer, lambda req, c=chunk: msg.QueryPieces(req, piece_ids=c),
                    lambda t, reply, payload, p=peer, c=chunk: holdings(t, p, c, reply),
                    lambda t, why, p=peer, c=chunk: holdings(t, p, c, None),
                )
        for keeper in keepers:
            if keeper == self.node.node_id:
                integrity = getattr(self.node, "integrity")
                integrity.check_own(now, (pid,), lambda t, results, k=keeper: answer(
                    t, k, results.get(pid) == checkup.OK), where="rebalance")
                continue
            self.node.request(
                now, keeper, lambda req: msg.VerifyPieces(req, piece_ids=(pid,)),
                lambda t, reply, payload, k=keeper: answer(t, k, _verified(reply)),
                lambda t, why, k=keeper: answer(t, k, False),
            )

    def _decide(self, now: float, good: set[str], held: dict[bytes, set[str]]) -> None:
        pid = self.piece_id
        holders = {**held, pid: good | {self.victim}}
        alive = self.node.alive
        if not still_spare(pid, self.victim, self.stripes, holders, alive):
            self._end(now, False, "the copies that stay are not enough (changed since the plan)")
            return
        absent = {q: frozenset(h) - alive for q, h in self.absent.items()}  # some may be back by now
        if not spare_on_return(pid, self.victim, self.stripes, holders, alive, absent):
            self._end(now, False, "the copies that stay are not enough once the absent holders return")
            return
        if self.victim == self.node.node_id:
            collector = getattr(self.node, "gc")
            dropped = collector.drop_surplus(now, (pid,))
            self._end(now, dropped[0], "" if dropped[0] else "leased or busy here")
            return
        self.node.request(
            now, self.victim, lambda req: msg.DropPieces(req, piece_ids=(pid,)),
            lambda t, reply, payload: self._dropped(t, reply),
            lambda t, why: self._end(t, False, f"drop request failed: {why}"),
        )

    def _dropped(self, now: float, reply: Any) -> None:
        ok = _first_bit(reply)
        self._end(now, ok, "" if ok else "the holder refused (leased to a running put, or busy)")

    def _end(self, now: float | None, ok: bool, why: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.ok = ok
        self.why = why
        if ok:
            self.node.stats["rebalance_moves_done" if isinstance(self.action, Move) else "rebalance_drops_done"] += 1
        else:
            self.node.stats["rebalance_actions_failed"] += 1
        if now is not None:
            self.on_done(now, self)


def _first_bit(reply: Any) -> bool:
    return isinstance(reply, msg.PiecesDropped) and bool(reply.dropped) and bool(reply.dropped[0] & 1)


def _verified(reply: Any) -> bool:
    return (isinstance(reply, msg.PiecesVerified) and not reply.busy and bool(reply.ok)
            and bool(reply.ok[0] & 1))
