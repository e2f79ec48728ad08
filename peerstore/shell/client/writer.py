"""Writing a ``get``: the checkpoint goes beside its destination under a temp name.

:class:`CheckpointWriter` writes under a ``.peerstore-tmp-*`` name, checks every file
against the manifest's whole-file BLAKE3, and renames the result into place only when
every file verified, so an existing file is never destroyed by a failed get.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath

import blake3

from peerstore.shell.durable import fsync_dir, fsync_file
from peerstore.errors import CodecError, DiskFullError, FormatError, PeerstoreError, TargetExists
from peerstore.model.manifest import Manifest
from peerstore.model.names import validate_paths

TEMP_PREFIX = ".peerstore-tmp-"


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


def write_all(fd: int, data: memoryview | bytes, at: int | None, parent: Path, temp: Path) -> None:
    """Write all of ``data`` to ``fd`` (at offset ``at`` with pwrite, else at its position).
    A full disk is a DiskFullError, any other failure a PeerstoreError naming ``temp``."""
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view) if at is None else os.pwrite(fd, view, at)
            view = view[n:]
            at = None if at is None else at + n
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left on the disk of {parent}; nothing was replaced") from None
        raise PeerstoreError(f"cannot write {temp}: {err.strerror or err}") from None


def _stripe_layout(manifest: Manifest) -> list[tuple[int, int, int]]:
    """(file index, offset, length) of every stripe, in the order the node sends them."""
    return [(index, offset, sum(stripe.data_lengths)) for index, offset, stripe in manifest.stripe_offsets()]


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

    def _prepare(self) -> None:
        """Check every output path, create the parent directory, check the free space."""
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

    def open(self) -> None:
        """Create the parent directory if needed, check free space, create the temp."""
        self._prepare()
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
        write_all(self._fd, data, None, self.parent, self.temp)
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
