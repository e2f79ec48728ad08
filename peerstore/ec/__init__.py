"""Erasure coding: where stripes and shards lie in a file, parity, rebuilding, piece ids.

Sans-IO: pure functions over integers and bytes-like objects.
"""

from peerstore.ec.codec import PIECE_ID_SIZE, decode_data, encode_parity, piece_id, verify_piece
from peerstore.ec.layout import MAX_CODE_WIDTH, ShardSpan, StripeSpan, iter_stripes, stripe_count, stripe_span

__all__ = [
    "MAX_CODE_WIDTH",
    "PIECE_ID_SIZE",
    "ShardSpan",
    "StripeSpan",
    "decode_data",
    "encode_parity",
    "iter_stripes",
    "piece_id",
    "stripe_count",
    "stripe_span",
    "verify_piece",
]
