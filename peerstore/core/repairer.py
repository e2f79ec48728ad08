"""The repair service of one node: notice losses, scan, plan, re-create pieces, paced.

Pure, like the rest of the core: it works through the node's requests and local effects
(``NodeContext``, seen through ``RepairHost``) and decides nothing the planner
(``core/repair.py``) and the majority rule (``core/quorum.py``) do not. Both shells drive
it through ``NodeCore``.

A **scan** loads the manifests of every live catalog entry (cached: manifests are
immutable), asks every live peer which of their pieces it holds (``QueryPieces``, as
``status`` does) and plans. The node then carries out the part of the plan it owns, in
order (closest to loss first): a piece with a live holder is fetched from it, verified and
stored on its target; a piece nobody holds is rebuilt by the shell (``RebuildPieces``)
from k verified positions, verified again and stored. Every piece's bytes pass its BLAKE3
check before they are stored anywhere.

Scans run when an absence passes the grace period, when a scrub or a get asks for a
piece's stripe (``request_repair``), after a repair pass (to confirm, or to resume after a
failure: work done stays done, the next plan starts from what exists), when the node
regains a majority, and every ``SCAN_INTERVAL_MIN``-or-grace seconds otherwise. A node
repairs only while it sees a majority of the last stable membership.

Pacing: bytes written by repair go through a token bucket (``max_bytes_per_second``). It
yields to client operations: while this node coordinates a put or a get, one stripe at a
time; repair buffers stay within a quarter of the memory budget, so a put never waits on
repair for memory, and puts are placed on live nodes as always.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from peerstore.core.manifests import ManifestFetch
from peerstore.core.pacing import TokenBucket
from peerstore.core.quorum import MembershipTracker
from peerstore.core.rebalance import Drop, Move, RebalancePlan, plan_rebalance, spare_on_return
from peerstore.core.rebalance_task import RebalanceTask
from peerstore.core.repair import Addition, State, StripeRef, StripeRepair, owner_of, plan, stripes_of
from peerstore.core.repair_task import Budget, RepairHost, StripeTask
from peerstore.errors import FormatError
from peerstore.model.manifest import Manifest
from peerstore.model.placement import StripePlacement
from peerstore.wire import messages as msg

STABLE_SETTLE_MAX = 60.0  # seconds a view must hold before it becomes the stable membership
SCAN_INTERVAL_MIN = 60.0  # periodic scans: every max(this, grace) seconds
SCAN_BATCH_DELAY = 1.0  # requested repairs are gathered this long into one scan
RETRY_MIN, RETRY_MAX = 5.0, 300.0  # backoff for scans after a pass that left work undone
PARALLEL_STRIPES = 4  # stripes repaired at once when the node has no client operation
BUSY_STRIPES = 1  # ... while it coordinates a put or a get, or serves pieces to one
CLIENT_HOLD = 2.0  # seconds after the last piece served to a put or a get that repair still yields
MEMORY_SHARE = 4  # repair buffers stay within memory_budget / MEMORY_SHARE
MANIFEST_LOADS = 4  # manifests fetched at once during a scan
RATE_WINDOW = 30.0  # seconds of completions the measured rate averages over
REFUSING_FOR = 600.0  # seconds a node that refused a piece (read-only or full disk) is no target
MAX_REQUESTED = 100_000  # piece ids waiting for a requested scan


@dataclass(frozen=True)
class RepairProgress:
    """What this node's repair is doing, for status and metrics."""

    state: str  # idle, scanning, repairing, waiting, no majority
    bytes_left: int  # bytes this node still has to store for its plan
    bytes_done: int  # bytes repair stored since this node started
    rate: float  # bytes per second over the last RATE_WINDOW seconds
    eta: float | None  # seconds, from the measured rate (None: not measurable yet)
    below_policy: tuple[bytes, ...]  # manifest ids of checkpoints below policy at the last scan
    cluster_bytes_left: int  # bytes every owner together still has to store (last scan)
    last_scan: float | None
    rebalance_left: int = 0  # this node's rebalance actions still to do (moves and drops)
    rebalance_bytes_left: int = 0  # bytes its moves still have to copy


