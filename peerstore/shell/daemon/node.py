"""The trio shell around the sans-IO core: one ``Daemon`` per ``peerstore node``.

One task owns the core. Everything else (peer connections, client sessions, worker
threads doing disk I/O, hashing and zfec) reports to it through the ``inputs`` channel,
and it turns the core's effects into tasks. No other task touches the core.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import socket
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import blake3
import trio

from peerstore.shell.config import Config
from peerstore.core import events as ev
from peerstore.core.messenger import PROGRESS_INTERVAL
from peerstore.core.node import NodeCore
from peerstore.core.settings import CoreSettings
from peerstore.shell.daemon.admission import HandshakeGate, LogLimiter
from peerstore.shell.daemon.buffers import Buffers, PayloadBudget
from peerstore.shell.daemon.clients import ClientSession
from peerstore.shell.daemon.gossip import GossipRunner
from peerstore.shell.daemon.local_socket import serve_local_clients
from peerstore.shell.daemon.discovery import advertised_meta
from peerstore.shell.daemon.metrics import Metrics
from peerstore.shell.daemon.peers import DIAL_ERRORS, Peers
from peerstore.shell.daemon.watching import watcher_for
from peerstore.ec import decode_data
from peerstore.errors import (
    AuthError, CodecError, DiskFullError, DiskIOError, FormatError, PeerstoreError, PieceNotFoundError, StoreError,
)
from peerstore.shell.durable import disk_error
from peerstore.shell.logs import fields
from peerstore.shell.identity import NodeIdentity
from peerstore.core.quorum import decode_stable
from peerstore.core.snapshots import restore_catalog, restore_counters
from peerstore.ec.rebuild import rebuild_pieces
from peerstore.model.catalog import Catalog
from peerstore.shell.netaddr import detect_address
from peerstore.shell.peercred import same_user
from peerstore.shell.store import MetaStore, PieceStore
from peerstore.wire import client_protocol as cp
from peerstore.wire import messages as msg
from peerstore.shell.wirestream import Frame, PeerClosed, PeerSilent, WireStream, tune_socket

log = logging.getLogger("peerstore.node")

PIECE_PAYLOAD_TYPES = {msg.StorePiece.TYPE, msg.PieceData.TYPE}
HANDSHAKE_TIMEOUT = 5.0
AUTH_WARNING_INTERVAL = 30.0  # seconds between two "refused a connection" warnings
ADDRESS_CHECK_INTERVAL = 2.0


def core_settings(config: Config) -> CoreSettings:
    """The core's settings from the node's config (see ``CoreSettings.from_config``)."""
    return CoreSettings.from_config(config.policy, config.transfer, scrub=config.scrub, repair=config.repair,
                                    gc=config.gc, retention=config.retention)


class Daemon:
    def __init__(self, config: Config, identity: NodeIdentity):
        self.config = config
        self.node_id = identity.node_id
        self.boot_epoch = identity.boot_epoch
        self.pieces = PieceStore(config.data_dir)
        self.meta = MetaStore(config.data_dir)
        catalog = self._load_catalog()
        self.core = NodeCore(
            self.node_id, core_settings(config), random.Random(), catalog=catalog,
            inventory=self.pieces.sizes(), counters=self._load_counters(), boot_epoch=self.boot_epoch,
            stable_members=self._load_membership(),
        )
        # Received payloads are admitted against the memory budget before they are allocated.
        self.payloads = PayloadBudget(config.transfer.memory_budget, config.transfer.request_timeout)
        self.buffers = Buffers(budget=self.payloads)
        self.metrics = Metrics()
        self.sessions: dict[int, ClientSession] = {}
        self.inputs_send, self.inputs = trio.open_memory_channel[Any](math.inf)
        self.peers = Peers(
            node_id=self.node_id, cluster_key=config.cluster_key,
            connect_timeout=config.transfer.connect_timeout, on_connection=self._receive_from_peer,
            stall=config.transfer.request_timeout,
        )
        self.membership: GossipRunner | None = None
        self.mdns: Any = None
        self.store_limiter = trio.CapacityLimiter(4)
        self.handshakes = HandshakeGate()  # unauthenticated connections: capped (bug: fd exhaustion)
        self.auth_warnings = LogLimiter(AUTH_WARNING_INTERVAL)
        self.read_only_warnings = LogLimiter(AUTH_WARNING_INTERVAL)  # every write fails alike
        self.nursery: trio.Nursery | None = None
        self.listen_port: int | None = None
        self.local_socket: Path | None = None  # the Unix socket for clients of our own user
        self.started = trio.Event()
        self._next_session = 0
        self.watcher = watcher_for(config, self)  # None without watch.paths

    def _load_catalog(self) -> Catalog:
        catalog, problem = restore_catalog(self.meta.load_catalog())
        if problem:
            moved = self.meta.quarantine_catalog()
            log.error("%s: %s; moved it to %s and starting with an empty catalog, which the other "
                      "nodes fill in again", self.meta.catalog_path, problem, moved,
                      extra=fields("catalog_reset", path=str(self.meta.catalog_path)))
        return catalog

    def _load_counters(self) -> dict[str, int]:
        try:
            return restore_counters(self.meta.load_counters())
        except FormatError as err:
            raise FormatError(
                f"{self.meta.counters_path}: {err}; this file keeps version ids unique, so the node "
                "will not start without it: restore it from a backup, or move it aside only if no put "
                "ever ran through this node") from err

    def _load_membership(self) -> frozenset[str] | None:
        """The last stable membership repair saved; a rotten file is moved aside (the node
        learns the membership again from its data, core/quorum.py)."""
        try:
            return decode_stable(self.meta.load_membership())
        except FormatError as err:
            moved = self.meta.quarantine_membership()
            log.error("%s: %s; moved it to %s and starting without it", self.meta.membership_path, err, moved,
                      extra=fields("membership_reset", path=str(self.meta.membership_path)))
            return None

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            listeners = await nursery.start(
                partial(trio.serve_tcp, self._accept, self.config.listen_port, host=self.config.listen_host)
            )
            self.listen_port = listeners[0].socket.getsockname()[1]
            self.local_socket = await nursery.start(serve_local_clients, self.config.data_dir, self._accept_local)
            await nursery.start(self.peers.run)
            self.advertise_host = self.config.advertise_host or detect_address(self.config.listen_host)
            self.membership = GossipRunner(
                self, settings=self.config.gossip, bind_host=self.config.listen_host,
                addr=(self.advertise_host, self.listen_port), seeds=list(self.config.seeds),
                meta=advertised_meta(self.config.node_name or socket.gethostname(),
                                     self.config.metrics_host, self.config.metrics_port),
            )
            await nursery.start(self.membership.run)
            if self.config.mdns:
                nursery.start_soon(self._run_mdns)
            if not self.config.advertise_host:
                nursery.start_soon(self._follow_address)
            self.feed(ev.Started())  # as the simulator does: catch up with whoever is known
            nursery.start_soon(self._core_loop)
            nursery.start_soon(self._report_progress)
            nursery.start_soon(self._refresh_metrics)
            if self.watcher is not None:
                nursery.start_soon(self._run_watcher)
            self.metrics.serve(self.config.metrics_host, self.config.metrics_port,
                               discovery=lambda: self.membership.discovery if self.membership else [])
            log.info(
                "node %s (boot %d) listening on %s:%d, data in %s, %d pieces held",
                self.node_id, self.boot_epoch, self.config.listen_host, self.listen_port,
                self.config.data_dir, len(self.core.inventory),
                extra=fields("node_started", boot=self.boot_epoch, pieces=len(self.core.inventory)),
            )
            self.started.set()
            task_status.started(self.listen_port)

    def feed(self, event: Any) -> None:
        self.inputs_send.send_nowait(event)

    def new_session_token(self) -> int:
        self._next_session += 1
        return self._next_session

    async def _run_watcher(self) -> None:
        """Store finished checkpoints from watch.paths; a broken watcher is logged, and the
        node goes on serving."""
        assert self.watcher is not None
        log.info("watching %s (settle %g s)", ", ".join(self.watcher.roots), self.watcher.settings.settle_seconds)
        try:
            await self.watcher.run()
        except PeerstoreError as err:
            log.error("the watcher stopped: %s", err, extra=fields("watcher_stopped"))
        except Exception:
            log.exception("the watcher stopped", extra=fields("watcher_stopped"))
            self.metrics.errors.labels("internal").inc()

    def watch_status(self) -> dict[str, Any] | None:
        return self.watcher.status() if self.watcher is not None else None

    async def _core_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            event = None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                event = await self.inputs.receive()
            now = trio.current_time()
            effects = self.core.tick(now) if event is None else self.core.handle(now, event)
            for effect in effects:
                self._dispatch(effect)
            if self.membership is not None:
                self.membership.publish_catalog()

    async def _report_progress(self) -> None:
        """Tell the core which peers bytes moved to or from: its requests time out on a
        peer's silence, not on our own send queue (the simulator reports the same way)."""
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            moved = self.peers.moved()
            if moved:
                self.feed(ev.BytesMoved(moved))

    async def _run_mdns(self) -> None:
        """Advertise ourselves on the LAN and seed membership with the nodes we find."""
        from peerstore.shell.daemon.mdns import Mdns

        assert self.membership is not None and self.listen_port is not None
        specific = self.config.advertise_host or (
            self.config.listen_host if self.config.listen_host not in ("0.0.0.0", "::") else None)
        self.mdns = Mdns(
            cluster_key=self.config.cluster_key, node_id=self.node_id,
            node_name=self.config.node_name or socket.gethostname(), port=self.listen_port,
            gossip_port=self.listen_port, addresses=[specific] if specific else None,
            interfaces=[specific] if specific else None,  # a node bound to one address stays on it
        )
        async with self.mdns:
            async for found in self.mdns.events():
                if not found.removed and found.addresses:
                    self.membership.add_seeds([(address, found.port) for address in found.addresses])

    async def _follow_address(self) -> None:
        """Notice when this machine's address changes (DHCP) and re-announce ourselves."""
        while True:
            await trio.sleep(ADDRESS_CHECK_INTERVAL)
            host = detect_address(self.config.listen_host)
            if host != self.advertise_host and self.membership is not None:
                self.advertise_host = host
                self.membership.set_addr((host, self.listen_port or 0))
                if self.mdns is not None:
                    await self.mdns.update_addresses()

    # -- effects -------------------------------------------------------------------------

    def _dispatch(self, effect: Any) -> None:
        assert self.nursery is not None
        kind = type(effect)
        if kind is ev.Send:
            self.nursery.start_soon(self._send, effect)
        elif kind is ev.ReleaseHandles:
            for handle in effect.handles:
                self.buffers.release(handle)
        elif kind in (ev.EncodeStripe, ev.FinishFileRead, ev.DeliverStripe, ev.Reply):
            session = self.sessions.get(effect.client)
            if kind is ev.Reply and effect.final:
                _log_outcome(getattr(session, "kind", "op"), effect.client, effect.body)
            if session is not None:
                session.enqueue(effect)
            elif kind is ev.DeliverStripe:  # the shell owns its pieces now: give them back
                for _, handle in effect.pieces:
                    self.buffers.release(handle)
                self.feed(ev.StripeDelivered(effect.op, effect.stripe, False, "client gone"))
        else:
            self.nursery.start_soon(getattr(self, "_do_" + kind.__name__), effect)

    async def _send(self, effect: ev.Send) -> None:
        message = effect.message
        header = message.to_header()
        payload, payload_hash = message.payload_blob or None, None
        piece_file: tuple[str, int] | None = None
        if effect.payload is not None:
            payload, payload_hash = self.buffers.borrow(effect.payload), getattr(message, "piece_id", None)
        elif effect.payload_piece is not None:
            piece_file = self._piece_file(effect.payload_piece)
            payload_hash = effect.payload_piece
            if piece_file is None:  # vanished since the core looked (deleted or quarantined)
                header = msg.PieceData(message.req, piece_id=effect.payload_piece, found=False).to_header()
        is_request = type(message) not in msg.REPLY_TYPES
        started = trio.current_time()
        try:
            wire = await self.peers.connection(effect.peer)
            with wire.unless_silent():  # queued behind other frames is fine while bytes flow
                if piece_file is not None:
                    await wire.send_file(header, piece_file[0], piece_file[1], payload_hash)
                    payload = piece_file  # counted below
                else:
                    await wire.send(header, payload, payload_hash)
        except (*DIAL_ERRORS, PeerClosed, trio.ClosedResourceError) as err:
            if effect.payload is not None:
                self.buffers.give_back(effect.payload)
            self.metrics.errors.labels("send").inc()
            log.debug("sending %s to %s failed: %s", message.TYPE, effect.peer, err,
                      extra=fields("send_failed", peer=effect.peer, message_type=message.TYPE))
            if isinstance(err, PeerSilent) and effect.peer in self.peers.conns:
                await self.peers.drop(effect.peer, self.peers.conns[effect.peer])
            if is_request:
                self.feed(ev.PeerUnreachable(effect.peer, message.req))
            return
        if effect.payload is not None:
            self.buffers.give_back(effect.payload)
        if payload is not None and payload_hash is not None:
            size = piece_file[1] if piece_file is not None else len(payload)
            self.metrics.bytes_sent.labels(effect.peer).inc(size)
            self.metrics.pieces_sent.labels(effect.peer).inc()
            self.metrics.transfer_seconds.observe(trio.current_time() - started)

    def _piece_file(self, pid: bytes) -> tuple[str, int] | None:
        """(path, size) of a held piece, for sendfile; None if it is gone."""
        try:
            return str(self.pieces.path_of(pid)), self.pieces.size_of(pid)
        except StoreError:
            return None

    async def _do_StorePieceLocal(self, effect: ev.StorePieceLocal) -> None:
        data = self.buffers.borrow(effect.handle)
        ok, error = False, "payload missing"
        if data is not None:
            async with self.store_limiter:
                try:
                    await trio.to_thread.run_sync(self.pieces.write, effect.piece_id, data)
                    ok, error = True, ""
                except DiskFullError as err:
                    error = f"disk full: {err}"
                    self.metrics.errors.labels("disk_full").inc()
                except (StoreError, OSError) as err:
                    error = self._store_failed("storing piece " + effect.piece_id.hex()[:16], err)
            self.buffers.give_back(effect.handle)
        self.feed(ev.PieceStoredLocally(effect.tag, effect.piece_id, ok, error[:200]))

    def _store_failed(self, what: str, err: Exception) -> str:
        """Count and log a failed local disk operation (a DiskIOError names the path and
        the errno); that operation fails, the node goes on. A disk found read-only is the
        core's to act on (StoreHealthChanged): it stops taking pieces until a probe passes."""
        if isinstance(err, DiskIOError):
            self.metrics.errors.labels("disk_io").inc()
            if err.read_only:
                self.feed(ev.StoreHealthChanged(False, str(err)[:200]))
                held = self.read_only_warnings.allow(trio.current_time())
                if held is None:
                    log.debug("%s failed: %s", what, err, extra=fields(
                        "disk_error", operation=what, path=err.path or None, errno=err.errno, read_only=True))
                    return f"{what} failed: {err}"
        else:
            self.metrics.errors.labels("store").inc()
        log.warning("%s failed: %s", what, err,
                    extra=fields("disk_error", operation=what, path=getattr(err, "path", None) or None,
                                 errno=getattr(err, "errno", None), read_only=getattr(err, "read_only", None) or None))
        return f"{what} failed: {err}"

    async def _do_ProbeStore(self, effect: ev.ProbeStore) -> None:
        """Is the read-only store writable again? (The core asks every so often.)"""
        try:
            await trio.to_thread.run_sync(self.pieces.probe_writable)
            ok, error = True, ""
            log.info("the data directory %s is writable again: taking pieces again", self.config.data_dir,
                     extra=fields("disk_writable"))
        except (PeerstoreError, OSError) as err:
            ok, error = False, str(err)[:200]
        self.feed(ev.StoreProbed(effect.tag, ok, error))

    async def _do_VerifyHeldPiece(self, effect: ev.VerifyHeldPiece) -> None:
        """Re-hash a held piece from disk (a re-acknowledged store, scrub, verify); a copy
        that does not match is moved to quarantine by PieceStore.verify."""
        size, missing = 0, False
        try:
            size = self.pieces.size_of(effect.piece_id)
            ok = await trio.to_thread.run_sync(self.pieces.verify, effect.piece_id)
        except PieceNotFoundError:
            ok, missing = False, True  # removed meanwhile: not corruption
        except (StoreError, OSError) as err:
            # Unreadable is as good as lost: the core stops counting on this copy.
            self._store_failed("re-reading held piece " + effect.piece_id.hex()[:16], err)
            self.feed(ev.HeldPieceVerified(effect.tag, effect.piece_id, False, size=size))
            return
        if not ok and not missing:
            self.metrics.errors.labels("corrupt_piece").inc()
            log.warning("held piece %s no longer matches its id; moved it to %s", effect.piece_id.hex()[:16],
                        self.pieces.quarantine_dir,
                        extra=fields("piece_quarantined", piece=effect.piece_id.hex()))
        self.feed(ev.HeldPieceVerified(effect.tag, effect.piece_id, ok, size=size, missing=missing))

    async def _do_DeletePieces(self, effect: ev.DeletePieces) -> None:
        """Garbage collection: remove the piece files (no fsync: see PieceStore.remove)."""
        def remove() -> tuple[list[bytes], int, Exception | None]:
            gone, freed, failure = [], 0, None
            for pid in effect.piece_ids:
                try:
                    freed += self.pieces.remove(pid) or 0
                    gone.append(pid)
                except (StoreError, OSError) as err:
                    failure = err
            return gone, freed, failure

        async with self.store_limiter:
            gone, freed, failure = await trio.to_thread.run_sync(remove)
        error = ""
        if gone:
            log.info("deleted %d piece(s), %d bytes freed", len(gone), freed,
                     extra=fields("pieces_deleted", pieces=len(gone), freed=freed))
        if failure is not None:
            error = self._store_failed(f"deleting {len(effect.piece_ids) - len(gone)} piece(s)", failure)
        self.feed(ev.PiecesDeleted(effect.tag, tuple(gone), freed, error[:200]))

    async def _do_DeleteManifests(self, effect: ev.DeleteManifests) -> None:
        def remove() -> str:
            error = ""
            for mid in effect.manifest_ids:
                try:
                    self.meta.delete_manifest(mid)
                except (PeerstoreError, OSError) as err:
                    error = str(err)
            return error

        error = await trio.to_thread.run_sync(remove)
        if error:
            self._store_failed("deleting manifests", StoreError(error))
        self.feed(ev.ManifestsDeleted(effect.tag, error[:200]))

    async def _do_LoadPiece(self, effect: ev.LoadPiece) -> None:
        handle = None
        where = self._piece_file(effect.piece_id)
        if where is not None:
            path, size = where
            slab = self.buffers.take(size)

            def read() -> bool:
                with open(path, "rb") as source:
                    return source.readinto(slab) == size

            try:
                if await trio.to_thread.run_sync(read):
                    handle = self.buffers.add(slab, owner=slab)
            except FileNotFoundError:
                pass  # removed meanwhile: not held
            except OSError as err:
                self._store_failed("loading piece " + effect.piece_id.hex()[:16], disk_error(err, path, "reading"))
        self.feed(ev.PieceLoaded(effect.tag, effect.piece_id, handle))

    async def _do_VerifyPiece(self, effect: ev.VerifyPiece) -> None:
        data = self.buffers.borrow(effect.handle)
        ok = data is not None and await trio.to_thread.run_sync(
            lambda: blake3.blake3(data).digest() == effect.piece_id
        )
        self.buffers.give_back(effect.handle)
        if not ok:
            self.metrics.errors.labels("corrupt_piece").inc()
            if data is not None:
                log.warning("bytes received or rebuilt for piece %s do not match its id; not used",
                            effect.piece_id.hex()[:16], extra=fields("piece_corrupt", piece=effect.piece_id.hex()))
        self.feed(ev.PieceVerified(effect.tag, ok))

    async def _do_StoreManifestLocal(self, effect: ev.StoreManifestLocal) -> None:
        try:
            await trio.to_thread.run_sync(self.meta.put_manifest, effect.manifest_id, effect.blob)
            self.feed(ev.ManifestStoredLocally(effect.tag, True))
        except (PeerstoreError, OSError) as err:
            error = self._store_failed("storing manifest " + effect.manifest_id.hex()[:16], err)
            self.feed(ev.ManifestStoredLocally(effect.tag, False, error[:200]))

    async def _do_LoadManifest(self, effect: ev.LoadManifest) -> None:
        try:
            blob = await trio.to_thread.run_sync(self.meta.get_manifest, effect.manifest_id)
        except DiskIOError as err:
            self._store_failed("loading manifest " + effect.manifest_id.hex()[:16], err)
            blob = None
        except (PeerstoreError, OSError):
            blob = None
        self.feed(ev.ManifestLoaded(effect.tag, blob))

    async def _do_PersistCatalog(self, effect: ev.PersistCatalog) -> None:
        # The core never has two catalog writes outstanding: the blob is written as is.
        try:
            await trio.to_thread.run_sync(self.meta.save_catalog, effect.blob)
            self.feed(ev.CatalogPersisted(effect.tag, True))
        except (PeerstoreError, OSError) as err:
            self.feed(ev.CatalogPersisted(effect.tag, False, self._store_failed("saving the catalog", err)[:200]))

    async def _do_PersistCounters(self, effect: ev.PersistCounters) -> None:
        try:
            await trio.to_thread.run_sync(self.meta.save_counters, effect.blob)
            self.feed(ev.CountersPersisted(effect.tag, True))
        except (PeerstoreError, OSError) as err:
            error = self._store_failed("saving the version counters", err)
            self.feed(ev.CountersPersisted(effect.tag, False, error[:200]))

    async def _do_PersistMembership(self, effect: ev.PersistMembership) -> None:
        try:
            await trio.to_thread.run_sync(self.meta.save_membership, effect.blob)
            self.feed(ev.MembershipPersisted(effect.tag, True))
        except (PeerstoreError, OSError) as err:
            error = self._store_failed("saving the stable membership", err)
            self.feed(ev.MembershipPersisted(effect.tag, False, error[:200]))

    async def _do_RebuildPieces(self, effect: ev.RebuildPieces) -> None:
        """Repair: decode the stripe from the verified pieces and re-encode the positions
        wanted, in a worker thread; the core verifies what comes back."""
        pieces = {pos: self.buffers.borrow(handle) for pos, handle in effect.pieces}
        handles: tuple[tuple[int, int], ...] = ()
        error = ""
        try:
            if any(data is None for data in pieces.values()):
                raise FormatError("a piece to rebuild from was released")
            made = await trio.to_thread.run_sync(
                rebuild_pieces, pieces, effect.k, effect.p, effect.shard_lengths, effect.want)
            handles = tuple((pos, self.buffers.add(data)) for pos, data in sorted(made.items()))
        except (FormatError, ValueError) as err:
            error = str(err)[:200]
            log.warning("rebuilding pieces for repair failed: %s", err, extra=fields("repair_rebuild_failed"))
        finally:
            for _, handle in effect.pieces:
                self.buffers.give_back(handle)
        self.feed(ev.PiecesRebuilt(effect.tag, handles, error))

    async def deliver(self, session: ClientSession, effect: ev.DeliverStripe) -> None:
        """Send one stripe's data to the client (rebuilding it from parity if needed)."""
        pieces = {pos: self.buffers.borrow(handle) for pos, handle in effect.pieces}
        try:
            if effect.needs_decode:
                shards = await trio.to_thread.run_sync(
                    decode_data, pieces, effect.k, effect.p, effect.shard_lengths
                )
            else:
                shards = [pieces[i] for i in range(effect.k)]
            await session.send_stripe(effect.file_index, effect.offset, shards)
            ok, error = True, ""
        except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError, FormatError) as err:
            ok, error = False, str(err)[:200]
        finally:
            for _, handle in effect.pieces:
                self.buffers.give_back(handle)
                self.buffers.release(handle)
        self.feed(ev.StripeDelivered(effect.op, effect.stripe, ok, error))

    # -- connections ---------------------------------------------------------------------

    async def _accept_local(self, stream: trio.SocketStream) -> None:
        """A connection to the Unix client socket (local_socket.py)."""
        await self._accept(stream, local=True)

    async def _accept(self, stream: trio.SocketStream, local: bool = False) -> None:
        """One incoming connection. A bug in serving it is logged and ends only it:
        an exception escaping here would stop the whole listener."""
        try:
            await self._serve_connection(stream, local)
        except Exception:
            log.exception("error while serving a connection from %s", _remote(stream),
                          extra=fields("internal_error", remote=_remote(stream)))
            self.metrics.errors.labels("internal").inc()
            with trio.move_on_after(1):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream, local: bool = False) -> None:
        if not local:
            tune_socket(stream)
        wire = WireStream(stream, role="server", cluster_key=self.config.cluster_key, node_id=self.node_id)
        peer = None
        # Pending handshakes are capped in total and per address (admission.py): a flood of
        # half-open connections drops its own oldest, never an established peer.
        with trio.CancelScope() as gate_scope:
            ticket = self.handshakes.admit(_remote(stream).rpartition(":")[0], gate_scope)
            try:
                peer = await wire.handshake(HANDSHAKE_TIMEOUT)
            except AuthError as err:
                self.metrics.errors.labels("auth").inc()
                held = self.auth_warnings.allow(trio.current_time())
                if held is not None:
                    log.warning("refused a connection from %s: %s%s", _remote(stream), err,
                                f" ({held} more refused since the last warning)" if held else "",
                                extra=fields("handshake_refused", remote=_remote(stream), held=held or None))
            except (CodecError, PeerClosed, trio.TooSlowError, trio.BrokenResourceError, OSError) as err:
                log.debug("handshake with %s failed: %s", _remote(stream), err,
                          extra=fields("handshake_failed", remote=_remote(stream)))
            finally:
                self.handshakes.done(ticket)
        if gate_scope.cancelled_caught:
            self.metrics.errors.labels("handshake_dropped").inc()
        if peer is None:
            await wire.aclose()
            return
        if peer == self.node_id:
            await wire.aclose()  # we dialled ourselves through a seed address
            return
        # The first frame tells a CLI (a client request) from a node (anything else).
        try:
            first = await wire.receive(verify=False, budget=self.payloads)
        except (PeerClosed, CodecError, trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                trio.TooSlowError):
            await wire.aclose()
            return
        if first.header.get("t") in cp.REQUESTS:
            if first.payload is not None:  # a request's header is all a session reads of it
                self.payloads.release(len(first.payload))
            # Only a client of our own user on the Unix socket may have us read its files.
            await self._serve_client(wire, first, local_paths=local and same_user(stream.socket))
        elif local:
            await wire.aclose()  # nodes talk over TCP; the Unix socket is for clients
        else:
            await self.peers.serve(wire, first)

    async def _receive_from_peer(self, peer: str, wire: WireStream, first: Frame | None = None) -> None:
        """Receive frames from a peer until the connection ends; feed them to the core."""
        while True:
            charged = 0  # payload bytes admitted to self.payloads and not yet handed on
            try:
                frame, first = (first, None) if first is not None else (
                    await wire.receive(verify=False, budget=self.payloads), None)
                kind = frame.header.get("t")
                payload = frame.payload
                charged = len(payload) if payload is not None else 0
                handle = None
                if kind == "gossip" and self.membership is not None:
                    if payload is None or blake3.blake3(payload).digest() != frame.payload_hash:
                        raise CodecError("a gossip payload did not match its hash")
                    reply = self.membership.answer_stream(_peer_address(wire), bytes(payload))
                    await wire.send({"t": "gossip"}, reply)
                    continue
                if kind in PIECE_PAYLOAD_TYPES:
                    if payload is not None and frame.payload_hash != frame.header.get("piece_id"):
                        raise CodecError("a piece payload's hash is not its piece id")
                    message = msg.from_header(frame.header)
                    if payload is not None:
                        handle = self.buffers.add(payload, owner=payload, charged=charged)
                        charged = 0
                        self.metrics.bytes_received.labels(peer).inc(len(payload))
                        self.metrics.pieces_received.labels(peer).inc()
                else:
                    if payload is not None and blake3.blake3(payload).digest() != frame.payload_hash:
                        raise CodecError("a payload did not match the hash in its header")
                    message = msg.from_header(frame.header, bytes(payload) if payload is not None else None)
                    if payload is not None:
                        self.buffers.pool.give(payload)
            except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            except CodecError as err:
                self.metrics.errors.labels("codec").inc()
                log.warning("dropping connection to %s: %s", peer, err, extra=fields("peer_dropped", peer=peer))
                return
            except trio.TooSlowError:
                self.metrics.errors.labels("memory").inc()
                log.warning("dropping connection to %s: its next payload did not fit transfer.memory_budget "
                            "(%d bytes held) within %g s", peer, self.payloads.used, self.payloads.timeout,
                            extra=fields("peer_dropped", peer=peer))
                return
            finally:
                if charged:
                    self.payloads.release(charged)
            self.feed(ev.MessageReceived(peer, message, handle))

    async def _serve_client(self, wire: WireStream, first: Frame, local_paths: bool = False) -> None:
        session = ClientSession(self, self.new_session_token(), wire, local_paths=local_paths)
        self.sessions[session.token] = session
        try:
            await session.run(first)
        finally:
            del self.sessions[session.token]
            await wire.aclose()

    # -- metrics -------------------------------------------------------------------------

    async def _refresh_metrics(self) -> None:
        while True:
            count, size = self.pieces.stats()
            tolerance = Counter(
                e.tolerance for name in self.core.catalog.names() for e in self.core.catalog.live_versions(name)
            )
            self.metrics.snapshot.snapshot = {
                "pieces": count, "bytes": size, "buffered": self.buffers.bytes,
                "members": self.membership.state_counts() if self.membership else {},
                "local_health": self.membership.swim.local_health if self.membership else 0,
                "tolerance": dict(tolerance), "min_tolerance": self.config.policy.min_tolerance,
                "watch": self.watcher.metrics() if self.watcher is not None else {},
                "repair": self.core.repair.report(trio.current_time()),
                "gc": self.core.gc.refresh_figures(trio.current_time()).as_dict(),
                "disk": self._disk_usage(),
                "scrub": self.core.integrity.report(trio.current_time()),
                "core": {**dict(self.core.stats),
                         **{f"gossip_{k}": v for k, v in (self.membership.swim.stats.items() if self.membership else ())},
                         **{f"gossip_dropped_{k}": v for k, v in (self.membership.dropped.items() if self.membership else ())}},
            }
            await trio.sleep(1.0)

    def _disk_usage(self) -> dict[str, int]:
        try:
            usage = shutil.disk_usage(self.config.data_dir)
        except OSError:
            return {}
        return {"free": usage.free, "total": usage.total}

    def member_rows(self) -> list[dict[str, Any]]:
        return self.membership.rows() if self.membership is not None else []

    def wall_clock(self) -> float:
        return time.time()


