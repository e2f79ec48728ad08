"""Real ``peerstore node`` processes on loopback, driven through the real CLI.

Each test asserts outcomes a user relies on: bytes identical after a get, through node
crashes (kill -9), a frozen node (SIGSTOP), a corrupted piece file, a wrong cluster key.
On failure every node's log tail is printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from peerstore.testing.make_checkpoint import write_checkpoint_dir, write_safetensors
from peerstore.testing.procs import ProcCluster, free_port, wait_for
from tests.support.paths import REPO
from tests.support.real_nodes import MiB, model, stored_manifest

pytestmark = pytest.mark.procs



@pytest.fixture
def cluster(tmp_path):
    with ProcCluster(tmp_path / "cluster", 5) as c:
        c.start_all()
        yield c


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    with ProcCluster(tmp_path_factory.mktemp("shared"), 5) as c:
        c.start_all()
        yield c


def core_event(c: ProcCluster, i: int, kind: str) -> float:
    """The node's counter of ``kind``, once it is non-zero (metrics refresh every second)."""
    def read() -> float:
        match = re.search(rf'peerstore_core_events_total{{kind="{kind}"}} ([0-9.e+]+)', c.metrics(i))
        return float(match.group(1)) if match else 0.0

    try:
        return wait_for(read, 5, f"metric {kind}")
    except TimeoutError:
        return 0.0


def test_few_hundred_mb_round_trip_read_by_the_node_and_streamed(shared_cluster, tmp_path):
    c = shared_cluster
    src = model(tmp_path, 200 * MiB)
    done = c.cli("put", str(src), "--name", "run1/step-500", check=True)
    assert "tolerance 2" in done.stdout
    c.cli("put", str(src), "--name", "run1/streamed", "--stream", via=1, check=True)
    for name, via in (("run1/step-500", 3), ("run1/streamed", 4)):
        out = tmp_path / f"{name.replace('/', '-')}.out"
        c.cli("get", name, "--out", str(out), via=via, check=True)
        assert out.read_bytes() == src.read_bytes()


