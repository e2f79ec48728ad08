"""The client API: one request per connection to one node (see
:mod:`peerstore.wire.client_protocol` for the conversation shapes).

:class:`NodeClient` puts (streaming the files, or naming them to a node on this
machine), gets (through a :class:`~peerstore.shell.client.writer.CheckpointWriter`), lists,
removes and asks for status. Every wait on the network is bounded by the connection
(:mod:`peerstore.shell.client.connection`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from peerstore.shell.client.connection import (
    DEFAULT_TIMEOUT, NodeWire, is_this_machine, open_local_wire, open_wire, where_of,
)
from peerstore.shell.client.sources import (
    Source,
    SourceFile,
    change_after_read,
    change_at_open,
    check_unchanged,
    explicit_source,
    read_chunk,
    scan_source,
)
from peerstore.shell.client.direct import DirectWriter, fits
from peerstore.shell.client.writer import CheckpointWriter, check_output
from peerstore.shell import fdpass
from peerstore.errors import (
    CodecError,
    ConnectionLost,
    FormatError,
    NodeUnreachable,
    NotFoundError,
    CHANGED_DURING_PUT,
    OutcomeUnknownError,
    PeerstoreError,
    SourceChangedError,
    UsageError,
)
from peerstore.model.catalog import Catalog, CatalogEntry, CatalogNotFound
from peerstore.model.manifest import MAX_MANIFEST_BYTES, Manifest
from peerstore.model.names import VersionId, parse_spec, parse_version_selector, validate_name, validate_paths
from peerstore.shell.client.progress import Progress
from peerstore.wire import client_protocol as cp
from peerstore.wire import ConnectionClosed, Message
from peerstore.wire.client_protocol import DATA_CHUNK, put_request
from peerstore.wire.frames import encode_header


def _not_found(header: dict) -> bool | None:
    value = header.get("not_found")
    return value if isinstance(value, bool) else None


def entry_from_dict(d: dict) -> CatalogEntry:
    """The inverse of client_protocol.entry_dict; FormatError for a malformed listing."""
    try:
        manifest_id = d["manifest_id"]
        return CatalogEntry(
            name=d["name"], version=VersionId.parse(d["version_id"]),
            manifest_id=bytes.fromhex(manifest_id) if isinstance(manifest_id, str) else bytes(manifest_id),
            size=int(d["size"]), files=int(d["files"]), tolerance=int(d["tolerance"]),
            created=float(d.get("created", 0.0)),
        )
    except (KeyError, TypeError, ValueError, PeerstoreError) as err:
        raise FormatError(f"malformed listing entry from the node: {err}") from None


class LocalRootRefused(PeerstoreError):
    """The node would not read our files itself (nothing started): stream them instead."""


class NodeClient:
    """A client of one node. Each operation opens its own connection (or takes the one
    :meth:`connect` opened) and closes it when done. ``local_socket``: the node's Unix
    client socket (``peercred.client_socket_path`` of its data_dir), when the CLI runs on
    the node's machine; a put then lets the node read the files itself."""

    def __init__(self, host: str, port: int, cluster_key: bytes, timeout: float = DEFAULT_TIMEOUT,
                 *, config_source: str | None = None, local_socket: Path | None = None):
        self.host, self.port = host, port
        self.local_socket = local_socket
        self.cluster_key = cluster_key
        self.timeout = timeout
        self.config_source = config_source
        self._wire: NodeWire | None = None

    @property
    def where(self) -> str:
        return where_of(self.host, self.port)

    async def connect(self) -> NodeClient:
        """Open and authenticate a connection now (operations otherwise do it lazily)."""
        if self._wire is None:
            self._wire = await open_wire(self.host, self.port, self.cluster_key, self.timeout, self.config_source)
        return self

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
            self._wire = None

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _take_wire(self) -> NodeWire:
        await self.connect()
        wire, self._wire = self._wire, None
        assert wire is not None
        return wire

    # -- put

    async def put(self, path: Path, name: str, progress: Progress | None = None, *, stream: bool = False) -> dict:
        """Store the file or directory at ``path`` as ``name``; the node's put_done fields
        (with "blake3": each file's hex digest, in path order, when the node sends them),
        plus "streamed" and "seconds". Unless ``stream``, names the files (``local_root``)
        to a node on this machine over its Unix socket, which reads them itself when it runs
        as our user; otherwise (or when it refuses) streams the bytes over TCP. A file that
        changes while it is read fails the put with SourceChangedError; nothing is committed
        then."""
        validate_name(name)
        return await self._put_source(scan_source(Path(path)), name, progress, stream)

    async def put_files(self, name: str, root: Path, is_dir: bool, files: Sequence[SourceFile],
                        progress: Progress | None = None, *, stream: bool = False) -> dict:
        """Store exactly ``files`` (not a fresh listing of ``root``) as ``name``; see
        :func:`explicit_source` and :meth:`put`. Each file's ``mtime_ns``/``inode`` is
        what it must still be when read, or the put fails with SourceChangedError."""
        validate_name(name)
        return await self._put_source(explicit_source(Path(root), is_dir, list(files)), name, progress, stream)

    async def _put_source(self, source: Source, name: str, progress: Progress | None, stream: bool) -> dict:
        validate_paths([f.path for f in source.files])
        progress = progress or Progress(enabled=False)
        if not stream:
            wire = await self._local_wire(source)
            if wire is not None:
                request = self._put_request(source, name, os.path.realpath(source.root))
                try:
                    return await self._put_over(wire, request, source, name, progress, local=True)
                except LocalRootRefused:
                    pass  # this node reads no files for us (it runs as another user, say): stream them
        request = self._put_request(source, name, None)
        return await self._put_over(await self._take_wire(), request, source, name, progress, local=False)

    async def _local_wire(self, source: Source) -> NodeWire | None:
        """The node's Unix socket, when it may read the files itself: it is on this machine,
        has a socket we can open, and the tree holds no symlinks (the node follows none)."""
        if self.local_socket is None or not is_this_machine(self.host):
            return None
        if source.is_dir and any(os.path.islink(f.local) for f in source.files):
            return None
        return await open_local_wire(self.local_socket, self.cluster_key, self.timeout)

    @staticmethod
    def _put_request(source: Source, name: str, local_root: str | None) -> dict:
        listed = [(f.path, f.size, f.mode) for f in source.files]
        stats = [(f.mtime_ns, f.inode) for f in source.files]
        request = put_request(name, listed, source.is_dir, local_root,
                              stats if local_root and all(m is not None and i is not None for m, i in stats) else None)
        try:
            encode_header(request)
        except ValueError:
            request = put_request(name, listed, source.is_dir, local_root)
            try:  # without the stats the node still checks each file before and after reading it
                encode_header(request)
            except ValueError as err:
                raise UsageError(f"{source.root}: {len(source.files)} files do not fit in one put request ({err}); "
                                 "store its subdirectories as separate checkpoints") from None
        return request

    async def _put_over(self, wire: NodeWire, request: dict, source: Source, name: str, progress: Progress,
                        local: bool) -> dict:
        progress.start(source.total_size, f"put {name}")
        started = trio.current_time()
        try:
            await wire.send(request)
            header = await self._put_conversation(wire, source, name, progress, send_data=not local)
        finally:
            progress.finish()
            await wire.aclose()
        return {**header, "streamed": not local, "seconds": trio.current_time() - started}

    async def _put_conversation(self, wire: NodeWire, source: Source, name: str, progress: Progress,
                                send_data: bool) -> dict:
        sent_all = not send_data
        outcome: dict[str, Any] = {}

        async def sender(cancel: trio.CancelScope) -> None:
            nonlocal sent_all
            try:
                await self._stream_files(wire, source)
                sent_all = True
            except ConnectionLost:
                pass  # the receiver learns why (a "failed" frame or the close) and reports it
            except SourceChangedError as err:
                outcome["changed"] = err  # wins over the dropped connection the receiver may see
                cancel.cancel()
            except PeerstoreError as err:
                outcome["error"] = err
                cancel.cancel()

        async def receiver(cancel: trio.CancelScope) -> None:
            try:
                outcome["header"] = await self._put_replies(wire, progress)
            except PeerstoreError as err:
                outcome["error"] = err
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            if send_data:
                nursery.start_soon(sender, nursery.cancel_scope)
            nursery.start_soon(receiver, nursery.cancel_scope)

        err = outcome.get("changed") or outcome.get("error")
        if err is None:
            return outcome["header"]
        if isinstance(err, (NodeUnreachable, CodecError)):
            if sent_all:
                raise OutcomeUnknownError(
                    f"the connection to {wire.where} dropped before the put finished ({err}); it may or may "
                    f"not have committed: run 'peerstore ls {name}' to check"
                ) from None
            raise PeerstoreError(f"{err}; the put did not complete (the node never had all the data), retry it") from None
        raise err

    async def _put_replies(self, wire: NodeWire, progress: Progress) -> dict:
        while True:
            event = await wire.next_event()
            if isinstance(event, ConnectionClosed):
                raise ConnectionLost(f"{wire.where} closed the connection")
            if not isinstance(event, Message):
                continue
            header = event.header
            kind = header.get("t")
            body = bytearray()
            if event.payload_len:
                if kind == "put_done" and event.payload_len <= cp.MAX_BODY:
                    await wire.read_payload(event, body.extend)
                else:
                    await wire.read_payload(event, lambda view: None)
            if kind == "progress":
                done = header.get("done")
                if type(done) is int:
                    progress.update(done)
            elif kind == "put_done":
                return {**_strip(header), **_put_digests(bytes(body))}
            elif kind == "failed":
                reason = str(header.get("reason", "no reason given"))
                if cp.is_local_refused(header):
                    raise LocalRootRefused(reason)
                if header.get("unknown") is True:
                    raise OutcomeUnknownError(f"{reason}; run 'peerstore ls' to check whether it committed")
                if CHANGED_DURING_PUT in reason:
                    raise SourceChangedError(f"the put failed: {reason}")
                raise PeerstoreError(f"the put failed: {reason}")
            else:
                raise CodecError(f"{wire.where} answered a put with an unexpected {kind!r} frame")

    async def _stream_files(self, wire: NodeWire, source: Source) -> None:
        buffer = bytearray(min(DATA_CHUNK, max((f.size for f in source.files), default=0)) or 1)
        for index, f in enumerate(source.files):
            try:
                handle = open(f.local, "rb")  # noqa: SIM115 - closed below, across awaits
            except OSError as err:
                raise PeerstoreError(f"cannot read {f.local}: {err.strerror or err}") from None
            with handle:
                opened = os.fstat(handle.fileno())
                check_unchanged(change_at_open(f, opened))
                offset = 0
                while True:
                    want = min(len(buffer), f.size - offset)
                    try:
                        view, digest = await trio.to_thread.run_sync(read_chunk, handle, buffer, want)
                    except OSError as err:
                        raise PeerstoreError(f"cannot read {f.local}: {err.strerror or err}") from None
                    if len(view) < want:
                        raise SourceChangedError(
                            f"{f.local} {CHANGED_DURING_PUT}: it became shorter than {f.size} bytes while it was "
                            "read; store it again once it is completely written")
                    if offset + want >= f.size:
                        # The end of the file is not sent before the file proved unchanged: the
                        # node cannot commit without it.
                        await trio.to_thread.run_sync(self._check_after_read, f, handle, opened)
                    if want:
                        await wire.send({"t": "data", "file": index, "offset": offset}, view, digest)
                    offset += want
                    if offset >= f.size:
                        break

    @staticmethod
    def _check_after_read(f: SourceFile, handle: Any, opened: os.stat_result) -> None:
        if handle.read(1):
            raise SourceChangedError(f"{f.local} {CHANGED_DURING_PUT}: it grew past {f.size} bytes while it was "
                                     "read; store it again once it is completely written")
        after = os.fstat(handle.fileno())
        try:
            named: os.stat_result | None = os.stat(f.local)
        except FileNotFoundError:
            named = None
        check_unchanged(change_after_read(f, opened, after, named))

    # -- get

    async def get(self, spec: str, out: Path, force: bool = False, progress: Progress | None = None,
                  *, into_dir: bool = False, stream: bool = False) -> dict:
        """Fetch ``spec`` into ``out`` (see :func:`output_target`); the node's get_done
        fields plus "path", "files", "bytes", "seconds" and "node_wrote". On this machine's
        node (its Unix socket) we create the files and pass their descriptors, and the node
        writes into them ("node_wrote": true; see :mod:`peerstore.shell.client.direct`);
        otherwise, or when it cannot (or ``stream``), the node streams the bytes to us."""
        name, selector = parse_spec(spec)
        out = Path(out)
        check_output(out, force, into_dir)
        progress = progress or Progress(enabled=False)
        wire = await self._take_wire() if stream else await self._get_wire()
        local = fdpass.is_unix(wire)
        started = trio.current_time()
        writer: CheckpointWriter | None = None
        manifest_bytes: bytearray | None = None
        try:
            await wire.send(cp.get_request(spec, fds=local))
            while True:
                event = await wire.next_event()
                if isinstance(event, ConnectionClosed):
                    raise ConnectionLost(f"{wire.where} closed the connection before the get finished")
                if not isinstance(event, Message):
                    continue
                header, kind = event.header, event.header.get("t")
                if kind == "manifest":
                    if manifest_bytes is not None or event.payload_len > MAX_MANIFEST_BYTES:
                        raise CodecError(f"{wire.where} sent a second or oversized manifest")
                    manifest_bytes = bytearray()
                    await wire.read_payload(event, manifest_bytes.extend)
                elif kind == "entry":
                    if manifest_bytes is None or writer is not None:
                        raise CodecError(f"{wire.where} sent the entry before the manifest, or twice")
                    manifest = _check_manifest(bytes(manifest_bytes), header, name, selector)
                    offer = header.get("fds")
                    if local and type(offer) is int and offer >= 1 and fits(manifest):
                        writer = DirectWriter(manifest, out, force, into_dir)
                        writer.open()
                        if not await _pass_fds(wire, writer, min(offer, fdpass.MAX_FDS_PER_FRAME)):
                            writer.abort()  # the node streams after all
                            writer = None
                    elif local and type(offer) is int:
                        await _pass_fds(wire, None, 0)  # too many files to hold open: stream
                    if writer is None:
                        writer = CheckpointWriter(manifest, out, force, into_dir)
                        writer.open()
                    progress.start(manifest.total_size(), f"get {spec}")
                elif kind == "stripe":  # (to a DirectWriter: the node could not write the rest itself)
                    if writer is None:
                        raise CodecError(f"{wire.where} sent a stripe before the manifest and entry")
                    file_index, offset = header.get("file"), header.get("offset")
                    if type(file_index) is not int or type(offset) is not int:
                        raise CodecError(f"{wire.where} sent a stripe without a file index and offset")
                    writer.begin_stripe(file_index, offset, event.payload_len)
                    w = writer

                    def sink(view: memoryview) -> None:
                        w.write(view)
                        progress.update(w.bytes_written)

                    await wire.read_payload(event, sink)
                    writer.end_stripe()
                elif kind == "get_done":
                    if writer is None:
                        raise CodecError(f"{wire.where} finished a get without sending the checkpoint")
                    direct = isinstance(writer, DirectWriter)
                    target = await trio.to_thread.run_sync(writer.commit) if direct else writer.commit()
                    return {**_strip(header), "path": str(target), "files": len(writer.manifest.files),
                            "bytes": writer.total_size, "seconds": trio.current_time() - started,
                            "node_wrote": isinstance(writer, DirectWriter) and not writer.streamed}
                elif kind == "failed":
                    reason = str(header.get("reason", "no reason given"))
                    if writer is None and await self._missing(spec, header):
                        raise NotFoundError(reason)
                    raise PeerstoreError(f"the get failed: {reason}")
                elif kind == "progress":
                    if event.payload_len:
                        await wire.read_payload(event, lambda view: None)
                    done = header.get("done")
                    if isinstance(writer, DirectWriter) and type(done) is int and done:
                        await trio.to_thread.run_sync(writer.advance, done)  # read back, verify
                        progress.update(done)
                else:
                    raise CodecError(f"{wire.where} answered a get with an unexpected {kind!r} frame")
        finally:
            progress.finish()
            if writer is not None:
                writer.abort()
            await wire.aclose()

    async def _get_wire(self) -> NodeWire:
        """The node's Unix socket when it is on this machine and descriptors can be passed,
        else (or when that socket cannot be used) TCP."""
        if (self._wire is None and self.local_socket is not None and fdpass.supported()
                and is_this_machine(self.host)):
            wire = await open_local_wire(self.local_socket, self.cluster_key, self.timeout)
            if wire is not None:
                return wire
        return await self._take_wire()

    async def _missing(self, spec: str, failed: dict) -> bool:
        """Did this failure mean "no such checkpoint"? The node may say so itself
        (``not_found``); otherwise ask for a listing and resolve the spec against it."""
        said = _not_found(failed)
        if said is not None:
            return said
        try:
            entries = await self.ls(parse_spec(spec)[0])
            Catalog([entry_from_dict(e) for e in entries]).resolve(spec)
        except CatalogNotFound:
            return True
        except PeerstoreError:
            return False
        return False

    # -- small requests

    async def _ask(self, request: dict, answers: set[str],
                   on_progress: Callable[[dict], None] | None = None) -> dict:
        """Send ``request`` and return the first answer of a kind in ``answers`` (or
        "failed"), its body merged into its header; "progress" frames go to ``on_progress``."""
        wire = await self._take_wire()
        try:
            await wire.send(request)
            while True:
                event = await wire.next_event()
                if isinstance(event, ConnectionClosed):
                    raise ConnectionLost(f"{wire.where} closed the connection without answering")
                if not isinstance(event, Message):
                    continue
                body = bytearray()
                if event.payload_len:
                    if event.payload_len > cp.MAX_BODY:
                        raise CodecError(f"{wire.where} sent a {event.payload_len}-byte reply body")
                    await wire.read_payload(event, body.extend)
                kind = event.header.get("t")
                if kind in answers or kind == "failed":
                    return {**event.header, **cp.decode_body(bytes(body))} if body else event.header
                if kind != "progress":
                    raise CodecError(f"{wire.where} answered {request['t']} with an unexpected {kind!r} frame")
                if on_progress is not None:
                    on_progress(event.header)
        finally:
            await wire.aclose()

    async def ls(self, name: str | None = None) -> list[dict]:
        """Live versions (of ``name``, or of everything), as entry dicts."""
        request: dict[str, Any] = {"t": "ls"}
        if name is not None:
            request["name"] = validate_name(name)
        header = await self._ask(request, {"listing"})
        if header["t"] == "failed":
            raise PeerstoreError(f"ls failed: {header.get('reason', 'no reason given')}")
        entries = header.get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise CodecError(f"{self.where} sent a malformed listing")
        return entries

    async def status(self) -> dict:
        """The node's view: node_id, members, checkpoints (with tolerance now)."""
        header = await self._ask({"t": "status"}, {"status"})
        if header["t"] == "failed":
            raise PeerstoreError(f"status failed: {header.get('reason', 'no reason given')}")
        return _strip(header)

    async def verify(self, spec: str | None = None, progress: Progress | None = None) -> dict:
        """Check ``spec`` (NAME or NAME@V), or every checkpoint, end to end: the node's
        verify report (see peerstore.cli.verify_report). ``progress`` shows the bytes the
        holders have re-read so far."""
        request: dict[str, Any] = {"t": "verify"}
        if spec is not None:
            parse_spec(spec)
            request["spec"] = spec
        progress = progress or Progress(enabled=False)

        started = []

        def show(header: dict) -> None:
            done, total = header.get("done"), header.get("total")
            if type(done) is int and type(total) is int:
                if not started or total != progress.total:
                    progress.start(total, f"verify {spec or 'all'}")
                    started.append(True)
                progress.update(done)

        try:
            answer = await self._ask(request, {"verified"}, show)
        finally:
            progress.finish()
        if answer["t"] == "failed":
            reason = str(answer.get("reason", "no reason given"))
            if spec is not None and await self._missing(spec, answer):
                raise NotFoundError(reason)
            raise PeerstoreError(f"verify failed: {reason}")
        report = _strip(answer)
        if not isinstance(report.get("checkpoints"), list):
            raise CodecError(f"{self.where} sent a malformed verify report")
        return report

    async def rm(self, spec: str) -> dict:
        """Remove ``NAME`` (every version this node has seen) or ``NAME@V``; {"versions": [...]}."""
        parse_spec(spec)
        header = await self._ask({"t": "rm", "spec": spec}, {"removed"})
        if header["t"] == "failed":
            reason = str(header.get("reason", "no reason given"))
            if await self._missing(spec, header):
                raise NotFoundError(reason)
            raise PeerstoreError(f"rm failed: {reason}")
        return _strip(header)


