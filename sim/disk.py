"""Simulated disks: what is durable, what is only written, and how long I/O takes.

A piece write goes through the store's steps: write to a temp file (bandwidth-bound, one
I/O at a time per disk), fsync, rename. Only then is it durable and only then may the
core be told. A crash loses everything not yet durable, so a write torn by a crash
leaves nothing (the temp file is swept), exactly what the real store promises.

Faults: a slow disk (an SD card: ~20 MB/s and fsyncs of tens to hundreds of ms), a full
disk (writes fail with "disk full"), fsyncs failing with EIO (the write fails and leaves
nothing, as the store removes its temp file), bit flips in stored pieces, in manifest
files (the bytes no longer hash to the id: a reader quarantines the file, so it is held
no more) and in the catalog and counters files (found when the node boots), and a disk
remounted read-only (what dying SD cards do): every write fails with EROFS (``READ_ONLY``),
as the daemon's store reports it, until it is made writable again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sim.content import Content, rotten

MANIFEST_OVERHEAD = 4096  # a small file costs at least a block
FSYNC_EIO = "fsync failed: [Errno 5] Input/output error"  # what a store write reports
READ_ONLY = "writing failed: [Errno 30 EROFS] Read-only file system"  # ... and on a read-only disk


@dataclass(frozen=True)
class DiskModel:
    write_bandwidth: float = 400e6  # bytes/s
    read_bandwidth: float = 500e6
    fsync: float = 0.002  # mean seconds per fsync (+ directory fsync)
    fsync_jitter: float = 0.5  # fsync takes fsync * uniform(1 - j, 1 + j)
    hash_rate: float = 1.5e9  # BLAKE3 bytes/s on this machine's CPU


SSD = DiskModel()
SD_CARD = DiskModel(write_bandwidth=20e6, read_bandwidth=40e6, fsync=0.08, fsync_jitter=0.9, hash_rate=0.4e9)


@dataclass
class SimDisk:
    """One node's disk. ``durable`` survives crashes; ``written`` does not."""

    model: DiskModel = SSD
    capacity: int | None = None  # bytes; None: unlimited
    durable: dict[bytes, Content] = field(default_factory=dict)
    written: dict[bytes, Content] = field(default_factory=dict)  # renamed but not yet fsynced
    # Deleted by GC, the directory entry's removal not yet committed (no fsync on delete):
    # a crash brings these back, as a real file system may.
    unlinked: dict[bytes, Content] = field(default_factory=dict)
    manifests: dict[bytes, bytes] = field(default_factory=dict)  # intact manifest files only
    rotten_manifests: dict[bytes, bytes] = field(default_factory=dict)  # files whose bytes rotted
    catalog: bytes | None = None
    counters: bytes | None = None  # version counters the node reserved (MetaStore counters.bin)
    membership: bytes | None = None  # the last stable membership repair saw (membership.bin)
    boot_epoch: int = 0  # the daemon's stored boot counter (durable before announcing)
    busy_until: float = 0.0
    reserved: int = 0  # bytes of writes in progress
    fail_fsync: float = 0.0  # probability that an fsync fails with EIO
    read_only: bool = False  # remounted read-only: every write fails with EROFS

    @property
    def used(self) -> int:
        pieces = sum(c.size for c in self.durable.values())
        files = [*self.manifests.values(), *self.rotten_manifests.values()]
        return pieces + sum(len(b) + MANIFEST_OVERHEAD for b in files) + self.reserved

    def has_room(self, size: int) -> bool:
        return self.capacity is None or self.used + size <= self.capacity

    def schedule_io(self, now: float, size: int, bandwidth: float) -> float:
        """When an I/O of ``size`` bytes submitted now completes (FIFO per disk)."""
        start = max(now, self.busy_until)
        self.busy_until = start + size / bandwidth
        return self.busy_until

    def fsync_time(self, rng: random.Random) -> float:
        j = self.model.fsync_jitter
        return self.model.fsync * rng.uniform(1 - j, 1 + j)

    def fsync_fails(self, rng: random.Random) -> bool:
        """Does this fsync fail with EIO? (Nothing written by the write becomes durable.)"""
        return bool(self.fail_fsync) and rng.random() < self.fail_fsync

    def crash(self) -> None:
        """Power loss or process crash: un-fsynced writes and in-progress I/O are gone."""
        self.written.clear()
        for pid, content in self.unlinked.items():
            self.durable.setdefault(pid, content)
        self.unlinked.clear()
        self.reserved = 0
        self.busy_until = 0.0

    def corrupt(self, piece_id: bytes) -> None:
        self.durable[piece_id] = rotten(self.durable[piece_id])

    def genuine(self, piece_id: bytes) -> bool:
        content = self.durable.get(piece_id)
        return content is not None and content.true_id == piece_id

    def corrupt_manifest(self, manifest_id: bytes) -> None:
        """Flip a bit in a stored manifest file. Its bytes stay on disk (``rotten_manifests``)
        but it is no longer held: a load finds the mismatch and quarantines it, as the
        daemon's MetaStore does, so ``manifests`` keeps only intact files."""
        blob = self.manifests.pop(manifest_id)
        self.rotten_manifests[manifest_id] = flip_bit(blob, len(blob) // 2)

    def corrupt_file(self, name: str, rng: random.Random, *, unreadable: bool) -> bool:
        """Rot in a state file read only at boot (``"catalog"`` or ``"counters"``): cut
        short, or one bit flipped anywhere. False if the node has no such file."""
        blob = getattr(self, name)
        if not blob:
            return False
        if unreadable:
            setattr(self, name, blob[: len(blob) // 2])
        else:
            setattr(self, name, flip_bit(blob, rng.randrange(len(blob)), rng.randrange(8)))
        return True

def flip_bit(blob: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(blob)
    out[index] ^= 1 << bit
    return bytes(out)
