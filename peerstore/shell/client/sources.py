"""What ``put`` stores: the file or directory tree given to it, scanned and checked.

:func:`scan_source` turns the path into the list of files to store (regular files only,
sorted, symlinks that escape refused); :func:`explicit_source` takes a list made elsewhere
(the watcher's); :func:`read_chunk` reads and hashes one chunk of a file for streaming, in a
worker thread. Each file keeps the (size, mtime_ns, inode) it had when it was listed:
:func:`change_at_open` and :func:`change_after_read` refuse a file that changed since, or
while it was read, so a put never stores a file torn by a writer.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from peerstore.errors import CHANGED_DURING_PUT, SourceChangedError, UsageError
from peerstore.model.names import MAX_FILES

@dataclass(frozen=True)
class SourceFile:
    """One file to store: its path inside the checkpoint and where it is on disk, with
    the stat it had when it was listed (``mtime_ns``/``inode`` None: not known)."""

    path: str
    local: Path
    size: int
    mode: int
    mtime_ns: int | None = None
    inode: int | None = None


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
        return Source(root, False, (_source_file(root.name, root, st),))
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
            out.append(_source_file(rel, local, st))
            if len(out) > MAX_FILES:
                raise UsageError(f"{root} holds more than {MAX_FILES} files, the limit for one checkpoint")
    return out


def _source_file(path: str, local: Path, st: os.stat_result) -> SourceFile:
    return SourceFile(path, local, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ino)


def explicit_source(root: Path, is_dir: bool, files: list[SourceFile]) -> Source:
    """A put of exactly ``files`` (paths inside the checkpoint, sorted here), not a fresh
    listing of ``root``: the watcher leaves out junk and deeper checkpoints. ``root`` is the
    directory (or, for ``is_dir`` False, the one file) the node reads with ``local_root``."""
    if not files:
        raise UsageError(f"{root}: nothing to store")
    if not is_dir and len(files) != 1:
        raise UsageError(f"{root}: a single-file checkpoint holds exactly one file, got {len(files)}")
    if len(files) > MAX_FILES:
        raise UsageError(f"{root}: more than {MAX_FILES} files, the limit for one checkpoint")
    return Source(Path(os.path.abspath(root)), is_dir, tuple(sorted(files, key=lambda f: f.path)))


def change_at_open(f: SourceFile, st: os.stat_result) -> str | None:
    """Why the file opened for ``f`` is not the one that was listed, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{f.local} is no longer a regular file"
    seen = (f.size, f.mtime_ns, f.inode)
    now = (st.st_size, st.st_mtime_ns if f.mtime_ns is not None else None, st.st_ino if f.inode is not None else None)
    if now != seen:
        return (f"{f.local} {CHANGED_DURING_PUT}: (size, mtime_ns, inode) was {seen} when listed, {now} "
                "when opened; store it again once it is completely written")
    return None


def change_after_read(f: SourceFile, opened: os.stat_result, after: os.stat_result,
                      named: os.stat_result | None) -> str | None:
    """Why the file changed while it was read (the open file's stat ``opened`` then
    ``after``; ``named``, the path's stat now, None if it is gone), or None."""
    for what, attr in (("size", "st_size"), ("mtime_ns", "st_mtime_ns"), ("ctime_ns", "st_ctime_ns"),
                       ("inode", "st_ino")):
        a, b = getattr(opened, attr), getattr(after, attr)
        if a != b:
            return f"{f.local} {CHANGED_DURING_PUT} ({what} changed from {a} to {b}); store it again once it is completely written"
    if named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
        return f"{f.local} {CHANGED_DURING_PUT} (deleted or replaced while it was read); store it again once it is completely written"
    return None


def check_unchanged(problem: str | None) -> None:
    """Raise SourceChangedError for a problem found by change_at_open/change_after_read."""
    if problem:
        raise SourceChangedError(problem)


def read_chunk(f: Any, buffer: bytearray, want: int) -> tuple[memoryview, bytes]:
    """Read exactly ``want`` bytes (fewer only at EOF) and hash them; runs in a thread."""
    view = memoryview(buffer)[:want]
    got = 0
    while got < want:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got], blake3.blake3(view[:got]).digest()
