"""Issue 15, bug 4: a file modified in place (or appended to) while `peerstore put` reads it
was stored torn and reported as success. Now the put fails with "changed during put" and
nothing is committed, whether the node reads the file itself (a CLI on the node's machine)
or the CLI streams it.

The change is made while the reader (the node, or the CLI for --stream) holds the file open,
which the test sees in /proc (Linux).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerstore.testing.procs import ProcCluster, wait_for

pytestmark = [pytest.mark.procs, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")]

MiB = 1 << 20
SIZE = 48 * MiB  # a few seconds of reading with the small buffers below


def holds_open(pid: int, path: Path) -> bool:
    target = path.stat()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


@pytest.fixture
def cluster(tmp_path):
    # A cluster per test: a streamed put whose client dies mid-way can leave a node with
    # this tiny memory budget unable to start the next put (a separate, older bug).
    root = tmp_path
    extra = {"transfer": {"request_timeout": 5.0, "memory_budget": "1MiB", "max_inflight_bytes_per_peer": "256KiB"}}
    with ProcCluster(root / "cluster", 3, shard_size="64KiB", extra=extra) as c:
        c.start_all()
        yield c


@pytest.mark.parametrize("change", ["in-place", "append"])
@pytest.mark.parametrize("how", ["node-reads", "cli-streams"])
def test_a_file_changed_while_a_put_reads_it_fails_the_put_and_stores_nothing(cluster, tmp_path, how, change):
    c = cluster
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(SIZE))
    name = f"torn/{how}-{change}"
    argv = [sys.executable, "-m", "peerstore", "--config", str(c.nodes[0].config_path), "--quiet",
            "put", str(path), "--name", name] + (["--stream"] if how == "cli-streams" else [])
    put = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        reader = put.pid if how == "cli-streams" else c.nodes[0].proc.pid
        wait_for(lambda: holds_open(reader, path) or put.poll() is not None, 30, "the put to open the file",
                 interval=0.002)
        assert put.poll() is None, "the put finished before the test could change the file"
        time.sleep(0.02)  # past the file system's timestamp granularity
        with open(path, "r+b" if change == "in-place" else "ab") as f:
            if change == "in-place":
                f.seek(SIZE - 4096)  # a part the reader has not reached yet
            f.write(os.urandom(4096))
        out, err = put.communicate(timeout=120)
    finally:
        if put.poll() is None:
            put.kill()
            put.wait()
    assert put.returncode == 1, f"put exited {put.returncode}: {out} {err}\n{c.log_tails()}"
    assert "changed during put" in err
    listed = c.cli("ls", name)
    assert listed.returncode == 4, f"the torn put was committed: {listed.stdout}"
