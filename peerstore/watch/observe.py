"""What the shell observed of a checkpoint, and how many bytes of each file it must read.

Plain data, no I/O. The shell fills a `CheckpointObservation` when the queue asks it to
(`pending.Observe`); the detectors (`detect.py`) and the queue judge only these values.

How the shell observes one file, in this order (the order is what makes it safe):

1. open it (do not follow symlinks; regular files only), ``fstat`` it to learn its size;
2. read ``head_wanted(path, size)`` bytes from the start; if the answer of
   ``head_wanted(path, size, head)`` is larger than ``len(head)``, read that many instead
   (at most one more round: the second answer is final);
3. read the last ``tail_wanted(path, size)`` bytes;
4. ``fstat`` again and report *that* stat (size, ``st_mtime_ns``, ``st_ino``).

Because the reported stat is taken after the bytes were read, two observations with equal
stats at least ``settle_seconds`` apart prove the bytes of the later one were not being
changed while they were read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fnmatch import fnmatchcase
from posixpath import basename

from peerstore.model.names import MAX_FILES

# safetensors refuses headers over 100 MB (its own MAX_HEADER_SIZE); so do we.
SAFETENSORS_MAX_HEADER = 100_000_000
# One read usually covers a whole safetensors header (a 7B shard's is ~30 KiB).
HEAD_PROBE = 64 * 1024
TORCH_MAGIC_BYTES = 4  # b"PK\x03\x04": a zip archive (torch.save's format since 1.6)
# End of a zip: EOCD (22 bytes + a comment of up to 65,535), the zip64 locator (20) and a
# zip64 EOCD record without extensible data (56).
ZIP_TAIL = 22 + 65_535 + 20 + 56
# Small files the detectors parse whole. Bigger ones are reported "too large to check".
SMALL_FILE_LIMITS = (
    ("trainer_state.json", 16 * 1024 * 1024),
    ("*.safetensors.index.json", 16 * 1024 * 1024),
    ("latest", 4096),
    ("latest_universal", 4096),
)
TORCH_ZIP_PATTERNS = ("*.pt", "*.pth", "*.bin", "*.ckpt")


def small_file_limit(path: str) -> int | None:
    """The size up to which the detectors read ``path`` whole, or None if they never do."""
    name = basename(path)
    for pattern, limit in SMALL_FILE_LIMITS:
        if fnmatchcase(name, pattern):
            return limit
    return None


def is_torch_archive_name(path: str) -> bool:
    """True for the extensions torch checkpoints use (.pt .pth .bin .ckpt)."""
    name = basename(path)
    return any(fnmatchcase(name, pattern) for pattern in TORCH_ZIP_PATTERNS)


def head_wanted(path: str, size: int, head: bytes = b"") -> int:
    """How many bytes from the start of ``path`` (``size`` bytes long) the detectors need.

    Call once with no ``head``; if the answer for the bytes you read is larger, read again.
    Never more than ``size``; 0 means "read nothing".
    """
    if path.endswith(".safetensors"):
        if len(head) < 8:
            return min(size, HEAD_PROBE)
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > SAFETENSORS_MAX_HEADER:
            return len(head)  # refused by the detector anyway
        return min(size, max(len(head), 8 + header_len))
    limit = small_file_limit(path)
    if limit is not None:
        return size if size <= limit else 0
    if is_torch_archive_name(path):
        return min(size, TORCH_MAGIC_BYTES)
    return 0


def tail_wanted(path: str, size: int) -> int:
    """How many bytes from the end of ``path`` the detectors need (0: none)."""
    return min(size, ZIP_TAIL) if is_torch_archive_name(path) else 0


@dataclass(frozen=True, order=True)
class FileStat:
    """The identity of one file's content as far as stat can tell.

    ``path`` is relative to the watch root, POSIX, e.g. ``llama/checkpoint-500/config.json``.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class FileObservation:
    """One regular file as the shell saw it (see the module docstring for the read order).

    ``head``/``tail`` hold the bytes ``head_wanted``/``tail_wanted`` asked for (b"" if none).
    ``open_for_write``: True if some process holds it open for writing, False if none does,
    None if the platform cannot tell (e.g. macOS, or the shell does not look).
    ``closed_after_write``: True if a close-after-write event (Linux inotify IN_CLOSE_WRITE)
    came after the last modification, False if the file was modified and no such close has
    come yet, None if unknown (macOS FSEvents has no close events; files that were already
    there when the watcher started).
    """

    path: str
    size: int
    mtime_ns: int
    inode: int
    head: bytes = b""
    tail: bytes = b""
    open_for_write: bool | None = None
    closed_after_write: bool | None = None

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.head) > self.size or len(self.tail) > self.size:
            raise ValueError(
                f"observation of {self.path!r}: size {self.size}, head {len(self.head)} and tail "
                f"{len(self.tail)} bytes do not fit; head and tail are at most the file's size"
            )
        if len(self.head) > 8 + SAFETENSORS_MAX_HEADER or len(self.tail) > ZIP_TAIL:
            raise ValueError(f"observation of {self.path!r}: head or tail longer than head_wanted/tail_wanted allow")

    @property
    def stat(self) -> FileStat:
        return FileStat(self.path, self.size, self.mtime_ns, self.inode)

    @property
    def whole(self) -> bool:
        """True when ``head`` is the file's entire content."""
        return len(self.head) == self.size


@dataclass(frozen=True)
class CheckpointObservation:
    """One checkpoint unit (see ``detect.unit_for``) as the shell saw it at ``observed_at``.

    ``root``: the watch root, as the shell names it to the queue (an opaque string).
    ``unit``: the unit's path relative to the root.
    ``is_dir``: whether the unit is a directory (else it is one regular file).
    ``files``: every regular file under the unit (or the unit file itself), at most
    ``MAX_FILES``; the shell stops listing after MAX_FILES + 1 and sets ``truncated``.
    The detector decides which of them belong to the unit (``detect.members``).
    ``context``: the files among ``detect.context_files(unit)`` that exist (e.g. DeepSpeed's
    ``latest`` pointer beside a tag directory); they are read but never stored.
    ``observed_at``: the shell's monotonic clock when it started observing.
    """

    root: str
    unit: str
    is_dir: bool
    files: tuple[FileObservation, ...]
    observed_at: float
    context: tuple[FileObservation, ...] = ()
    truncated: bool = False

    def __post_init__(self) -> None:
        if len(self.files) > MAX_FILES:
            raise ValueError(
                f"observation of {self.unit!r} lists {len(self.files)} files; stop at {MAX_FILES} "
                "and set truncated=True"
            )
