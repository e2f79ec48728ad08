"""Erasure-coding throughput on this machine: one stripe, one thread, best of a few rounds.

The ceiling the put and get phases can reach per core, shown next to them in the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import blake3

from peerstore.ec.codec import decode_data, encode_parity, piece_id


def _best_seconds(action: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return max(best, 1e-9)


def codec_throughput(shard_size: int, k: int, p: int, rounds: int = 3) -> dict[str, Any]:
    """MB/s of stripe data through zfec encode, zfec decode (as many data shards lost as
    parity allows) and BLAKE3 piece ids."""
    # blake3's extendable output gives incompressible bytes without the random module.
    shards = [blake3.blake3(bytes([i])).digest(length=shard_size) for i in range(k)]
    parity = encode_parity(shards, p)
    lost = min(p, k)
    pieces = {i: shards[i] for i in range(lost, k)} | {k + j: parity[j] for j in range(p)}
    lengths = [shard_size] * k
    if decode_data(pieces, k, p, lengths) != shards:
        raise RuntimeError("zfec did not rebuild the stripe it encoded")
    stripe_mb = shard_size * k / 1e6
    return {
        "shard_size": shard_size, "k": k, "p": p, "data_shards_lost": lost,
        "encode_mb_s": round(stripe_mb / _best_seconds(lambda: encode_parity(shards, p), rounds), 1),
        "decode_mb_s": round(stripe_mb / _best_seconds(lambda: decode_data(pieces, k, p, lengths), rounds), 1),
        "piece_id_mb_s": round(stripe_mb / _best_seconds(lambda: [piece_id(s) for s in shards], rounds), 1),
    }


def codec_line(figures: dict[str, Any]) -> str:
    """The report line for :func:`codec_throughput`'s figures."""
    return (f"  one thread, k={figures['k']} p={figures['p']}, {figures['shard_size'] // 1024} KiB shards: "
            f"encode {figures['encode_mb_s']:.0f} MB/s, decode ({figures['data_shards_lost']} data shards lost) "
            f"{figures['decode_mb_s']:.0f} MB/s, BLAKE3 piece ids {figures['piece_id_mb_s']:.0f} MB/s")
