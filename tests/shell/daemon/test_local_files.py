"""A put the node reads from local files refuses a file that changed while it was read.

`LocalFiles` (the node reading ``local_root`` itself) opens each file once, checks it against
the request at open, and after the last read compares size, mtime, ctime and inode: a file
modified in place or appended to during the put makes ``finish_file`` report "changed during
put", so the put fails instead of storing torn bytes (issue 15, bug 4; the end-to-end
regression is in tests/processes/test_put_reads_safely.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from peerstore.errors import CHANGED_DURING_PUT
from peerstore.shell.daemon.sources import LocalFiles, SourceError

MiB = 1 << 20


def make(tmp_path: Path, size: int = 3 * MiB) -> Path:
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(size))
    return path


def read_all(files: LocalFiles, size: int, between=None) -> str | None:
    """Read the file in 1 MiB stripes (calling ``between`` after the first), then finish."""

    async def main():
        for offset in range(0, size, MiB):
            buffer = memoryview(bytearray(min(MiB, size - offset)))
            await files.read(0, offset, [buffer])
            if offset == 0 and between is not None:
                between()
        return await files.finish_file(0)

    return trio.run(main)


def later(action):
    def run():
        time.sleep(0.02)  # past the file system's timestamp granularity
        action()
    return run


def test_an_unchanged_file_reads_clean(tmp_path):
    path = make(tmp_path)
    st = path.stat()
    files = LocalFiles(tmp_path, ["a.bin"], single=False, sizes=[st.st_size], expect=[(st.st_mtime_ns, st.st_ino)])
    assert read_all(files, st.st_size) is None


def test_a_file_modified_in_place_while_it_is_read_fails_the_put(tmp_path):
    path = make(tmp_path)
    size = path.stat().st_size

    def modify():
        with open(path, "r+b") as f:
            f.seek(size - 4096)
            f.write(os.urandom(4096))

    problem = read_all(LocalFiles(tmp_path, ["a.bin"], single=False, sizes=[size]), size, later(modify))
    assert problem and CHANGED_DURING_PUT in problem and "a.bin" in problem


def test_a_file_appended_to_while_it_is_read_fails_the_put(tmp_path):
    path = make(tmp_path)
    size = path.stat().st_size

    def append():
        with open(path, "ab") as f:
            f.write(b"more")

    problem = read_all(LocalFiles(tmp_path, ["a.bin"], single=False, sizes=[size]), size, later(append))
    assert problem and CHANGED_DURING_PUT in problem and "size changed" in problem


def test_a_file_replaced_by_a_rename_while_it_is_read_fails_the_put(tmp_path):
    path = make(tmp_path)
    size = path.stat().st_size
    other = tmp_path / "b.bin"
    other.write_bytes(os.urandom(size))
    problem = read_all(LocalFiles(tmp_path, ["a.bin"], single=False, sizes=[size]), size,
                       lambda: os.replace(other, path))
    assert problem and CHANGED_DURING_PUT in problem  # (the old inode's ctime moves as it is unlinked)


@pytest.mark.parametrize("what", ["size", "stat"])
def test_a_file_that_changed_since_the_client_listed_it_is_refused_at_open(tmp_path, what):
    path = make(tmp_path)
    st = path.stat()
    sizes = [st.st_size + 1] if what == "size" else [st.st_size]
    expect = [(st.st_mtime_ns - 1, st.st_ino)] if what == "stat" else None
    files = LocalFiles(tmp_path, ["a.bin"], single=False, sizes=sizes, expect=expect)
    with pytest.raises(SourceError, match=CHANGED_DURING_PUT):
        read_all(files, st.st_size)


def test_an_empty_file_is_checked_too(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    st = path.stat()
    files = LocalFiles(path, ["empty"], single=True, sizes=[0], expect=[(st.st_mtime_ns + 5, st.st_ino)])
    problem = trio.run(files.finish_file, 0)
    assert problem and CHANGED_DURING_PUT in problem
