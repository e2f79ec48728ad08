"""Content-addressed piece files on local disk, written durably and verified on read.

Layout under the store root::

    pieces/<first 2 hex>/<64 hex>   one file per piece, named by the BLAKE3 of its bytes
    tmp/                            in-flight writes; emptied on start (a crash leaves junk here)
    quarantine/                     pieces found corrupt, kept for inspection, never served

A piece becomes visible (``has`` is true) only after its bytes are fsynced, it is renamed
into place and its directory is fsynced, so "held" always means "durable". Disk errors
come out as DiskFullError or DiskIOError (path and errno named), never as a raw OSError.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import blake3

from peerstore.shell.durable import disk_error, fsync_dir, fsync_file
from peerstore.errors import CorruptPieceError, DiskFullError, PieceNotFoundError, StoreError

PIECE_ID_LEN = 32
FILE_MODE = 0o644
DIR_MODE = 0o755
_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20  # read size when re-hashing from disk: bounded memory for any piece size
_LOCK_STRIPES = 256  # one lock per prefix directory: same-piece races serialise, others don't
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def check_id(pid: bytes, what: str = "piece id") -> bytes:
    """Return ``pid`` as bytes if it is a 32-byte id, else raise StoreError."""
    if not isinstance(pid, (bytes, bytearray, memoryview)) or len(pid) != PIECE_ID_LEN:
        shown = len(pid) if isinstance(pid, (bytes, bytearray, memoryview)) else type(pid).__name__
        raise StoreError(f"a {what} must be {PIECE_ID_LEN} bytes (a BLAKE3 digest), got {shown}")
    return bytes(pid)


def is_id_name(name: str) -> bool:
    """True if ``name`` is 64 lowercase hex characters, the on-disk name of an id."""
    return len(name) == 2 * PIECE_ID_LEN and set(name) <= _HEX


def quarantine_file(src: Path, quarantine_dir: Path, label: str) -> Path:
    """Move a corrupt file aside under a unique name so it is never served again."""
    quarantine_dir.mkdir(mode=DIR_MODE, exist_ok=True)
    dest = quarantine_dir / f"{label}-{secrets.token_hex(4)}"
    os.replace(src, dest)
    return dest


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_dir_durably(path: Path) -> None:
    """Create ``path`` (mode 0o755 regardless of umask) and make its entry durable."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    try:
        os.chmod(path, DIR_MODE)
        fsync_dir(path.parent)
    except BaseException:
        os.rmdir(path)  # so the next attempt creates it again and retries the fsync
        raise


