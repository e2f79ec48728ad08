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
from peerstore.shell.daemon.fd_writer import FdWriteFailed, FdWriter
from peerstore.shell.daemon.metrics import Metrics
from peerstore.shell.daemon.reading import StripeReader
from peerstore.shell.daemon.sources import ClientStream, LocalFiles, SourceError
from peerstore.shell.logs import fields
from peerstore.shell import fdpass
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
        self.left = False  # the client went away and its operation was cancelled
        self.kind = "?"
        self.last_sent = trio.current_time()
        self.done = self.total = 0
        self.fd_get = False  # a get whose client passes descriptors for us to write into
        self.fd_writer: FdWriter | None = None
        self.nursery: trio.Nursery | None = None

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
                log.info("refused a put naming local files: %s", err, extra=fields("local_put_refused", op=self.token))
                self.daemon.metrics.errors.labels("local_refused").inc()
                reply = cp.local_refused(str(err))
            try:
                await self.wire.send(reply)
            except ENDED:
                pass
            return
        if self.kind in ("get", "rm", "verify"):  # a put logs its own line; ls and status are not worth one
            spec = getattr(command, "spec", None)
            log.info("%s %s", self.kind, spec or "(everything)",
                     extra=fields(f"{self.kind}_started", spec, op=self.token))
        self.daemon.feed(command)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                if not self.fd_get:  # else once the descriptors are in (_accept_fds)
                    nursery.start_soon(self._receive, nursery)
                nursery.start_soon(self._read_stripes)
                nursery.start_soon(self._keep_alive)
                await self._write()
                nursery.cancel_scope.cancel()
        finally:
            self._drop_fd_get()

    async def _keep_alive(self) -> None:
        """A progress frame whenever nothing was sent for a while, so a client can tell a
        slow operation (a frozen peer, a long commit) from a dead node."""
        while True:
            await trio.sleep(KEEP_ALIVE)
            if trio.current_time() - self.last_sent >= KEEP_ALIVE:
                try:
                    await self.wire.send({"t": "progress", "done": self.done, "total": self.total})
                except ENDED as err:
                    # The client is gone. The receiver may not notice: a streamed put's
                    # receiver waits for the stripe reader while the put waits for acks.
                    self._client_left(err)
                    return
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
            log.info("put %s: %d files, %d bytes", name, len(specs), sum(f.size for f in specs),
                     extra=fields("put_started", name, op=self.token, files=len(specs),
                                  size=sum(f.size for f in specs)))
            return ev.PutCommand(self.token, name, specs, is_dir=is_dir, created=self.daemon.wall_clock())
        if kind == "get":
            # Only a client of our own user on the Unix socket has us write into its files.
            self.fd_get = self.local_paths and cp.wants_fds(header) and fdpass.supported() and fdpass.is_unix(self.wire)
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
            self._client_left(err)
            if self.reader is not None and isinstance(self.reader.source, ClientStream):
                self.reader.source.send.close()

    def _client_left(self, err: BaseException) -> None:
        """Cancel the operation (once) if it has not finished."""
        if not self.finished.is_set() and not self.left:
            self.left = True
            log.info("client left before its %s finished (%s)", self.kind, err,
                     extra=fields("client_left", op=self.token, op_kind=self.kind))
            self.daemon.feed(ev.CancelCommand(self.token))

    async def _read_stripes(self) -> None:
        if self.reader is not None:
            await self.reader.run(self.reads)

    async def _write(self) -> None:
        async for effect in self.out:
            if isinstance(effect, ev.DeliverStripe):
                if self.fd_writer is not None:
                    if not await self._deliver_fd(effect):
                        return
                else:
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

    # -- a get written into the client's descriptors (fdpass.py, fd_writer.py)

    async def _accept_fds(self, manifest: Any) -> None:
        """Take the descriptors the client passes after the entry, batch by batch, checking
        each; then stripes go to them. The client may ask to stream instead, and we stream
        when the kernel could not hand us its descriptors. A client that breaks the
        exchange is told why; its get is cancelled (CodecError, FdPassError)."""
        sizes = [f.size for f in manifest.files]
        fds: dict[int, int] = {}
        last_index = -1
        stream, why = False, ""
        try:
            while True:
                try:
                    header, passed = await fdpass.receive_with_fds(self.wire, fdpass.MAX_FDS_PER_FRAME)
                except fdpass.FdsDropped as err:
                    stream, why = True, str(err)  # our descriptor limit: stream this one
                    break
                try:
                    files, last, stream = cp.parse_fds(header, fdpass.MAX_FDS_PER_FRAME)
                    if len(passed) != len(files):
                        raise fdpass.FdPassError(f"{len(files)} files listed but {len(passed)} descriptors passed")
                    if files and (files[0] <= last_index or files[-1] >= len(sizes)):
                        raise fdpass.FdPassError("file indices out of order or past the manifest's files")
                    if len(fds) + len(files) > cp.MAX_FD_FILES:
                        raise fdpass.FdPassError(f"more than {cp.MAX_FD_FILES} descriptors")
                    for index, fd in zip(files, passed):
                        problem = fdpass.check_writable_file(fd)
                        if problem is not None:
                            raise fdpass.FdPassError(f"the descriptor for file {index} is {problem}")
                except BaseException:
                    fdpass.close_all(passed)
                    raise
                fds.update(zip(files, passed))
                last_index = files[-1] if files else last_index
                if stream:
                    break
                missing = [i for i, size in enumerate(sizes) if size and i not in fds] if last else []
                if missing:
                    raise fdpass.FdPassError(f"no descriptor for file {missing[0]}")
                await self.wire.send({"t": "fds_ok", "count": len(fds)})
                if last:
                    break
        except BaseException:
            fdpass.close_all(list(fds.values()))
            raise
        if stream:
            fdpass.close_all(list(fds.values()))
            log.info("a local get streams instead of writing into the client's files%s", f" ({why})" if why else "",
                     extra=fields("get_fds_declined", op=self.token))
            await self.wire.send({"t": "fds_ok", "stream": True, **({"reason": why[:cp.MAX_TEXT]} if why else {})})
        else:
            self.fd_writer = FdWriter(self.daemon.buffers, fds, sizes)
            self.total = manifest.total_size()
        if self.nursery is not None:
            self.nursery.start_soon(self._receive, self.nursery)

    async def _deliver_fd(self, effect: ev.DeliverStripe) -> bool:
        """Write one stripe into the client's file and say how far we are; False when
        the client is gone."""
        assert self.fd_writer is not None
        try:
            error = await self.fd_writer.deliver(effect)
        except FdWriteFailed as err:
            # Our own limits (RLIMIT_FSIZE, say) may forbid what the client may do: it
            # writes this stripe and the rest itself, streamed (its disk full fails there).
            log.warning("writing into a local client's files failed (%s); streaming the rest to it", err,
                        extra=fields("get_fds_write_failed", op=self.token))
            self.fd_writer.close()
            self.fd_writer = None
            await self.daemon.deliver(self, effect)
            return True
        self.daemon.feed(ev.StripeDelivered(effect.op, effect.stripe, not error, error[:200]))
        if error:
            return True  # the core fails the get with it; the reply says why
        self.done = self.fd_writer.written
        try:
            await self.wire.send({"t": "progress", "done": self.done, "total": self.total})
        except ENDED:
            return False
        self.last_sent = trio.current_time()
        return True

    def _drop_fd_get(self) -> None:
        """Close the client's descriptors; release stripes no one will write now."""
        if self.fd_writer is not None:
            self.fd_writer.close()
        while True:
            try:
                effect = self.out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(effect, ev.DeliverStripe):
                for _, handle in effect.pieces:
                    self.daemon.buffers.release(handle)
                self.daemon.feed(ev.StripeDelivered(effect.op, effect.stripe, False, "client gone"))

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
            offer = {"fds": fdpass.MAX_FDS_PER_FRAME} if self.fd_get else {}
            await send({"t": "entry", **cp.entry_dict(body.entry), **offer})
            if self.fd_get:
                try:
                    await self._accept_fds(body.manifest)
                except (fdpass.FdPassError, CodecError, trio.TooSlowError) as err:
                    reason = "the client's descriptors did not arrive in time" if isinstance(
                        err, trio.TooSlowError) else str(err)
                    log.info("cancelled a local get: %s", reason, extra=fields("get_fds_refused", op=self.token))
                    self.daemon.feed(ev.CancelCommand(self.token))
                    try:
                        await send(cp.failed(f"bad request: {reason}"))
                    except CodecError:
                        pass  # the connection broke the protocol: nothing more can be said on it
                    raise PeerClosed(reason) from None  # ends this session (_write)
        elif isinstance(body, ev.GetDone):
            written = {"written": len(self.fd_writer.fds)} if self.fd_writer is not None else {}
            await send({"t": "get_done", "name": body.name, "version": body.version, "size": body.size,
                        "degraded": body.degraded_stripes, "fallbacks": body.fallbacks, **written})
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
