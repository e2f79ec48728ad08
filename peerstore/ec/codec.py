"""Parity for one stripe, rebuilding its data from any k pieces, and piece ids.

Pure functions over bytes-like objects. zfec and blake3 release the GIL while they work,
so callers run these in worker threads to use several cores.

Positions within a stripe of k data shards and p parity chunks: ``0..k-1`` are the data
shards in file order, ``k..k+p-1`` the parity chunks. A stripe is coded at its block
size, the length of its first shard; a shorter last shard is zero-padded for coding
only, and its stored piece is its true bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Union

import blake3

from peerstore.ec.layout import MAX_CODE_WIDTH
from peerstore.errors import FormatError

if TYPE_CHECKING:
    import zfec

PIECE_ID_SIZE = 32

BytesLike = Union[bytes, bytearray, memoryview]


def _byte_view(data: BytesLike) -> memoryview:
    """A flat, contiguous unsigned-byte view of ``data``; copies only a non-contiguous buffer
    (zfec and blake3 both need contiguous ``u8`` buffers)."""
    view = memoryview(data)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


def piece_id(data: BytesLike) -> bytes:
    """The 32-byte BLAKE3 digest that names a piece."""
    return blake3.blake3(_byte_view(data)).digest()


def verify_piece(data: BytesLike, expected_id: bytes) -> bool:
    """True when ``data`` hashes to ``expected_id``."""
    if len(expected_id) != PIECE_ID_SIZE:
        raise ValueError(f"a piece id is {PIECE_ID_SIZE} bytes, got {len(expected_id)}")
    return piece_id(data) == bytes(expected_id)


def _check_code(k: int, p: int) -> None:
    if k < 1 or p < 0 or k + p > MAX_CODE_WIDTH:
        raise ValueError(f"need k >= 1, p >= 0 and k + p <= {MAX_CODE_WIDTH} (zfec's limit); got k={k}, p={p}")


# Encoder and decoder state is read-only after construction (zfec keeps per-call scratch on
# the C stack), so one cached object per code serves every thread; lru_cache is thread-safe.
@functools.lru_cache(maxsize=64)
def _encoder(k: int, m: int) -> zfec.Encoder:
    import zfec  # only here and in _decoder: the CLI loads this package but never codes

    return zfec.Encoder(k, m)


@functools.lru_cache(maxsize=64)
def _decoder(k: int, m: int) -> zfec.Decoder:
    import zfec

    return zfec.Decoder(k, m)


def _padded(view: memoryview, block_size: int) -> BytesLike:
    """``view`` at ``block_size`` bytes: itself when already that long, else a zero-padded copy."""
    if len(view) == block_size:
        return view
    block = bytearray(block_size)
    block[: len(view)] = view
    return block


def encode_parity(shards: Sequence[BytesLike], p: int) -> list[bytes]:
    """The ``p`` parity chunks of a stripe whose data shards are ``shards`` (k = len(shards)).

    ``shards[0]`` is the longest; shorter shards are zero-padded to its length for coding
    only. Each chunk is ``len(shards[0])`` bytes.
    """
    k = len(shards)
    _check_code(k, p)
    if p == 0:
        return []
    views = [_byte_view(s) for s in shards]
    block_size = len(views[0])
    for position, view in enumerate(views):
        if len(view) > block_size:
            raise ValueError(
                f"shard {position} is {len(view)} bytes, longer than shard 0 ({block_size} bytes); "
                "the first shard of a stripe must be the longest"
            )
    blocks = [_padded(view, block_size) for view in views]
    return _encoder(k, k + p).encode(blocks, tuple(range(k, k + p)))


def decode_data(
    pieces: Mapping[int, BytesLike], k: int, p: int, shard_lengths: Sequence[int]
) -> list[bytes]:
    """The stripe's ``k`` data shards, each exactly ``shard_lengths[i]`` bytes, from any ``k``
    of its pieces (``pieces`` maps position to bytes).

    Parity pieces must be the block size (``shard_lengths[0]``); a data piece may be its true
    length or zero-padded to the block size. Raises FormatError when fewer than ``k`` pieces
    are given or a piece has the wrong size.
    """
    _check_code(k, p)
    if len(shard_lengths) != k:
        raise ValueError(f"need {k} shard lengths (one per data shard), got {len(shard_lengths)}")
    block_size = shard_lengths[0]
    if any(not 0 <= length <= block_size for length in shard_lengths):
        raise ValueError(f"shard lengths must be 0..shard_lengths[0] ({block_size}), got {list(shard_lengths)}")
    for position in pieces:
        if not 0 <= position < k + p:
            raise ValueError(f"piece position {position} is outside 0..{k + p - 1} for a k={k}, p={p} stripe")
    if len(pieces) < k:
        raise FormatError(
            f"cannot rebuild stripe: {len(pieces)} of its {k + p} pieces available "
            f"(positions {sorted(pieces)}), at least {k} needed"
        )

    views: dict[int, memoryview] = {}
    for position, data in pieces.items():
        view = _byte_view(data)
        allowed = {block_size} if position >= k else {block_size, shard_lengths[position]}
        if len(view) not in allowed:
            kind = "parity chunk" if position >= k else "data shard"
            raise FormatError(
                f"{kind} at position {position} is {len(view)} bytes, expected "
                f"{' or '.join(str(n) for n in sorted(allowed))}: wrong piece or corrupt stripe metadata"
            )
        views[position] = view

    if all(position in views for position in range(k)):
        return [_exact(pieces[i], views[i], shard_lengths[i]) for i in range(k)]

    # Data pieces cost nothing to "recover", so use every one held, then the fewest parity.
    chosen = [i for i in range(k) if i in views]
    chosen += [i for i in range(k, k + p) if i in views][: k - len(chosen)]
    # zfec reorders the block list it is given in place, so it gets a fresh list.
    blocks = [_padded(views[i], block_size) for i in chosen]
    decoded = _decoder(k, k + p).decode(blocks, chosen)
    return [
        _exact(pieces[i], views[i], shard_lengths[i]) if i in views else _exact(block, memoryview(block), shard_lengths[i])
        for i, block in enumerate(decoded)
    ]


def _exact(original: BytesLike, view: memoryview, length: int) -> bytes:
    """``length`` leading bytes as ``bytes``, reusing ``original`` when it already is exactly that."""
    if type(original) is bytes and len(original) == length:
        return original
    return bytes(view[:length])
