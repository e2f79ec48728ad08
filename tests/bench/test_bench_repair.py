"""The benchmark's repair phase: its measuring parts, then a small real run on 5 nodes."""

from __future__ import annotations

import json

import pytest

from peerstore.bench import cli
from peerstore.bench.repair import (at_policy, choose_victim, disk_tolerance, overlap, pacing_bound,
                                    parse_metrics)
from peerstore.bench.report import PhaseResult, aims
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.policy import MiB, Policy
from peerstore.model.names import VersionId

METRICS_TEXT = """\
# HELP peerstore_members Cluster members by state
# TYPE peerstore_members gauge
peerstore_members{state="alive"} 4.0
peerstore_members{state="dead"} 1.0
peerstore_repair_bytes_total 1.2582912e+07
peerstore_repair_bytes_created 1.7e+09
peerstore_repair_bytes_left 0.0
peerstore_checkpoints_below_policy 2.0
"""


def test_metrics_are_read_by_exact_name_and_label():
    assert parse_metrics(METRICS_TEXT) == {"dead": 1.0, "repair_bytes": 12582912.0, "bytes_left": 0.0,
                                           "below_policy": 2.0}


def test_the_victim_holds_about_an_equal_share_and_is_never_the_spared_node():
    held = {0: 200, 1: 90, 2: 205, 3: 260, 4: 245}  # 1000 in all: 200 each
    assert choose_victim(held, spare=0) == 2
    assert choose_victim({0: 100, 1: 300, 2: 500}, spare=0) == 1


def test_pacing_bound_is_set_by_the_busiest_node_after_its_burst():
    per_node = {"node-0": 100 * MiB, "node-1": 300 * MiB}
    assert pacing_bound(per_node, 10 * MiB, 50 * MiB) == pytest.approx(400 * MiB / 25)
    assert pacing_bound(per_node, 0, 50 * MiB) is None  # unpaced
    assert pacing_bound({"node-0": 10 * MiB}, 10 * MiB, 50 * MiB) is None  # all within the burst


def test_overlap_is_the_covered_share_of_the_first_interval():
    assert overlap((10.0, 20.0), (15.0, 40.0)) == 0.5
    assert overlap((10.0, 20.0), (0.0, 5.0)) == 0.0
    assert overlap((10.0, 20.0), (0.0, 30.0)) == 1.0


def test_policy_is_back_only_when_every_checkpoint_is_at_the_best_and_none_below():
    rows = [{"name": "a", "tolerance_now": 2, "below_policy": False},
            {"name": "b", "tolerance_now": 3, "below_policy": False}]
    assert at_policy({"checkpoints": rows}, ["a", "b"], best=2)
    assert not at_policy({"checkpoints": rows}, ["a", "b", "c"], best=2)  # c not listed
    rows[0]["tolerance_now"] = 1
    assert not at_policy({"checkpoints": rows}, ["a", "b"], best=2)
    rows[0].update(tolerance_now=2, below_policy=True)
    assert not at_policy({"checkpoints": rows}, ["a", "b"], best=2)
    assert not at_policy(None, ["a"], best=2)


def _manifest(piece_ids: list[bytes]) -> Manifest:
    stripe = StripeEntry(k=4, p=2, block_size=MiB, data_ids=tuple(piece_ids[:4]), data_lengths=(MiB,) * 4,
                         parity_ids=tuple(piece_ids[4:]))
    file = FileEntry(path="m", size=4 * MiB, mode=0o644, blake3=b"\0" * 32, stripes=(stripe,))
    return Manifest(name="x", version=VersionId(1, "ab" * 8), policy=Policy(), files=(file,),
                    placement=(("n",) * 10,), tolerance=2, created=0.0, is_dir=False)


