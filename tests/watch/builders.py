"""Real checkpoint bytes (safetensors, torch zip archives) and a fake shell for the watcher.

`FakeFS` models a watch root in memory: files with bytes, mtime and inode, plus the open /
closed-after-write flags a Linux shell would report. `observe` fills an observation the way
the real shell must (head_wanted / tail_wanted), so the tests drive the same protocol.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass

from peerstore.watch.observe import (
    CheckpointObservation,
    FileObservation,
    FileStat,
    head_wanted,
    tail_wanted,
)

# -- safetensors


def safetensors_bytes(
    tensors: list[tuple[str, str, list[int], int, int]] | None = None,
    data: bytes | None = None,
    metadata: dict | None = None,
    header_len: int | None = None,
    raw_header: bytes | None = None,
) -> bytes:
    """A safetensors file: ``tensors`` are (name, dtype, shape, begin, end). By default two
    F32 tensors tiling 24 bytes. ``header_len`` overrides the length prefix, ``raw_header``
    the JSON bytes (padded with spaces to a multiple of 8 like the real writer)."""
    if tensors is None:
        tensors = [("a", "F32", [2, 2], 0, 16), ("b", "F32", [2], 16, 24)]
    if data is None:
        end = max((t[4] for t in tensors), default=0)
        data = bytes((i * 7 + 1) % 256 for i in range(end))
    if raw_header is None:
        header = {name: {"dtype": dt, "shape": shape, "data_offsets": [b, e]} for name, dt, shape, b, e in tensors}
        if metadata is not None:
            header = {"__metadata__": metadata, **header}
        raw_header = json.dumps(header, separators=(",", ":")).encode()
        raw_header += b" " * (-len(raw_header) % 8)
    length = len(raw_header) if header_len is None else header_len
    return struct.pack("<Q", length) + raw_header + data


def big_safetensors(n_tensors: int) -> bytes:
    """A valid file whose header is larger than one HEAD_PROBE read."""
    tensors = [(f"layer.{i}.weight_with_a_long_name", "BF16", [2], 4 * i, 4 * i + 4) for i in range(n_tensors)]
    return safetensors_bytes(tensors)


# -- torch zip archives


def torch_zip_bytes(entries: int = 3, comment: bytes = b"", name_len: int = 10) -> bytes:
    """A zip archive laid out like torch.save's (stored, not compressed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(entries):
            z.writestr(f"archive/data/{i:0{name_len}d}", bytes(range(i % 200, i % 200 + 50)))
        z.comment = comment
    return buf.getvalue()


def _eocd_at(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06")


def to_zip64(data: bytes) -> bytes:
    """Rewrite a plain zip's end records as zip64 (a zip64 EOCD record, its locator and an
    EOCD whose fields say "see zip64"), as torch writes for archives over 4 GiB."""
    pos = _eocd_at(data)
    _, _, here, total, cd_size, cd_offset, _ = struct.unpack_from("<HHHHIIH", data, pos + 4)
    body = data[:pos]
    record_at = len(body)
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, here, total, cd_size, cd_offset)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, record_at, 1)
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + record + locator + eocd


def patch_eocd(data: bytes, **fields: int) -> bytes:
    """Change fields of the (plain) EOCD: entries_here, entries, cd_size, cd_offset, disk."""
    pos = _eocd_at(data)
    names = ["disk", "cd_disk", "entries_here", "entries", "cd_size", "cd_offset", "comment_len"]
    values = dict(zip(names, struct.unpack_from("<HHHHIIH", data, pos + 4), strict=True))
    values.update(fields)
    return data[: pos + 4] + struct.pack("<HHHHIIH", *(values[n] for n in names)) + data[pos + 22 :]


# -- observations


def observe_file(
    path: str,
    data: bytes,
    mtime_ns: int = 1_000,
    inode: int = 1,
    open_for_write: bool | None = None,
    closed_after_write: bool | None = None,
) -> FileObservation:
    """Observe ``data`` as the real shell must: head_wanted (two rounds), tail_wanted."""
    size = len(data)
    head = data[: head_wanted(path, size)]
    more = head_wanted(path, size, head)
    if more > len(head):
        head = data[:more]
        assert head_wanted(path, size, head) <= len(head), "the second answer of head_wanted is final"
    tail_n = tail_wanted(path, size)
    tail = data[size - tail_n :] if tail_n else b""
    return FileObservation(path, size, mtime_ns, inode, head, tail, open_for_write, closed_after_write)


def observe_dir(unit: str, files: dict[str, bytes], context: dict[str, bytes] | None = None, **flags) -> CheckpointObservation:
    """A directory unit from {path relative to the unit: bytes}."""
    obs = tuple(observe_file(f"{unit}/{p}", d, inode=i + 1, **flags) for i, (p, d) in enumerate(files.items()))
    ctx = tuple(observe_file(p, d, inode=1000 + i) for i, (p, d) in enumerate((context or {}).items()))
    return CheckpointObservation("/w/runs", unit, True, obs, 0.0, ctx)


def observe_single(unit: str, data: bytes, **flags) -> CheckpointObservation:
    return CheckpointObservation("/w/runs", unit, False, (observe_file(unit, data, **flags),), 0.0)


# -- a fake watch root


@dataclass
class FakeFile:
    data: bytes
    mtime_ns: int
    inode: int
    open_for_write: bool | None = None
    closed_after_write: bool | None = None


class FakeFS:
    """One watch root in memory, paths relative to it."""

    def __init__(self, root: str = "/w/runs"):
        self.root = root
        self.files: dict[str, FakeFile] = {}
        self._inode = 100

    def write(self, path: str, data: bytes, now: float, **flags) -> None:
        old = self.files.get(path)
        inode = old.inode if old else self._next_inode()
        self.files[path] = FakeFile(data, int(now * 1e9), inode, **flags)

    def replace(self, path: str, data: bytes, now: float) -> None:
        """Write a new file and rename it over ``path`` (a new inode)."""
        self.files[path] = FakeFile(data, int(now * 1e9), self._next_inode())

    def remove_tree(self, prefix: str) -> list[str]:
        gone = [p for p in self.files if p == prefix or p.startswith(prefix + "/")]
        for p in gone:
            del self.files[p]
        return gone

    def rename_tree(self, src: str, dst: str) -> list[tuple[str, str]]:
        moved = []
        for p in [p for p in self.files if p == src or p.startswith(src + "/")]:
            q = dst + p[len(src) :]
            self.files[q] = self.files.pop(p)
            moved.append((p, q))
        return moved

    def stat(self, path: str) -> FileStat | None:
        f = self.files.get(path)
        return None if f is None else FileStat(path, len(f.data), f.mtime_ns, f.inode)

    def observe(self, unit: str, context: tuple[str, ...], now: float) -> CheckpointObservation | None:
        inside = sorted(p for p in self.files if p.startswith(unit + "/"))
        if inside:
            paths, is_dir = inside, True
        elif unit in self.files:
            paths, is_dir = [unit], False
        else:
            return None
        files = tuple(self._observe(p) for p in paths)
        ctx = tuple(self._observe(p) for p in context if p in self.files)
        return CheckpointObservation(self.root, unit, is_dir, files, now, ctx)

    def _observe(self, path: str) -> FileObservation:
        f = self.files[path]
        return observe_file(path, f.data, f.mtime_ns, f.inode, f.open_for_write, f.closed_after_write)

    def _next_inode(self) -> int:
        self._inode += 1
        return self._inode
