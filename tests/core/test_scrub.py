"""The scrub scheduler and pacer (peerstore.core.scrub): which piece next, and when."""

from __future__ import annotations

import random

import blake3
import pytest

from peerstore.core.scrub import MIN_RATE, Scrubber

MiB = 1024 * 1024


def ids(n: int, tag: int = 0) -> set[bytes]:
    return {bytes([tag, i % 256, i // 256]) + bytes(29) for i in range(n)}


def drive(scrubber: Scrubber, inventory: set[bytes], size: int, until: float,
          corrupt: frozenset[bytes] = frozenset(), start: float = 0.0) -> list[tuple[float, bytes]]:
    """Run the scrubber as the core does: poll at its deadlines, complete each read."""
    now, reads = start, []
    for _ in range(1_000_000):
        piece = scrubber.poll(now, inventory)
        if piece is not None:
            reads.append((now, piece))
            scrubber.finished(now, piece, piece not in corrupt, size)
            continue
        deadline = scrubber.next_deadline()
        if deadline is None or deadline > until:
            return reads
        now = max(now, deadline)
    raise AssertionError("the scrubber never went quiet")


def first_read(scrubber: Scrubber, held: set[bytes]) -> tuple[float, bytes]:
    """The first read: none at once (paced from the start), one at the first deadline."""
    assert scrubber.poll(0.0, held) is None
    when = scrubber.next_deadline()
    assert when is not None and when > 0
    piece = scrubber.poll(when, held)
    assert piece is not None
    return when, piece


def test_every_piece_is_read_once_per_period_at_the_rate_the_inventory_implies():
    period, size, held = 1000.0, 4 * MiB, ids(50)
    scrubber = Scrubber(period, 1e12, random.Random(1), size_estimate=size)
    reads = drive(scrubber, held, size, until=period * 1.001)
    assert reads[0][0] == pytest.approx(period / len(held))  # even the first read is paced
    assert sorted(p for _, p in reads) == sorted(held)  # each once within the first period
    assert scrubber.target_rate(len(held)) == pytest.approx(len(held) * size / period)
    # reads are spread over the period, not bunched at the start
    assert reads[len(reads) // 2][0] == pytest.approx(period / 2, rel=0.1)
    more = drive(scrubber, held, size, until=period * 2.5, start=reads[-1][0])
    assert scrubber.passes == 2 and len(reads) + len(more) >= 2 * len(held)
    assert scrubber.last_pass is not None and scrubber.last_pass.pieces == len(held)
    assert scrubber.last_pass.finished - scrubber.last_pass.started == pytest.approx(period, rel=0.05)


def test_the_rate_is_capped_and_a_pass_that_cannot_fit_the_period_says_so():
    period, size, held = 100.0, 4 * MiB, ids(100)  # 400 MiB a pass, 4 MiB/s asked
    scrubber = Scrubber(period, 1 * MiB, random.Random(2), size_estimate=size)
    reads = drive(scrubber, held, size, until=period)
    assert scrubber.target_rate(len(held)) == 1 * MiB
    assert len(reads) <= period * MiB / size + 2  # at most the cap (plus the burst)
    summary = scrubber.summary(period, len(held))
    assert summary.behind and summary.pass_seconds_estimate == pytest.approx(400, rel=0.01)
    assert not Scrubber(period, 1e12, random.Random(2), size_estimate=size).summary(0, 0).behind


def test_pieces_removed_mid_pass_are_skipped_and_new_ones_are_read_at_its_end():
    """A piece stored mid-pass is read before the pass ends: within a period of being
    stored, not up to two (a copy re-created by repair that rots soon after is found in
    time; scrub-finds-rot seed 7300)."""
    held = ids(10)
    scrubber = Scrubber(100.0, 1e12, random.Random(3), size_estimate=MiB)
    when, first = first_read(scrubber, held)
    scrubber.finished(when, first, True, MiB)
    gone = set(scrubber.order[1:4])
    held -= gone
    added = ids(3, tag=9)
    held |= added
    reads = drive(scrubber, held, MiB, until=130.0, start=when)
    seen = [p for _, p in reads]
    assert not gone & set(seen)
    rest = 10 - 1 - len(gone)  # what the first pass still had to read
    assert not added & set(seen[:rest]) and set(seen[rest:rest + 3]) == added  # then the arrivals
    assert all(t <= 105.0 for t, p in reads if p in added), "read within the period (and a read's pace)"
    assert scrubber.passes == 1 and scrubber.last_pass.pieces == 13


def test_one_read_at_a_time_and_no_deadline_while_it_runs():
    scrubber = Scrubber(10.0, 1e12, random.Random(4), size_estimate=MiB)
    held = ids(5)
    when, piece = first_read(scrubber, held)
    assert when == pytest.approx(2.0)  # 1 MiB at 5 MiB / 10 s
    assert scrubber.poll(when, held) is None and scrubber.next_deadline() is None
    scrubber.finished(when, b"x" * 32, True, MiB)  # someone else's completion changes nothing
    assert scrubber.next_deadline() is None
    scrubber.finished(2.5, piece, True, MiB)
    assert scrubber.next_deadline() == 2.5  # look again at once ...
    assert scrubber.poll(2.5, held) is None  # ... but the bucket makes the next read wait
    assert scrubber.next_deadline() == pytest.approx(4.0)  # reads start an interval apart
    assert scrubber.poll(4.0, held) is not None


def test_corrupt_results_are_counted_and_kept_missing_pieces_are_not_corruption():
    held = ids(6)
    scrubber = Scrubber(60.0, 1e12, random.Random(5), size_estimate=MiB)
    bad = frozenset(sorted(held)[:2])
    drive(scrubber, held, MiB, until=65.0, corrupt=bad)  # one pass: a piece every 10 s
    summary = scrubber.summary(60.0, len(held))
    assert summary.corrupt_found == 2 and set(summary.recent_corrupt) == bad
    gone = scrubber.poll(1000.0, held)
    scrubber.finished(1000.0, gone, False, 0, missing=True)
    assert scrubber.corrupt_found == 2 and scrubber.pieces_checked == 6


def test_period_zero_turns_scrub_off_and_an_empty_store_waits_for_pieces():
    off = Scrubber(0.0, 1e12, random.Random(6), size_estimate=MiB)
    assert off.poll(0.0, ids(3)) is None and off.next_deadline() is None
    assert not off.summary(0.0, 3).enabled
    empty = Scrubber(60.0, 1e12, random.Random(6), size_estimate=MiB)
    assert empty.poll(0.0, set()) is None and empty.next_deadline() is None
    assert empty.target_rate(0) == MIN_RATE
    assert empty.poll(1.0, ids(1)) is None and empty.next_deadline() is not None  # a stored piece wakes it


def test_each_pass_starts_at_a_random_place_so_restarts_do_not_starve_the_last_ids():
    held = {blake3.blake3(bytes([i])).digest() for i in range(40)}  # spread over the id space
    firsts = {first_read(Scrubber(60.0, 1e12, random.Random(seed), size_estimate=MiB), held)[1] for seed in range(20)}
    assert len(firsts) > 5


def test_every_pass_keeps_the_same_order_so_a_piece_is_reread_one_period_later():
    period, held = 100.0, {blake3.blake3(bytes([i])).digest() for i in range(10)}
    scrubber = Scrubber(period, 1e12, random.Random(8), size_estimate=MiB)
    reads = drive(scrubber, held, MiB, until=period * 3.05)
    order = [p for _, p in reads]
    assert order[:10] == order[10:20] == order[20:30]
    times = {}
    for when, piece in reads:
        times.setdefault(piece, []).append(when)
    gaps = [b - a for ts in times.values() for a, b in zip(ts, ts[1:])]
    assert max(gaps) == pytest.approx(period, rel=0.01)
