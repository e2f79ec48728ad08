"""Re-creating lost pieces of a stripe from any k of its pieces (for repair).

Pure functions over bytes-like objects; callers run them in worker threads. A data shard
comes back at its true length, a parity chunk at the block size: exactly the bytes the put
stored, so each hashes to its original piece id (the caller checks that before storing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from peerstore.ec.codec import BytesLike, decode_data, encode_parity


def rebuild_pieces(pieces: Mapping[int, BytesLike], k: int, p: int, shard_lengths: Sequence[int],
                   want: Sequence[int]) -> dict[int, bytes]:
    """The pieces at positions ``want`` (0..k-1 data, k..k+p-1 parity) of a stripe, from
    ``pieces`` (position -> bytes, at least k of them; see ``decode_data``).

    Raises FormatError when fewer than k pieces are given or one has the wrong size, and
    ValueError for a position outside the stripe.
    """
    for position in want:
        if not 0 <= position < k + p:
            raise ValueError(f"position {position} is outside 0..{k + p - 1} for a k={k}, p={p} stripe")
    data = decode_data(pieces, k, p, shard_lengths)
    parity = encode_parity(data, p) if any(position >= k for position in want) else []
    return {position: bytes(data[position]) if position < k else bytes(parity[position - k])
            for position in want}
