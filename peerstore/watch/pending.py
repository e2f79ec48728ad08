"""The watcher's pending queue: a sans-IO state machine from path events to puts.

`WatchQueue` takes inputs (a path changed, an observation, a hash or put result, a unit
vanished, the time) and returns effects for the shell to carry out (`Observe`, `HashFiles`,
`StartPut`, `Drop`, `Log`, `Persist`). It never reads a clock or a file: every input carries
``now``, the shell's monotonic clock in seconds. Wall-clock times appear only as data
(``Stored.wall``) for status and metrics.

The life of a unit::

    touched ──> waiting ──(due)──> observing ──> Finished ──> ready ──> [hashing] ──> putting ──> stored
                   ^                   │ NotYet                                    │ │
                   └───────────────────┴──────── Failed / ReadChanged / changed ───┘ └─> Vanished: Drop

- **Waiting**: re-observed when due: ``debounce`` after the last event (capped so a unit that
  never stops changing is still looked at every ``retry_seconds``), when quiescence could be
  met, and at most ``retry_seconds`` after any other NotYet or a failed store.
- **Exactly once**: a stored unit keeps a record (its name, version, fingerprint and, when
  the shell gives them, each file's BLAKE3). An observation equal to the record is not
  stored again. A changed fingerprint with the same paths and sizes and a known content goes
  through `HashFiles` first, and identical content only refreshes the record (counted as
  ``unchanged``); otherwise the put makes a new version of the same name.
- **Reading safely**: `HashFiles` and `StartPut` list every file with the stat it was judged
  finished with. The shell re-stats each file right after reading it (``stat_mismatch``)
  and answers `ReadChanged` at the first difference, aborting the put before it commits;
  the unit goes back to waiting. A change reported during a put (``touched``) marks the unit
  to be checked again afterwards.
- **Deleted**: a unit whose files vanish while pending is dropped with one `Drop`.
- **Restarts**: `encode` / `load` keep the records and the pending list (JSON, format 1).
- **Cost**: ``touched`` on a unit already waiting is O(1); other inputs and `next_deadline`
  are O(pending units), bounded by ``max_units``.
  On start the shell re-scans every root and reports each file with ``touched``.

The shell must answer every `Observe` with `observed` or `vanished`, every `HashFiles`
with `hashed` and every `StartPut` with `put_done` (exactly once each), call `tick` at
`next_deadline`, and forward only content events (created, modified, deleted, moved,
closed-after-write), never open or read events (its own reads would look like changes).

One module, though long: the queue's states, its timers and its persisted form are one
state machine; its inputs and effects are declared at the top.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from posixpath import basename

from peerstore.errors import FormatError, InvalidNameError
from peerstore.watch.detect import (
    Finished,
    Ignore,
    NotYet,
    context_files,
    detect,
    fingerprint,
    split_path,
    unit_for,
)
from peerstore.watch.naming import Naming
from peerstore.watch.observe import CheckpointObservation, FileStat

FORMAT_NAME = "peerstore-watch-queue"
FORMAT_VERSION = 1
MAX_STATE_BYTES = 64 * 1024 * 1024
MAX_VERSION_LEN = 64
MAX_FAILURE_KINDS = 32
MAX_WARNED = 1024
_KIND = re.compile(r"[a-z0-9_]{1,32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

Content = tuple[tuple[str, str], ...]  # (path relative to the watch root, BLAKE3 hex) per file


@dataclass(frozen=True, order=True)
class UnitKey:
    """A unit: the watch root (as the shell names it) and the unit path relative to it."""

    root: str
    unit: str


# -- effects: what the shell must do


@dataclass(frozen=True)
class Observe:
    """Observe ``unit`` (see observe.py) and answer `observed`, or `vanished` if it is gone.
    Include those of ``context`` (paths relative to the root) that exist as regular files."""

    root: str
    unit: str
    context: tuple[str, ...]


@dataclass(frozen=True)
class HashFiles:
    """Read each file (checking ``stat_mismatch`` after each) and answer `hashed` with
    `Hashed` (whole-file BLAKE3 per path), `ReadChanged`, `Vanished` or `Failed`."""

    root: str
    unit: str
    attempt: int
    files: tuple[FileStat, ...]


@dataclass(frozen=True)
class StartPut:
    """Store exactly ``files`` (not a fresh listing) as checkpoint ``name``, checking
    ``stat_mismatch`` after reading each and aborting before the commit on a difference.
    Answer `put_done` with `Stored`, `Failed`, `ReadChanged` or `Vanished`."""

    root: str
    unit: str
    attempt: int
    name: str
    is_dir: bool
    files: tuple[FileStat, ...]

    def path_in_checkpoint(self, path: str) -> str:
        """A file's path inside the stored checkpoint: relative to the unit directory, or
        the file name for a single-file unit."""
        return path[len(self.unit) + 1 :] if self.is_dir else basename(path)


@dataclass(frozen=True)
class Drop:
    """The unit will not be stored (deleted while pending, refused, ignored): log ``reason``."""

    root: str
    unit: str
    reason: str


@dataclass(frozen=True)
class Log:
    """An informational line for the log (stored, unchanged, a failure and its retry)."""

    message: str


@dataclass(frozen=True)
class Persist:
    """Write ``blob`` durably (temp file, fsync, rename, directory fsync) in the data
    directory; `WatchQueue.load` reads it back on the next start."""

    blob: bytes


Effect = Observe | HashFiles | StartPut | Drop | Log | Persist

# -- outcomes the shell reports


@dataclass(frozen=True)
class Hashed:
    """`HashFiles` read every file unchanged; ``content`` has one (path, BLAKE3 hex) each."""

    content: Content


@dataclass(frozen=True)
class Stored:
    """The put committed as ``version`` ("3.ab12cd34ef567890"); ``content`` as in `Hashed`
    (or () if unknown); ``wall`` the wall-clock time of the success (for status/metrics)."""

    version: str
    content: Content
    wall: float


@dataclass(frozen=True)
class Failed:
    """The operation failed: ``kind`` is a short metric label (``too_few_nodes``,
    ``disk_full``, ``unreachable``, ``outcome_unknown``, ``io_error``...), ``detail`` the
    message. The unit is retried after ``retry_seconds``."""

    kind: str
    detail: str


@dataclass(frozen=True)
class ReadChanged:
    """A file's stat after reading differed from the one in the effect (``detail`` says how)."""

    detail: str