async def _pass_fds(wire: NodeWire, writer: DirectWriter | None, per_frame: int) -> bool:
    """Hand the node the descriptors of ``writer``'s files, ``per_frame`` at a time, each
    frame answered before the next (see ``shell/fdpass.py``); without a writer, tell it to
    stream. True when the node took them all, False when it streams instead."""
    passed = writer.passed() if writer is not None else []
    batches = [passed[i:i + per_frame] for i in range(0, len(passed), per_frame)] if per_frame else []
    if writer is None or not batches:
        batches = [[]]
    for number, batch in enumerate(batches):
        last = number == len(batches) - 1
        header = {"t": "fds", "files": [index for index, _ in batch], "last": last,
                  **({"stream": True} if writer is None else {})}
        try:
            await fdpass.send_with_fds(wire, header, [fd for _, fd in batch])
        except (OSError, trio.TooSlowError) as err:
            raise ConnectionLost(f"passing our files to {wire.where} failed: {err}") from None
        answer = await _fds_answer(wire)
        if answer.get("stream") is True:
            return False
        if type(answer.get("count")) is not int:
            raise CodecError(f"{wire.where} answered our files with a malformed fds_ok")
    return writer is not None


async def _fds_answer(wire: NodeWire) -> dict:
    """The node's fds_ok (progress frames skipped); a failure is raised as PeerstoreError."""
    while True:
        event = await wire.next_event()
        if isinstance(event, ConnectionClosed):
            raise ConnectionLost(f"{wire.where} closed the connection while taking our files")
        if not isinstance(event, Message):
            continue
        if event.payload_len:
            await wire.read_payload(event, lambda view: None)
        kind = event.header.get("t")
        if kind == "fds_ok":
            return event.header
        if kind == "failed":
            raise PeerstoreError(f"the get failed: {event.header.get('reason', 'no reason given')}")
        if kind != "progress":
            raise CodecError(f"{wire.where} answered our files with an unexpected {kind!r} frame")


