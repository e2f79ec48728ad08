"""The watcher's file-system work, run in worker threads: observing a checkpoint unit,
scanning a watch root, hashing files, and (Linux) finding files open for writing.

Every function here is blocking and bounded; ``peerstore.shell.watcher`` calls them through
``trio.to_thread``. They report what they saw as the pure types of ``peerstore.watch`` and
decide nothing: the queue does.

Observing one file follows ``peerstore.watch.observe``'s order exactly: open (no symlinks,
regular files only), ``fstat``, read the head (a second round when the first asks for
more), read the tail, ``fstat`` again and report that second stat.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from peerstore.model.names import MAX_FILES
from peerstore.watch.observe import CheckpointObservation, FileObservation, FileStat, head_wanted, tail_wanted
from peerstore.watch.pending import Failed, Hashed, ReadChanged, Vanished, stat_mismatch

MAX_SCAN_ENTRIES = 2_000_000  # files a scan of one watch root lists before it stops
MAX_PROC_FDS = 500_000  # descriptors the open-for-writing probe looks at before giving up
HASH_CHUNK = 4 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def relative(root: str, path: str) -> str | None:
    """``path`` relative to the watch root ``root`` (both absolute), as POSIX; "" for the
    root itself; None if it is outside the root or not a plain path."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    rel = path[len(prefix):]
    if os.sep != "/":  # pragma: no cover - peerstore runs on POSIX systems
        rel = rel.replace(os.sep, "/")
    if not rel or any(s in ("", ".", "..") for s in rel.split("/")):
        return None
    return rel


# -- scanning


@dataclass(frozen=True)
class ScanResult:
    """Every regular file under a root (relative POSIX paths), and whether the scan stopped
    early (``truncated``) or could not read some directories (``unreadable``)."""

    files: tuple[str, ...]
    truncated: bool
    unreadable: tuple[str, ...]


