"""The per-node status report (peerstore.core.node_report): scrub section, strict decoding."""

from __future__ import annotations

import random

import msgpack

from peerstore.core.node_report import MAX_REPORT_BYTES, decode_report, encode_report, scrub_section
from peerstore.core.scrub import Scrubber


def test_the_scrub_section_round_trips_and_says_when_the_last_pass_ended():
    scrubber = Scrubber(100.0, 1e12, random.Random(1), size_estimate=1000)
    held = {bytes([i]) * 32 for i in range(4)}
    now = 0.0
    while scrubber.passes == 0:
        piece = scrubber.poll(now, held)
        if piece is None:
            now = scrubber.next_deadline()
            continue
        scrubber.finished(now, piece, piece != bytes([2]) * 32, 1000)
    report = {"scrub": scrub_section(scrubber.summary(now + 30.0, len(held)))}
    back = decode_report(encode_report(report))
    scrub = back["scrub"]
    assert scrub["passes"] == 1 and scrub["last_pass_pieces"] == 4 and scrub["last_pass_corrupt"] == 1
    assert scrub["last_pass_age"] == 30.0 and scrub["overdue_age"] == 30.0 and scrub["corrupt_found"] == 1
    assert scrub["recent_corrupt"] == [(bytes([2]) * 32).hex()]
    assert scrub["enabled"] is True and scrub["rate"] == 40  # 4 pieces x 1000 B / 100 s


def test_before_the_first_pass_the_last_pass_fields_are_null():
    scrub = scrub_section(Scrubber(100.0, 1e12, random.Random(1), size_estimate=1000).summary(5.0, 0))
    assert scrub["last_pass_age"] is None and scrub["passes"] == 0 and scrub["overdue_age"] == 0.0


def test_malformed_or_oversized_reports_decode_to_none():
    assert decode_report(b"\xc1") is None
    assert decode_report(msgpack.packb([1, 2])) is None
    assert decode_report(msgpack.packb({1: 2})) is None
    assert decode_report(msgpack.packb({"a": {"b": {"c": {"d": {"e": 1}}}}})) is None  # too deep
    assert decode_report(b"\x80" + bytes(MAX_REPORT_BYTES)) is None
    assert decode_report(msgpack.packb({"gc_awaiting_bytes": 5})) == {"gc_awaiting_bytes": 5}


def test_a_report_too_big_or_unencodable_is_replaced_by_one_that_says_so():
    assert "error" in decode_report(encode_report({"repair": {"x": "y" * 5000}}))
    assert "error" in decode_report(encode_report({"gc": {"x": object()}}))
    assert decode_report(encode_report({"scrub": {"a": [1, 2]}})) == {"scrub": {"a": [1, 2]}}
