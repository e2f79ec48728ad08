"""Manifests and the catalog on local disk.

Layout under the store root::

    manifests/<64 hex>   one immutable manifest, named by the BLAKE3 of its encoding
    catalog.bin          the replicated catalog, replaced atomically as a whole
    counters.bin         version counters this node reserved (never handed out twice)
    membership.bin       the last stable membership repair saw (its majority rule)
    quarantine/          manifests found corrupt

The bytes are opaque here; peerstore.model.manifest owns their format.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import blake3

from peerstore.shell.durable import disk_error, write_file_atomic
from peerstore.errors import CorruptPieceError
from peerstore.shell.store.pieces import DIR_MODE, FILE_MODE, make_dir_durably, check_id, is_id_name, quarantine_file

CATALOG_NAME = "catalog.bin"
COUNTERS_NAME = "counters.bin"
MEMBERSHIP_NAME = "membership.bin"


def _is_stale_temp(name: str) -> bool:
    """write_file_atomic's temp names: ``.<name>.tmp-<random>``."""
    return name.startswith(".") and ".tmp-" in name


class MetaStore:
    """Manifests under ``<root>/manifests/<64 hex>`` and the catalog at ``<root>/catalog.bin``.

    Safe to call from several threads at once; one process per root.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifests_dir = self.root / "manifests"
        self.catalog_path = self.root / CATALOG_NAME
        self.counters_path = self.root / COUNTERS_NAME
        self.membership_path = self.root / MEMBERSHIP_NAME
        self.quarantine_dir = self.root / "quarantine"
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        make_dir_durably(self.manifests_dir)
        self._lock = threading.Lock()
        self._ids: set[bytes] = set()
        for directory in (self.root, self.manifests_dir):
            for entry in os.scandir(directory):
                if _is_stale_temp(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)  # left by a crash mid-write; the target is intact
        for entry in os.scandir(self.manifests_dir):
            if is_id_name(entry.name) and entry.is_file(follow_symlinks=False):
                self._ids.add(bytes.fromhex(entry.name))

    def _path(self, manifest_id: bytes) -> Path:
        return self.manifests_dir / manifest_id.hex()

    def put_manifest(self, manifest_id: bytes, data: bytes) -> bool:
        """Store a manifest durably after checking its id; False if already held."""
        manifest_id = check_id(manifest_id, "manifest id")
        if blake3.blake3(data).digest() != manifest_id:
            raise CorruptPieceError(
                f"refusing to store manifest {manifest_id.hex()}: its bytes hash to "
                f"{blake3.blake3(data).hexdigest()}, not to its id"
            )
        if self.has_manifest(manifest_id) and self._held_copy_matches(manifest_id):
            return False
        # Concurrent puts of one manifest each rename identical bytes into place: harmless.
        write_file_atomic(self._path(manifest_id), bytes(data), mode=FILE_MODE)
        with self._lock:
            self._ids.add(manifest_id)
        return True

    def _held_copy_matches(self, manifest_id: bytes) -> bool:
        """Re-read a held manifest before counting it as stored again: a rotten copy is
        quarantined (False), so the caller writes the good bytes in its place."""
        try:
            return self.get_manifest(manifest_id) is not None
        except CorruptPieceError:
            return False

    def get_manifest(self, manifest_id: bytes) -> bytes | None:
        """The manifest's bytes, or None if not held.

        Bytes that do not match the id are moved to quarantine (so the manifest can be
        fetched again from a peer) and raise CorruptPieceError.
        """
        manifest_id = check_id(manifest_id, "manifest id")
        path = self._path(manifest_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._ids.discard(manifest_id)
            return None
        except OSError as exc:
            raise disk_error(exc, path, "reading") from exc
        if blake3.blake3(data).digest() == manifest_id:
            return data
        with self._lock:
            self._ids.discard(manifest_id)
            try:
                dest = f"moved to {quarantine_file(path, self.quarantine_dir, f'manifest-{manifest_id.hex()}')}"
            except FileNotFoundError:
                dest = "another reader already moved it aside"
        raise CorruptPieceError(
            f"manifest {manifest_id.hex()} on disk does not match its id ({dest}); "
            "fetch it again from another node"
        )

    def has_manifest(self, manifest_id: bytes) -> bool:
        """True if the manifest is held."""
        manifest_id = check_id(manifest_id, "manifest id")
        with self._lock:
            return manifest_id in self._ids

    def delete_manifest(self, manifest_id: bytes) -> bool:
        """Remove a manifest file (garbage collection of a removed version); False if it
        was not there. No fsync: a delete a crash undoes brings back an unused file."""
        manifest_id = check_id(manifest_id, "manifest id")
        try:
            os.unlink(self._path(manifest_id))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise disk_error(exc, self._path(manifest_id), "deleting") from exc
        finally:
            with self._lock:
                if not self._path(manifest_id).exists():
                    self._ids.discard(manifest_id)
        return True

    def manifest_ids(self) -> frozenset[bytes]:
        """The ids of every manifest held."""
        with self._lock:
            return frozenset(self._ids)

    def save_catalog(self, data: bytes) -> None:
        """Replace the catalog durably: after a crash it is either the old or the new bytes."""
        write_file_atomic(self.catalog_path, bytes(data), mode=FILE_MODE)

    def load_catalog(self) -> bytes | None:
        """The last saved catalog, or None if none was ever saved."""
        return _read_if_there(self.catalog_path)

    def quarantine_catalog(self) -> Path:
        """Move a catalog file found corrupt aside (kept for inspection); where it went."""
        return quarantine_file(self.catalog_path, self.quarantine_dir, CATALOG_NAME)

    def save_counters(self, data: bytes) -> None:
        """Replace the reserved version counters durably (old or new bytes after a crash)."""
        write_file_atomic(self.counters_path, bytes(data), mode=FILE_MODE)

    def load_counters(self) -> bytes | None:
        """The last saved counters, or None if none were ever saved."""
        return _read_if_there(self.counters_path)

    def save_membership(self, data: bytes) -> None:
        """Replace the last stable membership durably (old or new bytes after a crash)."""
        write_file_atomic(self.membership_path, bytes(data), mode=FILE_MODE)

    def quarantine_membership(self) -> Path:
        """Move a membership file found corrupt aside; where it went."""
        return quarantine_file(self.membership_path, self.quarantine_dir, MEMBERSHIP_NAME)

    def load_membership(self) -> bytes | None:
        """The last saved stable membership, or None if none was ever saved."""
        return _read_if_there(self.membership_path)


def _read_if_there(path: Path) -> bytes | None:
    """The file's bytes; None if it does not exist; DiskIOError (path, errno) if the disk
    cannot read it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise disk_error(exc, path, "reading") from exc
