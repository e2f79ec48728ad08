import itertools

import pytest

from peerstore.ec import ShardSpan, StripeSpan, iter_stripes, stripe_count, stripe_span

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def assert_consistent(file_size: int, shard_size: int, k: int, stripes: list[StripeSpan]) -> None:
    """Stripes tile [0, file_size) with contiguous shards; only the last stripe and shard are short."""
    assert len(stripes) == stripe_count(file_size, shard_size, k)
    position = 0
    shards = []
    for number, stripe in enumerate(stripes):
        assert stripe.index == number
        assert stripe.offset == position
        assert 1 <= stripe.k <= k
        assert stripe.length == sum(s.length for s in stripe.shards)
        assert stripe.block_size == stripe.shards[0].length
        if number < len(stripes) - 1:
            assert stripe.k == k, "only the last stripe may be short"
        for shard in stripe.shards:
            assert shard.offset == position, "shards must be contiguous"
            assert 1 <= shard.length <= shard_size
            position += shard.length
            shards.append(shard)
    assert position == file_size, "shards must cover the file exactly"
    assert all(s.length == shard_size for s in shards[:-1]), "only the last shard may be short"


# (file_size, shard_size, k, stripes, last stripe's shard lengths)
CASES = [
    ("empty file", 0, 4, 4, 0, None),
    ("one byte", 1, 4, 4, 1, (1,)),
    ("exactly one shard", 4, 4, 4, 1, (4,)),
    ("one shard plus a byte", 5, 4, 4, 1, (4, 1)),
    ("exactly one stripe", 16, 4, 4, 1, (4, 4, 4, 4)),
    ("one stripe plus a byte", 17, 4, 4, 2, (1,)),
    ("k=1 splits per shard", 10, 3, 1, 4, (1,)),
    ("many stripes, short last stripe", 10 * 4 * 3 + 7, 4, 3, 11, (4, 3)),
    ("default policy, 1 GiB", GiB, 4 * MiB, 4, 64, (4 * MiB,) * 4),
    ("past 2**32", 2**32 + 1, 4 * MiB, 4, 2**32 // (16 * MiB) + 1, (1,)),
    ("past 2**40", 2**40 + 5 * MiB + 3, 4 * MiB, 4, 2**40 // (16 * MiB) + 1, (4 * MiB, MiB + 3)),
    ("odd shard size near 2**40", 2**40 - 1, 3 * MiB + 7, 5, None, None),
]


@pytest.mark.parametrize("name, file_size, shard_size, k, stripes, last_shards", CASES, ids=[c[0] for c in CASES])
def test_stripe_count_and_last_stripe(name, file_size, shard_size, k, stripes, last_shards):
    count = stripe_count(file_size, shard_size, k)
    if stripes is not None:
        assert count == stripes
    assert count == -(-file_size // shard_size) // k + bool(-(-file_size // shard_size) % k)
    if last_shards is not None:
        last = stripe_span(file_size, shard_size, k, count - 1)
        assert tuple(s.length for s in last.shards) == last_shards
        assert last.offset + last.length == file_size


@pytest.mark.parametrize("name, file_size, shard_size, k, stripes, last_shards", CASES, ids=[c[0] for c in CASES])
def test_stripes_tile_the_file(name, file_size, shard_size, k, stripes, last_shards):
    count = stripe_count(file_size, shard_size, k)
    if count <= 200:
        assert_consistent(file_size, shard_size, k, list(iter_stripes(file_size, shard_size, k)))
    else:
        # Too many to walk: check the first few and last few, joined at the seam, by index.
        first = [stripe_span(file_size, shard_size, k, i) for i in range(3)]
        tail = [stripe_span(file_size, shard_size, k, i) for i in range(count - 3, count)]
        for stripe in first + tail:
            assert stripe.offset == stripe.index * shard_size * k
        assert tail[-1].offset + tail[-1].length == file_size
        assert all(s.k == k and s.length == shard_size * k for s in first + tail[:-1])
        assert_consistent(tail[-1].length, shard_size, k, [_reindexed(tail[-1])])


def _reindexed(stripe: StripeSpan) -> StripeSpan:
    """The stripe shifted to offset 0, as if it were a whole file of its own."""
    return StripeSpan(
        index=0,
        offset=0,
        length=stripe.length,
        shards=tuple(ShardSpan(s.offset - stripe.offset, s.length) for s in stripe.shards),
    )


def test_iter_stripes_matches_stripe_span():
    for file_size, shard_size, k in itertools.product(range(0, 40), (1, 3, 4), (1, 2, 4)):
        stripes = list(iter_stripes(file_size, shard_size, k))
        assert stripes == [stripe_span(file_size, shard_size, k, i) for i in range(len(stripes))]
        assert_consistent(file_size, shard_size, k, stripes)


def test_iter_stripes_is_lazy_for_a_terabyte_file():
    stripes = iter_stripes(TiB, 4 * MiB, 4)
    first = next(stripes)
    second = next(stripes)
    assert (first.offset, second.offset) == (0, 16 * MiB)
    assert second.shards[0] == ShardSpan(16 * MiB, 4 * MiB)


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 4, 4), "file_size"),
        ((10, 0, 4), "shard_size"),
        ((10, 4, 0), "k"),
        ((10, 4, 257), "k must be <= 256"),
        ((10.0, 4, 4), "file_size must be an int"),
        ((10, 4, True), "k must be an int"),
    ],
)
def test_bad_geometry_is_rejected_by_name(args, message):
    for call in (stripe_count, iter_stripes):
        with pytest.raises(ValueError, match=message):
            call(*args)
    with pytest.raises(ValueError, match=message):
        stripe_span(*args, 0)


@pytest.mark.parametrize("file_size, index", [(0, 0), (16, 1), (17, 2), (17, -1), (2**40, 2**40)])
def test_stripe_index_out_of_range_is_value_error(file_size, index):
    with pytest.raises(ValueError, match="out of range"):
        stripe_span(file_size, 4, 4, index)
