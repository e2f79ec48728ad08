"""The watcher end to end: real node processes watching `watch.paths`, a separate writer
process writing checkpoints at a realistic pace (tests/support/ckpt_writer.py), and the real
CLI (`ls`, `get`, `status`, `peerstore watch --once`).

Every test asserts that only complete checkpoints are stored, each exactly once, and that
`get` returns bytes identical to what the writer finished.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.ckpt_writer import expected_bytes
from tests.support.paths import REPO

pytestmark = pytest.mark.procs

SETTLE, RETRY = 0.5, 1.0
LINUX = sys.platform.startswith("linux")
WAIT = 40.0


def watch_config(*paths: Path, **more) -> dict:
    return {"watch": {"paths": [str(p) for p in paths], "settle_seconds": SETTLE,
                      "pending_retry_seconds": RETRY, **more}}


def writer(scenario: str, directory: Path, **options) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tests.support.ckpt_writer", scenario, str(directory)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def expect_line(proc: subprocess.Popen, line: str) -> None:
    got = proc.stdout.readline().strip()
    assert got == line, f"writer said {got!r}, expected {line!r}"


def finish(proc: subprocess.Popen) -> None:
    expect_line(proc, "done")
    assert proc.wait(timeout=WAIT) == 0


def listing(c: ProcCluster, via: int = 0) -> dict[str, list[str]]:
    """{name: [version ids]} from `peerstore ls --json`."""
    result = c.cli("ls", "--json", via=via, timeout=60)
    assert result.returncode == 0, result.stderr
    out: dict[str, list[str]] = {}
    for entry in json.loads(result.stdout):
        out.setdefault(entry["name"], []).append(entry["version_id"])
    return out


def wait_listed(c: ProcCluster, names: set[str], timeout: float = WAIT) -> dict[str, list[str]]:
    try:
        return wait_for(lambda: (lambda got: got if names <= set(got) else None)(listing(c)), timeout,
                        f"{sorted(names)} in `peerstore ls`", interval=0.3)
    except TimeoutError as err:
        raise AssertionError(f"{err}\nstatus: {c.cli('status').stdout}\n{c.log_tails()}") from None


def got_bytes(c: ProcCluster, spec: str, out: Path) -> dict[str, bytes]:
    """`peerstore get SPEC` into ``out``: {path inside the checkpoint: bytes}."""
    result = c.cli("get", spec, "--out", str(out), via=1)
    assert result.returncode == 0, result.stderr
    if out.is_file():
        return {out.name: out.read_bytes()}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def inside(files: dict[str, bytes]) -> dict[str, bytes]:
    """The writer's files as paths inside the checkpoint (the checkpoint's own name dropped)."""
    return {path.split("/", 1)[1] if "/" in path else path: data for path, data in files.items()}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    (root / "llama").mkdir(parents=True)
    return root


def test_the_node_stores_each_finished_checkpoint_of_every_format_once_and_exactly(tmp_path, runs):
    with ProcCluster(tmp_path / "cluster", 3) as c:
        c.write_config(c.nodes[0], **watch_config(runs))
        c.start_all()
        writers = [
            writer("hf", runs / "llama", step=100, size=3 << 20, chunk=256 * 1024, pause=0.03),
            writer("presize", runs / "latest", size=2 << 20, chunk=256 * 1024, pause=0.1),
            writer("dcp", runs / "llama", name="step_300", size=2 << 20, chunk=256 * 1024, pause=0.03, gap=1.5),
            writer("torchzip", runs / "llama", name="optim.pt", size=2 << 20, chunk=128 * 1024, pause=0.05),
        ]
        expect_line(writers[2], "gap")  # the shards are written, .metadata is not
        time.sleep(1.0)
        assert "llama/step_300" not in listing(c), "stored a DCP checkpoint without its .metadata"
        for w in writers:
            finish(w)
        names = {"llama/checkpoint-100", "latest/model.safetensors", "llama/step_300", "llama/optim.pt"}
        wait_listed(c, names)
        time.sleep(SETTLE + 2 * RETRY)  # nothing else, and nothing twice
        listed = listing(c)
        assert {n: len(v) for n, v in listed.items()} == dict.fromkeys(names, 1)

        assert got_bytes(c, "llama/checkpoint-100", tmp_path / "got-hf") == \
            inside(expected_bytes("hf", 1, 3 << 20, step=100))
        assert got_bytes(c, "latest/model.safetensors", tmp_path / "got.safetensors") == \
            {"got.safetensors": expected_bytes("presize", 1, 2 << 20)["model.safetensors"]}
        assert got_bytes(c, "llama/step_300", tmp_path / "got-dcp") == \
            inside(expected_bytes("dcp", 1, 2 << 20, name="step_300"))
        assert got_bytes(c, "llama/optim.pt", tmp_path / "got.pt") == \
            {"got.pt": expected_bytes("torchzip", 1, 2 << 20, name="optim.pt")["optim.pt"]}

        status = c.status()
        watch = status["watch"]
        assert watch["dirs"] == [str(runs)] and watch["pending"] == [] and watch["stored"] == 4
        assert watch["last_stored"].split("@")[0] in names
        text = c.cli("status").stdout
        assert f"watching {runs}" in text and "last stored: " in text and "no checkpoints pending" in text
        metrics = c.metrics(0)
        assert "peerstore_watch_stored_total 4.0" in metrics and "peerstore_watch_pending 0.0" in metrics


def test_rewrites_become_versions_and_a_checkpoint_deleted_while_pending_is_never_stored(tmp_path, runs):
    with ProcCluster(tmp_path / "cluster", 3) as c:
        c.write_config(c.nodes[0], **watch_config(runs))
        c.start_all()
        latest = runs / "latest"
        finish(writer("safetensors", latest, seed=1, size=1 << 20, chunk=256 * 1024, pause=0.05))
        wait_listed(c, {"latest/model.safetensors"})
        finish(writer("safetensors", latest, seed=2, size=1 << 20, chunk=256 * 1024, pause=0.05))
        wait_for(lambda: len(listing(c).get("latest/model.safetensors", [])) == 2, WAIT, "the second version")
        # the same bytes written again: compared by BLAKE3 with what was stored, not stored again
        finish(writer("safetensors", latest, seed=2, size=1 << 20, chunk=256 * 1024, pause=0.05))
        wait_for(lambda: "content unchanged" in c.nodes[0].log_path.read_text(), WAIT, "the unchanged rewrite")

        # a checkpoint that never gets its trainer_state.json, deleted while it waits
        doomed = runs / "llama" / "checkpoint-9"
        finish(writer("safetensors", doomed, size=1 << 20, chunk=256 * 1024, pause=0.02))
        wait_for(lambda: any(p["name"] == "llama/checkpoint-9" and "trainer_state.json" in p["reason"]
                             for p in c.status()["watch"]["pending"]), WAIT, "checkpoint-9 to wait, with the reason")
        assert "trainer_state.json not written yet" in c.cli("status").stdout
        shutil.rmtree(doomed)
        wait_for(lambda: c.status()["watch"]["pending"] == [], WAIT, "the deleted checkpoint to leave the queue")
        time.sleep(SETTLE + RETRY)

        listed = listing(c)
        assert set(listed) == {"latest/model.safetensors"} and len(listed["latest/model.safetensors"]) == 2
        first = got_bytes(c, "latest/model.safetensors@1", tmp_path / "v1.safetensors")
        latest_bytes = got_bytes(c, "latest/model.safetensors", tmp_path / "v2.safetensors")
        assert first == {"v1.safetensors": expected_bytes("safetensors", 1, 1 << 20)["model.safetensors"]}
        assert latest_bytes == {"v2.safetensors": expected_bytes("safetensors", 2, 1 << 20)["model.safetensors"]}
        assert "deleted before it was stored" in c.nodes[0].log_path.read_text()


def test_a_node_restarted_with_checkpoints_pending_stores_each_once(tmp_path, runs):
    with ProcCluster(tmp_path / "cluster", 3) as c:
        c.write_config(c.nodes[0], **watch_config(runs))
        c.start_all()
        finish(writer("hf", runs / "llama", step=100, size=1 << 20, chunk=256 * 1024, pause=0.01))
        wait_listed(c, {"llama/checkpoint-100"})
        pending = runs / "llama" / "checkpoint-200"
        finish(writer("safetensors", pending, size=1 << 20, chunk=256 * 1024, pause=0.01))
        wait_for(lambda: any(p["name"] == "llama/checkpoint-200" for p in c.status()["watch"]["pending"]),
                 WAIT, "checkpoint-200 to be pending")
        assert c.stop(0) == 0
        state = json.loads((c.nodes[0].data_dir / "watch-queue.json").read_text())
        assert state["pending"] == [[str(runs), "llama/checkpoint-200"]]

        # while the node is down: checkpoint-200 is finished, checkpoint-300 written whole
        (pending / "trainer_state.json").write_text(json.dumps({"global_step": 200}))
        finish(writer("hf", runs / "llama", step=300, size=1 << 20, chunk=256 * 1024, pause=0.01))
        c.start(0)
        c.wait_alive(3)
        wait_listed(c, {"llama/checkpoint-100", "llama/checkpoint-200", "llama/checkpoint-300"})
        time.sleep(SETTLE + 2 * RETRY)
        assert {n: len(v) for n, v in listing(c).items()} == {
            "llama/checkpoint-100": 1, "llama/checkpoint-200": 1, "llama/checkpoint-300": 1}
        assert got_bytes(c, "llama/checkpoint-300", tmp_path / "got") == \
            inside(expected_bytes("hf", 1, 1 << 20, step=300))


@pytest.mark.skipif(not LINUX, reason="only Linux can tell a file is still open for writing")
def test_a_file_held_open_past_the_settle_time_is_stored_only_once_closed(tmp_path, runs):
    with ProcCluster(tmp_path / "cluster", 3) as c:
        c.write_config(c.nodes[0], **watch_config(runs))
        c.start_all()
        w = writer("hold", runs / "llama", hold=4.0, size=1 << 20)
        expect_line(w, "holding")
        wait_for(lambda: any("open for writing" in p["reason"] or "not closed" in p["reason"]
                             for p in c.status()["watch"]["pending"]), WAIT, "the file to be seen open")
        time.sleep(1.5)
        assert "llama/data.raw" not in listing(c), "stored a file its writer still held open"
        expect_line(w, "released")
        finish(w)
        wait_listed(c, {"llama/data.raw"})
        assert got_bytes(c, "llama/data.raw", tmp_path / "got.raw") == \
            {"got.raw": expected_bytes("hold", 1, 1 << 20)["data.raw"]}


def test_peerstore_watch_once_stores_what_is_finished_and_says_what_waits(tmp_path):
    directory = tmp_path / "out"
    with ProcCluster(tmp_path / "cluster", 3) as c:
        c.start_all()
        finish(writer("hf", directory / "llama", step=100, size=1 << 20, chunk=256 * 1024, pause=0.01))
        finish(writer("safetensors", directory / "llama" / "checkpoint-200", size=1 << 20, chunk=256 * 1024, pause=0.01))

        def watch_once(*extra: str) -> subprocess.CompletedProcess:
            return c.cli("watch", str(directory), "--once", "--settle", str(SETTLE), *extra, timeout=120)

        first = watch_once("--name-prefix", "pi/")
        assert first.returncode == 1, first.stdout + first.stderr
        assert "stored 1 checkpoint(s)" in first.stdout
        assert "llama/checkpoint-200 (as pi/llama/checkpoint-200): trainer_state.json not written yet" in first.stdout
        assert set(listing(c)) == {"pi/llama/checkpoint-100"}

        (directory / "llama" / "checkpoint-200" / "trainer_state.json").write_text(json.dumps({"global_step": 200}))
        second = watch_once("--name-prefix", "pi/")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "stored 1 checkpoint(s)" in second.stdout  # checkpoint-100 was not stored again
        assert {n: len(v) for n, v in listing(c).items()} == {"pi/llama/checkpoint-100": 1,
                                                              "pi/llama/checkpoint-200": 1}
        assert got_bytes(c, "pi/llama/checkpoint-100", tmp_path / "got") == \
            inside(expected_bytes("hf", 1, 1 << 20, step=100))

        # touched, not changed: the hashes the node returned with the put say it is the same
        state = directory / "llama" / "checkpoint-100" / "trainer_state.json"
        os.utime(state, ns=(time.time_ns(), time.time_ns()))
        third = watch_once("--name-prefix", "pi/")
        assert third.returncode == 0 and "stored 0 checkpoint(s), 1 unchanged" in third.stdout, third.stdout
        assert len(listing(c)["pi/llama/checkpoint-100"]) == 1

        missing = c.cli("watch", str(tmp_path / "nope"), "--once")
        assert missing.returncode == 2 and "not a directory" in missing.stderr
        bad = c.cli("watch", str(directory), "--once", "--name-prefix", "bad prefix")
        assert bad.returncode == 2 and "name_prefix" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("settle", [1.0, 5.0])
def test_latency_from_a_finished_100mb_checkpoint_to_ls(tmp_path, runs, settle):
    """How long after a ~100 MB Hugging Face checkpoint is finished (renamed into place) it
    is listed, on 4 local nodes. Run: ./launch.sh test -m slow -s -k latency"""
    import trio

    from peerstore.shell.client import NodeClient
    from peerstore.shell.config import load_config

    with ProcCluster(tmp_path / "cluster", 4, shard_size="4MiB") as c:
        c.write_config(c.nodes[0], **watch_config(runs, settle_seconds=settle))
        c.start_all()
        config = load_config(c.nodes[0].config_path)
        w = writer("hf", runs / "llama", step=100, size=64 << 20, chunk=8 << 20, pause=0.05)
        finish(w)  # "done" comes right after the rename into place
        finished = time.monotonic()

        async def poll() -> float:
            client = NodeClient("127.0.0.1", c.nodes[1].port, config.cluster_key)
            with trio.fail_after(120):
                while not await client.ls("llama/checkpoint-100"):
                    await trio.sleep(0.05)
            return time.monotonic() - finished

        latency = trio.run(poll)
        size = sum(len(b) for b in expected_bytes("hf", 1, 64 << 20, step=100).values())
        put = c.cli("put", str(runs / "llama" / "checkpoint-100"), "--name", "by-hand", check=True)
        print(f"\nsettle {settle:g} s: a {size / 1e6:.0f} MB checkpoint was listed {latency:.2f} s after it was "
              f"finished; `peerstore put` of the same directory: {put.stdout.strip()}")
        assert settle <= latency < settle + 60
