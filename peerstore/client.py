"""The CLI's side of the client protocol: talk to one node over the authenticated wire.

:class:`NodeClient` runs one request per connection (see
:mod:`peerstore.wire.client_protocol` for the conversation shapes). Every wait on the
network is bounded: a node that says nothing for ``timeout`` seconds -- neither taking
our bytes nor sending any -- is reported as silent, never waited on forever.

Two pieces of local file handling live here because only the client does them:

- :func:`scan_source` turns the file or directory given to ``put`` into the list of
  files to store (regular files only, sorted, symlinks that escape refused);
- :class:`CheckpointWriter` writes a ``get`` beside its destination under a
  ``.peerstore-tmp-*`` name, checks every file against the manifest's whole-file BLAKE3,
  and renames it into place only when every file verified, so an existing file is never
  destroyed by a failed get.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import blake3
import trio

from peerstore.durable import fsync_dir, fsync_file
from peerstore.errors import AuthError, CodecError, DiskFullError, FormatError, PeerstoreError
from peerstore.manifest import MAX_MANIFEST_BYTES, Catalog, CatalogEntry, CatalogNotFound, Manifest
from peerstore.names import MAX_FILES, VersionId, parse_spec, parse_version_selector, validate_name, validate_paths
from peerstore.progress import Progress
from peerstore.wire import client_protocol as cp
from peerstore.wire import ConnectionClosed, HandshakeComplete, Message, PayloadChunk, PayloadEnd
from peerstore.wire.client_protocol import DATA_CHUNK, put_request
from peerstore.wire.frames import Connection, encode_header

DEFAULT_TIMEOUT = 60.0
MAX_CONNECT_TIMEOUT = 20.0  # connect + handshake; a live node answers in milliseconds
RECEIVE_SIZE = 1024 * 1024  # bytes per socket read: bounds what one read buffers
TEMP_PREFIX = ".peerstore-tmp-"
LAUNCH_HINT = "start one with ./launch.sh (or ./launch.sh --local 5)"


# -- errors the CLI maps to exit codes (module-local: errors.py is shared)


class UsageError(PeerstoreError):
    """The command's arguments cannot work (a missing file, an empty directory...)."""


class NotFoundError(PeerstoreError):
    """The checkpoint or version asked for does not exist."""


class OutcomeUnknownError(PeerstoreError):
    """The connection died after a put was sent and before its result arrived."""


class NodeUnreachable(PeerstoreError):
    """No node answered at the address, or it went silent, or the connection dropped."""


class _ConnectionLost(NodeUnreachable):
    pass


# -- addresses


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine's loopback interface."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- put: what to send


@dataclass(frozen=True)
class SourceFile:
    """One file to store: its path inside the checkpoint and where it is on disk."""

    path: str
    local: Path
    size: int
    mode: int


