"""What the machine does with plain tools, measured in the same run as the store.

* copy once: ``cp SOURCE`` then ``sync`` -- the floor for a restore (one copy written);
* policy copies: the bytes the durability policy stores (``replicas`` full copies plus
  ``parity/stripe_width`` of parity), written by parallel plain copies into directories
  that stand for nodes, then ``sync`` -- the floor for a put. ``cp`` is used for the full
  copies because it is the fastest plain tool (in-kernel ``copy_file_range``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from peerstore.bench.commands import Finished, Running, run, sync
from peerstore.model.policy import Policy


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


def policy_writers(size: int, nodes: int, policy: Policy) -> list[tuple[int, int]]:
    """(emulated node, bytes) per writer: one full copy per replica, each on its own node,
    then the parity bytes (parity/stripe_width of the source) on the next node."""
    writers = [(i % nodes, size) for i in range(policy.replicas)]
    parity = size * policy.parity // policy.stripe_width
    if parity:
        writers.append((policy.replicas % nodes, parity))
    return writers


def copy_once(source: Path, workdir: Path, timeout: float) -> BaselineRun:
    """cp + sync of ``source`` into ``workdir``; the copy is removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "copy-once"
    try:
        # --reflink=never: a clone would share the source's blocks and write nothing.
        copied = run(["cp", "--reflink=never", str(source), str(target)], timeout)
        synced = sync(timeout)
        return BaselineRun(copied.seconds, synced.seconds, copied.cpu_seconds + synced.cpu_seconds,
                           source.stat().st_size, 1)
    finally:
        target.unlink(missing_ok=True)


def policy_copies(source: Path, workdir: Path, nodes: int, policy: Policy, timeout: float) -> BaselineRun:
    """The policy's bytes, all writers at once (``cp`` per full copy, ``dd`` for the
    parity-sized part) into ``workdir/policy-copies/node-i/``, then sync."""
    size = source.stat().st_size
    root = workdir / "policy-copies"
    shutil.rmtree(root, ignore_errors=True)
    running: list[Running] = []
    started = time.monotonic()
    try:
        for i, (node, length) in enumerate(policy_writers(size, nodes, policy)):
            target = root / f"node-{node}" / f"part-{i}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if length == size:
                argv = ["cp", "--reflink=never", str(source), str(target)]
            else:
                argv = ["dd", f"if={source}", f"of={target}", "bs=4M", "status=none", "iflag=count_bytes",
                        f"count={length}"]
            running.append(Running(argv))
        finished: list[Finished] = [r.wait(timeout) for r in running]
        bad = [f for f in finished if f.returncode != 0]
        if bad:
            raise RuntimeError(f"baseline copy failed: {bad[0].describe()}")
        copy_seconds = time.monotonic() - started  # first writer started to last one reaped
        synced = sync(timeout)
        return BaselineRun(copy_seconds, synced.seconds, sum(f.cpu_seconds for f in finished) + synced.cpu_seconds,
                           sum(length for _, length in policy_writers(size, nodes, policy)), len(finished))
    finally:
        for r in running:
            r.kill()
        shutil.rmtree(root, ignore_errors=True)