def test_directory_checkpoint_round_trips_tree_and_modes(shared_cluster, tmp_path):
    c = shared_cluster
    ckpt = write_checkpoint_dir(tmp_path / "src", step=500, shape="tiny", seed=3)
    (ckpt / "nested" / "deeper").mkdir(parents=True)
    (ckpt / "nested" / "deeper" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(ckpt / "nested" / "deeper" / "run.sh", 0o755)
    c.cli("put", str(ckpt), "--name", "run1/checkpoint-500", check=True)
    out = tmp_path / "restored"
    c.cli("get", "run1/checkpoint-500@1", "--out", str(out), via=2, check=True)
    original = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*") if p.is_file())
    restored = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert restored == original
    for rel in original:
        assert (out / rel).read_bytes() == (ckpt / rel).read_bytes()
        assert (out / rel).stat().st_mode & 0o777 == (ckpt / rel).stat().st_mode & 0o777


def test_get_never_overwrites_without_force(shared_cluster, tmp_path):
    c = shared_cluster
    src = model(tmp_path, 8 * MiB, seed=4)
    c.cli("put", str(src), "--name", "run1/small", check=True)
    target = tmp_path / "existing"
    target.write_bytes(b"precious")
    refused = c.cli("get", "run1/small", "--out", str(target))
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert target.read_bytes() == b"precious"
    c.cli("get", "run1/small", "--out", str(target), "--force", check=True)
    assert target.read_bytes() == src.read_bytes()
    missing = c.cli("get", "run1/no-such-thing", "--out", str(tmp_path / "x"))
    assert missing.returncode == 4 and not (tmp_path / "x").exists()


def test_kill9_one_holder_then_its_twin_so_parity_is_needed(cluster, tmp_path):
    c = cluster
    src = model(tmp_path, 24 * MiB, seed=5)
    c.cli("put", str(src), "--name", "m", check=True)
    hint = stored_manifest(c, "m").placement[0]
    first, twin = c.index_of(hint[0]), c.index_of(hint[1])  # both replicas of shard 0
    via = next(n.index for n in c.nodes if n.index not in (first, twin))

    c.kill(first)
    out = tmp_path / "one-dead"
    c.cli("get", "m", "--out", str(out), via=via, check=True)
    assert out.read_bytes() == src.read_bytes()

    c.kill(twin)
    out = tmp_path / "two-dead"
    c.cli("get", "m", "--out", str(out), via=via, check=True)
    assert out.read_bytes() == src.read_bytes()
    assert core_event(c, via, "stripes_rebuilt_from_parity") >= 1


def test_a_frozen_node_costs_a_bounded_wait(cluster, tmp_path):
    c = cluster
    src = model(tmp_path, 16 * MiB, seed=6)
    c.cli("put", str(src), "--name", "m", check=True)
    primary = c.index_of(stored_manifest(c, "m").placement[0][0])
    via = next(n.index for n in c.nodes if n.index != primary)
    c.freeze(primary)
    try:
        started = time.monotonic()
        out = tmp_path / "out"
        c.cli("get", "m", "--out", str(out), via=via, check=True, timeout=120)
        elapsed = time.monotonic() - started
    finally:
        c.thaw(primary)
    assert out.read_bytes() == src.read_bytes()
    assert elapsed < 3 * 5.0 + 10, f"get with a frozen node took {elapsed:.1f}s"


def test_a_flipped_byte_on_disk_is_detected_and_served_elsewhere(cluster, tmp_path):
    c = cluster
    src = model(tmp_path, 16 * MiB, seed=7)
    c.cli("put", str(src), "--name", "m", check=True)
    manifest = stored_manifest(c, "m")
    pid = manifest.files[0].stripes[0].data_ids[0]
    primary = c.index_of(manifest.placement[0][0])
    piece = c.nodes[primary].data_dir / "pieces" / pid.hex()[:2] / pid.hex()
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0x01
    piece.write_bytes(bytes(data))
    via = next(n.index for n in c.nodes if n.index != primary and pid.hex() not in str(list(
        (n.data_dir / "pieces").rglob(pid.hex()))))
    out = tmp_path / "out"
    c.cli("get", "m", "--out", str(out), via=via, check=True)
    assert out.read_bytes() == src.read_bytes()
    assert core_event(c, via, "corrupt_pieces_fetched") >= 1


def test_put_while_a_node_is_down_then_it_catches_up(cluster, tmp_path):
    c = cluster
    c.kill(4)
    src = model(tmp_path, 16 * MiB, seed=8)
    done = c.cli("put", str(src), "--name", "m", check=True)
    assert "tolerance 2" in done.stdout  # 4 live nodes: the best is still 2
    hints = stored_manifest(c, "m").placement
    assert not any(c.nodes[4].node_id in hint for hint in hints)
    c.start(4)
    wait_for(lambda: "m" in c.cli("ls", via=4).stdout, 30, "the restarted node to learn the catalog")
    out = tmp_path / "out"
    c.cli("get", "m", "--out", str(out), via=4, check=True)
    assert out.read_bytes() == src.read_bytes()


def test_a_wrong_cluster_key_is_refused_and_logged(shared_cluster, tmp_path):
    c = shared_cluster
    impostor = tmp_path / "impostor.yaml"
    text = c.nodes[0].config_path.read_text().replace(c.cluster_key, "ab" * 32)
    impostor.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "peerstore", "--config", str(impostor), "ls"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "cluster key" in result.stderr
    wait_for(lambda: "refused a connection" in c.nodes[0].log_path.read_text(), 10, "the refusal in the log")


def test_launch_sh_local_5_runs_a_usable_cluster_and_stops_on_ctrl_c(tmp_path):
    data = tmp_path / "data"
    base = free_port()
    proc = subprocess.Popen(
        ["bash", str(REPO / "launch.sh"), "--local", "5", "--data", str(data), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        start_new_session=True,
    )
    try:
        client = data / "local" / "client.yaml"

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "peerstore", "--config", str(client), "--quiet", *args],
                                  capture_output=True, text=True, timeout=120)

        def ready():
            if not client.exists():
                return False
            status = cli("status", "--json")
            return status.returncode == 0 and sum(
                m["state"] == "alive" for m in json.loads(status.stdout)["members"]) == 5

        wait_for(ready, 60, "./launch.sh --local 5 to come up")
        src = tmp_path / "m.bin"
        write_safetensors(src, "tiny", seed=9)
        assert cli("put", str(src), "--name", "demo/m").returncode == 0
        out = tmp_path / "out.bin"
        assert cli("get", "demo/m", "--out", str(out)).returncode == 0
        assert out.read_bytes() == src.read_bytes()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    assert proc.returncode == 0, output
    leftover = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"node processes survived Ctrl-C: {leftover.stdout}"


def test_sigterm_leaves_gracefully_and_the_others_mark_it_left(cluster):
    c = cluster
    leaving = c.nodes[4].node_id
    assert c.stop(4) == 0  # SIGTERM: a clean exit

    def seen_as_left() -> bool:
        status = c.status(0)
        members = {m["id"]: m for m in (status or {}).get("members", [])}
        return members.get(leaving, {}).get("state") == "left"

    wait_for(seen_as_left, 15, "the stopped node to be marked left (not dead)")
