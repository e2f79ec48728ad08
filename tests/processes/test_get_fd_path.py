"""Issue 14 §3: a get on the node's own machine goes through its Unix socket, the CLI passes
the descriptors of the files it created, and the node writes the verified stripes into them.

Real node processes and the real CLI: the result must be byte-identical for one file and a
directory, also with a node holding pieces killed first (other replicas, parity) and with
a corrupt piece; over TCP (no socket to use) the get still streams, identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from peerstore.shell.peercred import client_socket_path
from peerstore.testing.procs import ProcCluster

pytestmark = [pytest.mark.procs, pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")),
                                                    reason="descriptor passing: Linux and macOS")]

MiB = 1 << 20


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def get(c: ProcCluster, spec: str, out: Path, *extra: str, via: int = 0) -> dict:
    result = c.cli("get", spec, "--out", str(out), "--json", *extra, via=via, timeout=120)
    assert result.returncode == 0, f"get exited {result.returncode}: {result.stderr}\n{c.log_tails()}"
    return json.loads(result.stdout)


def piece_files(c: ProcCluster, i: int) -> list[Path]:
    return sorted((c.nodes[i].data_dir / "pieces").rglob("*"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("fdget")
    with ProcCluster(root / "cluster", 5, shard_size="256KiB") as c:
        c.start_all()
        single = root / "model.safetensors"
        single.write_bytes(os.urandom(9 * MiB + 12345))  # several stripes and a short last one
        folder = root / "checkpoint-500"
        (folder / "sub").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(os.urandom(5 * MiB + 7))
        (folder / "optimizer.pt").write_bytes(os.urandom(3 * MiB))
        (folder / "sub" / "config.json").write_bytes(b'{"a": 1}')
        (folder / "empty.txt").write_bytes(b"")
        for path, name in ((single, "fd/single"), (folder, "fd/dir")):
            c.cli("put", str(path), "--name", name, check=True)
        c.single, c.folder, c.work = single, folder, root
        yield c


def test_a_local_get_of_one_file_is_written_by_the_node_and_identical(cluster):
    c = cluster
    out = c.work / "out-single"
    done = get(c, "fd/single", out)
    assert done["node_wrote"] is True and done["written"] == 1
    assert digest(out) == digest(c.single)
    assert not list(c.work.glob(".peerstore-tmp-*"))


def test_a_local_get_of_a_directory_is_written_by_the_node_and_identical(cluster):
    c = cluster
    out = c.work / "out-dir"
    done = get(c, "fd/dir", out)
    assert done["node_wrote"] is True and done["written"] == 3  # the empty file is the CLI's own
    assert tree(out) == tree(c.folder)
    assert (out / "empty.txt").stat().st_size == 0


def test_a_get_over_tcp_streams_and_is_identical(cluster):
    c = cluster
    sock = client_socket_path(c.nodes[0].data_dir)
    aside = sock.with_name("client.sock.aside")
    os.rename(sock, aside)  # the CLI finds no socket: TCP
    try:
        done = get(c, "fd/single", c.work / "out-tcp", "--node", f"127.0.0.1:{c.nodes[0].port}")
        done_dir = get(c, "fd/dir", c.work / "out-tcp-dir", "--node", f"127.0.0.1:{c.nodes[0].port}")
    finally:
        os.rename(aside, sock)
    assert done["node_wrote"] is False and "written" not in done
    assert done_dir["node_wrote"] is False
    assert digest(c.work / "out-tcp") == digest(c.single)
    assert tree(c.work / "out-tcp-dir") == tree(c.folder)
    # another node's address: TCP as well, even with a socket at hand
    other = get(c, "fd/single", c.work / "out-tcp-other", "--node", f"127.0.0.1:{c.nodes[1].port}")
    assert other["node_wrote"] is False and digest(c.work / "out-tcp-other") == digest(c.single)


def test_a_local_get_with_a_holder_killed_first_uses_replicas_and_parity(cluster):
    """Node 0 coordinates; nodes 1 and 2 (kill -9) hold pieces of every stripe. They are
    started again afterwards."""
    c = cluster
    c.kill(1)
    c.kill(2)
    out, out_dir = c.work / "out-down", c.work / "out-down-dir"
    done = get(c, "fd/single", out)
    done_dir = get(c, "fd/dir", out_dir)
    assert done["node_wrote"] is True and done_dir["node_wrote"] is True
    assert digest(out) == digest(c.single)
    assert tree(out_dir) == tree(c.folder)
    assert done["fallbacks"] + done["degraded"] > 0
    c.start(1)
    c.start(2)
    c.wait_alive(5)


def test_a_corrupt_piece_is_never_written_on_the_fd_path(cluster):
    """Last in this module. Every piece nodes 0 (the coordinator: read locally) and 3
    (fetched) hold is corrupted in place, same size: each is caught by its BLAKE3 id and
    fetched elsewhere or rebuilt from parity; the output is exact."""
    c = cluster
    held = [p for i in (0, 3) for p in piece_files(c, i) if p.is_file()]
    assert held, "nodes 0 and 3 hold no pieces"
    for p in held:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    out = c.work / "out-corrupt"
    done = get(c, "fd/single", out)
    assert done["node_wrote"] is True
    assert digest(out) == digest(c.single)
    assert done["fallbacks"] + done["degraded"] > 0
    caught = re.search(r'peerstore_errors_total\{kind="corrupt_piece"\} ([0-9.e+]+)', c.metrics(0))
    assert caught and float(caught.group(1)) > 0, "node 0 verified no corrupt piece"
