"""What ``put`` stores: the file or directory tree given to it, scanned and checked.

:func:`scan_source` turns the path into the list of files to store (regular files only,
sorted, symlinks that escape refused); :func:`read_chunk` reads and hashes one chunk of a
file for streaming, in a worker thread.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from peerstore.errors import UsageError
from peerstore.model.names import MAX_FILES

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