def test_disk_tolerance_counts_the_copies_on_each_node():
    ids = [bytes([i]) * 32 for i in range(6)]
    manifest = _manifest(ids)
    h = [i.hex() for i in ids]
    # data 0..3 twice each, parity on two more nodes: any two of four nodes may go
    spread = {0: {h[0], h[1], h[4]}, 1: {h[2], h[3], h[5]}, 2: {h[0], h[2], h[4]}, 3: {h[1], h[3], h[5]}}
    assert disk_tolerance(manifest, spread) == 2
    spread[3] = set()  # node 3's copies gone: data 1 and 3 have one copy, parity 1 one
    assert disk_tolerance(manifest, spread) < 2


def test_the_repair_aim_is_judged_at_the_default_pacing_only():
    def repair(ratio: float, default: bool) -> PhaseResult:
        return PhaseResult("repair [x]", "repair", 100, 1.0, extra={"ratio_to_put": ratio, "default_pacing": default})

    assert [a["met"] for a in aims([repair(0.6, True)])] == [True]
    assert [a["met"] for a in aims([repair(0.4, True)])] == [False]
    assert aims([repair(0.4, False)]) == []


def test_bad_repair_rates_are_refused(capsys):
    assert cli.main(["--only", "repair", "--repair-rate", "fast"]) == 2
    assert cli.main(["--only", "repair", "--repair-rate", "1MiB,2MiB,3MiB,4MiB,5MiB"]) == 2
    assert "error" in capsys.readouterr().err


def test_repair_is_not_in_the_default_run():
    assert "repair" not in cli.build_parser().parse_args([]).only
    assert cli.build_parser().parse_args(["--only", "repair"]).only == {"repair"}


@pytest.mark.procs
@pytest.mark.timeout(180)
def test_a_small_repair_run_restores_policy_and_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    code = cli.main(["--size", "20MiB", "--shard-size", "1MiB", "--only", "repair", "--repair-grace", "2",
                     "--no-drop-caches", "--verify", "--dir", str(tmp_path), "--json", str(out)])
    data = json.loads(out.read_text())
    assert code == 0, data["failures"]
    phases = {p["phase"]: p for p in data["phases"]}
    label = "32 MiB/s per node"
    assert list(phases) == [f"repair: put x5 [{label}]", f"repair [{label}]", f"repair: get meanwhile [{label}]",
                            f"repair: get after [{label}]"]
    put, repair = phases[f"repair: put x5 [{label}]"], phases[f"repair [{label}]"]
    x = repair["extra"]
    assert put["bytes"] >= 19 * MiB and put["mb_s"] > 0
    assert repair["bytes"] > 0 and repair["mb_s"] > 0 and repair["seconds"] > 0
    assert x["bytes_recreated_disk"] > 0 and x["pieces_recreated"] > 0
    assert x["bytes_recreated_metric"] >= x["bytes_recreated_disk"]
    assert x["victim"] != 0 and 0.1 < x["victim_share"] < 0.35
    assert x["tolerance_best"] == 2
    assert len(x["tolerance_now"]) == 5 and min(x["tolerance_now"].values()) >= 2
    assert len(x["disk_tolerance"]) == 5 and min(x["disk_tolerance"].values()) >= 2
    assert x["ratio_to_put"] > 0 and x["put_mb_s"] > 0 and x["pacing_bytes_per_second"] == 32 * MiB
    assert x["total_seconds_from_kill"] > x["repair_seconds_from_grace_end"] > 0
    assert x["get_during_over_after_seconds"] > 0 and 0 <= x["get_overlap_with_repair"] <= 1
    assert x["repair_bytes_during_get"] <= x["bytes_recreated_disk"]
    assert phases[f"repair: get meanwhile [{label}]"]["extra"]["repair_mb_s_meanwhile"] >= 0
    for name in (f"repair: get meanwhile [{label}]", f"repair: get after [{label}]"):
        assert phases[name]["extra"]["verified_against_source"] is True
        assert sum(v is None for v in phases[name]["peak_rss_mib"].values()) == 1  # the victim is gone
    assert any(a["aim"].startswith(f"repair [{label}] >= 0.5 x its put") for a in data["aims"])
    assert not any(p.name.startswith("run-") for p in tmp_path.iterdir()), "the run directory was left behind"