def _log_outcome(kind: str, op: int, body: Any) -> None:
    """The line a finished client (or watcher) operation leaves: ``<kind>_done`` or, as a
    warning, ``<kind>_failed``; ``op`` ties it to the session's ``<kind>_started`` line."""
    if isinstance(body, ev.Failed):
        log.warning("%s", body.reason,
                    extra=fields(f"{kind}_failed", op=op, outcome_unknown=body.outcome_unknown or None))
    elif isinstance(body, ev.PutDone):
        log.info("stored %s@%s: %d bytes, tolerance %d", body.name, body.version, body.size, body.tolerance,
                 extra=fields("put_done", f"{body.name}@{body.version}", op=op, size=body.size,
                              tolerance=body.tolerance, manifest_id=body.manifest_id.hex()))
    elif isinstance(body, ev.GetDone):
        log.info("sent %s@%s: %d bytes, %d stripe(s) rebuilt from parity", body.name, body.version, body.size,
                 body.degraded_stripes,
                 extra=fields("get_done", f"{body.name}@{body.version}", op=op, size=body.size,
                              degraded=body.degraded_stripes, fallbacks=body.fallbacks))
    elif isinstance(body, ev.Removed):
        log.info("removed version(s) %s", ", ".join(body.versions) or "(none)",
                 extra=fields("rm_done", op=op, versions=",".join(body.versions)))
    elif isinstance(body, ev.VerifyDone):
        ok = bool(body.report.get("ok"))
        log.log(logging.INFO if ok else logging.WARNING, "verify finished: %s", "all well" if ok else "problems found",
                extra=fields("verify_done", op=op, ok=ok))


def _peer_address(wire: WireStream) -> tuple[str, int]:
    try:
        return tuple(wire.stream.socket.getpeername()[:2])  # type: ignore[return-value]
    except OSError:
        return ("0.0.0.0", 0)


def _remote(stream: trio.SocketStream) -> str:
    if stream.socket.family == socket.AF_UNIX:
        return "local:"  # "local" for the per-address handshake cap
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