class RepairService(Budget):
    """Keeps every committed checkpoint at its policy, as far as this node owns its stripes."""

    def __init__(self, node: RepairHost, stable: Iterable[str] | None = None,
                 on_stable: Callable[[float, frozenset[str]], None] | None = None):
        self.node = node
        settings = node.settings
        self.grace = float(settings.repair_grace_seconds)
        self.rate_limit = float(settings.repair_max_bytes_per_second)
        self._stable_loaded = frozenset(stable) if stable is not None else None
        self.on_stable = on_stable
        self.tracker: MembershipTracker | None = None
        burst = max(self.rate_limit, 2 * settings.policy.shard_size)
        self.bucket = TokenBucket(self.rate_limit, burst)
        self.manifests: dict[bytes, list[StripeRef]] = {}
        self.known: dict[bytes, frozenset[str]] = {}  # piece -> holders at the last scan
        self.queue: deque[StripeRepair] = deque()
        self.tasks: list[StripeTask] = []
        self.pass_failed = False
        self.held = 0
        self.scanning = False
        self.scan_at: float | None = None
        self.rescan_pending = False
        self.retry = RETRY_MIN
        self.requested: set[bytes] = set()
        self.forced: set[tuple[bytes, int]] = set()  # requested stripes this node repairs as if it owned them
        self.last_scan: float | None = None
        self.last_plan: list[StripeRepair] = []
        self.bytes_done = 0
        self.done_log: deque[tuple[float, int]] = deque()
        self.blocked = ""
        self.now = 0.0
        self.rebalance = bool(getattr(settings, "repair_rebalance", True))
        self.moves: deque[Drop | Move] = deque()  # this node's share of the last rebalance plan
        self.moving: list[RebalanceTask] = []
        self.moving_failed = False
        self.rebalance_plan = RebalancePlan()  # the whole cluster's, at the last scan
        self.rebalance_holders: dict[bytes, frozenset[str]] = {}
        self.rebalance_absent: dict[bytes, frozenset[str]] = {}
        self.rebalance_stripe_keys: dict[bytes, frozenset[tuple[bytes, int]]] = {}
        self.refusing: dict[str, float] = {}  # node -> until when it gets no new pieces
        self.client_until = 0.0  # repair yields until then: this node serves a put or a get
        self.rebalance_stripes: list[StripeRef] = []

    # -- inputs from the node ------------------------------------------------------------

    def start(self, now: float) -> None:
        """The node (re)started: absences count from now. The first scan comes once the
        view has had time to settle: it learns who the members are (and so the majority)
        but repairs nothing a returning node may still bring back (the grace counts from
        this start)."""
        tracker = self._ensure(now)
        self._schedule(now + tracker.settle)

    def on_members_changed(self, now: float) -> None:
        tracker = self._ensure(now)
        returned = (frozenset(self.node.alive) - tracker.alive) - {self.node.node_id}
        tracker.observe(now, self.node.alive)
        if returned and self.rebalance:
            # New or returning members: once the view settles, look for surplus and shares.
            self._schedule(tracker.grew_at + tracker.settle + SCAN_BATCH_DELAY)
        if returned and (self.moves or self.moving):
            self._drop_rebalance()
        if returned and self.queue:
            # Their pieces count again: what is planned may no longer be needed.
            self._drop_queue()
            self._schedule(now + SCAN_BATCH_DELAY)
        self._majority_check(now)
        for end in tracker.grace_ends(self.grace):
            if end > now:
                self._schedule(end)
        self.pump(now)

    def request_repair(self, now: float, piece_ids: Iterable[bytes]) -> None:
        """Check the stripes holding these pieces soon and re-create what is missing.

        The entry point for scrub, verify and get: call it with the pieces found corrupt
        or missing (already out of this node's inventory). This node repairs those stripes
        itself, whoever owns them: only it knows of the problem, and the problem is not a
        node that may come back, so no grace applies."""
        self._ensure(now)
        for pid in piece_ids:
            if len(self.requested) >= MAX_REQUESTED:
                break
            self.requested.add(bytes(pid))
        self._schedule(now + SCAN_BATCH_DELAY)

    def tick(self, now: float) -> None:
        self.now = now
        self._ensure(now)
        self._majority_check(now)
        if self.scan_at is not None and now >= self.scan_at and not self.scanning:
            self.scan_at = None
            self._scan(now)
        self.pump(now)

    def next_deadline(self) -> float | None:
        deadlines = []
        if self.scan_at is not None and not self.scanning:
            deadlines.append(self.scan_at)
        if self.tracker is not None:
            promote = self.tracker.next_deadline()
            if promote is not None:
                deadlines.append(promote)
        for task in [*self.tasks, *self.moving]:
            waiting = task.waiting_for()
            if waiting is not None:
                ready = self.bucket.ready_at(self.now, waiting)
                if ready > self.now:  # else it waits for memory or flow control: an event frees them
                    deadlines.append(ready)
        return min(deadlines, default=None)

    # -- reporting -----------------------------------------------------------------------

    def progress(self, now: float) -> RepairProgress:
        left = sum(r.bytes for r in self.queue) + sum(
            j.addition.size for t in self.tasks for j in t.jobs if j.state not in ("done", "failed"))
        rate = self._rate(now)
        below = tuple(sorted({r.stripe.manifest_id for r in self.last_plan if r.below_policy}))
        cluster = sum(r.bytes for r in self.last_plan)
        if self.tasks or self.queue:
            state = "repairing"
        elif self.moves or self.moving:
            state = "rebalancing"
        elif self.scanning:
            state = "scanning"
        elif self.blocked:
            state = self.blocked
        elif below:
            state = "waiting"
        else:
            state = "idle"
        actions = [*self.moves, *(t.action for t in self.moving if not t.ended)]
        moving = sum(a.size for a in actions if isinstance(a, Move))
        return RepairProgress(state, left, self.bytes_done, rate, left / rate if rate > 0 and left else None,
                              below, cluster, self.last_scan, len(actions), moving)

    def report(self, now: float) -> dict[str, Any]:
        """This node's ``"repair"`` section of its status report (core/node_report.py)."""
        p = self.progress(now)
        return {
            "state": p.state, "bytes_left": p.bytes_left, "bytes_done": p.bytes_done,
            "rate": round(p.rate), "eta": None if p.eta is None else round(p.eta, 1),
            "below_policy": len(p.below_policy), "cluster_bytes_left": p.cluster_bytes_left,
            "last_scan_age": None if p.last_scan is None else round(now - p.last_scan, 1),
            "majority": self.tracker is not None and self.tracker.has_majority(),
            "rebalance_left": p.rebalance_left, "rebalance_bytes_left": p.rebalance_bytes_left,
        }

    def stable_blob(self) -> bytes:
        """The last stable membership as the blob the node keeps on disk."""
        return self._ensure(self.now).encode_stable()

    def _rate(self, now: float) -> float:
        """Bytes per second stored over the last RATE_WINDOW seconds (reads only: a shell
        may ask from outside the task that drives the core)."""
        recent = [(t, size) for t, size in self.done_log if t >= now - RATE_WINDOW]
        if not recent:
            return 0.0
        return sum(size for _, size in recent) / max(now - recent[0][0], 1.0)

    # -- membership ----------------------------------------------------------------------

    def _ensure(self, now: float) -> MembershipTracker:
        if self.tracker is None:
            settle = min(STABLE_SETTLE_MAX, max(self.grace / 2, 0.0))
            self.tracker = MembershipTracker(self.node.node_id, now, settle, self._stable_loaded)
            self.tracker.observe(now, self.node.alive)
        return self.tracker

    def _majority_check(self, now: float) -> None:
        """Adopt a stable membership when due (and have it saved); a node that regains a
        majority looks at once for what it held back."""
        tracker = self._ensure(now)
        if tracker.tick(now) and self.on_stable is not None and tracker.stable is not None:
            self.on_stable(now, tracker.stable)
        if self.blocked == "no majority" and tracker.has_majority():
            self.blocked = ""
            self._schedule(now + SCAN_BATCH_DELAY)

    def _block(self) -> None:
        self.blocked = "no majority"
        self.node.stats["repair_blocked_no_majority"] += 1
        self._drop_queue()

    def _drop_rebalance(self) -> None:
        """Forget the rebalance plan (the membership changed); running moves end first."""
        self.moves.clear()

    def _drop_queue(self) -> None:
        """Forget the planned stripes; those a scrub or a get asked for are asked for again
        (their pieces were taken off the request list when the scan read it)."""
        for repair in self.queue:
            if (repair.stripe.manifest_id, repair.stripe.index) in self.forced:
                self.requested.update(repair.stripe.piece_ids)
        self.queue.clear()
        self.forced.clear()

    def _schedule(self, when: float) -> None:
        if self.scanning:
            if when <= self.now + SCAN_BATCH_DELAY:
                self.rescan_pending = True  # what this scan read may predate the reason
            return
        if self.scan_at is None or when < self.scan_at:
            self.scan_at = when

    # -- scanning ------------------------------------------------------------------------

    def _scan(self, now: float) -> None:
        tracker = self._ensure(now)
        if tracker.stable is not None and not tracker.has_majority():
            self._block()
            return  # regaining a majority schedules the next scan
        if now < tracker.grew_at + tracker.settle and not self.requested:
            # Members are coming back (a partition healing, nodes rebooting): the others
            # may be a moment behind, and their pieces count once they are seen.
            self._schedule(tracker.grew_at + tracker.settle)
            return
        self.blocked = ""
        self.scanning = True
        self.rescan_pending = False
        self.node.stats["repair_scans"] += 1
        entries = [e for name in self.node.catalog.names() for e in self.node.catalog.live_versions(name)]
        wanted = sorted({e.manifest_id for e in entries})
        # Manifests are immutable: keep those still live, forget removed ones.
        live = set(wanted)
        self.manifests = {mid: refs for mid, refs in self.manifests.items() if mid in live}
        missing = [mid for mid in wanted if mid not in self.manifests]
        state = {"left": len(missing), "queue": list(missing)}

        def loaded(t: float, mid: bytes, manifest: Manifest | None) -> None:
            if manifest is not None:
                self.manifests[mid] = stripes_of(manifest, mid)
            state["left"] -= 1
            launch(t)
            if state["left"] == 0:
                self._query(t, wanted)

        def launch(t: float) -> None:
            while state["queue"] and state["left"] - len(state["queue"]) < MANIFEST_LOADS:
                mid = state["queue"].pop(0)
                ManifestFetch(self.node, mid, lambda t2, m, mid=mid: loaded(t2, mid, m)).start()

        if not missing:
            self._query(now, wanted)
            return
        launch(now)

    def _query(self, now: float, manifest_ids: list[bytes]) -> None:
        requested, self.requested = self.requested, set()
        stripes = [s for mid in manifest_ids for s in self.manifests.get(mid, ())]
        ids = sorted({pid for s in stripes for pid in s.piece_ids})
        me = self.node.node_id
        holders: dict[bytes, set[str]] = {pid: ({me} if pid in self.node.inventory else set()) for pid in ids}
        peers = sorted(self.node.alive - {me})
        silent: set[str] = set()
        chunks = [tuple(ids[i: i + msg.MAX_QUERY_IDS]) for i in range(0, len(ids), msg.MAX_QUERY_IDS)]
        progress = {"chunk": 0, "waiting": 0}

        def next_chunk(t: float) -> None:
            if progress["chunk"] >= len(chunks):
                self._planned(t, stripes, holders, frozenset(peers), silent, requested)
                return
            chunk = chunks[progress["chunk"]]
            progress["chunk"] += 1
            asked = [p for p in peers if p not in silent]
            progress["waiting"] = len(asked)
            if not asked:
                next_chunk(t)
                return
            for peer in asked:
                self.node.request(
                    t, peer, lambda req, chunk=chunk: msg.QueryPieces(req, piece_ids=chunk),
                    lambda t2, reply, payload, peer=peer, chunk=chunk: answered(t2, peer, chunk, reply),
                    lambda t2, why, peer=peer, chunk=chunk: answered(t2, peer, chunk, None),
                )

        def answered(t: float, peer: str, chunk: tuple[bytes, ...], reply: Any) -> None:
            if isinstance(reply, msg.PiecesHeld):
                for i, pid in enumerate(chunk):
                    if i // 8 < len(reply.held) and reply.held[i // 8] >> (i % 8) & 1:
                        holders[pid].add(peer)
            else:
                silent.add(peer)  # no answer: presume it still holds what it held
            progress["waiting"] -= 1
            if progress["waiting"] == 0:
                next_chunk(t)

        next_chunk(now)

    def _planned(self, now: float, stripes: list[StripeRef], holders: dict[bytes, set[str]],
                 asked: frozenset[str], silent: set[str], requested: set[bytes]) -> None:
        self.scanning = False
        self.last_scan = now
        tracker = self._ensure(now)
        me = self.node.node_id
        # Every node a hint or an earlier answer names: tells the away from the gone.
        named = {n for s in stripes for n in s.hint} | {n for hs in self.known.values() for n in hs}
        if tracker.seed(named) and self.on_stable is not None and tracker.stable is not None:
            self.on_stable(now, tracker.stable)
        if not tracker.has_majority():
            self.last_plan = plan(stripes, holders, frozenset(asked) | {me}, hold_unexplained=True)
            self._block()
            return
        away, gone = tracker.split(named, now, self.grace)
        away = away | frozenset(silent)  # a live peer that did not answer: presume nothing lost
        live = (frozenset(asked) | {me}) - frozenset(silent)
        presumed = {pid: frozenset(self.known.get(pid, ())) & away for pid in holders}
        self.refusing = {n: until for n, until in self.refusing.items() if until > now}
        options = dict(away=away, presumed=presumed, gone=gone, no_targets=frozenset(self.refusing))
        # Only a loss explains a repair: a shortfall no gone node explains waits while this
        # node has just booted (it does not know who held what) or while a member is away
        # (the cluster grew and a new member left again before the stripes were raised to
        # the bigger cluster's layout: raising them waits until it is back or gone).
        booting = now - tracker.booted_at < self.grace or bool(away)
        # The whole cluster's plan (for status and metrics), and this node's share. Only
        # its own earlier additions may cover a piece several stripes share: another
        # owner's plan may differ, or not run.
        result = plan(stripes, holders, live, hold_unexplained=booting, **options)
        own = plan(stripes, holders, live, hold_unexplained=booting, owner=me, **options)
        # What absent nodes were last seen holding is kept, gone ones included: a node back
        # from past the grace that leaves again before the next scan still has its pieces
        # presumed during its new absence (its grace counts afresh).
        self.known = {pid: frozenset(h) | (self.known.get(pid, frozenset()) - live) for pid, h in holders.items()}
        self.last_plan = result
        growing = now < tracker.grew_at + tracker.settle  # only requested repairs go ahead now
        mine = [r for r in own if r.state is State.REPAIR and r.owner == me and r.additions and not growing]
        if growing:
            self._schedule(tracker.grew_at + tracker.settle)
        if requested:
            # Stripes a scrub or a get found damaged: this node repairs them itself, at once.
            named_stripes = [r.stripe for r in result if r.below_policy and requested & set(r.stripe.piece_ids)
                             and not any(m.stripe == r.stripe for m in mine)]
            for r in plan(named_stripes, holders, live, **options):
                if r.state is State.REPAIR and r.additions:
                    self.forced.add((r.stripe.manifest_id, r.stripe.index))
                    mine.append(r)
        self.queue = deque(r for r in mine if not self._running(r.stripe))
        self._plan_rebalance(now, tracker, stripes, holders, live, result, away | gone, silent, requested)
        if self.rescan_pending:
            self.rescan_pending = False
            self._schedule(now + SCAN_BATCH_DELAY)
        elif not mine and any(r.state in (State.HELD, State.STUCK) for r in result):
            self._schedule(now + self.retry)
            self.retry = min(self.retry * 2, RETRY_MAX)
        self._schedule(now + max(SCAN_INTERVAL_MIN, self.grace))
        for end in tracker.grace_ends(self.grace):  # an absence still within its grace
            if end > now:
                self._schedule(end)
                break
        self.pump(now)

    def _plan_rebalance(self, now: float, tracker: MembershipTracker, stripes: list[StripeRef],
                        holders: dict[bytes, set[str]], live: frozenset[str], result: list[StripeRepair],
                        absent: frozenset[str], silent: set[str], requested: set[bytes]) -> None:
        """Plan the cluster's rebalance and queue this node's share, only once nothing is
        left to repair and the view is the settled, complete membership: every member of the
        last stable membership alive and answering, none away, unchanged for the settle
        time. A node that just booted, or sees only part of the cluster, moves nothing."""
        self.moves.clear()
        self.rebalance_plan = RebalancePlan()
        settled = (tracker.stable is not None and tracker.stable == live and tracker.alive == live
                   and now - tracker.view_since >= tracker.settle)
        if (not self.rebalance or not settled or self.queue or self.tasks or requested or silent
                or (absent & tracker.stable) or any(r.below_policy for r in result)):
            return
        whole = plan_rebalance(stripes, holders, live, frozenset(self.refusing))
        self.rebalance_plan = whole
        mine = whole.of(self.node.node_id)
        busy = {t.piece_id for t in self.moving if not t.ended}
        # What nodes not alive now were last seen holding, or were placed to hold at
        # commit: no drop may count on their never coming back (rebalance_task checks
        # again right before dropping).
        absent: dict[bytes, set[str]] = {}
        for pid, h in self.known.items():
            absent.setdefault(pid, set()).update(set(h) - live)
        for ref in stripes:
            try:
                placed = StripePlacement.from_hint(ref.hint, ref.entry.k, ref.entry.p).positions()
            except FormatError:  # a damaged hint names nobody
                continue
            for pid, nodes in zip(ref.piece_ids, placed):
                absent.setdefault(pid, set()).update(set(nodes) - live)
        self.rebalance_absent = {pid: frozenset(h) for pid, h in absent.items() if h}

        def keeps_returning(a: Drop | Move) -> bool:
            victim = a.node if isinstance(a, Drop) else a.source
            after = holders if isinstance(a, Drop) else {**holders, a.piece_id: set(holders.get(a.piece_id, ())) | {a.target}}
            return spare_on_return(a.piece_id, victim, stripes, after, live, self.rebalance_absent)

        self.moves = deque(a for a in (*mine.drops, *mine.moves) if a.piece_id not in busy and keeps_returning(a))
        self.rebalance_holders = {pid: frozenset(h) for pid, h in holders.items()}
        self.rebalance_stripes = stripes
        keys: dict[bytes, set[tuple[bytes, int]]] = {}
        for ref in stripes:
            for pid in ref.piece_ids:
                keys.setdefault(pid, set()).add((ref.manifest_id, ref.index))
        self.rebalance_stripe_keys = {pid: frozenset(k) for pid, k in keys.items()}
        if self.moves:
            self.node.stats["rebalance_plans"] += 1

    def _running(self, stripe: StripeRef) -> bool:
        return any(t.repair.stripe.manifest_id == stripe.manifest_id and t.repair.stripe.index == stripe.index
                   for t in self.tasks)

    # -- carrying the plan out -----------------------------------------------------------

    def serving_client(self, now: float) -> None:
        """This node just stored or sent a piece for another node's put or get: yield to it."""
        self.client_until = now + CLIENT_HOLD

    def _room(self) -> bool:
        busy = any(not op.finished for op in self.node.operations) or self.now < self.client_until
        return len(self.tasks) + len(self.moving) < (BUSY_STRIPES if busy else PARALLEL_STRIPES)

    def pump(self, now: float) -> None:
        """Start what the plan, the pacing and the memory allow now (after any event)."""
        self.now = now
        tracker = self.tracker
        if (self.queue or self.tasks or self.moves or self.moving) and (tracker is None or not tracker.has_majority()):
            self._block()
            for task in list(self.tasks):
                task.abort()
            self.tasks.clear()
            self._drop_rebalance()
            for move in list(self.moving):
                move.abort()
            self.moving.clear()
            return
        while self.queue and self._room():
            repair = self.queue.popleft()
            key = (repair.stripe.manifest_id, repair.stripe.index)
            requested = key in self.forced
            self.forced.discard(key)
            if owner_of(repair.stripe, self.node.alive) != self.node.node_id and not requested:
                continue  # the membership moved: the stripe has another owner now
            task = StripeTask(self.node, repair, self, self._stored, self._task_done, requested)
            self.tasks.append(task)
            self.node.stats["repair_stripes_started"] += 1
        for task in list(self.tasks):
            task.advance(now)
        while self.moves and not self.queue and not self.tasks and self._room():
            action = self._next_move()
            if action is None:
                break  # every action left shares a stripe with one running
            move = RebalanceTask(self.node, action, self.rebalance_stripes, self.rebalance_holders,
                                 self, self._moved, absent=self.rebalance_absent)
            self.moving.append(move)
            move.start(now)
        for move in list(self.moving):
            move.advance(now)

    def _next_move(self) -> Drop | Move | None:
        """The first planned action sharing no stripe with a running one: two drops from
        one stripe, each checked while the other copy was still there, could together
        take it below policy."""
        busy = {(s.manifest_id, s.index) for t in self.moving if not t.ended for s in t.stripes}
        for action in self.moves:
            if not self.rebalance_stripe_keys.get(action.piece_id, frozenset()) & busy:
                self.moves.remove(action)
                return action
        return None

    # Budget (what tasks may spend) --------------------------------------------------------

    def take(self, now: float, size: int) -> bool:
        return self.bucket.try_take(now, size)

    def reserve(self, size: int) -> bool:
        cap = self.node.settings.memory_budget // MEMORY_SHARE
        if self.held and self.held + size > cap:
            return False
        if not self.node.can_buffer(size):
            return False
        self.node.buffer_bytes += size
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.node.buffer_bytes -= size
        self.held -= size

    # task completions ----------------------------------------------------------------------

    def _stored(self, now: float, addition: Addition) -> None:
        self.bytes_done += addition.size
        self.done_log.append((now, addition.size))
        while self.done_log and self.done_log[0][0] < now - RATE_WINDOW:
            self.done_log.popleft()
        self.node.stats["repair_pieces"] += 1
        self.node.stats["repair_bytes"] += addition.size

    def _moved(self, now: float, move: RebalanceTask) -> None:
        if move.copy is not None:
            self._note_refusals(now, move.copy)
        if move in self.moving:
            self.moving.remove(move)
        self.moving_failed = self.moving_failed or not move.ok
        if move.ok:
            self.node.stats["rebalance_bytes_freed"] += move.action.size
        if not self.moving and not self.moves:
            # The share is done: look again (the others' shares change the loads).
            self._schedule(now + (self.retry if self.moving_failed else SCAN_BATCH_DELAY))
            if self.moving_failed:
                self.retry = min(self.retry * 2, RETRY_MAX)
            self.moving_failed = False
        self.pump(now)

    def _note_refusals(self, now: float, task: StripeTask) -> None:
        for job in task.jobs:
            if job.refused:
                self.refusing[job.addition.target] = now + REFUSING_FOR
                self.node.stats["repair_target_refused"] += 1

    def _task_done(self, now: float, task: StripeTask) -> None:
        self._note_refusals(now, task)
        if task in self.tasks:
            self.tasks.remove(task)
        if task.failed:
            self.node.stats["repair_stripes_failed"] += 1
        else:
            self.node.stats["repair_stripes_done"] += 1
        self.pass_failed = self.pass_failed or task.failed
        if not self.tasks and not self.queue:
            # A pass ended: look again, to confirm, or to resume from what now exists.
            if self.pass_failed:
                self._schedule(now + self.retry)
                self.retry = min(self.retry * 2, RETRY_MAX)
            else:
                self.retry = RETRY_MIN
                self._schedule(now + SCAN_BATCH_DELAY)
            self.pass_failed = False
