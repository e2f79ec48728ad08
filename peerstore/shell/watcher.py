"""The watcher's shell: file-system events into trio, and the pending queue's effects done.

`Watcher` drives one `peerstore.watch.pending.WatchQueue` over a set of watch roots:

- A watchdog observer thread reports file events. Its handler asks trio to run a small
  function in the trio thread that puts the event into a bounded memory channel (no state
  is shared with the thread); when the channel is full the event is dropped and the roots
  are scanned again, as after watchdog's own ``EventsLostEvent``.
- One trio task feeds every event, observation and result to the queue, and carries out
  its effects: ``Observe`` and ``HashFiles`` in worker threads (``watch_fs``), ``StartPut``
  through the `Storer` the caller supplies (the daemon's own put path, or a `NodeClient`
  for ``peerstore watch``; this module imports neither), ``Persist`` as a durable write
  (temp file, fsync, rename, directory fsync) of the queue's state, ``Drop``/``Log`` as one
  log line each.
- On start it loads the persisted queue, starts the observer, then scans every root and
  reports each file (``touched``) and the units found (``scan_finished``), so checkpoints
  finished while it was down are stored too.

Close-after-write (Linux): a file modified (inotify ``IN_MODIFY``) and not closed after
writing since (``IN_CLOSE_WRITE``, watchdog's ``FileClosedEvent``) is reported with
``closed_after_write=False``; on Linux every observation also looks in /proc for a process
holding the file open for writing. macOS FSEvents has neither: there quiescence alone
decides (``None`` in the observation), as docs/watcher.md says.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from peerstore.errors import FormatError, PeerstoreError
from peerstore.shell import watch_fs
from peerstore.shell.durable import write_file_atomic
from peerstore.shell.logs import fields
from peerstore.watch.detect import unit_for
from peerstore.watch.naming import Naming
from peerstore.watch.pending import (
    MAX_STATE_BYTES,
    Drop,
    Effect,
    Failed,
    HashFiles,
    Log,
    Observe,
    PendingInfo,
    Persist,
    QueueSettings,
    ReadChanged,
    StartPut,
    Stored,
    Vanished,
    WatchQueue,
    WatchStats,
    stat_mismatch,
)
from peerstore.watch.observe import FileStat

log = logging.getLogger("peerstore.watch")

EVENT_BUFFER = 10_000  # file events waiting for the queue; beyond, the roots are scanned again
MAX_UNCLOSED = 100_000  # files tracked as "modified, not closed yet"
MAX_STATUS_ROWS = 100  # pending checkpoints listed in a status reply
STOP_TIMEOUT = 10.0  # seconds to wait for the observer thread to stop
ONCE_MARGIN = 5.0  # --once: seconds past settle + retry after which whatever waits is reported


# -- what the caller supplies: a way to store


@dataclass(frozen=True)
class PutFile:
    """One file of a put: its path inside the checkpoint, where it is, and the stat it must
    still have when the put reads it (else the put fails "changed during put")."""

    path: str
    local: Path
    size: int
    mode: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class PutPlan:
    """Store exactly ``files`` as checkpoint ``name``. ``local_root`` is the unit: the
    directory (``is_dir``) or the one file."""

    name: str
    local_root: Path
    is_dir: bool
    files: tuple[PutFile, ...]


@dataclass(frozen=True)
class StoredVersion:
    """A committed put: its version ("3.ab12cd34ef567890") and each file's whole-file
    BLAKE3 hex in ``PutPlan.files`` order (None if the store path does not report them)."""

    version: str
    blake3: tuple[str, ...] | None = None


StoreResult = StoredVersion | Failed | ReadChanged | Vanished


class Storer(Protocol):
    """How the watcher stores a checkpoint. ``store`` must read exactly ``plan.files``,
    fail with `ReadChanged` if one changed while it was read (before committing), and
    answer `Failed` (with a short ``kind``: too_few_nodes, disk_full, unreachable,
    outcome_unknown, ...) rather than raise."""

    async def store(self, plan: PutPlan) -> StoreResult: ...


def failure_kind(reason: str) -> str:
    """A metric label for a put's failure reason."""
    text = reason.lower()
    if "disk full" in text or "no space" in text:
        return "disk_full"
    if "live node" in text or "tolerance" in text:
        return "too_few_nodes"
    if "timed out" in text or "unreachable" in text or "connection" in text:
        return "unreachable"
    return "put_failed"


