import itertools
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstore.ec import PIECE_ID_SIZE, decode_data, encode_parity, piece_id, verify_piece
from peerstore.errors import FormatError


@st.composite
def stripes(draw, max_k=8, max_p=4, max_block=64):
    """(data shards, p): k shards of one block size, the last possibly shorter (even empty)."""
    k = draw(st.integers(1, max_k))
    p = draw(st.integers(0, max_p))
    block_size = draw(st.integers(1, max_block))
    last_size = draw(st.integers(0 if k > 1 else 1, block_size))
    lengths = [block_size] * (k - 1) + [last_size]
    shards = [draw(st.binary(min_size=n, max_size=n)) for n in lengths]
    return shards, p


def all_pieces(shards, p):
    return dict(enumerate(shards + encode_parity(shards, p)))


@settings(max_examples=100, deadline=None)
@given(stripe=stripes(), data=st.data())
def test_any_k_pieces_rebuild_the_exact_shards(stripe, data):
    shards, p = stripe
    k = len(shards)
    pieces = all_pieces(shards, p)
    keep = data.draw(st.permutations(range(k + p)).map(lambda order: sorted(order[:k])))
    # Hand the data pieces over in the forms callers have: bytes, bytearray, memoryview.
    wrap = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
    rebuilt = decode_data({i: wrap(pieces[i]) for i in keep}, k, p, [len(s) for s in shards])
    assert rebuilt == shards
    assert all(type(s) is bytes for s in rebuilt)


@settings(max_examples=100, deadline=None)
@given(stripe=stripes(), data=st.data())
def test_fewer_than_k_pieces_is_format_error(stripe, data):
    shards, p = stripe
    k = len(shards)
    pieces = all_pieces(shards, p)
    keep = data.draw(st.lists(st.sampled_from(range(k + p)), max_size=k - 1, unique=True))
    with pytest.raises(FormatError, match=f"{len(keep)} of its {k + p} pieces available.*at least {k} needed"):
        decode_data({i: pieces[i] for i in keep}, k, p, [len(s) for s in shards])


@settings(max_examples=100, deadline=None)
@given(stripe=stripes(), data=st.data())
def test_wrong_size_piece_is_format_error(stripe, data):
    shards, p = stripe
    k = len(shards)
    pieces = all_pieces(shards, p)
    bad = data.draw(st.sampled_from(range(k + p)))
    good_sizes = {len(shards[0]), len(pieces[bad])}
    bad_size = data.draw(st.integers(0, len(shards[0]) + 2).filter(lambda n: n not in good_sizes))
    pieces[bad] = bytes(bad_size)
    with pytest.raises(FormatError, match=f"position {bad} is {bad_size} bytes"):
        decode_data(pieces, k, p, [len(s) for s in shards])


@settings(max_examples=50, deadline=None)
@given(stripe=stripes())
def test_parity_is_block_sized_and_deterministic(stripe):
    shards, p = stripe
    parity = encode_parity(shards, p)
    assert len(parity) == p
    assert all(type(c) is bytes and len(c) == len(shards[0]) for c in parity)
    assert encode_parity([memoryview(s) for s in shards], p) == parity
    # Padding is zeros: coding the explicitly padded shards gives the same parity.
    padded = [s.ljust(len(shards[0]), b"\0") for s in shards]
    assert encode_parity(padded, p) == parity


def test_zero_padded_data_piece_is_accepted():
    shards = [b"abcd", b"efgh", b"ij"]
    pieces = all_pieces(shards, 2)
    del pieces[0]
    pieces[2] = b"ij\0\0"
    assert decode_data(pieces, 3, 2, [4, 4, 2]) == shards


def test_decode_without_loss_returns_given_bytes_without_copying():
    shards = [b"abcd", b"efgh", b"ij"]
    rebuilt = decode_data({0: shards[0], 1: shards[1], 2: shards[2]}, 3, 0, [4, 4, 2])
    assert all(r is s for r, s in zip(rebuilt, shards))


@pytest.mark.parametrize(
    "k, p, lost",
    # k=1 makes every parity chunk a copy of the shard; p=0 codes nothing.
    [(1, 1, [0]), (1, 3, [0]), (1, 0, []), (4, 0, []), (4, 2, [0, 3]), (16, 16, list(range(16))), (200, 56, list(range(0, 200, 4)))],
)
def test_code_edges(k, p, lost):
    shards = [blake3.blake3(bytes([i])).digest(length=37) for i in range(k - 1)] + [b"tail"]
    parity = encode_parity(shards, p)
    assert len(parity) == p
    if k == 1:
        assert parity == [shards[0]] * p
    pieces = {i: b for i, b in enumerate(shards + parity) if i not in lost}
    assert decode_data(pieces, k, p, [len(s) for s in shards]) == shards


def test_every_k_subset_decodes_for_default_policy():
    shards = [blake3.blake3(bytes([i])).digest(length=1000) for i in range(3)] + [b"short"]
    pieces = all_pieces(shards, 2)
    for keep in itertools.combinations(range(6), 4):
        assert decode_data({i: pieces[i] for i in keep}, 4, 2, [1000] * 3 + [5]) == shards


def test_empty_blocks_code_to_empty_parity():
    assert encode_parity([b""], 2) == [b"", b""]
    assert decode_data({1: b""}, 1, 2, [0]) == [b""]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: encode_parity([], 2), "k >= 1"),
        (lambda: encode_parity([b"a"], -1), "p >= 0"),
        (lambda: encode_parity([b"a"] * 200, 57), "k \\+ p <= 256"),
        (lambda: encode_parity([b"a", b"bb"], 1), "longer than shard 0"),
        (lambda: decode_data({0: b"a"}, 1, 1, [1, 1]), "need 1 shard lengths"),
        (lambda: decode_data({0: b"a", 1: b"bb"}, 2, 1, [1, 2]), "shard lengths must be"),
        (lambda: decode_data({0: b"a", 5: b"b"}, 1, 1, [1]), "position 5 is outside"),
    ],
)
def test_bad_arguments_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 40])
def test_piece_id_is_blake3_of_the_bytes(data):
    expected = blake3.blake3(data).digest()
    assert len(expected) == PIECE_ID_SIZE
    for form in (bytes, bytearray, memoryview):
        assert piece_id(form(data)) == expected
    assert piece_id(bytes(data)) == piece_id(bytearray(data))
    assert verify_piece(data, expected)
    assert verify_piece(memoryview(data), expected)
    assert not verify_piece(data + b"!", expected)


def test_piece_id_accepts_non_byte_and_strided_buffers():
    import array

    words = array.array("I", [1, 2, 3])
    assert piece_id(words) == blake3.blake3(words.tobytes()).digest()
    assert piece_id(memoryview(b"a-b-c")[::2]) == blake3.blake3(b"abc").digest()


def test_verify_piece_rejects_malformed_id():
    with pytest.raises(ValueError, match="32 bytes"):
        verify_piece(b"x", b"short")


def test_codec_is_safe_across_threads():
    shards = [blake3.blake3(bytes([i])).digest(length=4096) for i in range(4)]
    parity = encode_parity(shards, 2)

    def round_trip(lose: int) -> bool:
        pieces = dict(enumerate(shards + encode_parity(shards, 2)))
        del pieces[lose], pieces[(lose + 1) % 4]
        return decode_data(pieces, 4, 2, [4096] * 4) == shards and encode_parity(shards, 2) == parity

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(round_trip, [i % 4 for i in range(64)]))
