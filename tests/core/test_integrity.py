"""A node's integrity service (peerstore.core.integrity): what happens to a corrupt copy,
who re-reads what, and the bounds on serving re-reads for peers. Driven by a fake host."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from peerstore.core import checkup
from peerstore.core import events as ev
from peerstore.core.integrity import MAX_QUEUED, MAX_SERVING, Integrity, bit
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from peerstore.wire import messages as msg

MiB = 1024 * 1024


def pid(i: int) -> bytes:
    return bytes([i]) * 32


class Host:
    """Just enough of a node: effects collected, local completions answered by the test."""

    def __init__(self, held: set[bytes], period: float = 100.0):
        self.node_id = "a" * 16
        self.settings = CoreSettings(policy=Policy(shard_size=MiB), scrub_period=period)
        self.rng = random.Random(1)
        self.inventory = set(held)
        self.stats: Counter[str] = Counter()
        self.effects: list[Any] = []
        self.waiters: dict[Any, Any] = {}
        self.requests: list[tuple[str, msg.Message]] = []
        self.repairs: list[bytes] = []
        self._tag = 0

    def emit(self, effect: Any) -> None:
        self.effects.append(effect)

    def local(self, make, on_done) -> None:
        self._tag += 1
        effect = make(("t", self._tag))
        self.waiters[effect.tag] = on_done
        self.effects.append(effect)

    def request(self, now, peer, make, on_reply, on_failure, **options) -> int:
        self.requests.append((peer, make(len(self.requests) + 1)))
        return len(self.requests)

    def request_repair(self, now, piece_ids) -> None:
        self.repairs.extend(piece_ids)

    def verifies(self) -> list[ev.VerifyHeldPiece]:
        return [e for e in self.effects if isinstance(e, ev.VerifyHeldPiece) and e.tag in self.waiters]

    def answer(self, now: float, effect: ev.VerifyHeldPiece, ok: bool, missing: bool = False) -> None:
        self.waiters.pop(effect.tag)(now, ev.HeldPieceVerified(effect.tag, effect.piece_id, ok, size=MiB,
                                                               missing=missing))


def test_a_corrupt_copy_leaves_the_inventory_and_is_handed_to_repair_a_missing_one_is_not():
    host = Host({pid(1), pid(2)})
    integrity = Integrity(host)
    results = {}
    integrity.check_own(0.0, [pid(1), pid(2), pid(3)], lambda t, r: results.update(r))
    first = host.verifies()
    assert [e.piece_id for e in first] == [pid(1)]  # one at a time
    host.answer(0.0, first[0], ok=False)
    host.answer(0.0, host.verifies()[0], ok=False, missing=True)
    assert results == {pid(1): checkup.CORRUPT, pid(2): checkup.GONE, pid(3): checkup.GONE}
    assert host.repairs == [pid(1)] and host.inventory == set()
    assert host.stats["corrupt_found_by_verify"] == 1


def test_scrub_reads_when_due_and_its_rot_goes_the_same_way():
    host = Host({pid(1)}, period=10.0)
    integrity = Integrity(host)
    integrity.step(0.0)
    assert host.verifies() == [] and integrity.next_deadline() is not None  # paced from the start
    integrity.step(integrity.next_deadline())
    [read] = host.verifies()
    host.answer(11.0, read, ok=False)
    assert host.repairs == [pid(1)] and host.stats["corrupt_found_by_scrub"] == 1
    assert integrity.report(11.0)["corrupt_found"] == 1


def test_serving_peers_is_bounded_busy_beyond_the_queue_and_answers_in_order():
    host = Host({pid(i) for i in range(1, 4)})
    integrity = Integrity(host)
    for req in range(1, MAX_SERVING + MAX_QUEUED + 2):
        integrity.serve_verify(0.0, "b" * 16, msg.VerifyPieces(req, piece_ids=(pid(1), pid(9))))
    busy = [e.message for e in host.effects if isinstance(e, ev.Send)]
    assert len(busy) == 1 and busy[0].busy and busy[0].req == MAX_SERVING + MAX_QUEUED + 1
    assert len(host.verifies()) == MAX_SERVING  # only that many re-reads at once
    answered = 0
    while host.verifies():
        host.answer(0.0, host.verifies()[0], ok=True)
        answered += 1
    replies = [e.message for e in host.effects if isinstance(e, ev.Send) and not e.message.busy]
    assert len(replies) == MAX_SERVING + MAX_QUEUED == answered
    assert all(bit(r.held, 0) and bit(r.ok, 0) and not bit(r.held, 1) for r in replies)


def test_a_get_that_met_a_bad_copy_has_its_holder_re_read_it():
    host = Host({pid(1)})
    integrity = Integrity(host)
    integrity.suspect(0.0, "b" * 16, pid(1))
    assert [(p, type(m)) for p, m in host.requests] == [("b" * 16, msg.VerifyPieces)]
    integrity.suspect(0.0, host.node_id, pid(1))  # our own copy: re-read it here
    [read] = host.verifies()
    host.answer(0.0, read, ok=False)
    assert host.repairs == [pid(1)] and host.stats["corrupt_found_by_get"] == 1