# -- the driver


@dataclass(frozen=True)
class OnceReport:
    """What ``run(once=True)`` leaves behind: the units still pending (with why), and the
    units dropped (never stored) during the run."""

    pending: tuple[PendingInfo, ...]
    dropped: tuple[Drop, ...]
    stats: WatchStats


class Watcher:
    """Watch ``roots`` and store every finished checkpoint through ``storer``.

    ``state_path``: where the queue persists (None: nowhere, for tests). ``probe_writers``:
    look in /proc for files open for writing (default: where /proc allows it).
    ``close_events``: use close-after-write events (default: where the observer reports
    them, i.e. Linux inotify)."""

    def __init__(self, roots: Sequence[Path], storer: Storer, *, naming: Naming | None = None,
                 settings: QueueSettings | None = None, state_path: Path | None = None,
                 probe_writers: bool | None = None, close_events: bool | None = None,
                 event_buffer: int = EVENT_BUFFER):
        self.roots = [os.path.abspath(os.fspath(r)) for r in roots]
        if len(set(self.roots)) != len(self.roots):
            raise ValueError(f"watch roots listed twice: {self.roots}")
        for a in self.roots:
            for b in self.roots:
                if a != b and b.startswith(a.rstrip("/") + "/"):
                    raise PeerstoreError(f"watch path {b} is inside watch path {a}; list only {a}")
        self.storer = storer
        self.settings = settings or QueueSettings()
        self.queue = WatchQueue(self.roots, naming, self.settings)
        self.state_path = state_path
        self.probe_writers = watch_fs.proc_available() if probe_writers is None else probe_writers
        self.event_buffer = event_buffer
        self._use_close_events = close_events
        self.close_events = False  # set once an observer that reports closes is running
        self._handler: Any = None
        self.watching: set[str] = set()  # roots with an active watch
        self._unclosed: dict[str, set[str]] = {r: set() for r in self.roots}
        self._inflight = 0
        self._wait_scope: trio.CancelScope | None = None
        self._send: trio.MemorySendChannel | None = None
        self._nursery: trio.Nursery | None = None
        self._lost = False
        self._stopping = False
        self._persist_blob: bytes | None = None
        self._persist_wake = trio.Event()
        self._persist_failed = False
        self._dropped: list[Drop] = []
        self._observed: dict[tuple[str, str], float] = {}
        self._started_at = 0.0
        self.scans = 0

    # ---- running

    async def run(self, *, once: bool = False, task_status=trio.TASK_STATUS_IGNORED) -> OnceReport | None:
        """Watch until cancelled (``once``: until everything finished is stored, then
        return what still waits). ``task_status.started()`` comes after the first scan."""
        send, receive = trio.open_memory_channel[tuple[str, str, str, bool]](self.event_buffer)
        self._send = send
        self._started_at = trio.current_time()
        observer = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._persister)
            try:
                await self._load_state()
                observer = await self._start_observer(trio.lowlevel.current_trio_token())
                for root in self.roots:
                    if root in self.watching:
                        await self._scan(root)
                    else:
                        log.warning("watch path %s does not exist or is not a directory; watching it once it "
                                    "appears (checked every %g s)", root, self.settings.retry_seconds,
                                    extra=fields("watch_path_missing", path=root))
                task_status.started()
                report = await self._loop(receive, once, observer)
            finally:
                self._stopping = True
                receive.close()
                if observer is not None:
                    await _stop_observer(observer)
                await self._flush_state()
                nursery.cancel_scope.cancel()
        return report

    async def _loop(self, receive: trio.MemoryReceiveChannel, once: bool, observer: Any) -> OnceReport | None:
        next_root_check = trio.current_time() + self.settings.retry_seconds
        while True:
            deadline = self.queue.next_deadline()
            if len(self.watching) < len(self.roots):
                deadline = min(deadline if deadline is not None else math.inf, next_root_check)
            with trio.move_on_at(deadline if deadline is not None else math.inf) as scope:
                self._wait_scope = scope
                try:
                    item = await receive.receive()
                finally:
                    self._wait_scope = None
                self._on_event(*item)
                while True:  # take what else is waiting without going round the loop
                    try:
                        item = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._on_event(*item)
            now = trio.current_time()
            if self._lost:
                self._lost = False
                log.warning("file events were lost (too many at once); scanning the watched directories again",
                            extra=fields("watch_rescan"))
                self._forget_unclosed()
                for root in sorted(self.watching):
                    await self._scan(root)
            if len(self.watching) < len(self.roots) and now >= next_root_check:
                next_root_check = now + self.settings.retry_seconds
                await self._watch_new_roots(observer)
            self._apply(self.queue.tick(now))
            if once and self._once_done(now):
                return OnceReport(self.queue.pending(), tuple(self._dropped), self.queue.stats())

    def _once_done(self, now: float) -> bool:
        if self._inflight:
            return False
        pending = self.queue.pending()
        if not pending:
            return True
        s = self.settings
        if now >= self._started_at + s.settle_seconds + s.retry_seconds + ONCE_MARGIN:
            return True
        looked = all(self._observed.get((p.root, p.unit), -math.inf) >= self._started_at + s.settle_seconds
                     for p in pending)
        upcoming = self.queue.next_deadline()
        return looked and (upcoming is None or upcoming > now + 2 * s.debounce + 0.5)

    # ---- the queue's effects

    def _apply(self, effects: list[Effect], extra: dict[str, Any] | None = None) -> None:
        """Carry out the queue's effects; ``extra``: the log fields of its Log lines."""
        assert self._nursery is not None
        for effect in effects:
            if isinstance(effect, Observe):
                self._inflight += 1
                self._nursery.start_soon(self._observe, effect)
            elif isinstance(effect, HashFiles):
                self._inflight += 1
                self._nursery.start_soon(self._hash, effect)
            elif isinstance(effect, StartPut):
                self._inflight += 1
                self._nursery.start_soon(self._put, effect)
            elif isinstance(effect, Persist):
                self._persist_blob = effect.blob
                self._persist_wake.set()
            elif isinstance(effect, Drop):
                if len(self._dropped) < 1000:
                    self._dropped.append(effect)
                log.info("not storing %s: %s", os.path.join(effect.root, effect.unit), effect.reason,
                         extra=fields("watch_dropped", path=os.path.join(effect.root, effect.unit)))
            elif isinstance(effect, Log):
                log.info("%s", effect.message, extra=extra)
        scope = self._wait_scope
        if scope is not None:
            upcoming = self.queue.next_deadline()
            if upcoming is not None and upcoming < scope.deadline:
                scope.deadline = upcoming

    def _kick(self) -> None:
        """Wake the loop now (a result arrived: ``--once`` may be done)."""
        if self._wait_scope is not None:
            self._wait_scope.deadline = -math.inf

    async def _observe(self, effect: Observe) -> None:
        try:
            started = trio.current_time()
            unclosed = tuple(p for p in self._unclosed[effect.root]
                             if p == effect.unit or p.startswith(effect.unit + "/") or p in effect.context)
            try:
                obs = await trio.to_thread.run_sync(
                    watch_fs.observe_unit, Path(effect.root), effect.unit, effect.context, started, unclosed,
                    self.probe_writers,
                )
            except Exception:  # a bug: left unanswered, the queue asks again after observe_timeout
                log.exception("observing %s failed", os.path.join(effect.root, effect.unit),
                              extra=fields("watch_error", path=os.path.join(effect.root, effect.unit)))
                return
            now = trio.current_time()
            self._observed[(effect.root, effect.unit)] = started
            if len(self._observed) > 4 * self.settings.max_units:
                self._observed.clear()
            if obs is None:
                self._apply(self.queue.vanished(effect.root, effect.unit, now))
            else:
                self._apply(self.queue.observed(obs, now))
        finally:
            self._inflight -= 1
            self._kick()

    async def _hash(self, effect: HashFiles) -> None:
        try:
            try:
                outcome = await trio.to_thread.run_sync(
                    watch_fs.hash_files, Path(effect.root), effect.files, lambda: self._stopping)
            except Exception as err:
                log.exception("hashing %s failed", os.path.join(effect.root, effect.unit),
                              extra=fields("watch_error", path=os.path.join(effect.root, effect.unit)))
                outcome = Failed("internal", f"hashing failed: {err}")
            self._apply(self.queue.hashed(effect.root, effect.unit, effect.attempt, outcome, trio.current_time()))
        finally:
            self._inflight -= 1
            self._kick()

    async def _put(self, effect: StartPut) -> None:
        try:
            outcome: Any
            plan = await trio.to_thread.run_sync(plan_put, effect)
            if not isinstance(plan, PutPlan):
                outcome = plan
            else:
                log.info("storing %s as %s (%d files)", os.path.join(effect.root, effect.unit), effect.name,
                         len(plan.files), extra=fields("watch_storing", effect.name, files=len(plan.files)))
                try:
                    result = await self.storer.store(plan)
                except Exception as err:  # a Storer must not raise; never let it stop the watcher
                    log.exception("storing %s failed", effect.name, extra=fields("watch_error", effect.name))
                    result = Failed("internal", f"{type(err).__name__}: {err}")
                outcome = self._outcome(effect, plan, result)
            self._apply(self.queue.put_done(effect.root, effect.unit, effect.attempt, outcome, trio.current_time()),
                        _outcome_fields(effect.name, outcome))
        finally:
            self._inflight -= 1
            self._kick()

    def _outcome(self, effect: StartPut, plan: PutPlan, result: StoreResult) -> Any:
        if not isinstance(result, StoredVersion):
            if isinstance(result, (Failed, ReadChanged)) and not os.path.lexists(plan.local_root):
                return Vanished()
            return result
        content: tuple[tuple[str, str], ...] = ()
        if result.blake3 is not None and len(result.blake3) == len(effect.files):
            content = tuple((f.path, digest) for f, digest in zip(effect.files, result.blake3))
        return Stored(result.version, content, time.time())

    # ---- persistence

    async def _load_state(self) -> None:
        now = trio.current_time()
        if self.state_path is None:
            return
        try:
            blob = await trio.to_thread.run_sync(_read_bounded, self.state_path)
        except FileNotFoundError:
            return
        except OSError as err:
            raise PeerstoreError(f"cannot read the watch queue {self.state_path}: {err.strerror or err}") from None
        try:
            self._apply(self.queue.load(blob, now))
        except FormatError as err:
            aside = self.state_path.with_name(f"{self.state_path.name}.bad-{int(time.time())}")
            await trio.to_thread.run_sync(os.replace, self.state_path, aside)
            log.error("%s: %s; moved it to %s and starting with an empty queue", self.state_path, err, aside,
                      extra=fields("watch_queue_reset", path=str(self.state_path)))

    async def _persister(self) -> None:
        while True:
            await self._persist_wake.wait()
            self._persist_wake = trio.Event()
            await self._write_state()

    async def _write_state(self) -> None:
        blob, self._persist_blob = self._persist_blob, None
        if blob is None or self.state_path is None:
            return
        try:
            await trio.to_thread.run_sync(_write_state, self.state_path, blob)
            if self._persist_failed:
                log.info("saved the watch queue to %s again", self.state_path)
            self._persist_failed = False
        except (OSError, PeerstoreError) as err:
            if self._persist_blob is None:
                self._persist_blob = blob  # try again with the next change
            if not self._persist_failed:
                log.warning("cannot save the watch queue to %s: %s; it is kept in memory and saved "
                            "again at the next change", self.state_path, err,
                            extra=fields("watch_queue_unsaved", path=str(self.state_path)))
            self._persist_failed = True

    async def _flush_state(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
            await self._write_state()

    # ---- events

    def _deliver(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        """Runs in the trio thread (asked by the observer thread)."""
        if self._send is None or self._stopping:
            return
        try:
            self._send.send_nowait((kind, src, dest, is_dir))
        except trio.WouldBlock:
            self._lost = True
            self._kick()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _on_event(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        now = trio.current_time()
        if kind == "lost":
            self._lost = True
            return
        for path, gone in ((src, kind in ("deleted", "moved")), (dest, False)):
            if not path:
                continue
            root, rel = self._locate(path)
            if root is None:
                continue
            if rel == "":
                if gone:
                    log.warning("watch path %s was deleted or moved away; watching it again once it is back", root,
                                extra=fields("watch_path_missing", path=root))
                    self.watching.discard(root)
                continue
            self._track_close(root, rel, kind, gone, is_dir, src, dest)
            try:
                self._apply(self.queue.touched(root, rel, now, is_dir=is_dir))
            except ValueError:
                continue
            if is_dir and not gone and kind in ("created", "moved") and self._nursery is not None:
                # a directory moved in from outside carries files no event will name
                self._nursery.start_soon(self._scan_dir, root, rel)

    def _locate(self, path: str) -> tuple[str | None, str]:
        for root in self.roots:
            rel = watch_fs.relative(root, path)
            if rel is not None:
                return root, rel
        return None, ""

    def _track_close(self, root: str, rel: str, kind: str, gone: bool, is_dir: bool, src: str, dest: str) -> None:
        if not self.close_events or is_dir:
            return
        unclosed = self._unclosed[root]
        if kind == "modified":
            if len(unclosed) >= MAX_UNCLOSED:
                unclosed.clear()  # unknown again (None), never a wrong "not closed"
            unclosed.add(rel)
        elif kind == "closed" or gone and kind == "deleted":
            unclosed.discard(rel)
        elif kind == "moved":
            if gone:
                was_open = rel in unclosed
                unclosed.discard(rel)
                if was_open and dest:
                    dest_root, dest_rel = self._locate(dest)
                    if dest_root is not None and dest_rel:
                        self._unclosed[dest_root].add(dest_rel)

    def _forget_unclosed(self) -> None:
        for unclosed in self._unclosed.values():
            unclosed.clear()

    async def _scan(self, root: str) -> None:
        """Report every file under ``root`` and the units present (``scan_finished``)."""
        now = trio.current_time()
        result = await trio.to_thread.run_sync(watch_fs.scan, Path(root))
        self.scans += 1
        if result.truncated:
            log.warning("%s holds more than %d files; only the first were looked at", root, watch_fs.MAX_SCAN_ENTRIES,
                        extra=fields("watch_truncated", path=root))
        for path in result.unreadable[:5]:
            log.warning("cannot read %s while scanning %s; its checkpoints are not stored", path, root,
                        extra=fields("watch_unreadable", path=str(path)))
        present = set()
        for rel in result.files:
            try:
                unit = unit_for(rel)
            except ValueError:
                continue
            if unit is not None:
                present.add(unit)
            self._apply(self.queue.touched(root, rel, now))
        if not result.truncated and not result.unreadable:
            self._apply(self.queue.scan_finished(root, present, trio.current_time()))

    async def _scan_dir(self, root: str, rel: str) -> None:
        result = await trio.to_thread.run_sync(watch_fs.scan, Path(root), rel, 100_000)
        now = trio.current_time()
        for path in result.files:
            try:
                self._apply(self.queue.touched(root, path, now))
            except ValueError:
                continue

    # ---- the observer thread

    async def _start_observer(self, token: trio.lowlevel.TrioToken) -> Any:
        from watchdog.observers import Observer

        handler = _Forward(self, token)
        observer = Observer()
        reports_closes = type(observer).__name__ == "InotifyObserver"
        self.close_events = reports_closes if self._use_close_events is None else self._use_close_events and reports_closes
        for root in self.roots:
            await self._schedule(observer, handler, root)
        observer.start()
        self._handler = handler
        return observer

    async def _schedule(self, observer: Any, handler: Any, root: str) -> None:
        if not os.path.isdir(root):
            return
        try:
            await trio.to_thread.run_sync(
                lambda: observer.schedule(handler, root, recursive=True, event_filter=_event_filter()))
        except OSError as err:
            hint = ""
            if sys.platform.startswith("linux") and err.errno in (28, 24):  # ENOSPC, EMFILE: inotify limits
                hint = "; raise fs.inotify.max_user_watches (sysctl) for large directory trees"
            log.error("cannot watch %s: %s%s", root, err.strerror or err, hint, extra=fields("watch_error", path=root))
            return
        self.watching.add(root)

    async def _watch_new_roots(self, observer: Any) -> None:
        for root in self.roots:
            if root not in self.watching and os.path.isdir(root):
                try:
                    await trio.to_thread.run_sync(observer.unschedule_all)
                except Exception:  # an observer without watches, or one whose root vanished
                    pass
                self.watching.clear()
                for r in self.roots:
                    await self._schedule(observer, self._handler, r)
                log.info("now watching %s", ", ".join(sorted(self.watching)), extra=fields("watch_started"))
                for r in sorted(self.watching):
                    await self._scan(r)
                return

    # ---- visibility

    def status(self) -> dict[str, Any]:
        """For `peerstore status`: the roots, pending checkpoints and why, the last stored."""
        now = trio.current_time()
        stats = self.queue.stats()
        pending = self.queue.pending()
        return {
            "dirs": list(self.roots),
            "missing": [r for r in self.roots if r not in self.watching],
            "pending": [
                {"name": p.name, "path": os.path.join(p.root, p.unit), "state": p.state, "reason": p.reason,
                 "waiting_seconds": round(max(0.0, now - p.since), 1)}
                for p in pending[:MAX_STATUS_ROWS]
            ],
            "pending_count": len(pending),
            "last_stored": stats.last_stored,
            "last_success": stats.last_success,
            "stored": stats.stored,
            "unchanged": stats.unchanged,
            "failures": dict(stats.failures),
            "settle_seconds": self.settings.settle_seconds,
            "close_events": self.close_events,
        }

    def metrics(self) -> dict[str, Any]:
        """For /metrics: counts, failures by kind, last success, oldest pending age."""
        now = trio.current_time()
        stats = self.queue.stats()
        pending = self.queue.pending()
        return {
            "dirs": len(self.roots), "pending": stats.pending, "stored": stats.stored,
            "unchanged": stats.unchanged, "read_changed": stats.read_changed, "dropped": stats.dropped,
            "failures": dict(stats.failures), "last_success": stats.last_success or 0.0,
            "oldest_pending": max((now - p.since for p in pending), default=0.0),
        }


def _outcome_fields(name: str, outcome: Any) -> dict[str, Any]:
    """The log fields of what a put of ``name`` came to: stored, failed (retried later), or
    back to pending (it changed or vanished while being read)."""
    if isinstance(outcome, Stored):
        return fields("watch_stored", f"{name}@{outcome.version}")
    if isinstance(outcome, Failed):
        return fields("watch_failed", name, kind=outcome.kind)
    return fields("watch_pending", name, why=type(outcome).__name__)


def plan_put(effect: StartPut) -> PutPlan | ReadChanged | Vanished:
    """The files of a `StartPut`, each checked against the stat it was judged with."""
    root = Path(effect.root)
    files = []
    for expected in effect.files:
        try:
            st = os.lstat(root / expected.path)
        except FileNotFoundError:
            return Vanished()
        except OSError as err:
            return ReadChanged(f"{expected.path}: {err.strerror or err}")
        change = stat_mismatch(expected, FileStat(expected.path, st.st_size, st.st_mtime_ns, st.st_ino))
        if change:
            return ReadChanged(change)
        files.append(PutFile(effect.path_in_checkpoint(expected.path), root / expected.path, st.st_size,
                             st.st_mode & 0o7777, st.st_mtime_ns, st.st_ino))
    return PutPlan(effect.name, root / effect.unit, effect.is_dir, tuple(files))


def _read_bounded(path: Path) -> bytes:
    with open(path, "rb") as f:
        blob = f.read(MAX_STATE_BYTES + 1)
    return blob


def _write_state(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, blob, mode=0o600)


def _event_filter() -> list[type]:
    from watchdog import events as e

    kinds = [e.FileCreatedEvent, e.FileModifiedEvent, e.FileDeletedEvent, e.FileMovedEvent,
             e.DirCreatedEvent, e.DirDeletedEvent, e.DirMovedEvent, e.FileClosedEvent]
    for optional in ("FileAttribEvent", "EventsLostEvent"):
        if hasattr(e, optional):
            kinds.append(getattr(e, optional))
    return kinds


class _Forward:
    """watchdog's event handler: in the observer thread, it only asks trio to take the
    event (plain strings); everything else happens in the trio thread."""

    def __init__(self, watcher: Watcher, token: trio.lowlevel.TrioToken):
        self._watcher = watcher
        self._token = token

    def dispatch(self, event: Any) -> None:
        kind = _kind_of(event)
        if kind is None:
            return
        src = os.fsdecode(event.src_path) if event.src_path else ""
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        try:
            trio.from_thread.run_sync(self._watcher._deliver, kind, src, dest, bool(event.is_directory),
                                      trio_token=self._token)
        except trio.RunFinishedError:
            pass


def _kind_of(event: Any) -> str | None:
    name = type(event).__name__
    if name == "EventsLostEvent":
        return "lost"
    if name in ("FileClosedEvent",):
        return "closed"
    if name in ("FileOpenedEvent", "FileClosedNoWriteEvent", "DirModifiedEvent", "DirAttribEvent"):
        return None  # our own reads look like these; directory listings change with every file
    if name in ("FileAttribEvent",):
        return "attrib"
    return getattr(event, "event_type", None)


async def _stop_observer(observer: Any) -> None:
    def stop() -> None:
        observer.stop()
        observer.join(STOP_TIMEOUT)

    with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT + 1):
        await trio.to_thread.run_sync(stop, abandon_on_cancel=True)
