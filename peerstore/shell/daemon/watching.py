"""The daemon's watcher: `watch.paths` stored through the node's own put path.

`InternalRequest` is a client session without a socket: it feeds a command to the core and
collects the core's replies (and, for a put, reads the files with the same `StripeReader` a
CLI session uses, so the same "changed during put" checks apply). `DaemonStorer` is the
`peerstore.shell.watcher.Storer` the daemon gives its `Watcher`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import trio

from peerstore.core import events as ev
from peerstore.errors import CHANGED_DURING_PUT
from peerstore.shell.config import Config
from peerstore.shell.daemon.buffers import Buffers
from peerstore.shell.daemon.metrics import Metrics
from peerstore.shell.daemon.reading import StripeReader
from peerstore.shell.daemon.sources import LocalFiles
from peerstore.shell.logs import fields
from peerstore.shell.watcher import PutPlan, StoredVersion, StoreResult, Watcher, failure_kind
from peerstore.watch.pending import Failed, QueueSettings, ReadChanged

log = logging.getLogger("peerstore.watch")

STATE_FILE = "watch-queue.json"
REQUEST_TIMEOUT = 6 * 3600.0  # a put that has not finished in 6 hours is abandoned (and retried)
LIST_TIMEOUT = 60.0


class WatchHost(Protocol):
    """What the watcher needs of the daemon."""

    buffers: Buffers
    metrics: Metrics
    sessions: dict[int, Any]

    def feed(self, event: Any) -> None: ...
    def wall_clock(self) -> float: ...
    def new_session_token(self) -> int: ...


class InternalRequest:
    """One core command on behalf of the watcher, answered like a client session."""

    def __init__(self, host: WatchHost, kind: str):
        self.host = host
        self.kind = kind
        self.token = host.new_session_token()
        self.reads_send, self.reads = trio.open_memory_channel[Any](math.inf)
        self.replies_send, self.replies = trio.open_memory_channel[Any](math.inf)
        self.reader: StripeReader | None = None

    def enqueue(self, effect: Any) -> None:
        """Called by the daemon's dispatch for effects addressed to this session."""
        if isinstance(effect, (ev.EncodeStripe, ev.FinishFileRead)):
            self.reads_send.send_nowait(effect)
        elif isinstance(effect, ev.Reply):
            self.replies_send.send_nowait(effect)
        elif isinstance(effect, ev.DeliverStripe):  # pragma: no cover - the watcher never gets
            self.host.feed(ev.StripeDelivered(effect.op, effect.stripe, False, "not a get"))

    async def run(self, command: Any, timeout: float) -> Any:
        """Feed ``command`` and return the final reply's body (ev.Failed on timeout)."""
        self.host.sessions[self.token] = self
        final: Any = ev.Failed(f"no answer from the node's core within {timeout:g} s", outcome_unknown=True)
        try:
            async with trio.open_nursery() as nursery:
                if self.reader is not None:
                    nursery.start_soon(self.reader.run, self.reads)
                self.host.feed(command)
                with trio.move_on_after(timeout):
                    async for reply in self.replies:
                        if reply.final:
                            final = reply.body
                            break
                nursery.cancel_scope.cancel()
        finally:
            if not isinstance(final, (ev.PutDone, ev.Listing)):
                self.host.feed(ev.CancelCommand(self.token))  # aborts a put that has not committed
            self.host.sessions.pop(self.token, None)
        outcome = "failed" if isinstance(final, ev.Failed) else "ok"
        self.host.metrics.operations.labels(self.kind, outcome).inc()
        return final


class DaemonStorer:
    """Stores the watcher's checkpoints through this node's core (see the module docstring)."""

    def __init__(self, host: WatchHost):
        self.host = host

    async def store(self, plan: PutPlan) -> StoreResult:
        request = InternalRequest(self.host, "put")
        request.reader = StripeReader(self.host, LocalFiles(
            plan.local_root, [f.path for f in plan.files], single=not plan.is_dir,
            sizes=[f.size for f in plan.files], expect=[(f.mtime_ns, f.inode) for f in plan.files],
        ))
        started = self.host.wall_clock()
        specs = tuple(ev.FileSpec(f.path, f.size, f.mode) for f in plan.files)
        body = await request.run(
            ev.PutCommand(request.token, plan.name, specs, is_dir=plan.is_dir, created=started), REQUEST_TIMEOUT)
        if isinstance(body, ev.PutDone):
            digests = request.reader.blake3_list(len(plan.files))
            return StoredVersion(body.version, tuple(d.hex() for d in digests) if digests is not None else None)
        reason = body.reason if isinstance(body, ev.Failed) else f"unexpected reply {type(body).__name__}"
        if CHANGED_DURING_PUT in reason:
            return ReadChanged(reason)
        if isinstance(body, ev.Failed) and body.outcome_unknown:
            committed = await self._committed_since(plan, started)
            if committed is not None:
                log.info("%s: the put's outcome was unknown, but version %s is in the catalog", plan.name, committed,
                         extra=fields("watch_stored", f"{plan.name}@{committed}", outcome_was_unknown=True))
                return StoredVersion(committed)
            return Failed("outcome_unknown", reason)
        return Failed(failure_kind(reason), reason)

    async def _committed_since(self, plan: PutPlan, started: float) -> str | None:
        """A version of ``plan.name`` created since ``started`` with the plan's size and file
        count: the put committed after all (so retrying would store it twice)."""
        request = InternalRequest(self.host, "ls")
        body = await request.run(ev.ListCommand(request.token, plan.name), LIST_TIMEOUT)
        if not isinstance(body, ev.Listing):
            return None
        size = sum(f.size for f in plan.files)
        for entry in sorted(body.entries, key=lambda e: e.version, reverse=True):
            if entry.name == plan.name and entry.size == size and entry.files == len(plan.files) \
                    and entry.created >= started - 1.0:
                return str(entry.version)
        return None


def watcher_for(config: Config, host: WatchHost) -> Watcher | None:
    """The daemon's Watcher for ``watch.paths`` (None when there are none)."""
    w = config.watch
    if not w.paths:
        return None
    settings = QueueSettings(settle_seconds=w.settle_seconds, retry_seconds=w.pending_retry_seconds)
    return Watcher(list(w.paths), DaemonStorer(host), naming=w.naming(), settings=settings,
                   state_path=config.data_dir / STATE_FILE)

