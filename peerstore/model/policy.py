"""The durability policy: how a checkpoint's bytes are cut up and spread.

Shared by config (where it is set), manifests (which record the policy a checkpoint was
stored under) and the core (which enforces it). Pure data, no I/O.
"""

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

MIN_SHARD_SIZE = 64 * 1024
MAX_SHARD_SIZE = 64 * MiB
MAX_STRIPE_WIDTH = 16
MAX_PARITY = 16


@dataclass(frozen=True)
class Policy:
    """replicas full copies of every data shard, plus `parity` zfec chunks per stripe of
    `stripe_width` (k) data shards of `shard_size` bytes. A put that cannot reach
    `min_tolerance` (extra simultaneous node failures survived) fails."""

    replicas: int = 2
    stripe_width: int = 4
    parity: int = 2
    shard_size: int = 4 * MiB
    min_tolerance: int = 1

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for every invalid field; empty when valid."""
        out = []
        if self.replicas != 2:
            out.append(("replicas", f"must be 2 (two full copies on two machines), got {self.replicas}"))
        if not 1 <= self.stripe_width <= MAX_STRIPE_WIDTH:
            out.append(("stripe_width", f"expected 1 to {MAX_STRIPE_WIDTH}, got {self.stripe_width}"))
        if not 0 <= self.parity <= MAX_PARITY:
            out.append(("parity", f"expected 0 to {MAX_PARITY}, got {self.parity}"))
        if not MIN_SHARD_SIZE <= self.shard_size <= MAX_SHARD_SIZE:
            out.append(("shard_size", f"expected {MIN_SHARD_SIZE} to {MAX_SHARD_SIZE} bytes, got {self.shard_size}"))
        if not 0 <= self.min_tolerance <= self.parity + 1:
            out.append(("min_tolerance", f"expected 0 to parity+1 ({self.parity + 1}), got {self.min_tolerance}"))
        return out
