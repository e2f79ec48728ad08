"""Carrying out the repair of one stripe: fetch or rebuild each missing piece, verify it,
store it on its target. Pure: it works through the node's requests and local effects.

A piece with a live holder is fetched from its sources in order (the owner's own copy
first) until one arrives intact. Pieces no live node holds are rebuilt together: k
positions with live holders are read and verified, the shell decodes the stripe and
re-encodes what is wanted (``RebuildPieces``), and every rebuilt piece is verified against
its id before it is stored. A piece whose every copy turns out corrupt is rebuilt the same
way (once more at most), and each corrupt copy is reported to its holder's scrub
(``integrity.suspect``). Nothing unverified is ever stored. A failed step fails only its
piece; the next scan re-plans from what then exists.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from peerstore.core import events as ev
from peerstore.core.repair import Addition, StripeRef, StripeRepair
from peerstore.core.store_health import READ_ONLY
from peerstore.wire import messages as msg

MAX_REBUILDS = 2  # rebuild rounds per stripe task (the second for copies found corrupt)
REFUSALS = (READ_ONLY, "no space")  # how a node that takes no new pieces answers a store

if TYPE_CHECKING:
    from random import Random

    from peerstore.core.settings import CoreSettings
    from peerstore.model.catalog import Catalog


class RepairHost(Protocol):
    """What repair needs of its node (``NodeCore``; core/context.py)."""

    node_id: str
    settings: CoreSettings
    rng: Random
    alive: frozenset[str]
    catalog: Catalog
    inventory: set[bytes]
    stats: Counter[str]
    buffer_bytes: int

    @property
    def operations(self) -> list[Any]: ...
    def emit(self, effect: Any) -> None: ...
    def local(self, make: Callable[[Any], Any], on_done: Callable[[float, Any], None]) -> None: ...
    def request(self, now: float, peer: str, make: Callable[[int], msg.Message],
                on_reply: Callable[[float, msg.Message, Any], None],
                on_failure: Callable[[float, str], None], **options: Any) -> int: ...
    def is_alive(self, peer: str) -> bool: ...
    def can_send(self, peer: str, size: int) -> bool: ...
    def can_buffer(self, size: int) -> bool: ...
    def store_piece(self, piece_id: bytes, handle: Any, on_done: Callable[[float, bool, str], None],
                    *, size: int = 0) -> None: ...


class Budget:
    """What a task may spend now: repair bytes (pacing) and buffer memory."""

    def take(self, now: float, size: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def reserve(self, size: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self, size: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Job:
    addition: Addition
    handle: Any = None
    state: str = "pending"  # pending, fetching, ready, storing, done, failed
    why: str = ""
    charged: int = 0  # buffer memory a copy holds until it ends
    rebuild: bool = False  # re-created from parity (no live holder, or no intact copy)
    refused: bool = False  # the target said it takes no new pieces (read-only or full disk)


class StripeTask:
    """The repair of one stripe; ``on_done(now, task)`` runs once when every job ended."""

    def __init__(self, node: RepairHost, repair: StripeRepair, budget: Budget,
                 on_stored: Callable[[float, Addition], None],
                 on_done: Callable[[float, StripeTask], None], requested: bool = False):
        self.node = node
        self.repair = repair
        self.requested = requested  # asked for by a scrub or a get, whoever owns the stripe
        self.budget = budget
        self.on_stored = on_stored
        self.on_done = on_done
        self.jobs = [Job(a, rebuild=not repair.sources.get(a.piece_id)) for a in repair.additions]
        self.bad: set[tuple[bytes, str]] = set()  # (piece, holder) copies found corrupt
        self.rebuild_rounds = 0
        self.reserved = 0  # buffer memory held now; each part is given back when its buffer goes
        self.read_charge = 0  # a rebuild's k input pieces
        self.out_charge: dict[int, int] = {}  # a rebuild's output, by position
        self.rebuild_state = "none" if not self._rebuild_jobs() else "pending"  # pending, reading, coding, done
        self.readers: dict[int, Any] = {}
        self.reading = 0
        self.candidates: list[tuple[int, tuple[str, ...]]] = []
        self.refs: dict[Any, int] = {}  # handle -> jobs still to store it
        self.ended = False
        self._advancing = False
        self._again = False

    @property
    def stripe(self) -> StripeRef:
        return self.repair.stripe

    @property
    def failed(self) -> bool:
        return any(j.state == "failed" for j in self.jobs)

    @property
    def bytes_left(self) -> int:
        return sum(j.addition.size for j in self.jobs if j.state not in ("done", "failed"))

    def _rebuild_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.rebuild and j.state not in ("done", "failed")]

    def _is_copy(self, job: Job) -> bool:
        return not job.rebuild

    def _sources(self, pid: bytes, holders: tuple[str, ...]) -> list[str]:
        return [n for n in holders if (pid, n) not in self.bad]

    def _corrupt(self, now: float, pid: bytes, holder: str) -> None:
        """A copy failed its hash check: never read it again here, and have its holder
        re-read it (its scrub quarantines it and asks for its repair)."""
        self.bad.add((pid, holder))
        integrity = getattr(self.node, "integrity", None)
        if integrity is not None:
            integrity.suspect(now, holder, pid)

    # -- driving -------------------------------------------------------------------------

    def waiting_for(self) -> int | None:
        """Bytes the next step waits to be paid for (None: it waits for nothing paid)."""
        if self.rebuild_state == "pending":
            return sum(j.addition.size for j in self._rebuild_jobs() if j.state == "pending")
        pending = [j for j in self.jobs if j.state == "pending" and self._is_copy(j)]
        return pending[0].addition.size if pending else None

    def advance(self, now: float) -> None:
        """Start every step that can start now; end the task when every job has ended."""
        if self._advancing:  # called back from inside a step: the running pass goes round again
            self._again = True
            return
        self._advancing = True
        try:
            self._again = True
            while self._again and not self.ended:
                self._again = False
                self._step(now)
        finally:
            self._advancing = False

    def _step(self, now: float) -> None:
        if self.rebuild_state in ("none", "done") and any(j.state == "pending" for j in self._rebuild_jobs()):
            if self.rebuild_rounds < MAX_REBUILDS:
                self.rebuild_state = "pending"  # copies that turned out corrupt: rebuild them
            else:
                for job in self._rebuild_jobs():
                    self._fail(now, job, "no intact copy, and rebuilding did not work", advance=False)
        if self.rebuild_state == "pending":
            self._start_rebuild(now)
        for job in self.jobs:
            if job.state == "pending" and self._is_copy(job):
                size = job.addition.size
                if not self.budget.reserve(size):
                    break
                if not self.budget.take(now, size):
                    self.budget.release(size)
                    break
                self.reserved += size
                job.charged = size
                self._copy(now, job)
        for job in self.jobs:
            if job.state == "ready":
                self._store(now, job)
        if all(j.state in ("done", "failed") for j in self.jobs) and self.reading == 0 \
                and self.rebuild_state != "coding":
            self._end(now)

    def abort(self) -> None:
        """Give up (the node no longer repairs): release every buffer now."""
        handles = [j.handle for j in self.jobs if j.handle is not None] + list(self.readers.values())
        for job in self.jobs:
            job.handle = None
            if job.state not in ("done", "failed"):
                job.state, job.why = "failed", "aborted"
        self.readers = {}
        self.refs = {}
        if handles:
            self.node.emit(ev.ReleaseHandles(tuple(dict.fromkeys(handles))))
        self._end(None)

    def _refund(self, amount: int) -> None:
        amount = min(amount, self.reserved)
        if amount > 0:
            self.reserved -= amount
            self.budget.release(amount)

    def _end(self, now: float | None) -> None:
        if self.ended:
            return
        self.ended = True
        self._refund(self.reserved)
        if now is not None:
            self.on_done(now, self)

    # -- copies --------------------------------------------------------------------------

    def _copy(self, now: float, job: Job) -> None:
        job.state = "fetching"

        def fetched(t: float, handle: Any) -> None:
            if self.ended or job.state != "fetching":
                if handle is not None:
                    self.node.emit(ev.ReleaseHandles((handle,)))
                return
            if handle is None:
                # No intact copy after all: rebuild it from parity instead.
                self._refund(job.charged)
                job.charged = 0
                job.rebuild, job.state = True, "pending"
                self.advance(t)
                return
            job.handle = handle
            self.refs[handle] = 1
            job.state = "ready"
            self.advance(t)

        pid = job.addition.piece_id
        fetch_verified(self.node, now, pid, job.addition.size,
                       self._sources(pid, self.repair.sources.get(pid, ())), fetched, self._corrupt)

    # -- rebuilds ------------------------------------------------------------------------

    def _start_rebuild(self, now: float) -> None:
        entry = self.stripe.entry
        jobs = [j for j in self._rebuild_jobs() if j.state == "pending"]
        want = {j.addition.position for j in jobs}
        memory = entry.block_size * (entry.k + len(want))
        if not self.budget.reserve(memory):
            return
        if not self.budget.take(now, sum(j.addition.size for j in jobs)):
            self.budget.release(memory)
            return
        self.reserved += memory
        self.rebuild_rounds += 1
        self.read_charge = entry.block_size * entry.k
        self.out_charge.update({position: entry.block_size for position in want})
        self.rebuild_state = "reading"
        for job in jobs:
            job.state = "fetching"
        me = self.node.node_id
        readable = [(position, tuple(self._sources(self.stripe.piece_ids[position], holders)))
                    for position, holders in self.repair.readable_positions()]
        readable = [(position, holders) for position, holders in readable if holders]
        # Local copies first, then data before parity: fewer transfers, often no decode.
        readable.sort(key=lambda item: (me not in item[1], item[0] >= entry.k, item[0]))
        self.candidates = readable
        self._read_more(now)

    def _read_more(self, now: float) -> None:
        k = self.stripe.entry.k
        while len(self.readers) + self.reading < k and self.candidates:
            position, holders = self.candidates.pop(0)
            self.reading += 1
            pid = self.stripe.piece_ids[position]
            fetch_verified(self.node, now, pid, self.stripe.size_of(position), list(holders),
                           lambda t, handle, position=position: self._read(t, position, handle), self._corrupt)
        if self.rebuild_state != "reading" or self.reading:
            return
        if len(self.readers) >= k:
            self._decode(now)
        else:
            self._rebuild_failed(now, f"only {len(self.readers)} of the {k} pieces a rebuild needs could be read")

    def _read(self, now: float, position: int, handle: Any) -> None:
        self.reading -= 1
        if self.ended or self.rebuild_state != "reading":
            if handle is not None:
                self.node.emit(ev.ReleaseHandles((handle,)))
            return
        if handle is not None:
            self.readers[position] = handle
        self._read_more(now)

    def _decode(self, now: float) -> None:
        entry = self.stripe.entry
        jobs = [j for j in self._rebuild_jobs() if j.state == "fetching"]
        want = tuple(sorted({j.addition.position for j in jobs}))
        chosen = tuple(sorted(self.readers.items()))[: entry.k]
        spare = tuple(h for _, h in sorted(self.readers.items())[entry.k:])
        if spare:
            self.node.emit(ev.ReleaseHandles(spare))
        self.readers = {}
        self.rebuild_state = "coding"
        self.node.stats["repair_rebuilds"] += 1

        def rebuilt(t: float, done: ev.PiecesRebuilt) -> None:
            self.node.emit(ev.ReleaseHandles(tuple(h for _, h in chosen)))
            self._refund(self.read_charge)
            self.read_charge = 0
            made = dict(done.handles)
            if self.ended:
                if made:
                    self.node.emit(ev.ReleaseHandles(tuple(made.values())))
                return
            if done.error or set(made) != set(want):
                if made:
                    self.node.emit(ev.ReleaseHandles(tuple(made.values())))
                self._rebuild_failed(t, done.error or "the shell rebuilt other positions than asked")
                return
            left = {"n": len(made)}

            def checked(t2: float, position: int, handle: Any, ok: bool) -> None:
                left["n"] -= 1
                waiting = [j for j in jobs if j.addition.position == position]
                if self.ended:
                    self.node.emit(ev.ReleaseHandles((handle,)))
                elif not ok:
                    self.node.stats["repair_rebuild_mismatch"] += 1
                    self.node.emit(ev.ReleaseHandles((handle,)))
                    self._refund(self.out_charge.pop(position, 0))
                    for job in waiting:
                        self._fail(t2, job, "the rebuilt piece does not match its id")
                else:
                    self.refs[handle] = len(waiting)
                    for job in waiting:
                        job.handle, job.state = handle, "ready"
                if left["n"] == 0:
                    self.rebuild_state = "done"
                    self.advance(t2)

            for position, handle in sorted(made.items()):
                verify(self.node, entry.piece_ids[position], handle,
                       lambda t2, ok, position=position, handle=handle: checked(t2, position, handle, ok))

        self.node.local(
            lambda tag: ev.RebuildPieces(tag, entry.k, entry.p, tuple(entry.data_lengths), chosen, want,
                                         tuple(entry.piece_ids)),
            rebuilt,
        )

    def _rebuild_failed(self, now: float, why: str) -> None:
        self.rebuild_state = "done"
        handles = tuple(self.readers.values())
        self.readers = {}
        failing = [j for j in self._rebuild_jobs() if j.state == "fetching"]
        self._refund(self.read_charge + sum(self.out_charge.pop(j.addition.position, 0) for j in failing))
        self.read_charge = 0
        if handles:
            self.node.emit(ev.ReleaseHandles(handles))
        for job in failing:
            if job.state == "fetching":
                self._fail(now, job, f"cannot rebuild: {why}", advance=False)
        self.advance(now)

    # -- storing -------------------------------------------------------------------------

    def _store(self, now: float, job: Job) -> None:
        addition = job.addition
        target = addition.target
        local = target == self.node.node_id
        if not local and not self.node.is_alive(target):
            self._fail(now, job, "the target left", advance=False)
            return
        if not local and not self.node.can_send(target, addition.size):
            return  # flow control: the next advance tries again
        job.state = "storing"

        def stored(t: float, ok: bool, why: str) -> None:
            if job.state != "storing":
                return
            self._drop_handle(job)
            if ok:
                job.state = "done"
                self.on_stored(t, addition)
                self.advance(t)
            else:
                self._fail(t, job, why)

        if local:
            self.node.store_piece(addition.piece_id, job.handle, stored)
            return
        def answered(t: float, reply: msg.Message, payload: Any) -> None:
            ok = isinstance(reply, msg.PieceStored) and reply.ok
            error = getattr(reply, "error", "") or "refused"
            if not ok and error.startswith(REFUSALS):
                job.refused = True
            stored(t, ok, error)

        self.node.request(
            now, target,
            lambda req: msg.StorePiece(req, piece_id=addition.piece_id, size=addition.size, background=True),
            answered,
            lambda t, why: stored(t, False, why),
            payload=job.handle, inflight_bytes=addition.size,
        )

    def _drop_handle(self, job: Job) -> None:
        """This job is done with its bytes: release them (and their memory) once no other
        job still has to store the same rebuilt piece."""
        handle, job.handle = job.handle, None
        if job.charged:  # a copy's memory goes with its last step
            self._refund(job.charged)
            job.charged = 0
        if handle is None:
            return
        left = self.refs.get(handle, 1) - 1
        if left > 0:
            self.refs[handle] = left
            return
        self.refs.pop(handle, None)
        self.node.emit(ev.ReleaseHandles((handle,)))
        if not self._is_copy(job):
            self._refund(self.out_charge.pop(job.addition.position, 0))

    def _fail(self, now: float, job: Job, why: str, advance: bool = True) -> None:
        if job.state in ("done", "failed"):
            return
        self._drop_handle(job)
        job.state, job.why = "failed", why
        self.node.stats["repair_failures"] += 1
        if advance:
            self.advance(now)


def verify(node: RepairHost, pid: bytes, handle: Any, on_done: Callable[[float, bool], None]) -> None:
    """Hash the bytes ``handle`` names against ``pid``; ``on_done(now, ok)``."""
    node.local(lambda tag: ev.VerifyPiece(tag, pid, handle), lambda t, done: on_done(t, done.ok))


def fetch_verified(node: RepairHost, now: float, pid: bytes, size: int, sources: list[str],
                   on_done: Callable[[float, Any], None],
                   on_corrupt: Callable[[float, bytes, str], None] | None = None) -> None:
    """Fetch ``pid`` from the first of ``sources`` (this node's store or a live peer) that
    returns it intact; ``on_done(now, verified handle or None)``; ``on_corrupt(now, pid,
    holder)`` for each copy that fails its hash check. Sources are consumed."""
    while sources and sources[0] != node.node_id and not node.is_alive(sources[0]):
        sources.pop(0)
    if not sources:
        on_done(now, None)
        return
    source = sources.pop(0)

    def arrived(t: float, handle: Any, release: Any = None) -> None:
        if handle is None:
            if release is not None:
                node.emit(ev.ReleaseHandles((release,)))
            fetch_verified(node, t, pid, size, sources, on_done, on_corrupt)
            return
        verify(node, pid, handle, lambda t2, ok: verified(t2, handle, ok))

    def verified(t: float, handle: Any, ok: bool) -> None:
        if not ok:
            node.stats["repair_corrupt_sources"] += 1
            node.emit(ev.ReleaseHandles((handle,)))
            if on_corrupt is not None:
                on_corrupt(t, pid, source)
            fetch_verified(node, t, pid, size, sources, on_done, on_corrupt)
            return
        on_done(t, handle)

    if source == node.node_id:
        if pid not in node.inventory:
            arrived(now, None)
            return
        node.local(lambda tag: ev.LoadPiece(tag, pid), lambda t, done: arrived(t, done.handle))
        return
    node.request(
        now, source, lambda req: msg.FetchPiece(req, piece_id=pid, background=True),
        lambda t, reply, payload: arrived(
            t, payload if isinstance(reply, msg.PieceData) and reply.found else None, release=payload),
        lambda t, why: arrived(t, None),
        inflight_bytes=size,
    )
