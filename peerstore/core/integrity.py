"""A node's care for its own pieces: scrub, re-reading them on request (verify, or a get
that received a bad copy), and what happens to a copy found corrupt.

Every path that finds a corrupt copy ends in :meth:`Integrity.found_corrupt`: the shell
has already moved the file to quarantine (``VerifyHeldPiece`` does that), so the piece
leaves the inventory and the node asks for its repair (``NodeCore.request_repair``: the
stripe's pieces are re-created from a replica or from parity). Pure: effects and
completions only.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

from peerstore.core import checkup
from peerstore.core import events as ev
from peerstore.core.node_report import scrub_section
from peerstore.core.scrub import Scrubber, ScrubSummary
from peerstore.wire import messages as msg

if TYPE_CHECKING:
    from random import Random

    from peerstore.core.settings import CoreSettings

MAX_SERVING = 2  # VerifyPieces requests re-read at once (each up to MAX_VERIFY_IDS pieces)
MAX_QUEUED = 32  # waiting beyond those; more are answered "busy" at once

Verdicts = Callable[[float, dict[bytes, str]], None]


class IntegrityHost(Protocol):
    """What :class:`Integrity` needs of its node (``NodeCore``)."""

    node_id: str
    settings: CoreSettings
    rng: Random
    inventory: set[bytes]
    stats: Counter[str]

    def emit(self, effect: Any) -> None: ...
    def local(self, make: Callable[[Any], Any], on_done: Callable[[float, Any], None]) -> None: ...
    def request(self, now: float, peer: str, make: Callable[[int], msg.Message],
                on_reply: Callable[[float, msg.Message, Any], None],
                on_failure: Callable[[float, str], None], **options: Any) -> int: ...
    def request_repair(self, now: float, piece_ids: Iterable[bytes]) -> None: ...


def bit(bits: bytes, i: int) -> bool:
    """Bit ``i`` of a bitmap (one bit per piece, in order, as PiecesHeld sends them)."""
    return i // 8 < len(bits) and bool(bits[i // 8] >> (i % 8) & 1)


def bitmap(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


class Integrity:
    """Scrub, verify-on-request and corrupt-piece handling of one node."""

    def __init__(self, node: IntegrityHost, sizes: Mapping[bytes, int] | None = None):
        settings = node.settings
        self.node = node
        estimate = sum(sizes.values()) // len(sizes) if sizes else settings.policy.shard_size
        self.scrubber = Scrubber(settings.scrub_period, settings.scrub_max_bytes_per_second, node.rng,
                                 size_estimate=max(1, estimate))
        self.queue: deque[tuple[str, msg.VerifyPieces]] = deque()
        self.serving = 0

    # -- scrub ---------------------------------------------------------------------------

    def step(self, now: float) -> None:
        """Start the next scrub read if its time has come."""
        piece = self.scrubber.poll(now, self.node.inventory)
        if piece is not None:
            self.node.local(lambda tag: ev.VerifyHeldPiece(tag, piece), self._scrubbed)

    def next_deadline(self) -> float | None:
        return self.scrubber.next_deadline()

    def _scrubbed(self, now: float, done: ev.HeldPieceVerified) -> None:
        self.scrubber.finished(now, done.piece_id, done.ok, done.size, missing=done.missing)
        self._outcome(now, done, "scrub")

    def summary(self, now: float) -> ScrubSummary:
        return self.scrubber.summary(now, len(self.node.inventory))

    # -- re-reading own copies -----------------------------------------------------------

    def check_own(self, now: float, pieces: Iterable[bytes], on_done: Verdicts, where: str = "verify") -> None:
        """Re-read ``pieces`` from this node's disk one after another; ``on_done(now,
        {piece: OK | CORRUPT | GONE})``. Corrupt copies go through :meth:`found_corrupt`."""
        todo = list(pieces)
        results: dict[bytes, str] = {}

        def next_piece(t: float) -> None:
            while todo:
                piece = todo.pop(0)
                if piece in self.node.inventory:
                    self.node.local(lambda tag: ev.VerifyHeldPiece(tag, piece),
                                    lambda t2, done: checked(t2, done))
                    return
                results[piece] = checkup.GONE
            on_done(t, results)

        def checked(t: float, done: ev.HeldPieceVerified) -> None:
            results[done.piece_id] = self._outcome(t, done, where)
            next_piece(t)

        next_piece(now)

    def _outcome(self, now: float, done: ev.HeldPieceVerified, where: str) -> str:
        if done.ok:
            return checkup.OK
        if done.missing:  # removed meanwhile (or quarantined by a concurrent read): not held
            self.node.inventory.discard(done.piece_id)
            return checkup.GONE
        self.found_corrupt(now, done.piece_id, where)
        return checkup.CORRUPT

    def found_corrupt(self, now: float, piece: bytes, where: str) -> None:
        """This node's copy of ``piece`` failed its hash and is in quarantine now."""
        self.node.inventory.discard(piece)
        self.node.stats[f"corrupt_found_by_{where}"] += 1
        self.node.request_repair(now, [piece])

    # -- serving peers -------------------------------------------------------------------

    def serve_verify(self, now: float, peer: str, m: msg.VerifyPieces) -> None:
        if self.serving < MAX_SERVING:
            self._serve(now, peer, m)
        elif len(self.queue) < MAX_QUEUED:
            self.queue.append((peer, m))
        else:
            self.node.emit(ev.Send(peer, msg.PiecesVerified(m.req, held=b"", ok=b"", busy=True)))

    def _serve(self, now: float, peer: str, m: msg.VerifyPieces) -> None:
        self.serving += 1

        def done(t: float, results: dict[bytes, str]) -> None:
            self.serving -= 1
            verdicts = [results.get(p, checkup.GONE) for p in m.piece_ids]
            self.node.emit(ev.Send(peer, msg.PiecesVerified(
                m.req, held=bitmap([v != checkup.GONE for v in verdicts]),
                ok=bitmap([v == checkup.OK for v in verdicts]))))
            if self.queue:
                self._serve(t, *self.queue.popleft())

        self.check_own(now, m.piece_ids, done)

    # -- a get received a copy that failed its hash --------------------------------------

    def suspect(self, now: float, peer: str, piece: bytes) -> None:
        """``peer``'s copy of ``piece`` arrived corrupt: have it re-read there, so the
        holder quarantines it and asks for its repair (its disk, not the wire, is the
        usual cause: transfers are checked end to end)."""
        self.node.stats["corrupt_copies_reported"] += 1
        if peer == self.node.node_id:
            self.check_own(now, (piece,), lambda t, results: None, where="get")
            return
        self.node.request(
            now, peer, lambda req: msg.VerifyPieces(req, piece_ids=(piece,)),
            lambda t, reply, payload: None, lambda t, why: None,
        )

    def report(self, now: float) -> dict[str, Any]:
        """This node's scrub section of its status report (``core/node_report.py``)."""
        return scrub_section(self.summary(now))