@dataclass(frozen=True)
class Source:
    """What ``put PATH`` stores: a single file, or a directory's regular files in order."""

    root: Path
    is_dir: bool
    files: tuple[SourceFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def scan_source(path: Path) -> Source:
    """The file or directory tree at ``path``, checked; UsageError saying what is wrong.

    Directories contribute their regular files under sorted relative POSIX paths. A
    symlink to a file inside the tree is stored as that file's content; a symlink that
    leads outside, a symlinked directory, or a special file is refused.
    """
    root = Path(os.path.abspath(path))
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read it: {err.strerror or err}") from None
    if stat.S_ISREG(st.st_mode):
        return Source(root, False, (SourceFile(root.name, root, st.st_size, stat.S_IMODE(st.st_mode)),))
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is not a regular file or a directory; peerstore stores files")
    files = _walk(root)
    if not files:
        raise UsageError(f"{path} holds no files: nothing to store")
    return Source(root, True, tuple(sorted(files, key=lambda f: f.path)))


def _walk(root: Path) -> list[SourceFile]:
    real_root = root.resolve()
    out: list[SourceFile] = []

    def refuse(rel: str, why: str) -> UsageError:
        return UsageError(f"{root / rel}: {why}; peerstore stores regular files only "
                          "(copy the file in, or move it out of the directory)")

    def on_error(err: OSError) -> None:
        raise UsageError(f"cannot read {err.filename}: {err.strerror or err}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                rel = (base / name).relative_to(root).as_posix()
                raise refuse(rel, "is a symlink to a directory")
        for name in filenames:
            local = base / name
            rel = local.relative_to(root).as_posix()
            try:
                lst = os.lstat(local)
                if stat.S_ISLNK(lst.st_mode):
                    target = local.resolve()
                    if not target.is_relative_to(real_root):
                        raise refuse(rel, f"is a symlink to {target}, outside {root}")
                st = os.stat(local)
            except FileNotFoundError:
                raise refuse(rel, "vanished, or is a broken symlink") from None
            except OSError as err:
                raise UsageError(f"cannot read {local}: {err.strerror or err}") from None
            if not stat.S_ISREG(st.st_mode):
                raise refuse(rel, "is not a regular file")
            out.append(SourceFile(rel, local, st.st_size, stat.S_IMODE(st.st_mode)))
            if len(out) > MAX_FILES:
                raise UsageError(f"{root} holds more than {MAX_FILES} files, the limit for one checkpoint")
    return out


def _read_chunk(f: Any, buffer: bytearray, want: int) -> tuple[memoryview, bytes]:
    """Read exactly ``want`` bytes (fewer only at EOF) and hash them; runs in a thread."""
    view = memoryview(buffer)[:want]
    got = 0
    while got < want:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got], blake3.blake3(view[:got]).digest()


# -- get: writing what arrives


class TargetExists(PeerstoreError):
    """The output path exists and --force was not given."""


def check_output(out: Path, force: bool, into_dir: bool = False) -> None:
    """Refuse, before contacting any node, an output that exists and is not a directory.

    (An existing directory may be fine: a single-file checkpoint is written into it, a
    directory checkpoint may replace it if it is empty; :class:`CheckpointWriter` decides
    once the manifest says which kind it is.)
    """
    if not os.path.lexists(out) or out.is_dir():
        return
    if into_dir:
        raise TargetExists(f"{out} is a file, not a directory to write into")
    if not force:
        raise TargetExists(f"{out} already exists; pass --force to replace it, or --out another path")


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(os.scandir(path))
    except OSError:
        return False


def output_target(manifest: Manifest, out: Path, force: bool, into_dir: bool = False) -> Path:
    """Where the checkpoint goes: ``out`` itself, or ``out/<file name>`` for a single file
    when ``out`` is an existing directory (or ``into_dir``: the user wrote ``out/``).
    TargetExists unless the target is free, an empty directory for a directory
    checkpoint, or ``force``."""
    if manifest.is_dir:
        target = out
    elif into_dir or out.is_dir():
        target = out / PurePosixPath(manifest.files[0].path).name
    else:
        target = out
    if not force and os.path.lexists(target) and not (manifest.is_dir and _empty_dir(target)):
        kind = "directory" if target.is_dir() else "file"
        raise TargetExists(f"{target} already exists (a {kind}); pass --force to replace it, or --out another path")
    return target


def _stripe_layout(manifest: Manifest) -> list[tuple[int, int, int]]:
    """(file index, offset, length) of every stripe, in the order the node sends them."""
    out = []
    for index, entry in enumerate(manifest.files):
        offset = 0
        for stripe in entry.stripes:
            length = sum(stripe.data_lengths)
            out.append((index, offset, length))
            offset += length
    return out


class CheckpointWriter:
    """Writes one checkpoint's stripes to a temp name and installs it only when whole.

    Call :meth:`open`, then for every stripe :meth:`begin_stripe`, :meth:`write` (any
    number of times) and :meth:`end_stripe`, then :meth:`commit`. :meth:`abort` (safe to
    call any time, and after commit) removes whatever temp it made.
    """

    def __init__(self, manifest: Manifest, out: Path, force: bool = False, into_dir: bool = False):
        paths = [f.path for f in manifest.files]
        validate_paths(paths)  # Manifest.decode did too; this module must not rely on it
        self.manifest = manifest
        self.force = force
        self.target = output_target(manifest, Path(os.path.abspath(out)), force, into_dir)
        self.parent = self.target.parent
        self.temp = self.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}"
        self._layout = _stripe_layout(manifest)
        self._next_stripe = 0
        self._stripe_left = 0
        self._file = -1  # index of the file being written
        self._fd: int | None = None
        self._hasher = blake3.blake3()
        self._written = 0
        self._created = False
        self._committed = False
        self.bytes_written = 0

    @property
    def total_size(self) -> int:
        return self.manifest.total_size()

    def _file_path(self, index: int) -> Path:
        if not self.manifest.is_dir:
            return self.temp
        path = self.temp.joinpath(*PurePosixPath(self.manifest.files[index].path).parts)
        if not path.resolve().is_relative_to(self.temp.resolve()) or path == self.temp:
            raise FormatError(f"manifest path {self.manifest.files[index].path!r} leads outside the output directory")
        return path

    def open(self) -> None:
        """Create the parent directory if needed, check free space, create the temp."""
        for index in range(len(self.manifest.files)):
            self._file_path(index)  # every path checked before anything is created
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.parent).free
        except OSError as err:
            raise PeerstoreError(f"cannot write to {self.parent}: {err.strerror or err}") from None
        if free < self.total_size:
            raise DiskFullError(
                f"{self.parent} has {free} bytes free but the checkpoint needs {self.total_size}; "
                "free space or choose another --out"
            )
        try:
            if self.manifest.is_dir:
                os.mkdir(self.temp)  # default mode (umask applies), like any new directory
                self._created = True
            else:
                self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                self._created = True
                self._file = 0
        except OSError as err:
            raise PeerstoreError(f"cannot create a temp file in {self.parent}: {err.strerror or err}") from None

    def begin_stripe(self, file_index: int, offset: int, length: int) -> None:
        """The node announced the next stripe; it must be exactly the one due next."""
        if self._stripe_left:
            raise CodecError("the node started a stripe before finishing the previous one")
        if self._next_stripe >= len(self._layout):
            raise CodecError(f"the node sent more stripes than the manifest has ({len(self._layout)})")
        expected = self._layout[self._next_stripe]
        if (file_index, offset, length) != expected:
            raise CodecError(
                f"the node sent stripe (file {file_index}, offset {offset}, {length} bytes) where the manifest "
                f"puts (file {expected[0]}, offset {expected[1]}, {expected[2]} bytes)"
            )
        self._next_stripe += 1
        while self._file < file_index:
            self._finish_file()
            self._open_file(self._file + 1)
        self._stripe_left = length

    def write(self, data: memoryview | bytes) -> None:
        """Stripe bytes, in order; hashed on the way to disk."""
        if len(data) > self._stripe_left:
            raise CodecError("the node sent more stripe bytes than it announced")
        assert self._fd is not None
        self._hasher.update(data)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left on the disk of {self.parent}; nothing was replaced") from None
            raise PeerstoreError(f"cannot write {self.temp}: {err.strerror or err}") from None
        self._stripe_left -= len(data)
        self._written += len(data)
        self.bytes_written += len(data)

    def end_stripe(self) -> None:
        if self._stripe_left:
            raise CodecError(f"a stripe ended {self._stripe_left} bytes short")

    def commit(self) -> Path:
        """Verify every file, make it durable, move the result into place; returns it."""
        if self._next_stripe != len(self._layout) or self._stripe_left:
            raise PeerstoreError(
                f"the node reported the get done after {self._next_stripe} of {len(self._layout)} stripes; "
                "nothing was written, retry"
            )
        while True:  # the files after the last stripe are empty ones: create them too
            self._finish_file()
            if self._file + 1 >= len(self.manifest.files):
                break
            self._open_file(self._file + 1)
        if self.manifest.is_dir:
            for dirpath, _, _ in os.walk(self.temp, topdown=False):
                fsync_dir(dirpath)
        self._install()
        self._committed = True
        fsync_dir(self.parent)
        return self.target

    def abort(self) -> None:
        """Remove the temp (file or tree); never touches the target."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._committed or not self._created:
            return
        try:
            if self.manifest.is_dir:
                shutil.rmtree(self.temp, ignore_errors=True)
            else:
                os.unlink(self.temp)
        except FileNotFoundError:
            pass
        self._created = False

    # -- internals

    def _open_file(self, index: int) -> None:
        path = self._file_path(index)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            raise PeerstoreError(f"cannot create {path}: {err.strerror or err}") from None
        self._file = index

    def _finish_file(self) -> None:
        """Check the file just written against the manifest, set its mode, fsync, close."""
        if self._file < 0:
            return
        entry = self.manifest.files[self._file]
        assert self._fd is not None
        if self._written != entry.size:
            raise PeerstoreError(f"{entry.path}: received {self._written} of {entry.size} bytes; nothing was written")
        if self._hasher.digest() != entry.blake3:
            raise PeerstoreError(
                f"{entry.path}: the bytes received do not match the checkpoint's BLAKE3 hash; "
                "nothing was written (a node may hold corrupt data: run 'peerstore status')"
            )
        os.fchmod(self._fd, entry.mode & 0o777)  # never restore setuid/setgid bits from a manifest
        fsync_file(self._fd)
        os.close(self._fd)
        self._fd = None
        self._hasher = blake3.blake3()
        self._written = 0

    def _install(self) -> None:
        target, temp = self.target, self.temp
        if not os.path.lexists(target):
            os.rename(temp, target)
            return
        if not self.force and not (self.manifest.is_dir and _empty_dir(target)):
            raise TargetExists(f"{target} appeared while the get ran; pass --force to replace it")
        target_is_dir = target.is_dir() and not target.is_symlink()
        if not self.manifest.is_dir and not target_is_dir:
            os.replace(temp, target)  # atomic: a file (or link) gives way to a file
            return
        # A directory gives way (or is replaced by a directory): move it aside first, so
        # a failure between the two renames can put it back.
        aside = self.parent / f"{TEMP_PREFIX}old-{secrets.token_hex(6)}"
        os.rename(target, aside)
        try:
            os.rename(temp, target)
        except BaseException:
            os.rename(aside, target)
            raise
        if os.path.isdir(aside) and not os.path.islink(aside):
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.unlink(aside)


# -- the connection


class _Wire:
    """One authenticated connection: frames out, events in, every wait bounded."""

    def __init__(self, stream: trio.SocketStream, conn: Connection, where: str, idle: float):
        self.stream = stream
        self.conn = conn
        self.where = where
        self.idle = idle
        self.last_activity = trio.current_time()
        self._eof = False
        self.used = False

    async def send(self, header: dict, payload: bytes | memoryview | None = None,
                   payload_hash: bytes | None = None) -> None:
        """Send a frame; the payload (if any) goes raw after it, hashed unless given."""
        n = len(payload) if payload is not None else 0
        if n and payload_hash is None:
            payload_hash = blake3.blake3(payload).digest()
        frame = self.conn.send_message(header, n, payload_hash if n else None)
        if n and n <= 64 * 1024:
            await self._send_all(frame + bytes(payload))  # one segment for small frames
            return
        await self._send_all(frame)
        if n:
            await self._send_all(payload)

    async def _send_all(self, data: bytes | memoryview) -> None:
        try:
            with trio.fail_after(self.idle):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise self._silent() from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            raise _ConnectionLost(f"the connection to {self.where} dropped: {_why(err)}") from None
        self.last_activity = trio.current_time()

    async def next_event(self) -> Any:
        """The next wire event; NodeUnreachable when the node went away or silent."""
        while True:
            try:
                event = self.conn.next_event()
            except AuthError:
                await self._flush_farewell()  # a REJECT, so the peer hears why
                raise
            except CodecError as err:
                await self._flush_farewell()
                if self._eof:
                    raise _ConnectionLost(f"the connection to {self.where} dropped: {err}") from None
                raise CodecError(f"{self.where} broke the protocol: {err}") from None
            out = self.conn.data_to_send()  # handshake replies
            if out:
                await self._send_all(out)
            if event is not None:
                return event
            self.conn.receive_data(await self._receive())

    async def read_payload(self, message: Message, sink: Callable[[memoryview], None]) -> None:
        """Hand the payload after ``message`` to ``sink`` and check it against its "h"."""
        hasher = blake3.blake3()
        while True:
            event = await self.next_event()
            if isinstance(event, PayloadChunk):
                hasher.update(event.data)
                sink(event.data)
            elif isinstance(event, PayloadEnd):
                break
        if hasher.digest() != message.payload_hash:
            raise CodecError(
                f"the {message.header.get('t')} payload from {self.where} does not match its hash: "
                "corrupted in transit; retry"
            )

    async def _receive(self) -> bytes:
        while True:
            with trio.move_on_at(self.last_activity + self.idle):
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                    raise _ConnectionLost(f"the connection to {self.where} dropped: {_why(err)}") from None
                self.last_activity = trio.current_time()
                if not data:
                    self._eof = True
                return data
            if trio.current_time() >= self.last_activity + self.idle:
                raise self._silent()

    async def _flush_farewell(self) -> None:
        out = self.conn.data_to_send()
        if out:
            with trio.move_on_after(1):
                try:
                    await self.stream.send_all(out)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    def _silent(self) -> NodeUnreachable:
        return NodeUnreachable(
            f"{self.where} went silent: nothing moved for {self.idle:g} s (the node may be frozen or "
            "overloaded; check it with 'peerstore status', or raise --timeout if it is just slow)"
        )

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


def _leaves(err: BaseException) -> list[BaseException]:
    """The OS errors behind trio's "all attempts to connect failed" (or the error itself)."""
    cause = err.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return [leaf for sub in cause.exceptions for leaf in _leaves(sub)] or [err]
    if isinstance(cause, OSError):
        return _leaves(cause)
    return [err]


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