def _put_digests(body: bytes) -> dict:
    """{"blake3": [hex per file]} from a put_done body, or {} if there is none (older node)."""
    if not body:
        return {}
    try:
        digests = cp.decode_body(body).get("blake3")
    except CodecError:
        return {}
    if not isinstance(digests, list) or not all(isinstance(d, bytes) and len(d) == 32 for d in digests):
        return {}
    return {"blake3": [d.hex() for d in digests]}


def _strip(header: dict) -> dict:
    return {k: v for k, v in header.items() if k != "t"}


def _check_manifest(data: bytes, entry: dict, name: str, selector: str | None) -> Manifest:
    """Decode the manifest and check it is the one the entry names and the spec asked for."""
    manifest_id = entry.get("manifest_id")
    if isinstance(manifest_id, str):
        try:
            manifest_id = bytes.fromhex(manifest_id)
        except ValueError:
            manifest_id = None
    manifest = Manifest.decode(data)
    if manifest.id != manifest_id:
        raise CodecError("the manifest the node sent does not match its catalog entry's manifest id; "
                         "nothing was written (a node may hold a corrupt manifest)")
    if manifest.name != name or entry.get("name") not in (None, name):
        raise CodecError(f"asked for {name} but the node sent the manifest of {manifest.name}")
    if selector is not None:
        counter, prefix = parse_version_selector(selector)
        if manifest.version.counter != counter or not manifest.version.node.startswith(prefix):
            raise CodecError(f"asked for {name}@{selector} but the node sent version {manifest.version}")
    return manifest


async def connect(host: str, port: int, cluster_key: bytes, timeout: float = DEFAULT_TIMEOUT,
                  *, config_source: str | None = None, local_socket: Path | None = None) -> NodeClient:
    """A NodeClient with its first connection open and authenticated."""
    return await NodeClient(host, port, cluster_key, timeout, config_source=config_source,
                            local_socket=local_socket).connect()
