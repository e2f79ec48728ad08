"""The membership measurements: each experiment measures what it says, on small clusters."""

from __future__ import annotations

import pytest

from sim import measure


def test_detection_suspects_then_kills_within_the_suspicion_bounds():
    results = [measure.detection(5, seed) for seed in range(5)]
    for r in results:
        assert 0 < r["first_suspicion"] < r["dead_everywhere"]
        # suspicion timeout at N=5 is 4 s min .. 24 s max, after at most ~2 probe rounds
        assert 4.0 < r["dead_everywhere"] < 30.0


def test_join_and_leave_become_visible_everywhere():
    assert 0 <= measure.join(5, 1)["join"] < 5.0
    assert 0 <= measure.leave(5, 1)["leave"] < 5.0


def test_no_loss_no_false_suspicions():
    r = measure.false_positives(5, 1, 0.0, 300.0)
    assert r["suspicions"] == r["deaths"] == 0
    assert r["node_hours"] == pytest.approx(5 * 300 / 3600)


def test_gossip_traffic_is_a_ping_and_an_ack_a_second_plus_push_pulls():
    small, big = measure.gossip_traffic(5, 1, 60.0), measure.gossip_traffic(20, 1, 60.0)
    assert 40 < small["datagram_rate"] < 200
    assert small["exchange_bytes"] < big["exchange_bytes"]  # the state exchanged grows with N
    assert big["bytes_per_node_s"] == pytest.approx(big["datagram_rate"] + big["exchange_bytes"] / 30.0)
    assert measure.push_pull_period(1000, 30.0) == 180.0


def test_heavy_loss_raises_suspicions_that_get_refuted():
    r = measure.false_positives(5, 2, 0.3, 300.0)
    assert r["suspicions"] > 0


def test_partition_heals_into_one_view():
    r = measure.partition_heal(5, 1)
    assert r["split_complete"] and r["heal"] is not None and r["heal"] < 120


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert measure.percentile(values, 50) == 50
    assert measure.percentile(values, 99) == 99
    assert measure.percentile([3.0], 99) == 3.0


def test_the_docs_section_is_replaced_and_the_prose_kept(tmp_path):
    doc = tmp_path / "m.md"
    doc.write_text(f"intro\n{measure.BEGIN}\nold\n{measure.END}\noutro\n")
    measure.write_section(str(doc), "new table")
    assert doc.read_text() == f"intro\n{measure.BEGIN}\nnew table\n{measure.END}\noutro\n"
