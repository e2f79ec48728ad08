"""Re-creating lost pieces for repair (peerstore/ec/rebuild.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from peerstore.ec import encode_parity, piece_id
from peerstore.ec.rebuild import rebuild_pieces
from peerstore.errors import FormatError

K, P, BLOCK = 4, 2, 4096


def stripe(seed: int, last: int = BLOCK - 100) -> tuple[list[bytes], list[bytes], tuple[int, ...]]:
    rng = random.Random(seed)
    lengths = (BLOCK,) * (K - 1) + (last,)
    data = [rng.randbytes(n) for n in lengths]
    return data, encode_parity(data, P), lengths


@pytest.mark.parametrize("keep", list(itertools.combinations(range(K + P), K)))
def test_every_lost_piece_comes_back_with_its_original_id(keep):
    data, parity, lengths = stripe(sum(keep))
    pieces = [*data, *parity]
    lost = [i for i in range(K + P) if i not in keep]
    rebuilt = rebuild_pieces({i: pieces[i] for i in keep}, K, P, lengths, lost)
    assert set(rebuilt) == set(lost)
    for position, blob in rebuilt.items():
        assert piece_id(blob) == piece_id(pieces[position])


def test_short_last_shard_and_padded_inputs():
    data, parity, lengths = stripe(1, last=17)
    padded = data[3] + bytes(BLOCK - 17)
    rebuilt = rebuild_pieces({1: data[1], 2: data[2], 3: padded, 4: parity[0]}, K, P, lengths, [0, 3, 5])
    assert rebuilt[0] == data[0] and rebuilt[3] == data[3] and rebuilt[5] == parity[1]


def test_too_few_pieces_or_a_bad_position_is_refused():
    data, parity, lengths = stripe(2)
    with pytest.raises(FormatError):
        rebuild_pieces({0: data[0], 1: data[1], 4: parity[0]}, K, P, lengths, [2])
    with pytest.raises(ValueError):
        rebuild_pieces({i: data[i] for i in range(K)}, K, P, lengths, [K + P])
