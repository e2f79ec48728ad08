"""What the machine does with plain tools, measured in the same run as the store.

* copy once: ``cp SOURCE`` then ``sync`` -- the floor for a restore (one copy written);
* policy copies: the bytes the durability policy stores (``replicas`` full copies plus
  ``parity/stripe_width`` of parity) written by one ``dd`` per emulated node, all at once,
  into one directory per node, then ``sync`` -- the floor for a put.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from peerstore.bench.commands import Finished, Running, run, sync
from peerstore.policy import Policy


@dataclass(frozen=True)
class BaselineRun:
    copy_seconds: float
    sync_seconds: float
    cpu_seconds: float
    written_bytes: int
    writers: int

    @property
    def seconds(self) -> float:
        return self.copy_seconds + self.sync_seconds


def stored_factor(policy: Policy) -> float:
    """Bytes stored per checkpoint byte: 2 replicas + 2/4 parity = 2.5 by default."""
    return policy.replicas + policy.parity / policy.stripe_width


def node_segments(size: int, nodes: int, factor: float) -> list[tuple[int, int, int]]:
    """(node, offset, length) ranges of the source so every node writes an equal share
    of ``factor * size`` bytes, walking the source round-robin (so the copies are real
    source bytes, not zeros). A share that runs past the end wraps to the start."""
    if size <= 0 or nodes <= 0:
        return []
    total = round(size * factor)
    share, extra = divmod(total, nodes)
    segments = []
    cursor = 0
    for node in range(nodes):
        left = share + (1 if node < extra else 0)
        while left > 0:
            offset = cursor % size
            length = min(left, size - offset)
            segments.append((node, offset, length))
            cursor += length
            left -= length
    return segments


def copy_once(source: Path, workdir: Path, timeout: float) -> BaselineRun:
    """cp + sync of ``source`` into ``workdir``; the copy is removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "copy-once"
    try:
        copied = run(["cp", str(source), str(target)], timeout)
        synced = sync(timeout)
        return BaselineRun(copied.seconds, synced.seconds, copied.cpu_seconds + synced.cpu_seconds,
                           source.stat().st_size, 1)
    finally:
        target.unlink(missing_ok=True)


def policy_copies(source: Path, workdir: Path, nodes: int, policy: Policy, timeout: float) -> BaselineRun:
    """One ``dd`` per (node, source range) at once into ``workdir/node-i/`` + sync."""
    size = source.stat().st_size
    segments = node_segments(size, nodes, stored_factor(policy))
    root = workdir / "policy-copies"
    shutil.rmtree(root, ignore_errors=True)
    running: list[Running] = []
    started = time.monotonic()
    try:
        for i, (node, offset, length) in enumerate(segments):
            target = root / f"node-{node}" / f"part-{i}"
            target.parent.mkdir(parents=True, exist_ok=True)
            running.append(Running([
                "dd", f"if={source}", f"of={target}", "bs=4M", "status=none",
                "iflag=skip_bytes,count_bytes", f"skip={offset}", f"count={length}",
            ]))
        finished: list[Finished] = [r.wait(timeout) for r in running]
        bad = [f for f in finished if f.returncode != 0]
        if bad:
            raise RuntimeError(f"baseline copy failed: {bad[0].describe()}")
        copy_seconds = time.monotonic() - started  # first dd started to last one reaped
        synced = sync(timeout)
        return BaselineRun(copy_seconds, synced.seconds, sum(f.cpu_seconds for f in finished) + synced.cpu_seconds,
                           sum(length for _, _, length in segments), len(segments))
    finally:
        for r in running:
            r.kill()
        shutil.rmtree(root, ignore_errors=True)
