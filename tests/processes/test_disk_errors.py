"""Disk errors other than "full" on real node processes (bug 1 of issue 15): the failing
operation fails, with a metric and a log line naming the path and the errno, and the node
goes on. A node whose disk turned read-only takes no pieces and says so in ``status``.

- EFBIG: ``prlimit --fsize`` on a running node, then a put through another node.
- EROFS: a node whose data directory is a tmpfs, remounted read-only while it runs
  (root on Linux; in CI as root a skip fails the run, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import blake3
import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.real_nodes import MiB, model, stored_manifest

pytestmark = [pytest.mark.procs, pytest.mark.skipif(sys.platform != "linux", reason="prlimit and tmpfs are Linux's")]

FSIZE = 200_000  # bytes: a 1 MiB piece cannot be written, a manifest or the catalog can


def errors_metric(c: ProcCluster, i: int, kind: str) -> float:
    match = re.search(rf'peerstore_errors_total{{kind="{kind}"}} ([0-9.e+]+)', c.metrics(i))
    return float(match.group(1)) if match else 0.0


def held_pieces(c: ProcCluster, i: int) -> set[str]:
    root = c.nodes[i].data_dir / "pieces"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.mark.needs_real  # prlimit (util-linux); in CI as root a skip fails the run
@pytest.mark.timeout(300)
def test_efbig_fails_the_piece_not_the_node(tmp_path):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is needed to limit a node's file size")
    src = model(tmp_path, 12 * MiB)
    with ProcCluster(tmp_path / "cluster", 3) as c:
        c.start_all()
        limited = c.nodes[2]
        subprocess.run(["prlimit", "--pid", str(limited.proc.pid), f"--fsize={FSIZE}:{FSIZE}"], check=True, timeout=10)
        c.cli("put", str(src), "--name", "big/model", via=0, check=True)
        assert limited.running, f"the node died on EFBIG\n{c.log_tails()}"
        for path in (limited.data_dir / "pieces").rglob("*"):  # only small pieces fit, and no partial one
            if path.is_file():
                assert blake3.blake3(path.read_bytes()).hexdigest() == path.name
                assert path.stat().st_size <= FSIZE
        assert list((limited.data_dir / "tmp").iterdir()) == []
        log = limited.log_path.read_text(errors="replace")
        line = next((row for row in log.splitlines() if "EFBIG" in row), None)
        assert line is not None, log[-3000:]
        assert str(limited.data_dir) in line and "[Errno 27 EFBIG]" in line, line
        assert "Traceback" not in log
        assert wait_for(lambda: errors_metric(c, 2, "disk_io"), 10, "the disk_io metric") > 0
        out = tmp_path / "back.safetensors"
        c.cli("get", "big/model", "--out", str(out), via=2, check=True)
        assert out.read_bytes() == src.read_bytes()


def remount_read_only(mount_point) -> None:
    """As a failing disk is remounted; retried while a write in flight keeps it busy."""
    def remount() -> bool:
        return subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], capture_output=True,
                              timeout=10).returncode == 0

    wait_for(remount, 10, f"{mount_point} remounted read-only", interval=0.1)


@pytest.fixture
def tmpfs_node(tmp_path):
    """A 3-node cluster whose node 2 keeps its data on a tmpfs the test can remount."""
    if os.geteuid() != 0:
        pytest.skip("mounting and remounting a tmpfs needs root")
    c = ProcCluster(tmp_path / "cluster", 3)
    mount_point = c.nodes[2].data_dir
    mount_point.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        with c:
            c.start_all()
            yield c, mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10)


@pytest.mark.needs_real
@pytest.mark.timeout(300)
def test_a_node_whose_disk_turns_read_only_takes_no_pieces_and_says_so(tmp_path, tmpfs_node):
    c, mount_point = tmpfs_node
    before = model(tmp_path, 12 * MiB, seed=1)
    after = model(tmp_path, 12 * MiB, seed=2)
    c.cli("put", str(before), "--name", "ro/before", via=0, check=True)
    held = held_pieces(c, 2)
    assert held, "node 2 got no piece of the first put"

    remount_read_only(mount_point)
    c.cli("put", str(after), "--name", "ro/after", via=0, check=True)
    broken = c.nodes[2]
    assert broken.running, f"the node died when its disk turned read-only\n{c.log_tails()}"
    assert held_pieces(c, 2) == held
    manifest = stored_manifest(c, "ro/after")
    assert all(broken.node_id not in hint for hint in manifest.placement)

    status = json.loads(c.cli("status", "--json", via=0, check=True).stdout)
    assert list(status["read_only"]) == [broken.node_id], status.get("read_only")
    assert "EROFS" in status["read_only"][broken.node_id]
    text = c.cli("status", via=1, check=True).stdout
    assert f"DISK READ-ONLY on node {broken.node_id}" in text, text

    refused = c.cli("put", str(after), "--name", "ro/through-it", via=2)
    assert refused.returncode == 1 and "read-only disk" in refused.stderr, refused.stderr
    out = tmp_path / "back.safetensors"
    c.cli("get", "ro/before", "--out", str(out), via=2, check=True)  # reading still works
    assert out.read_bytes() == before.read_bytes()

    log = broken.log_path.read_text(errors="replace")
    assert "[Errno 30 EROFS]" in log and str(broken.data_dir) in log
    assert "Traceback" not in log
    assert errors_metric(c, 2, "disk_io") > 0
    assert broken.running