class PieceStore:
    """Content-addressed pieces under ``<root>/pieces/<first 2 hex>/<64 hex>``.

    Identical bytes are stored once. Safe to call from several threads at once; one
    process per root (the daemon's data-directory lock is what guarantees that).
    ``capacity_bytes`` caps the bytes this store may hold (None: only the real disk).
    """

    def __init__(self, root: Path, capacity_bytes: int | None = None):
        if capacity_bytes is not None and capacity_bytes < 0:
            raise StoreError(f"capacity_bytes must be >= 0 or None, got {capacity_bytes}")
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.pieces_dir = self.root / "pieces"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self._lock = threading.Lock()  # guards the four fields below
        self._sizes: dict[bytes, int] = {}
        self._used = 0
        self._reserved = 0
        self._piece_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        make_dir_durably(self.pieces_dir)
        make_dir_durably(self.tmp_dir)
        self._remove_stale_temps()
        self._scan()

    # -- startup -------------------------------------------------------------------

    def _remove_stale_temps(self) -> None:
        for entry in os.scandir(self.tmp_dir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                _unlink_quietly(Path(entry.path))

    def _scan(self) -> None:
        """Rebuild the inventory from the piece files; anything not named like a piece is ignored."""
        for prefix in os.scandir(self.pieces_dir):
            if not (prefix.is_dir(follow_symlinks=False) and len(prefix.name) == 2):
                continue
            for entry in os.scandir(prefix.path):
                name = entry.name
                if not (is_id_name(name) and name[:2] == prefix.name):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                size = entry.stat(follow_symlinks=False).st_size
                self._sizes[bytes.fromhex(name)] = size
                self._used += size

    # -- queries -------------------------------------------------------------------

    def _path(self, pid: bytes) -> Path:
        name = pid.hex()
        return self.pieces_dir / name[:2] / name

    def _piece_lock(self, pid: bytes) -> threading.Lock:
        return self._piece_locks[pid[0]]

    def has(self, pid: bytes) -> bool:
        """True if this node holds the piece durably."""
        pid = check_id(pid)
        with self._lock:
            return pid in self._sizes

    def size_of(self, pid: bytes) -> int:
        """The piece's length in bytes; PieceNotFoundError if not held."""
        pid = check_id(pid)
        with self._lock:
            size = self._sizes.get(pid)
        if size is None:
            raise PieceNotFoundError(f"piece {pid.hex()} is not held by this node")
        return size

    def path_of(self, pid: bytes) -> Path:
        """Where a held piece lives, for streaming it straight from disk."""
        self.size_of(pid)
        return self._path(bytes(pid))

    def inventory(self) -> frozenset[bytes]:
        """The ids of every piece held."""
        with self._lock:
            return frozenset(self._sizes)

    def stats(self) -> tuple[int, int]:
        """(number of pieces, total bytes) held."""
        with self._lock:
            return len(self._sizes), self._used

    def free_bytes(self) -> int:
        """Bytes that can still be written: the real disk's free space, within the cap."""
        disk_free = self._disk_free()
        if self.capacity_bytes is None:
            return disk_free
        with self._lock:
            return max(0, min(disk_free, self.capacity_bytes - self._used - self._reserved))

    def probe_writable(self) -> None:
        """Write a small file durably in tmp/ and remove it: is the disk writable (again)?
        DiskIOError (path, errno) or DiskFullError if not."""
        path = self.tmp_dir / f"probe-{secrets.token_hex(6)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                os.write(fd, b"peerstore write probe\n")
                fsync_file(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as exc:
            try:
                _unlink_quietly(path)
            except OSError:
                pass
            raise disk_error(exc, exc.filename or path, "probing") from exc

    # -- writing -------------------------------------------------------------------

    def write(self, pid: bytes, data) -> bool:
        """Store ``data`` under ``pid`` durably. False if already held (nothing written).

        The hash is checked before anything touches the disk (CorruptPieceError). A full
        disk or the capacity cap raises DiskFullError and leaves nothing behind.
        """
        pid = check_id(pid)
        view = memoryview(data).cast("B")
        if blake3.blake3(view).digest() != pid:
            raise CorruptPieceError(
                f"refusing to store piece {pid.hex()}: its bytes hash to "
                f"{blake3.blake3(view).hexdigest()}, not to its id"
            )
        if self.has(pid):
            return False
        writer = PieceWriter(self, pid, len(view), _verified=True)
        with writer:
            writer.write(view)
            return writer.commit()

    def writer(self, pid: bytes, size: int) -> PieceWriter:
        """Start a streaming write of a ``size``-byte piece (hash checked incrementally).

        Space is reserved now, so a full disk or cap is reported before any byte arrives.
        """
        pid = check_id(pid)
        if not isinstance(size, int) or size < 0:
            raise StoreError(f"a piece size must be a non-negative int, got {size!r}")
        disk_free = self._disk_free()
        if size > disk_free:
            raise DiskFullError(self._full_message(pid, size, disk_free))
        return PieceWriter(self, pid, size)

    def _disk_free(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError as exc:
            raise disk_error(exc, self.root, "measuring the free space of") from exc

    def _full_message(self, pid: bytes, needed: int, free: int) -> str:
        cap = "" if self.capacity_bytes is None else f" (capacity cap {self.capacity_bytes} bytes)"
        return (
            f"no space for piece {pid.hex()}: need {needed} bytes, {free} free in {self.root}{cap}; "
            "free disk space or raise the capacity, then retry"
        )

    def _reserve(self, pid: bytes, size: int) -> None:
        with self._lock:
            if self.capacity_bytes is not None:
                free = self.capacity_bytes - self._used - self._reserved
                if size > free:
                    raise DiskFullError(self._full_message(pid, size, max(0, free)))
            self._reserved += size

    def _release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def _install(self, tmp: Path, pid: bytes, size: int) -> bool:
        """Rename a complete, fsynced temp file into place; False if the piece is already held."""
        final = self._path(pid)
        with self._piece_lock(pid):
            if self.has(pid):
                _unlink_quietly(tmp)
                return False
            make_dir_durably(final.parent)
            os.replace(tmp, final)
            try:
                fsync_dir(final.parent)
            except BaseException:
                _unlink_quietly(final)  # not known durable, so not held
                raise
            with self._lock:
                self._sizes[pid] = size
                self._used += size
        return True

    # -- reading -------------------------------------------------------------------

    def read(self, pid: bytes) -> bytes:
        """The piece's bytes, verified against its id.

        A mismatch moves the file to quarantine and raises CorruptPieceError.
        """
        pid = check_id(pid)
        self.size_of(pid)
        try:
            with open(self._path(pid), "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                data = f.read()
        except FileNotFoundError:
            self._forget(pid)
            raise PieceNotFoundError(f"piece {pid.hex()} vanished from disk; it is no longer held") from None
        except OSError as exc:
            raise disk_error(exc, self._path(pid), "reading") from exc
        if blake3.blake3(data).digest() != pid:
            raise self._quarantine(pid, inode)
        return data

    def read_range(self, pid: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``, unverified (callers verify the whole piece)."""
        pid = check_id(pid)
        size = self.size_of(pid)
        if offset < 0 or length < 0 or offset + length > size:
            raise StoreError(
                f"range [{offset}, {offset + length}) is outside piece {pid.hex()} of {size} bytes"
            )
        parts = []
        try:
            fd = os.open(self._path(pid), os.O_RDONLY)
        except OSError as exc:
            raise disk_error(exc, self._path(pid), "opening") from exc
        try:
            while length:
                try:
                    chunk = os.pread(fd, length, offset)
                except OSError as exc:
                    raise disk_error(exc, self._path(pid), "reading") from exc
                if not chunk:
                    raise CorruptPieceError(
                        f"piece {pid.hex()} is shorter on disk than its recorded {size} bytes; "
                        "run verify on it"
                    )
                parts.append(chunk)
                offset += len(chunk)
                length -= len(chunk)
        finally:
            os.close(fd)
        return b"".join(parts)

    def verify(self, pid: bytes) -> bool:
        """Re-hash the piece from disk in chunks (scrub). False, and quarantined, if corrupt."""
        pid = check_id(pid)
        self.size_of(pid)
        hasher = blake3.blake3()
        try:
            with open(self._path(pid), "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            self._forget(pid)
            raise PieceNotFoundError(f"piece {pid.hex()} vanished from disk; it is no longer held") from None
        except OSError as exc:
            raise disk_error(exc, self._path(pid), "reading") from exc
        if hasher.digest() != pid:
            self._quarantine(pid, inode)
            return False
        return True

    # -- removal -------------------------------------------------------------------

    def delete(self, pid: bytes) -> bool:
        """Remove a piece; False if it was not held (see ``remove``)."""
        return self.remove(pid) is not None

    def remove(self, pid: bytes) -> int | None:
        """Remove a piece; the bytes freed, or None if it was not held.

        The file goes first: if unlinking fails (DiskIOError) the piece is still held.
        No directory fsync: a deletion undone by a crash merely brings the piece back.
        """
        pid = check_id(pid)
        with self._piece_lock(pid):
            with self._lock:
                size = self._sizes.get(pid)
            if size is None:
                return None
            try:
                _unlink_quietly(self._path(pid))
            except OSError as exc:
                raise disk_error(exc, self._path(pid), "deleting") from exc
            self._forget(pid)
        return size

    def sizes(self) -> dict[bytes, int]:
        """Every piece held and its length in bytes."""
        with self._lock:
            return dict(self._sizes)

    def _forget(self, pid: bytes) -> bool:
        with self._lock:
            size = self._sizes.pop(pid, None)
            if size is None:
                return False
            self._used -= size
            return True

    def _quarantine(self, pid: bytes, inode: int) -> CorruptPieceError:
        """Move a corrupt piece aside (if it is still the file we read) and return the error."""
        path = self._path(pid)
        where = "another reader already moved it aside"
        with self._piece_lock(pid):
            try:
                same_file = os.stat(path).st_ino == inode
            except FileNotFoundError:
                same_file = False
            if same_file:
                dest = quarantine_file(path, self.quarantine_dir, f"piece-{pid.hex()}")
                self._forget(pid)
                where = f"moved to {dest}"
        return CorruptPieceError(
            f"piece {pid.hex()} on disk does not match its id ({where}); "
            "it is no longer held, fetch it from another replica"
        )


class PieceWriter:
    """A streaming write of one piece: ``write`` chunks, then ``commit`` or ``abort``.

    Used from one thread at a time. As a context manager it aborts unless committed.
    """

    def __init__(self, store: PieceStore, pid: bytes, size: int, *, _verified: bool = False):
        self._store = store
        self.pid = pid
        self.size = size
        self._received = 0
        self._hasher = None if _verified else blake3.blake3()
        self._done = False
        store._reserve(pid, size)
        self._tmp = store.tmp_dir / f"{pid.hex()}.{secrets.token_hex(8)}"
        try:
            self._fd: int | None = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except BaseException as exc:
            store._release(size)
            if isinstance(exc, OSError) and exc.errno not in _DISK_FULL_ERRNOS:
                raise disk_error(exc, self._tmp, "creating") from exc
            if isinstance(exc, OSError):
                raise DiskFullError(store._full_message(pid, size, 0)) from exc
            raise

    def write(self, chunk) -> None:
        """Append a bytes-like chunk; refuses to go past the declared size."""
        self._check_open()
        view = memoryview(chunk).cast("B")
        if self._received + len(view) > self.size:
            raise StoreError(
                f"piece {self.pid.hex()} was declared as {self.size} bytes; "
                f"refusing {self._received + len(view) - self.size} bytes beyond that"
            )
        try:
            while view:
                written = os.write(self._fd, view)
                self._received += written
                if self._hasher is not None:
                    self._hasher.update(view[:written])
                view = view[written:]
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> bool:
        """Verify length and hash, make the piece durable. False if it was already held."""
        self._check_open()
        if self._received != self.size:
            self.abort()
            raise CorruptPieceError(
                f"piece {self.pid.hex()} is incomplete: got {self._received} of {self.size} bytes"
            )
        if self._hasher is not None and self._hasher.digest() != self.pid:
            self.abort()
            raise CorruptPieceError(
                f"received bytes for piece {self.pid.hex()} hash to {self._hasher.hexdigest()}; discarded"
            )
        try:
            os.fchmod(self._fd, FILE_MODE)  # the umask may have narrowed the mode given to open
            fsync_file(self._fd)
            os.close(self._fd)
            self._fd = None
            stored = self._store._install(self._tmp, self.pid, self.size)
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self.abort()
            raise
        self._finish()
        return stored

    def abort(self) -> None:
        """Discard what was written. Safe to call more than once; never raises an OS
        error (on a failing or read-only disk the temp file may stay: the next start
        sweeps tmp/)."""
        if self._done:
            return
        try:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
            _unlink_quietly(self._tmp)
        except OSError:
            pass
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._store._release(self.size)

    def _fail(self, exc: OSError) -> NoReturn:
        """Abort, and raise DiskFullError (a full disk) or DiskIOError (any other OS
        error, with the path and errno): never a raw OSError, so every caller can fail
        just this piece and go on."""
        self.abort()
        if exc.errno in _DISK_FULL_ERRNOS:
            try:
                free = shutil.disk_usage(self._store.root).free
            except OSError:
                free = 0
            raise DiskFullError(self._store._full_message(self.pid, self.size, free)) from exc
        raise disk_error(exc, exc.filename or self._tmp, "writing piece " + self.pid.hex()[:16] + " to") from exc

    def _check_open(self) -> None:
        if self._done:
            raise StoreError(f"the write of piece {self.pid.hex()} is already committed or aborted")

    def __enter__(self) -> PieceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()