@dataclass(frozen=True)
class Vanished:
    """A file of the unit no longer exists."""


Outcome = Hashed | Stored | Failed | ReadChanged | Vanished


def stat_mismatch(expected: FileStat, actual: FileStat | None) -> str | None:
    """None if a file re-stated after reading is the one the queue judged finished, else a
    `ReadChanged` detail. ``actual`` None: the file is gone (report `Vanished`)."""
    if actual is None:
        return f"{expected.path} disappeared"
    for what in ("path", "size", "mtime_ns", "inode"):
        a, b = getattr(expected, what), getattr(actual, what)
        if a != b:
            return f"{expected.path}: {what} changed from {a} to {b}"
    return None


# -- settings, visibility


@dataclass(frozen=True)
class QueueSettings:
    """Timing and bounds. ``settle_seconds`` and ``retry_seconds`` are the config's
    ``watch.settle_seconds`` and ``watch.pending_retry_seconds``."""

    settle_seconds: float = 5.0
    retry_seconds: float = 10.0
    debounce_seconds: float = 1.0  # used as min(debounce_seconds, settle_seconds / 4)
    observe_timeout: float = 300.0  # an unanswered Observe is sent again after this
    max_observing: int = 4  # Observe effects outstanding at once
    max_active: int = 1  # HashFiles + StartPut outstanding at once
    max_units: int = 10_000  # pending units; beyond, new units are dropped with a reason
    max_records: int = 10_000  # stored units remembered; the oldest are forgotten first

    def __post_init__(self) -> None:
        for name in ("settle_seconds", "retry_seconds", "debounce_seconds", "observe_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 86_400:
                raise ValueError(f"QueueSettings.{name} must be 0 to 86400 seconds, got {value!r}")
        if self.retry_seconds <= 0 or self.observe_timeout <= 0:
            raise ValueError("QueueSettings.retry_seconds and observe_timeout must be positive")
        for name in ("max_observing", "max_active", "max_units", "max_records"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise ValueError(f"QueueSettings.{name} must be 1 to 1000000, got {value!r}")

    @property
    def debounce(self) -> float:
        return min(self.debounce_seconds, self.settle_seconds / 4)


@dataclass(frozen=True)
class PendingInfo:
    """One pending unit for `peerstore status`: ``since`` is the monotonic time it became
    pending; ``state`` one of waiting, observing, ready, hashing, putting."""

    root: str
    unit: str
    name: str
    state: str
    reason: str
    since: float


@dataclass(frozen=True)
class WatchStats:
    """Counters for metrics and status. Counts are since this process started;
    ``last_success`` (wall clock) and ``last_stored`` ("NAME@VERSION") survive restarts."""

    pending: int
    stored: int
    unchanged: int
    dropped: int
    read_changed: int
    failures: tuple[tuple[str, int], ...]
    last_success: float | None
    last_stored: str | None


# -- the machine


@dataclass
class _Unit:
    key: UnitKey
    name: str
    since: float
    context: tuple[str, ...]
    state: str = "waiting"
    reason: str = "changed; looking soon"
    due: float | None = None
    sent_at: float | None = None
    events_since: float | None = None  # first event since the last Observe was sent
    last_event: float | None = None
    last_observed: float | None = None
    fingerprint: tuple[FileStat, ...] | None = None
    stable_since: float = 0.0
    seen: bool = False  # known to have existed (observed, or restored from disk)
    is_dir: bool = False
    kind: str = ""
    files: tuple[FileStat, ...] = ()
    ready_seq: int = 0
    attempt: int = 0
    dirty: bool = False


@dataclass(frozen=True)
class _Record:
    name: str
    version: str
    files: tuple[FileStat, ...]
    content: Content | None
    stored_at: float


@dataclass
class _Counters:
    stored: int = 0
    unchanged: int = 0
    dropped: int = 0
    read_changed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_success: float | None = None
    last_stored: str | None = None


class WatchQueue:
    """The pending queue for a set of watch roots. Every input returns the effects to carry
    out, in order. ``roots`` are the watch roots as absolute POSIX paths (their last
    component is the ``{run}`` of units directly in them, see naming.py)."""

    def __init__(self, roots: Sequence[str], naming: Naming | None = None, settings: QueueSettings | None = None):
        self.naming = naming or Naming()
        self.settings = settings or QueueSettings()
        self._roots = {r: basename(r.rstrip("/")) for r in roots}
        self._units: dict[UnitKey, _Unit] = {}
        self._records: dict[UnitKey, _Record] = {}
        self._names: dict[str, UnitKey] = {}
        self._context_of: dict[tuple[str, str], set[UnitKey]] = {}
        self._warned: set[tuple[UnitKey, str]] = set()
        self._counters = _Counters()
        self._seq = 0
        self._dirty_state = False

    # ---- inputs

    def touched(self, root: str, path: str, now: float, is_dir: bool = False) -> list[Effect]:
        """Something at ``path`` (relative to ``root``) was created, modified, deleted or moved."""
        effects: list[Effect] = []
        self._check_root(root)
        unit = unit_for(path, is_dir)
        key = UnitKey(root, unit) if unit is not None else None
        known = self._units.get(key) if key is not None else None
        if known is not None and known.state == "waiting" and (root, path) not in self._context_of:
            # the common case, a writer's stream of events: no need to look at the whole queue
            known.last_event = now
            self._wake(known, now)
            return [] if known.due is not None and known.due > now else self._pump(now, effects)
        for other in self._context_of.get((root, path), ()):
            self._wake(self._units[other], now)
        if key is not None and self.naming.admits(key.unit):
            u = known or self._admit(key, now, effects)
            if u is not None:
                u.last_event = now
                if u.state in ("hashing", "putting"):
                    u.dirty = True
                elif u.state in ("waiting", "ready"):
                    if u.state == "ready":
                        u.state, u.reason = "waiting", "changed after it was judged finished"
                    self._wake(u, now)
        return self._pump(now, effects)

    def tick(self, now: float) -> list[Effect]:
        """Time passed: call at `next_deadline` (calling more often is harmless)."""
        return self._pump(now, [])

    def observed(self, obs: CheckpointObservation, now: float) -> list[Effect]:
        """The answer to an `Observe`."""
        effects: list[Effect] = []
        key = UnitKey(obs.root, obs.unit)
        u = self._units.get(key)
        if u is None or u.state != "observing" or (u.last_observed or float("-inf")) > obs.observed_at:
            return self._pump(now, effects)  # stale or unasked: ignore
        u.state, u.sent_at, u.last_observed, u.seen, u.is_dir = "waiting", None, obs.observed_at, True, obs.is_dir
        fp = fingerprint(obs)
        if fp != u.fingerprint:
            u.fingerprint, u.stable_since = fp, obs.observed_at
        changed_since = u.last_event is not None and u.last_event > obs.observed_at
        record = self._records.get(key)
        if record is not None and record.files == fp and record.name == u.name and not changed_since:
            self._remove(u)  # exactly what was stored: nothing to do
            return self._pump(now, effects)
        verdict = detect(obs, quiet_for=obs.observed_at - u.stable_since, settle_seconds=self.settings.settle_seconds)
        if isinstance(verdict, Finished) and changed_since:
            verdict = NotYet("changed while it was being observed")
        if isinstance(verdict, Ignore):
            self._remove(u)
            self._warn(key, verdict.reason, effects)  # once, however often it changes
        elif isinstance(verdict, NotYet):
            u.reason = verdict.reason
            u.due = now + self.settings.retry_seconds
            if verdict.wait is not None:
                u.due = min(u.due, max(now, u.stable_since + self.settings.settle_seconds))
        else:
            self._seq += 1
            u.state, u.kind, u.files, u.ready_seq = "ready", verdict.kind, fp, self._seq
            u.reason = "finished; waiting for a free put slot"
        return self._pump(now, effects)

    def vanished(self, root: str, unit: str, now: float) -> list[Effect]:
        """The unit no longer exists (the answer to an `Observe`, or seen by the shell)."""
        effects: list[Effect] = []
        key = UnitKey(root, unit)
        if self._records.pop(key, None) is not None:
            self._release_name(key)
            self._dirty_state = True
        u = self._units.get(key)
        if u is not None:
            if u.seen:
                self._drop(u, "deleted before it was stored", effects)
            else:
                self._remove(u)
        return self._pump(now, effects)

    def hashed(self, root: str, unit: str, attempt: int, outcome: Outcome, now: float) -> list[Effect]:
        """The answer to a `HashFiles`."""
        effects: list[Effect] = []
        u = self._units.get(UnitKey(root, unit))
        if u is None or u.state != "hashing" or u.attempt != attempt:
            return self._pump(now, effects)
        if isinstance(outcome, Hashed):
            record = self._records.get(u.key)
            if u.dirty:
                self._back_to_waiting(u, now, "changed while being read; checking again", soon=True)
            elif record is not None and record.content is not None and _same(record.content, outcome.content):
                self._records[u.key] = replace(record, files=u.files)
                self._counters.unchanged += 1
                effects.append(Log(f"{u.name}: content unchanged since {u.name}@{record.version}; not stored again"))
                self._remove(u)
            else:
                self._start_put(u, effects)
        elif isinstance(outcome, Stored):
            raise ValueError("hashed() takes Hashed, ReadChanged, Vanished or Failed, not Stored")
        else:
            self._setback(u, outcome, now, effects)
        return self._pump(now, effects)

    def put_done(self, root: str, unit: str, attempt: int, outcome: Outcome, now: float) -> list[Effect]:
        """The answer to a `StartPut`."""
        effects: list[Effect] = []
        u = self._units.get(UnitKey(root, unit))
        if u is None or u.state != "putting" or u.attempt != attempt:
            return self._pump(now, effects)
        if isinstance(outcome, Stored):
            if not isinstance(outcome.version, str) or not 0 < len(outcome.version) <= MAX_VERSION_LEN:
                raise ValueError(f"Stored.version must be 1 to {MAX_VERSION_LEN} characters, got {outcome.version!r}")
            content = _clean_content(outcome.content, u.files)
            self._set_record(u.key, _Record(u.name, outcome.version, u.files, content, outcome.wall))
            c = self._counters
            c.stored += 1
            c.last_success, c.last_stored = outcome.wall, f"{u.name}@{outcome.version}"
            effects.append(Log(f"stored {u.name}@{outcome.version} ({u.kind}, {len(u.files)} files)"))
            if u.dirty:
                self._back_to_waiting(u, now, "changed while being stored; checking again", soon=True)
            else:
                self._remove(u)
        elif isinstance(outcome, Hashed):
            raise ValueError("put_done() takes Stored, ReadChanged, Vanished or Failed, not Hashed")
        else:
            self._setback(u, outcome, now, effects)
        return self._pump(now, effects)

    def scan_finished(self, root: str, present: Iterable[str], now: float) -> list[Effect]:
        """After a full scan of ``root`` on start: forget what was stored from units that no
        longer exist (``present``: every unit path the scan found)."""
        self._check_root(root)
        keep = set(present)
        for key in [k for k in self._records if k.root == root and k.unit not in keep]:
            del self._records[key]
            self._release_name(key)
            self._dirty_state = True
        return self._pump(now, [])

    # ---- visibility

    def next_deadline(self) -> float | None:
        """When `tick` should next be called (monotonic seconds), or None if never."""
        times = []
        for u in self._units.values():
            if u.state == "waiting" and u.due is not None:
                times.append(u.due)
            elif u.state == "observing" and u.sent_at is not None:
                times.append(u.sent_at + self.settings.observe_timeout)
        return min(times, default=None)

    def pending(self) -> tuple[PendingInfo, ...]:
        """Every pending unit and why it waits, oldest first."""
        units = sorted(self._units.values(), key=lambda u: (u.since, u.key))
        return tuple(PendingInfo(u.key.root, u.key.unit, u.name, u.state, u.reason, u.since) for u in units)

    def stats(self) -> WatchStats:
        c = self._counters
        return WatchStats(
            pending=len(self._units), stored=c.stored, unchanged=c.unchanged, dropped=c.dropped,
            read_changed=c.read_changed, failures=tuple(sorted(c.failures.items())),
            last_success=c.last_success, last_stored=c.last_stored,
        )

    def stored_version(self, root: str, unit: str) -> str | None:
        """The version last stored from this unit, if the queue remembers one."""
        record = self._records.get(UnitKey(root, unit))
        return record.version if record else None

    # ---- persistence

    def encode(self) -> bytes:
        """The queue's durable state (records and pending units), at most MAX_STATE_BYTES:
        the oldest records are forgotten first if it would be larger."""
        while True:
            blob = json.dumps(self._state(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            if len(blob) <= MAX_STATE_BYTES or not self._records:
                return blob
            oldest = sorted(self._records, key=lambda k: self._records[k].stored_at)
            for key in oldest[: max(1, len(oldest) // 4)]:
                del self._records[key]
                self._release_name(key)

    def load(self, blob: bytes, now: float) -> list[Effect]:
        """Restore what `encode` wrote, before any other input. Units of roots no longer
        watched are left out; pending units are observed again at once. FormatError (with
        what to do) if ``blob`` is not a state this version can read."""
        if self._units or self._records:
            raise ValueError("load() must come before any other input")
        records, pending, last_success, last_stored = _decode(blob)
        for key, record in records:
            if key.root in self._roots:
                self._set_record(key, record)
        while len(self._records) > self.settings.max_records:
            self._forget_oldest_record()
        self._counters.last_success, self._counters.last_stored = last_success, last_stored
        effects: list[Effect] = []
        for key in pending:
            if key.root in self._roots and key not in self._units and len(self._units) < self.settings.max_units:
                u = self._admit(key, now, effects)
                if u is not None:
                    u.seen, u.due, u.reason = True, now, "pending before the restart; looking again"
        self._dirty_state = False
        return self._pump(now, effects)

    # ---- internals

    def _check_root(self, root: str) -> None:
        if root not in self._roots:
            raise ValueError(f"unknown watch root {root!r}; the queue watches {sorted(self._roots)}")

    def _admit(self, key: UnitKey, now: float, effects: list[Effect]) -> _Unit | None:
        """A new pending unit, or None (with one Drop per reason) if it cannot be one."""
        try:
            name = self.naming.name_for(self._roots[key.root], key.unit)
        except InvalidNameError as err:
            self._warn(key, f"cannot be named: {err}", effects)
            return None
        owner = self._names.get(name)
        if owner is not None and owner != key:
            self._warn(key, f"its name {name} is already used by {owner.unit} in {owner.root}; set a name prefix", effects)
            return None
        if len(self._units) >= self.settings.max_units:
            self._warn(key, f"the queue already holds {self.settings.max_units} pending checkpoints", effects)
            return None
        u = _Unit(key, name, since=now, context=context_files(key.unit))
        self._units[key] = u
        self._names[name] = key
        for path in u.context:
            self._context_of.setdefault((key.root, path), set()).add(key)
        self._dirty_state = True
        return u

    def _warn(self, key: UnitKey, reason: str, effects: list[Effect]) -> None:
        if (key, reason) in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned.add((key, reason))
        self._counters.dropped += 1
        effects.append(Drop(key.root, key.unit, reason))

    def _wake(self, u: _Unit, now: float) -> None:
        """Look at a waiting unit soon: debounce after this event, but never postpone past
        ``retry_seconds`` after the first event since the last look."""
        if u.state != "waiting":
            return
        if u.events_since is None:
            u.events_since = now
        u.due = min(now + self.settings.debounce, u.events_since + self.settings.retry_seconds)

    def _remove(self, u: _Unit) -> None:
        del self._units[u.key]
        for path in u.context:
            keys = self._context_of.get((u.key.root, path))
            if keys is not None:
                keys.discard(u.key)
                if not keys:
                    del self._context_of[(u.key.root, path)]
        self._release_name(u.key)
        self._dirty_state = True

    def _drop(self, u: _Unit, reason: str, effects: list[Effect]) -> None:
        self._remove(u)
        self._counters.dropped += 1
        effects.append(Drop(u.key.root, u.key.unit, reason))

    def _release_name(self, key: UnitKey) -> None:
        in_use = set()
        if key in self._units:
            in_use.add(self._units[key].name)
        if key in self._records:
            in_use.add(self._records[key].name)
        for name in [n for n, k in self._names.items() if k == key and n not in in_use]:
            del self._names[name]

    def _set_record(self, key: UnitKey, record: _Record) -> None:
        old = self._records.get(key)
        self._records[key] = record
        if old is not None and old.name != record.name:
            self._release_name(key)
        self._names.setdefault(record.name, key)
        while len(self._records) > self.settings.max_records:
            self._forget_oldest_record()
        self._dirty_state = True

    def _forget_oldest_record(self) -> None:
        key = min(self._records, key=lambda k: (self._records[k].stored_at, k))
        del self._records[key]
        self._release_name(key)

    def _back_to_waiting(self, u: _Unit, now: float, reason: str, soon: bool) -> None:
        u.state, u.reason, u.dirty, u.events_since = "waiting", reason, False, None
        u.due = now + (self.settings.debounce if soon else self.settings.retry_seconds)

    def _setback(self, u: _Unit, outcome: Outcome, now: float, effects: list[Effect]) -> None:
        if isinstance(outcome, Vanished):
            self._drop(u, "deleted before it was stored", effects)
        elif isinstance(outcome, ReadChanged):
            self._counters.read_changed += 1
            effects.append(Log(f"{u.name}: changed while being read ({outcome.detail}); back to pending"))
            self._back_to_waiting(u, now, f"changed while being read ({outcome.detail})", soon=True)
        elif isinstance(outcome, Failed):
            kind = outcome.kind if _KIND.fullmatch(outcome.kind or "") else "other"
            failures = self._counters.failures
            if kind not in failures and len(failures) >= MAX_FAILURE_KINDS:
                kind = "other"
            failures[kind] = failures.get(kind, 0) + 1
            retry = self.settings.retry_seconds
            effects.append(Log(f"{u.name}: could not be stored ({outcome.detail}); retrying in {retry:g} s"))
            self._back_to_waiting(u, now, f"could not be stored: {outcome.detail}", soon=False)
        else:
            raise ValueError(f"unexpected outcome {outcome!r}")

    def _start_put(self, u: _Unit, effects: list[Effect]) -> None:
        self._seq += 1
        u.state, u.attempt, u.dirty, u.reason = "putting", self._seq, False, "being stored"
        effects.append(StartPut(u.key.root, u.key.unit, u.attempt, u.name, u.is_dir, u.files))

    def _pump(self, now: float, effects: list[Effect]) -> list[Effect]:
        s = self.settings
        observing = 0
        for u in self._units.values():
            if u.state == "observing":
                if now - (u.sent_at or now) >= s.observe_timeout:
                    u.state, u.due = "waiting", now  # never answered: ask again
                else:
                    observing += 1
        due = sorted(
            (u for u in self._units.values() if u.state == "waiting" and u.due is not None and u.due <= now),
            key=lambda u: (u.due, u.key),
        )
        for u in due[: max(0, s.max_observing - observing)]:
            u.state, u.sent_at, u.due, u.events_since = "observing", now, None, None
            effects.append(Observe(u.key.root, u.key.unit, u.context))
        active = sum(1 for u in self._units.values() if u.state in ("hashing", "putting"))
        ready = sorted((u for u in self._units.values() if u.state == "ready"), key=lambda u: u.ready_seq)
        for u in ready[: max(0, s.max_active - active)]:
            record = self._records.get(u.key)
            if record is not None and record.content is not None and record.name == u.name and _same_shape(record, u):
                self._seq += 1
                u.state, u.attempt, u.dirty, u.reason = "hashing", self._seq, False, "comparing with the stored version"
                effects.append(HashFiles(u.key.root, u.key.unit, u.attempt, u.files))
            else:
                self._start_put(u, effects)
        if self._dirty_state:
            self._dirty_state = False
            effects.append(Persist(self.encode()))
        return effects

    def _state(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pending": [[k.root, k.unit] for k in sorted(self._units)],
            "stored": [
                [k.root, k.unit, r.name, r.version, r.stored_at,
                 [[f.path, f.size, f.mtime_ns, f.inode] for f in r.files],
                 None if r.content is None else [list(c) for c in r.content]]
                for k, r in sorted(self._records.items())
            ],
            "last_success": self._counters.last_success,
            "last_stored": self._counters.last_stored,
        }


def _same_shape(record: _Record, u: _Unit) -> bool:
    """Same paths and sizes as the stored version: only then can the content be unchanged
    (and is worth reading twice, once to hash and once to store)."""
    return [(f.path, f.size) for f in record.files] == [(f.path, f.size) for f in u.files]


def _same(a: Content, b: Content) -> bool:
    return sorted(a) == sorted(b)


def _clean_content(content: Content, files: tuple[FileStat, ...]) -> Content | None:
    """The content of a put if it names exactly ``files`` with BLAKE3 hex digests, else None
    (then the next change is stored without the unchanged-content check)."""
    try:
        cleaned = tuple(sorted((str(p), str(h).lower()) for p, h in content))
    except (TypeError, ValueError):
        return None
    if [p for p, _ in cleaned] != sorted(f.path for f in files) or not all(_HEX64.fullmatch(h) for _, h in cleaned):
        return None
    return cleaned


# -- decoding, strictly


def _decode(blob: bytes) -> tuple[list[tuple[UnitKey, _Record]], list[UnitKey], float | None, str | None]:
    def fail(problem: str) -> FormatError:
        return FormatError(
            f"watch queue state: {problem}; move the file aside to start with an empty queue "
            "(every watched directory is scanned again on start)"
        )

    if not isinstance(blob, (bytes, bytearray)) or len(blob) > MAX_STATE_BYTES:
        raise fail(f"not bytes, or larger than {MAX_STATE_BYTES} bytes")
    try:
        data = json.loads(bytes(blob).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise fail(f"not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise fail(f"not a {FORMAT_NAME} file")
    if data.get("version") != FORMAT_VERSION:
        raise fail(f"format version {data.get('version')!r}, this peerstore reads version {FORMAT_VERSION}")
    if set(data) != {"format", "version", "pending", "stored", "last_success", "last_stored"}:
        raise fail(f"unexpected keys {sorted(map(str, data))}")

    def text(value: object, what: str, limit: int = 4096) -> str:
        if not isinstance(value, str) or not value or len(value) > limit:
            raise fail(f"{what} is not text of 1 to {limit} characters")
        return value

    def integer(value: object, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            raise fail(f"{what} is not an integer 0 to 2**64-1")
        return value

    def number(value: object, what: str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail(f"{what} is not a number")
        return float(value)

    def key_of(root: object, unit: object, what: str) -> UnitKey:
        unit = text(unit, f"{what} unit")
        try:
            split_path(unit)
        except ValueError as err:
            raise fail(f"{what}: {err}") from None
        return UnitKey(text(root, f"{what} root"), unit)

    pending = data["pending"]
    stored = data["stored"]
    if not isinstance(pending, list) or not isinstance(stored, list):
        raise fail("pending and stored must be lists")
    keys = []
    for i, item in enumerate(pending):
        if not isinstance(item, list) or len(item) != 2:
            raise fail(f"pending[{i}] is not [root, unit]")
        keys.append(key_of(item[0], item[1], f"pending[{i}]"))
    records = []
    for i, item in enumerate(stored):
        what = f"stored[{i}]"
        if not isinstance(item, list) or len(item) != 7:
            raise fail(f"{what} is not [root, unit, name, version, stored_at, files, content]")
        root, unit, name, version, stored_at, files, content = item
        key = key_of(root, unit, what)
        if not isinstance(files, list) or len(files) > 100_000:
            raise fail(f"{what} files is not a list of at most 100000")
        stats = []
        for j, f in enumerate(files):
            if not isinstance(f, list) or len(f) != 4:
                raise fail(f"{what} files[{j}] is not [path, size, mtime_ns, inode]")
            mtime = f[2]
            if not isinstance(mtime, int) or isinstance(mtime, bool) or abs(mtime) >= 2**63:
                raise fail(f"{what} files[{j}] mtime_ns is not an integer")
            stats.append(FileStat(text(f[0], f"{what} files[{j}] path"), integer(f[1], "size"), mtime, integer(f[3], "inode")))
        cleaned = None
        if content is not None:
            if not isinstance(content, list) or not all(
                isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], str) for c in content
            ):
                raise fail(f"{what} content is not a list of [path, blake3]")
            cleaned = _clean_content(tuple((c[0], c[1]) for c in content), tuple(stats))
            if cleaned is None:
                raise fail(f"{what} content does not match its files")
        records.append((key, _Record(text(name, f"{what} name", 200), text(version, f"{what} version", MAX_VERSION_LEN),
                                     tuple(stats), cleaned, number(stored_at, f"{what} stored_at"))))
    last_success = data["last_success"]
    last_stored = data["last_stored"]
    if last_success is not None:
        last_success = number(last_success, "last_success")
    if last_stored is not None:
        last_stored = text(last_stored, "last_stored", 300)
    return records, keys, last_success, last_stored