async def open_wire(host: str, port: int, cluster_key: bytes, timeout: float,
                    config_source: str | None = None) -> _Wire:
    """TCP connect and handshake, both within min(timeout, MAX_CONNECT_TIMEOUT)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    limit = min(timeout, MAX_CONNECT_TIMEOUT)
    try:
        with trio.fail_after(limit):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise NodeUnreachable(f"no answer from {where} within {limit:g} s: is the address right, "
                              "and is the node up and not behind a firewall?") from None
    except OSError as err:
        causes = _leaves(err)
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            raise NodeUnreachable(f"no peerstore node at {where} — {LAUNCH_HINT}") from None
        raise NodeUnreachable(f"cannot reach a peerstore node at {where}: {_why(causes[-1])}") from None
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Connection(role="client", cluster_key=cluster_key, node_id="c" + secrets.token_hex(8)[:15],
                      nonce=secrets.token_bytes(32))
    wire = _Wire(stream, conn, where, timeout)
    try:
        with trio.fail_after(limit):
            await wire._send_all(conn.initial_bytes())
            while True:
                event = await wire.next_event()
                if isinstance(event, HandshakeComplete):
                    return wire
                if isinstance(event, ConnectionClosed):
                    raise _ConnectionLost(f"{where} closed the connection during the handshake")
    except trio.TooSlowError:
        await wire.aclose()
        raise NodeUnreachable(f"{where} accepted the connection but did not complete the handshake within "
                              f"{limit:g} s: is it a peerstore node, and is it overloaded?") from None
    except AuthError:
        await wire.aclose()
        raise AuthError(f"the node at {where} refused our cluster key: check cluster_key in "
                        f"{config_source or 'your config'} (it must match the nodes' key)") from None
    except BaseException:
        await wire.aclose()
        raise


# -- the client


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


class NodeClient:
    """A client of one node. Each operation opens its own connection (or takes the one
    :meth:`connect` opened) and closes it when done."""

    def __init__(self, host: str, port: int, cluster_key: bytes, timeout: float = DEFAULT_TIMEOUT,
                 *, config_source: str | None = None):
        self.host, self.port = host, port
        self.cluster_key = cluster_key
        self.timeout = timeout
        self.config_source = config_source
        self._wire: _Wire | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

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

    async def _take_wire(self) -> _Wire:
        await self.connect()
        wire, self._wire = self._wire, None
        assert wire is not None
        return wire

    # -- put

    async def put(self, path: Path, name: str, progress: Progress | None = None, *, stream: bool = False) -> dict:
        """Store the file or directory at ``path`` as ``name``; the node's put_done fields,
        plus "streamed" and "seconds". Sends ``local_root`` to a loopback node unless
        ``stream``; otherwise streams the bytes."""
        validate_name(name)
        source = scan_source(Path(path))
        validate_paths([f.path for f in source.files])
        local = not stream and is_loopback(self.host)
        request = put_request(name, [(f.path, f.size, f.mode) for f in source.files], source.is_dir,
                              str(source.root) if local else None)
        try:
            encode_header(request)
        except ValueError as err:
            raise UsageError(f"{path}: {len(source.files)} files do not fit in one put request ({err}); "
                             "store its subdirectories as separate checkpoints") from None
        progress = progress or Progress(enabled=False)
        progress.start(source.total_size, f"put {name}")
        wire = await self._take_wire()
        started = trio.current_time()
        try:
            await wire.send(request)
            header = await self._put_conversation(wire, source, name, progress, send_data=not local)
        finally:
            progress.finish()
            await wire.aclose()
        return {**header, "streamed": not local, "seconds": trio.current_time() - started}

    async def _put_conversation(self, wire: _Wire, source: Source, name: str, progress: Progress,
                                send_data: bool) -> dict:
        sent_all = not send_data
        outcome: dict[str, Any] = {}

        async def sender(cancel: trio.CancelScope) -> None:
            nonlocal sent_all
            try:
                await self._stream_files(wire, source)
                sent_all = True
            except _ConnectionLost:
                pass  # the receiver learns why (a "failed" frame or the close) and reports it
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

        err = outcome.get("error")
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

    async def _put_replies(self, wire: _Wire, progress: Progress) -> dict:
        while True:
            event = await wire.next_event()
            if isinstance(event, ConnectionClosed):
                raise _ConnectionLost(f"{wire.where} closed the connection")
            if not isinstance(event, Message):
                continue
            header = event.header
            kind = header.get("t")
            if event.payload_len:
                await wire.read_payload(event, lambda view: None)
            if kind == "progress":
                done = header.get("done")
                if type(done) is int:
                    progress.update(done)
            elif kind == "put_done":
                return _strip(header)
            elif kind == "failed":
                reason = str(header.get("reason", "no reason given"))
                if header.get("unknown") is True:
                    raise OutcomeUnknownError(f"{reason}; run 'peerstore ls' to check whether it committed")
                raise PeerstoreError(f"the put failed: {reason}")
            else:
                raise CodecError(f"{wire.where} answered a put with an unexpected {kind!r} frame")

    async def _stream_files(self, wire: _Wire, source: Source) -> None:
        buffer = bytearray(min(DATA_CHUNK, max((f.size for f in source.files), default=0)) or 1)
        for index, f in enumerate(source.files):
            try:
                handle = open(f.local, "rb")  # noqa: SIM115 - closed below, across awaits
            except OSError as err:
                raise PeerstoreError(f"cannot read {f.local}: {err.strerror or err}") from None
            with handle:
                offset = 0
                while offset < f.size:
                    want = min(len(buffer), f.size - offset)
                    try:
                        view, digest = await trio.to_thread.run_sync(_read_chunk, handle, buffer, want)
                    except OSError as err:
                        raise PeerstoreError(f"cannot read {f.local}: {err.strerror or err}") from None
                    if len(view) < want:
                        break
                    await wire.send({"t": "data", "file": index, "offset": offset}, view, digest)
                    offset += want
                if offset != f.size or handle.read(1):
                    raise PeerstoreError(
                        f"{f.local} changed size while it was being stored (expected {f.size} bytes); "
                        "store it again once it is completely written"
                    )

    # -- get

    async def get(self, spec: str, out: Path, force: bool = False, progress: Progress | None = None,
                  *, into_dir: bool = False) -> dict:
        """Fetch ``spec`` into ``out`` (see :func:`output_target`); the node's get_done
        fields plus "path", "files", "bytes" and "seconds"."""
        name, selector = parse_spec(spec)
        out = Path(out)
        check_output(out, force, into_dir)
        progress = progress or Progress(enabled=False)
        wire = await self._take_wire()
        started = trio.current_time()
        writer: CheckpointWriter | None = None
        manifest_bytes: bytearray | None = None
        try:
            await wire.send({"t": "get", "spec": spec})
            while True:
                event = await wire.next_event()
                if isinstance(event, ConnectionClosed):
                    raise _ConnectionLost(f"{wire.where} closed the connection before the get finished")
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
                    writer = CheckpointWriter(manifest, out, force, into_dir)
                    writer.open()
                    progress.start(manifest.total_size(), f"get {spec}")
                elif kind == "stripe":
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
                    target = writer.commit()
                    return {**_strip(header), "path": str(target), "files": len(writer.manifest.files),
                            "bytes": writer.total_size, "seconds": trio.current_time() - started}
                elif kind == "failed":
                    reason = str(header.get("reason", "no reason given"))
                    if writer is None and await self._missing(spec, header):
                        raise NotFoundError(reason)
                    raise PeerstoreError(f"the get failed: {reason}")
                elif kind == "progress":
                    if event.payload_len:
                        await wire.read_payload(event, lambda view: None)
                else:
                    raise CodecError(f"{wire.where} answered a get with an unexpected {kind!r} frame")
        finally:
            progress.finish()
            if writer is not None:
                writer.abort()
            await wire.aclose()

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

    async def _ask(self, request: dict, answers: set[str]) -> dict:
        wire = await self._take_wire()
        try:
            await wire.send(request)
            while True:
                event = await wire.next_event()
                if isinstance(event, ConnectionClosed):
                    raise _ConnectionLost(f"{wire.where} closed the connection without answering")
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
    if not isinstance(manifest_id, bytes) or blake3.blake3(data).digest() != manifest_id:
        raise CodecError("the manifest the node sent does not match its catalog entry's manifest id; "
                         "nothing was written (a node may hold a corrupt manifest)")
    manifest = Manifest.decode(data)
    if manifest.name != name or entry.get("name") not in (None, name):
        raise CodecError(f"asked for {name} but the node sent the manifest of {manifest.name}")
    if selector is not None:
        counter, prefix = parse_version_selector(selector)
        if manifest.version.counter != counter or not manifest.version.node.startswith(prefix):
            raise CodecError(f"asked for {name}@{selector} but the node sent version {manifest.version}")
    return manifest


async def connect(host: str, port: int, cluster_key: bytes, timeout: float = DEFAULT_TIMEOUT,
                  *, config_source: str | None = None) -> NodeClient:
    """A NodeClient with its first connection open and authenticated."""
    return await NodeClient(host, port, cluster_key, timeout, config_source=config_source).connect()
