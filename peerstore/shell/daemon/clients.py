"""One CLI connection: turn its request into a core command and stream the answer back.

Three tasks per session: the receiver (requests, file data, noticing the client leave),
the reader (a put's stripes, read and encoded in order), and the writer (replies and a
get's stripes, in the order the core produced them).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

import blake3
import trio

from peerstore.core import events as ev
from peerstore.core.gc import cluster_summary as gc_summary
from peerstore.core.store_health import read_only_nodes
from peerstore.errors import CodecError
from peerstore.shell.daemon.buffers import Buffers
from peerstore.shell.daemon.metrics import Metrics
from peerstore.shell.daemon.reading import StripeReader
from peerstore.shell.daemon.sources import ClientStream, LocalFiles, SourceError
from peerstore.shell.wirestream import Frame, PeerClosed, WireStream
from peerstore.wire import client_protocol as cp

log = logging.getLogger("peerstore.shell.client")

KEEP_ALIVE = 5.0  # seconds of silence before a progress frame is sent anyway
LOCAL_ONLY = ("this node reads local files (local_root) only for a client of its own user on its Unix "
              "socket (<data_dir>/run/client.sock); stream the files instead: peerstore put --stream "
              "(a current CLI falls back to streaming by itself)")
ENDED = (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class SessionHost(Protocol):
    """What a client session needs of the node it runs in (the daemon's ``Daemon``)."""

    buffers: Buffers
    metrics: Metrics

    def feed(self, event: Any) -> None: ...
    def wall_clock(self) -> float: ...
    def member_rows(self) -> list[dict[str, Any]]: ...
    def watch_status(self) -> dict[str, Any] | None: ...
    async def deliver(self, session: ClientSession, effect: ev.DeliverStripe) -> None: ...


class LocalRootRefused(Exception):
    """A put named a local path on a connection that may not (see ``ClientSession``)."""


class ClientSession:
    """``local_paths``: the client is on the Unix socket and runs as the node's user, so a
    put may name files for the node to read (``local_root``); otherwise such a put is
    refused before it starts, and the client streams instead."""

    def __init__(self, daemon: SessionHost, token: int, wire: WireStream, *, local_paths: bool = False):
        self.daemon = daemon
        self.local_paths = local_paths
        self.token = token
        self.wire = wire
        self.out_send, self.out = trio.open_memory_channel[Any](math.inf)
        self.reads_send, self.reads = trio.open_memory_channel[Any](math.inf)
        self.reader: StripeReader | None = None
        self.files = 0
        self.finished = trio.Event()
        self.kind = "?"
        self.last_sent = trio.current_time()
        self.done = self.total = 0

    def enqueue(self, effect: Any) -> None:
        if isinstance(effect, (ev.EncodeStripe, ev.FinishFileRead)):
            self.reads_send.send_nowait(effect)
        else:
            self.out_send.send_nowait(effect)

    async def run(self, first: Frame) -> None:
        try:
            command = self._command(first.header)
        except (CodecError, SourceError, LocalRootRefused) as err:
            reply = cp.failed(f"bad request: {err}")
            if isinstance(err, LocalRootRefused):
                log.info("refused a put naming local files: %s", err)
                self.daemon.metrics.errors.labels("local_refused").inc()
                reply = cp.local_refused(str(err))
            try:
                await self.wire.send(reply)
            except ENDED:
                pass
            return
        self.daemon.feed(command)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, nursery)
            nursery.start_soon(self._read_stripes)
            nursery.start_soon(self._keep_alive)
            await self._write()
            nursery.cancel_scope.cancel()

    async def _keep_alive(self) -> None:
        """A progress frame whenever nothing was sent for a while, so a client can tell a
        slow operation (a frozen peer, a long commit) from a dead node."""
        while True:
            await trio.sleep(KEEP_ALIVE)
            if trio.current_time() - self.last_sent >= KEEP_ALIVE:
                try:
                    await self.wire.send({"t": "progress", "done": self.done, "total": self.total})
                except ENDED:
                    return  # the receiver notices the client left and cancels its operation
                self.last_sent = trio.current_time()

    def _command(self, header: dict[str, Any]) -> Any:
        kind = header.get("t")
        self.kind = str(kind)
        if kind == "put":
            name, files, is_dir, local_root = cp.parse_put(header)
            paths = [p for p, _, _ in files]
            source: LocalFiles | ClientStream
            if local_root is not None:
                if not self.local_paths:
                    raise LocalRootRefused(LOCAL_ONLY)
                source = LocalFiles(Path(local_root), paths, single=not is_dir, sizes=[s for _, s, _ in files],
                                    expect=cp.parse_put_stats(header))
            else:
                source = ClientStream()
            self.reader = StripeReader(self.daemon, source)
            self.files = len(files)
            specs = tuple(ev.FileSpec(p, size, mode) for p, size, mode in files)
            log.info("put %s: %d files, %d bytes", name, len(specs), sum(f.size for f in specs))
            return ev.PutCommand(self.token, name, specs, is_dir=is_dir, created=self.daemon.wall_clock())
        if kind == "get":
            return ev.GetCommand(self.token, cp.parse_spec(header))
        if kind == "ls":
            name = header.get("name")
            return ev.ListCommand(self.token, name if isinstance(name, str) else None)
        if kind == "status":
            return ev.StatusCommand(self.token)
        if kind == "rm":
            return ev.RemoveCommand(self.token, cp.parse_spec(header))
        if kind == "verify":
            return ev.VerifyCommand(self.token, cp.parse_spec(header) if "spec" in header else None)
        raise CodecError(f"unknown request {kind!r}")

    async def _receive(self, nursery: trio.Nursery) -> None:
        """File data for a streamed put; EOF or garbage before the end cancels the op."""
        budget = self.daemon.buffers.budget  # a chunk is admitted before it is allocated
        try:
            while True:
                frame = await self.wire.receive(budget=budget)
                try:
                    source = self.reader.source if self.reader is not None else None
                    if frame.header.get("t") == "data" and isinstance(source, ClientStream):
                        # each chunk is copied into the stripe's slabs, then dropped
                        await source.feed(frame.header, frame.payload)
                    else:
                        raise CodecError(f"unexpected {frame.header.get('t')!r} frame during an operation")
                finally:
                    if budget is not None and frame.payload is not None:
                        budget.release(len(frame.payload))
        except (*ENDED, CodecError, trio.TooSlowError) as err:
            if not self.finished.is_set():
                log.info("client left before its %s finished (%s)", self.kind, err)
                self.daemon.feed(ev.CancelCommand(self.token))
            if self.reader is not None and isinstance(self.reader.source, ClientStream):
                self.reader.source.send.close()

    async def _read_stripes(self) -> None:
        if self.reader is not None:
            await self.reader.run(self.reads)

    async def _write(self) -> None:
        async for effect in self.out:
            if isinstance(effect, ev.DeliverStripe):
                await self.daemon.deliver(self, effect)
                continue
            final = effect.final
            if final:
                self.finished.set()
            try:
                await self._reply(effect.body)
            except ENDED:
                return
            self.last_sent = trio.current_time()
            if final:
                outcome = "failed" if isinstance(effect.body, ev.Failed) else "ok"
                self.daemon.metrics.operations.labels(self.kind, outcome).inc()
                return

    async def send_stripe(self, file_index: int, offset: int, shards: list[Any]) -> None:
        await self.wire.send_parts({"t": "stripe", "file": file_index, "offset": offset}, shards)
        self.last_sent = trio.current_time()

    async def _reply(self, body: Any) -> None:
        send = self.wire.send
        if isinstance(body, ev.Progress):
            self.done, self.total = body.done, body.total
            await send({"t": "progress", "done": body.done, "total": body.total})
        elif isinstance(body, ev.PutDone):
            digests = self.reader.blake3_list(self.files) if self.reader is not None else None
            await send({"t": "put_done", "name": body.name, "version": body.version,
                        "tolerance": body.tolerance, "size": body.size, "pieces": body.pieces,
                        "manifest_id": body.manifest_id.hex()},
                       cp.encode_body({"blake3": digests}) if digests is not None else None)
        elif isinstance(body, ev.Failed):
            await send(cp.failed(body.reason, body.outcome_unknown))
        elif isinstance(body, ev.GetStarted):
            blob = body.manifest.encode()
            await send({"t": "manifest"}, blob, blake3.blake3(blob).digest())
            await send({"t": "entry", **cp.entry_dict(body.entry)})
        elif isinstance(body, ev.GetDone):
            await send({"t": "get_done", "name": body.name, "version": body.version, "size": body.size,
                        "degraded": body.degraded_stripes, "fallbacks": body.fallbacks})
        elif isinstance(body, ev.Listing):
            await send({"t": "listing"}, cp.encode_body({"entries": [cp.entry_dict(e) for e in body.entries]}))
        elif isinstance(body, ev.Removed):
            await send({"t": "removed", "versions": list(body.versions)})
        elif isinstance(body, ev.VerifyDone):
            await send({"t": "verified"}, cp.encode_body(body.report))
        elif isinstance(body, ev.Status):
            await send({"t": "status"}, cp.encode_body({
                "node_id": body.node_id, "members": self.daemon.member_rows(),
                "checkpoints": [
                    {**cp.entry_dict(row.entry), "pieces": row.pieces, "tolerance_now": row.tolerance,
                     "best_tolerance": row.best, "below_policy": row.below_policy,
                     "repair_bytes": row.repair_bytes}
                    for row in body.checkpoints
                ],
                "conflicts": [[cp.entry_dict(e) for e in same] for same in body.conflicts],
                "repair": {"bytes_left": body.repair_bytes_left, "rate": body.repair_rate,
                           "eta": body.repair_eta},
                "nodes": [{"id": node, "report": report} for node, report in body.nodes],
                "gc": gc_summary(body.nodes),
                "read_only": read_only_nodes(body.nodes),
                "unanswered": [{"id": node, "why": why} for node, why in body.unanswered],
                **({"watch": watch} if (watch := self.daemon.watch_status()) is not None else {}),
            }))
        else:  # pragma: no cover - a new reply type without a wire form
            raise AssertionError(f"no wire form for {type(body).__name__}")
