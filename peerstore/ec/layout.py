"""Where each stripe and data shard of a file lies: byte offsets and lengths, no bytes.

A file of ``file_size`` bytes is cut into data shards of ``shard_size`` bytes (the last
one may be shorter); ``k`` consecutive shards form a stripe (the last stripe may hold
fewer). An empty file has no stripes. Everything is plain integer arithmetic, so it is
exact for any file size and O(1) per stripe.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# zfec codes at most 256 pieces (data + parity) per stripe, so no stripe is wider.
MAX_CODE_WIDTH = 256


@dataclass(frozen=True)
class ShardSpan:
    """The byte range ``[offset, offset + length)`` of one data shard in its file."""

    offset: int
    length: int


@dataclass(frozen=True)
class StripeSpan:
    """Stripe number ``index``: the byte range it covers and its data shards, in order."""

    index: int
    offset: int
    length: int
    shards: tuple[ShardSpan, ...]

    @property
    def k(self) -> int:
        """Data shards in this stripe (less than the policy's k only for a short last stripe)."""
        return len(self.shards)

    @property
    def block_size(self) -> int:
        """Length every piece of this stripe is coded at: the first (longest) shard's."""
        return self.shards[0].length


def _check_geometry(file_size: int, shard_size: int, k: int) -> None:
    for name, value, low in (("file_size", file_size, 0), ("shard_size", shard_size, 1), ("k", k, 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if k > MAX_CODE_WIDTH:
        raise ValueError(f"k must be <= {MAX_CODE_WIDTH} (zfec's limit), got {k}")


def stripe_count(file_size: int, shard_size: int, k: int) -> int:
    """Number of stripes a file of ``file_size`` bytes is cut into (0 for an empty file)."""
    _check_geometry(file_size, shard_size, k)
    return -(-file_size // (shard_size * k))


def stripe_span(file_size: int, shard_size: int, k: int, index: int) -> StripeSpan:
    """The ``index``-th stripe of the file; ValueError when there is no such stripe."""
    count = stripe_count(file_size, shard_size, k)
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"stripe index must be an int, got {type(index).__name__}")
    if not 0 <= index < count:
        raise ValueError(
            f"stripe index {index} out of range: a {file_size}-byte file has {count} stripes "
            f"(shard_size={shard_size}, k={k})"
        )
    return _span(file_size, shard_size, k, index)


def iter_stripes(file_size: int, shard_size: int, k: int) -> Iterator[StripeSpan]:
    """Every stripe of the file in order, produced one at a time (memory stays O(k))."""
    count = stripe_count(file_size, shard_size, k)
    return (_span(file_size, shard_size, k, index) for index in range(count))


def _span(file_size: int, shard_size: int, k: int, index: int) -> StripeSpan:
    offset = index * shard_size * k
    length = min(shard_size * k, file_size - offset)
    shard_total = -(-length // shard_size)
    shards = tuple(
        ShardSpan(offset + j * shard_size, min(shard_size, length - j * shard_size)) for j in range(shard_total)
    )
    return StripeSpan(index=index, offset=offset, length=length, shards=shards)
