"""`peerstore local N`: the cluster's files, and the supervisor, without real nodes."""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from peerstore.cli import local_cluster as lc
from peerstore.shell.config import load_config
from peerstore.errors import UsageError


def test_plan_assigns_ports_and_metrics():
    nodes = lc.plan_cluster(5, base_port=7420, root=Path("r"), metrics_base_port=9420)
    assert [n.port for n in nodes] == [7421, 7422, 7423, 7424, 7425]
    assert [n.metrics_port for n in nodes] == [9421, 9422, 9423, 9424, 9425]
    assert nodes[2].directory == Path("r/node-3") and nodes[2].log_path == Path("r/node-3/node.log")
    assert all(n.metrics_port == 0 for n in lc.plan_cluster(3, metrics_base_port=0))


@pytest.mark.parametrize(
    "count, base, metrics",
    [(0, 7420, 9420), (65, 7420, 9420), (3, 65533, 9420), (3, 7420, 65534), (3, 7420, 7419)],
)
def test_plan_refuses_impossible_clusters(count, base, metrics):
    with pytest.raises(UsageError):
        lc.plan_cluster(count, base, Path("r"), metrics)


def test_prepare_writes_loadable_configs_sharing_one_key(tmp_path):
    nodes, client_path = lc.prepare_cluster(4, base_port=17420, data=tmp_path, metrics_base_port=0)
    configs = [load_config(n.config_path) for n in nodes]
    keys = {c.cluster_key for c in configs}
    assert len(keys) == 1
    assert (tmp_path / "local" / "cluster.key").read_text().strip() == keys.pop().hex()
    for node, config in zip(nodes, configs):
        others = {("127.0.0.1", n.port) for n in nodes if n is not node}
        assert config.listen_host == "127.0.0.1" and config.listen_port == node.port
        assert set(config.seeds) == others
        assert config.mdns is False and config.metrics_port == 0
        assert config.data_dir == (node.directory / "store").resolve()
        assert config.transfer.memory_budget == 64 * 1024**2
        assert os.stat(node.config_path).st_mode & 0o777 == 0o600
    client = load_config(client_path)
    assert client.listen_port == nodes[0].port and client.cluster_key == configs[0].cluster_key


def test_rerun_reuses_the_key_and_a_bad_key_file_is_refused(tmp_path):
    first, _ = lc.prepare_cluster(2, base_port=17420, data=tmp_path)
    second, _ = lc.prepare_cluster(3, base_port=17420, data=tmp_path)
    assert load_config(first[0].config_path).cluster_key == load_config(second[2].config_path).cluster_key
    assert len(load_config(second[0].config_path).seeds) == 2  # reruns rewrite the seeds
    (tmp_path / "local" / "cluster.key").write_text("not a key\n")
    with pytest.raises(UsageError, match="delete it"):
        lc.prepare_cluster(2, data=tmp_path)


def test_busy_ports_are_found():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        node = lc.LocalNode(1, Path("x"), port, 0)
        assert f"{port}/tcp" in lc.busy_ports([node])


def test_log_tail_keeps_the_last_lines(tmp_path):
    log = tmp_path / "node.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert lc.log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert "cannot read" in lc.log_tail(tmp_path / "missing.log")


def fake_nodes(tmp_path: Path, count: int) -> list[lc.LocalNode]:
    nodes = lc.plan_cluster(count, 17420, tmp_path, 0)
    for node in nodes:
        node.directory.mkdir(parents=True)
        node.config_path.write_text("")
    return nodes


SLEEPER = [sys.executable, "-c", "import sys, time; print('started', sys.argv[1], flush=True); time.sleep(60)"]
QUITTER = [sys.executable, "-c", "import sys; print('boom: cannot bind'); sys.exit(3)"]
STUBBORN = [sys.executable, "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)"]


def test_supervisor_stops_children_with_sigterm_then_sigkill(tmp_path):
    out = io.StringIO()
    nodes = fake_nodes(tmp_path, 2)
    polite = lc.Supervisor(nodes[:1], out, SLEEPER)
    stubborn = lc.Supervisor(nodes[1:], out, STUBBORN)
    polite.start()
    stubborn.start()
    assert polite.check_children() == 1 and stubborn.check_children() == 1
    _wait_for(nodes[1].stderr_path, "ready")  # what a node prints outside its log
    _wait_for(nodes[0].stderr_path, "started")
    polite.stop(timeout=5)
    stubborn.stop(timeout=0.3)
    assert polite.procs[1].returncode == -signal.SIGTERM
    assert stubborn.procs[2].returncode == -signal.SIGKILL
    assert "killed 1 node(s)" in out.getvalue()
    assert "started" in nodes[0].stderr_path.read_text()


def test_run_local_reports_dead_nodes_with_their_log(tmp_path):
    out = io.StringIO()
    code = lc.run_local(2, base_port=17520, data=tmp_path, metrics_base_port=0, out=out, command=QUITTER)
    assert code == 1
    text = out.getvalue()
    assert "node-1 exited with code 3" in text and "node-2 exited with code 3" in text
    assert "boom: cannot bind" in text and "every node has exited" in text


def test_run_local_stops_cleanly_on_sigterm(tmp_path):
    out = io.StringIO()
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = lc.run_local(2, base_port=17620, data=tmp_path, metrics_base_port=0, out=out, command=SLEEPER,
                            stop_timeout=5)
    finally:
        timer.cancel()
    assert code == 0
    assert "stopping 2 node(s)" in out.getvalue()
    assert signal.getsignal(signal.SIGTERM) is before  # the supervisor's handler is gone again
    assert "exited with code" not in out.getvalue()  # nodes we stopped are not reported as dead


def _wait_for(path: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")