def scan(root: Path, under: str = "", limit: int = MAX_SCAN_ENTRIES) -> ScanResult:
    """List the regular files under ``root / under`` without following symlinks."""
    start = root / under if under else root
    files: list[str] = []
    unreadable: list[str] = []
    truncated = False
    base = str(root)

    def on_error(err: OSError) -> None:
        if len(unreadable) < 100 and err.filename:
            unreadable.append(str(err.filename))

    for dirpath, dirnames, filenames in os.walk(start, onerror=on_error, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
            except OSError:
                continue
            rel = relative(base, full)
            if rel is None:
                continue
            files.append(rel)
            if len(files) >= limit:
                truncated = True
                return ScanResult(tuple(files), truncated, tuple(unreadable))
    return ScanResult(tuple(files), truncated, tuple(unreadable))


# -- who holds a file open for writing (Linux)


@dataclass(frozen=True)
class Writers:
    """Files (by (st_dev, st_ino)) some process holds open for writing. ``complete``: every
    process's descriptors could be read, so a file not listed is open for writing by none."""

    open: frozenset[tuple[int, int]]
    complete: bool


def proc_available() -> bool:
    """True where /proc lists each process's open files (Linux)."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self/fdinfo")


def find_writers(targets: Collection[tuple[int, int]], proc: str = "/proc") -> Writers:
    """Which of ``targets`` ((st_dev, st_ino) pairs) any process holds open for writing,
    from /proc/PID/fd and /proc/PID/fdinfo. Processes of other users are unreadable without
    privileges: then ``complete`` is False."""
    found: set[tuple[int, int]] = set()
    complete = True
    seen = 0
    wanted = set(targets)
    if not wanted:
        return Writers(frozenset(), True)
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return Writers(frozenset(), False)
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # the process exited
        except OSError:
            complete = False
            continue
        for fd in fds:
            seen += 1
            if seen > MAX_PROC_FDS:
                return Writers(frozenset(found), False)
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in wanted and key not in found and _writable(f"{proc}/{pid}/fdinfo/{fd}"):
                found.add(key)
    return Writers(frozenset(found), complete)


def _writable(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii", errors="replace") as f:
            for line in f.read(4096).splitlines():
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
                    return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False


# -- observing


def _read_at(fd: int, offset: int, length: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def observe_file(full: str, rel: str, unclosed: bool, writers: Writers | None) -> FileObservation | None:
    """One file, observed in the order the module docstring gives; None if it is gone or
    is not a regular file. A file that cannot be read is reported by its lstat with no
    bytes: the detectors then wait for its format, and a put of it fails with the reason."""
    try:
        fd = os.open(full, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symlink: never followed, never stored
            return None
        try:
            st = os.lstat(full)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return FileObservation(rel, st.st_size, st.st_mtime_ns, st.st_ino, open_for_write=None,
                               closed_after_write=False if unclosed else None)
    try:
        for _ in range(3):  # a file changing while it is read is read again, then reported bare
            first = os.fstat(fd)
            if not stat.S_ISREG(first.st_mode):
                return None
            size = first.st_size
            want = head_wanted(rel, size)
            head = _read_at(fd, 0, want) if want else b""
            more = head_wanted(rel, size, head) if want else 0
            if more > len(head):
                head = _read_at(fd, 0, more)
            tail_len = tail_wanted(rel, size)
            tail = _read_at(fd, size - tail_len, tail_len) if tail_len else b""
            second = os.fstat(fd)
            if _same(first, second) and len(head) <= size and len(tail) <= size:
                break
        else:
            head = tail = b""  # still changing: no bytes, only the (changed) stat
    finally:
        os.close(fd)
    open_for_write: bool | None = None
    if writers is not None:
        key = (second.st_dev, second.st_ino)
        open_for_write = True if key in writers.open else (False if writers.complete else None)
    # A modification with no close-after-write event since: not finished, whatever /proc
    # says (a writer in another PID namespace is invisible there). Lost events (an inotify
    # overflow) make the watcher forget these and scan again, so none waits forever.
    closed = False if unclosed else None
    return FileObservation(rel, second.st_size, second.st_mtime_ns, second.st_ino, head=head, tail=tail,
                           open_for_write=open_for_write, closed_after_write=closed)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ino, b.st_ctime_ns)


def observe_unit(root: Path, unit: str, context: tuple[str, ...], observed_at: float,
                 unclosed: Collection[str] = (), probe_writers: bool = False) -> CheckpointObservation | None:
    """The unit ``unit`` of watch root ``root`` (see ``CheckpointObservation``), or None if
    it no longer exists. ``unclosed``: root-relative paths modified with no close event
    since; ``probe_writers``: look in /proc for processes holding the files open to write."""
    full = root / unit
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        listing = scan(root, unit, limit=MAX_FILES + 1)
        paths, truncated, is_dir = listing.files, listing.truncated, True
    elif stat.S_ISREG(st.st_mode):
        paths, truncated, is_dir = (unit,), False, False
    else:
        return None  # a symlink or a special file: not a checkpoint
    context_paths = tuple(c for c in context if os.path.isfile(root / c) and not os.path.islink(root / c))
    writers = None
    if probe_writers:
        targets = set()
        for rel in (*paths, *context_paths):
            try:
                s = os.lstat(root / rel)
                targets.add((s.st_dev, s.st_ino))
            except OSError:
                pass
        writers = find_writers(targets)
    unclosed_set = set(unclosed)
    files = tuple(f for f in (observe_file(str(root / rel), rel, rel in unclosed_set, writers)
                              for rel in paths[:MAX_FILES]) if f is not None)
    context_files = tuple(f for f in (observe_file(str(root / rel), rel, rel in unclosed_set, writers)
                                      for rel in context_paths) if f is not None)
    if not files and not is_dir:
        return None
    return CheckpointObservation(root=str(root), unit=unit, is_dir=is_dir, files=files, observed_at=observed_at,
                                 context=context_files, truncated=truncated)


# -- reading whole files


def stat_of(fd: int, rel: str) -> FileStat:
    st = os.fstat(fd)
    return FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino)


def hash_files(root: Path, files: tuple[FileStat, ...],
               stop: Callable[[], bool] = lambda: False) -> Hashed | ReadChanged | Vanished | Failed:
    """Whole-file BLAKE3 of each file (the `HashFiles` effect), checking each file's stat
    before and after reading it against the one the queue judged finished."""
    content = []
    for expected in files:
        try:
            fd = os.open(root / expected.path, _OPEN_FLAGS)
        except FileNotFoundError:
            return Vanished()
        except OSError as err:
            return Failed("io_error", f"cannot read {root / expected.path}: {err.strerror or err}")
        try:
            change = stat_mismatch(expected, stat_of(fd, expected.path))
            if change:
                return ReadChanged(change)
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
                    hasher.update(chunk)
                    if stop():
                        return Failed("stopped", "the watcher is stopping")
            change = stat_mismatch(expected, stat_of(fd, expected.path))
            if change:
                return ReadChanged(change)
        except OSError as err:
            return Failed("io_error", f"cannot read {root / expected.path}: {err.strerror or err}")
        finally:
            os.close(fd)
        content.append((expected.path, hasher.hexdigest()))
    return Hashed(tuple(content))


def current_stats(root: Path, files: tuple[FileStat, ...]) -> Iterator[tuple[FileStat, os.stat_result | None]]:
    """Each file's lstat now (None if it is gone)."""
    for expected in files:
        try:
            yield expected, os.lstat(root / expected.path)
        except FileNotFoundError:
            yield expected, None
