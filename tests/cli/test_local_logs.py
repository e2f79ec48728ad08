"""`peerstore local`: each real node logs to its own rotated node.log (config ``log.file``),
and a node that cannot start still shows why on the terminal."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from peerstore.cli import local_cluster as lc
from peerstore.cli.overrides import parse_overrides
from peerstore.errors import UsageError
from peerstore.shell.config import load_config

ROTATE_BYTES = 1024  # the smallest log.max_bytes: a few records per file
BACKUPS = 2
ROTATE_WAIT = 30.0  # seconds for debug lines to fill node.log past its last backup


def test_each_node_config_names_its_own_rotated_log(tmp_path):
    nodes, _ = lc.prepare_cluster(2, base_port=17720, data=tmp_path, metrics_base_port=0)
    for node in nodes:
        log = load_config(node.config_path).log
        assert log.file == node.log_path.resolve() and log.format == "text"
        assert log.max_bytes == 4 * 1024**2 and log.backups == lc.LOCAL_LOG_BACKUPS
    nodes, _ = lc.prepare_cluster(2, base_port=17720, data=tmp_path, metrics_base_port=0,
                                  overrides=parse_overrides(["log.max_bytes=1KiB", "log.format=json"]))
    log = load_config(nodes[1].config_path).log
    assert (log.max_bytes, log.format, log.file) == (1024, "json", nodes[1].log_path.resolve())
    with pytest.raises(UsageError, match="log.file per node"):
        lc.prepare_cluster(2, data=tmp_path, overrides=parse_overrides(["log.file=/tmp/all.log"]))


def run_until(tmp_path: Path, ready, overrides: list[str], count: int = 2) -> tuple[int, str]:
    """run_local with real nodes until ``ready()`` (or ROTATE_WAIT), then SIGTERM; (code, output)."""
    out = io.StringIO()
    deadline = time.monotonic() + ROTATE_WAIT

    def stop_when_ready() -> None:
        while time.monotonic() < deadline and not ready():
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_ready, daemon=True)
    stopper.start()
    code = lc.run_local(count, base_port=17820, data=tmp_path, metrics_base_port=0, out=out, stop_timeout=10,
                        overrides=parse_overrides(overrides))
    stopper.join(5)
    return code, out.getvalue()


@pytest.mark.procs
def test_real_nodes_log_to_their_own_rotated_files(tmp_path):
    nodes = lc.plan_cluster(2, 17820, tmp_path / "local", 0)
    last = [node.directory / f"node.log.{BACKUPS}" for node in nodes]
    first_oldest: dict[Path, str] = {}  # the oldest kept line when each last backup first appeared

    def rotated_past_the_last_backup() -> bool:
        for path in last:
            oldest = _first_line(path)
            if oldest and path not in first_oldest:
                first_oldest[path] = oldest
        return len(first_oldest) == len(last) and all(_first_line(p) != first_oldest[p] for p in last)

    code, out = run_until(tmp_path, rotated_past_the_last_backup,
                          ["log_level=debug", "gossip.pushpull_interval=1", "log.format=json", f"log.max_bytes={ROTATE_BYTES}",
                           f"log.backups={BACKUPS}"])
    assert code == 0 and "local cluster of 2 node(s) is up" in out, out
    assert rotated_past_the_last_backup(), "the logs did not rotate past their last backup in time"
    for node in nodes:
        names = sorted(p.name for p in node.directory.glob("node.log*"))
        assert names == ["node.log"] + [f"node.log.{i}" for i in range(1, BACKUPS + 1)], names
        for name in names:
            path = node.directory / name
            assert path.stat().st_size <= ROTATE_BYTES or name == "node.log", (path, path.stat().st_size)
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            assert lines and all(line["node_name"] == f"local-{node.index}" for line in lines)
        # Everything went through the log; stderr.log holds only the supervisor's start line.
        assert node.stderr_path.read_text().count("\n") == 1, node.stderr_path.read_text()


def _first_line(path: Path) -> str:
    try:
        with open(path) as f:
            return f.readline()
    except FileNotFoundError:
        return ""


@pytest.mark.procs
def test_a_node_that_cannot_start_shows_why(tmp_path):
    nodes, _ = lc.prepare_cluster(1, base_port=17920, data=tmp_path, metrics_base_port=0)
    store = nodes[0].directory / "store"
    with open(store / "LOCK", "a") as held:  # as if another node ran on this data directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = io.StringIO()
        code = lc.run_local(1, base_port=17920, data=tmp_path, metrics_base_port=0, out=out, stop_timeout=5)
    assert code == 1
    text = out.getvalue()
    assert "node-1 exited with code 1" in text and "in use by another peerstore node" in text, text
    assert "in use by another peerstore node" in nodes[0].log_path.read_text()  # it logged it there
