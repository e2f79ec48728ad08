"""The benchmark: its measuring parts on their own, then short real runs on a 5-node cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerstore.bench import cli, profile
from peerstore.bench.baselines import policy_writers, stored_factor
from peerstore.bench.codec import codec_line, codec_throughput
from peerstore.bench.procstat import Meter, machine_busy_seconds
from peerstore.bench.report import AGAIN, COPY_ONCE, POLICY_COPIES, PhaseResult, aims
from peerstore.bench.runner import Bench, Options, Outcome
from peerstore.bench.sources import safetensors_source, shape_for
from peerstore.bench.throttle import DutyCycle
from peerstore.model.policy import MiB, Policy
from peerstore.testing.procs import ProcCluster


@pytest.mark.parametrize("size,nodes,policy,written", [
    (1000, 5, Policy(), 2500),
    (24 * MiB, 5, Policy(), 60 * MiB),
    (1000, 3, Policy(stripe_width=4, parity=1), 2250),
    (1000, 4, Policy(parity=0), 2000),
])
def test_policy_baseline_writes_the_bytes_the_policy_stores(size, nodes, policy, written):
    writers = policy_writers(size, nodes, policy)
    assert sum(length for _, length in writers) == written
    assert sum(length == size for _, length in writers) == policy.replicas
    full_copy_nodes = [node for node, length in writers if length == size]
    assert len(set(full_copy_nodes)) == policy.replicas  # the two replicas on two nodes
    assert all(0 <= node < nodes for node, _ in writers)


def test_default_policy_stores_two_and_a_half_times_the_bytes():
    assert stored_factor(Policy()) == 2.5


@pytest.mark.parametrize("size,shape", [(2_500_000_000, "llama-1b"), (200 * MiB, "llama-1b"), (24 * MiB, "llama-135m"),
                                        (2 * MiB, "tiny")])
def test_the_largest_shape_that_fits_is_chosen(size, shape):
    assert shape_for(size) == shape


def test_a_source_is_generated_once_and_a_truncated_one_is_regenerated(tmp_path):
    path = safetensors_source(tmp_path, 2 * MiB, seed=3)
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    assert safetensors_source(tmp_path, 2 * MiB, seed=3).stat().st_mtime_ns == mtime
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    assert safetensors_source(tmp_path, 2 * MiB, seed=3).stat().st_size == size


def test_codec_throughput_is_measured_on_a_stripe_it_can_rebuild():
    figures = codec_throughput(64 * 1024, 4, 2, rounds=2)
    assert figures["data_shards_lost"] == 2
    assert all(figures[key] > 0 for key in ("encode_mb_s", "decode_mb_s", "piece_id_mb_s"))
    assert "encode" in codec_line(figures) and "64 KiB shards" in codec_line(figures)


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_meter_sees_a_process_peak_memory_and_cpu_time():
    child = _child("import time\nx = bytearray(120 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
                   "del x\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass\ntime.sleep(5)")
    try:
        meter = Meter(interval=0.05)
        meter.watch("child", child.pid)
        with meter:
            time.sleep(1.5)
        usage = meter.stop()
    finally:
        child.kill()
        child.wait()
    assert usage.peak_rss_mib["child"] >= 100  # freed before the end: only a peak tracker sees it
    assert usage.cpu_seconds["child"] > 0.1


def test_machine_cpu_time_grows_while_something_runs():
    before = machine_busy_seconds()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    assert machine_busy_seconds() - before >= 0.2


def test_duty_cycle_stops_and_always_resumes_the_process():
    child = _child("import time\ntime.sleep(30)")
    try:
        throttle = DutyCycle(child.pid, period=0.05, stopped_fraction=0.5)
        with throttle:
            time.sleep(0.4)
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert throttle.cycles >= 2
        assert state != "T", "the throttled process was left stopped"
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("argv", [["--only", "put,bogus"], ["--shard-size", "1KiB"],
                                  ["--sweep-shard-size", ""], ["--nodes", "1"], ["--size", "12"]])
def test_bad_arguments_are_refused_with_usage_exit(argv, capsys):
    assert cli.main(argv) == 2
    assert "error" in capsys.readouterr().err


def _result(phase: str, kind: str, mb: float, peak: float = 50.0) -> PhaseResult:
    return PhaseResult(phase, kind, int(mb * 1e6), 1.0, {"nodes": 1.0}, {"node-0": peak})


@pytest.mark.parametrize("put_mb,get_mb,peak,met", [
    (80, 80, 100, [True, True, True]),
    (60, 60, 100, [False, False, True]),
    (80, 80, 400, [True, True, False]),
])
def test_aims_compare_phases_with_baselines_of_the_same_run(put_mb, get_mb, peak, met):
    results = [_result(COPY_ONCE, "baseline", 100), _result(POLICY_COPIES, "baseline", 100),
               _result("put", "put", put_mb, peak), _result("get", "get", get_mb)]
    assert [a["met"] for a in aims(results)] == met


def test_ratios_use_the_faster_of_the_two_baseline_runs():
    results = [_result(COPY_ONCE, "baseline", 50), _result(POLICY_COPIES, "baseline", 100),
               _result("put", "put", 75), _result("get", "get", 75),
               _result(COPY_ONCE + AGAIN, "baseline", 100), _result(POLICY_COPIES + AGAIN, "baseline", 20)]
    by_aim = {a["aim"].split(" >=")[0]: a["value"] for a in aims(results)}
    assert by_aim["put"] == 0.75 and by_aim["get"] == 0.75


def test_a_failed_phase_is_recorded_and_reraised(tmp_path):
    bench = Bench(Options(workdir=tmp_path))

    def body() -> Outcome:
        raise RuntimeError("the disk caught fire\nlong log tails")

    with pytest.raises(RuntimeError):
        bench.measure("put", "put", body)
    [result] = bench.results
    assert result.error == "the disk caught fire" and result.mb_s == 0
    assert aims(bench.results) == []  # a failed phase is no evidence for or against an aim


def test_a_failed_group_does_not_stop_the_run_but_fails_the_exit_code(tmp_path, monkeypatch, capsys):
    ran = []

    def broken(self, source, suffix=""):
        raise RuntimeError("cp: No space left on device")

    monkeypatch.setattr(Bench, "run_baselines", broken)
    monkeypatch.setattr(Bench, "run_dir_group", lambda self: ran.append("dir"))
    out = tmp_path / "out.json"
    code = cli.main(["--size", "2MiB", "--only", "baselines,dir", "--dir", str(tmp_path), "--no-drop-caches",
                     "--json", str(out)])
    assert code == 1 and ran == ["dir"]
    assert json.loads(out.read_text())["failures"] == ["baselines: cp: No space left on device",
                                                       "baselines again: cp: No space left on device"]
    assert "No space left" in capsys.readouterr().err


def test_a_failure_keeps_the_small_files_that_explain_it(tmp_path):
    bench = Bench(Options(workdir=tmp_path, nodes=3))
    bench.cluster = ProcCluster(tmp_path / "cluster", 3)  # configured, never started
    piece = bench.cluster.nodes[1].data_dir / "pieces" / "ab" / ("ab" * 32)
    piece.parent.mkdir(parents=True)
    piece.write_bytes(b"x" * 1000)
    bench.cluster.nodes[0].log_path.write_text("boom\n")
    kept = bench.keep_evidence("single file")
    assert (kept / "node-0" / "node.log").read_text() == "boom\n"
    assert not any(p.name == "config.yaml" for p in kept.rglob("*")), "the cluster key was copied"
    assert (kept / "node-1" / "pieces.txt").read_text() == "ab" * 32 + "\n"
    assert sum(f.stat().st_size for f in kept.rglob("*") if f.is_file()) < 64 * 1024


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    code = cli.main(["--size", "24MiB", "--nodes", "5", "--no-drop-caches", "--verify", "--dir", str(tmp_path),
                     "--json", str(out), *args])
    data = json.loads(out.read_text())
    assert code == 0, data["failures"]
    return data


@pytest.mark.procs
def test_a_small_run_measures_every_selected_phase(tmp_path):
    # --profile is optional tooling (py-spy is not a dependency): exercise it when present
    profiling = ["--profile", str(tmp_path / "profiles")] if profile.py_spy() else []
    data = _run(tmp_path, "--only", "baselines,put,get,get_2down", *profiling)
    phases = {p["phase"]: p for p in data["phases"]}
    assert list(phases) == [COPY_ONCE, POLICY_COPIES, "put", "get", "get, 1 node down", "get, 2 nodes down",
                            COPY_ONCE + AGAIN, POLICY_COPIES + AGAIN]
    for p in phases.values():
        assert p["bytes"] > 20 * MiB and p["seconds"] > 0 and p["mb_s"] > 0
        assert p["ratio_to_copy_once"] > 0 and p["ratio_to_policy_copies"] > 0
    for name in ("put", "get", "get, 1 node down", "get, 2 nodes down"):
        p = phases[name]
        assert p["cpu_seconds"]["nodes"] > 0 and p["cpu_seconds"]["cli"] > 0
        live = [v for v in p["peak_rss_mib"].values() if v is not None]
        assert len(p["peak_rss_mib"]) == 5 and all(v > 10 for v in live)
    assert phases["get"]["extra"]["verified_against_source"] is True
    assert phases["get, 2 nodes down"]["extra"]["degraded_stripes"] >= 1
    assert sum(v is None for v in phases["get, 2 nodes down"]["peak_rss_mib"].values()) == 2
    assert {a["aim"].split(" >=")[0] for a in data["aims"]} >= {"put", "get"}
    assert data["codec"]["encode_mb_s"] > 0 and data["codec"]["decode_mb_s"] > 0
    assert not any(p.name.startswith("run-") for p in tmp_path.iterdir()), "the run directory was left behind"


@pytest.mark.procs
@pytest.mark.slow
def test_directory_slow_node_and_concurrent_phases(tmp_path):
    data = _run(tmp_path, "--only", "put,dir,slow,concurrent")
    phases = {p["phase"]: p for p in data["phases"]}
    assert set(phases) == {"put", "put directory", "get directory", "put, 1 slow node", "4 puts at once"}
    slow = phases["put, 1 slow node"]["extra"]
    assert slow["throttle_cycles"] > 0 and slow["pieces_per_node"][f"node-{slow['throttled_node']}"] > 0
    assert phases["get directory"]["extra"]["files"] == 6
    assert all(p["mb_s"] > 0 for p in phases.values())


@pytest.mark.procs
@pytest.mark.slow
def test_shard_size_sweep(tmp_path):
    data = _run(tmp_path, "--only", "put", "--sweep-shard-size", "1MiB,4MiB", "--repeat", "2")
    assert [(r["shard_size"], r["runs"]) for r in data["sweep"]] == [("1MiB", 2), ("4MiB", 2)]
    assert all(r["put_mb_s"] > 0 and r["get_mb_s"] > 0 and r["put_peak_rss_mib"] > 0 for r in data["sweep"])
    assert data["sweep"][0]["pieces"] > data["sweep"][1]["pieces"]
