"""The `peerstore status` line on garbage collection."""

from __future__ import annotations

from peerstore.cli.commands import format_gc, format_status


def test_status_shows_the_bytes_awaiting_gc_and_why_a_node_waits():
    status = {"node_id": "aa", "members": [], "checkpoints": [],
              "gc": {"awaiting_bytes": 3 * 1024 * 1024, "awaiting_pieces": 4, "nodes": 5,
                     "blocked": {"bbbbbbbbbbbbbbbb": "catalog sync: 1 of 4 live peer(s) did not answer"}}}
    text = format_status(status, "127.0.0.1:7421")
    assert "bytes awaiting GC: 3.00 MiB (4 piece(s)" in text
    assert "GC on node bbbbbbbbbbbbbbbb is waiting: catalog sync: 1 of 4 live peer(s) did not answer" in text


def test_nothing_awaiting_is_said_plainly_and_an_old_node_shows_no_line():
    assert format_gc({"gc": {"awaiting_bytes": 0, "blocked": {}}}) == "bytes awaiting GC: 0 B"
    assert format_gc({}) == ""
    assert "awaiting GC" not in format_status({"node_id": "aa", "members": [], "checkpoints": []}, "x")
