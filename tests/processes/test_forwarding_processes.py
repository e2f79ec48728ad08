"""Forwarded replication with real node processes over real TCP (issue 14 §5).

The coordinator sends each data shard once and its first holder forwards it to the
second: node 0's payload bytes sent drop from about two copies of the checkpoint to the
forwarding need, every copy the placement names is on its node's disk as a file that
hashes to its id, and a relay killed mid-put costs neither the put nor a byte.
"""

from __future__ import annotations

import subprocess
import sys

import blake3
import pytest

from peerstore.bench.lan import bytes_sent, layout_bytes
from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.real_nodes import (
    MiB, assert_gets_exact, disk_tolerance, model, piece_path, stored_manifest, stripe_slots,
)

pytestmark = pytest.mark.procs


def counter(text: str, name: str) -> float:
    """The value of an unlabelled counter in a node's Prometheus text (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def assert_every_copy_on_disk(c: ProcCluster, name: str) -> None:
    manifest = stored_manifest(c, name)
    index = {node.node_id: node.index for node in c.nodes}
    for slots in stripe_slots(manifest):
        for node_id, _, pid in slots:
            path = piece_path(c, index[node_id], pid)
            assert path.is_file(), f"{name}: piece {pid.hex()[:12]} is not on node {index[node_id]}"
            assert blake3.blake3(path.read_bytes()).digest() == pid, f"{path} does not hash to its id"


@pytest.mark.timeout(300)
def test_the_coordinator_sends_each_shard_once_and_every_copy_lands(tmp_path):
    source = model(tmp_path, 40 * MiB + 12345, seed=41)
    with ProcCluster(tmp_path / "cluster", 5) as c:
        c.start_all()
        c.wait_alive(5, timeout=60, via=[0])
        c.cli("put", str(source), "--name", "run/fwd", check=True, timeout=180)
        manifest = stored_manifest(c, "run/fwd")
        without, forwarded, _ = layout_bytes(manifest, c.nodes[0].node_id)
        sent = bytes_sent(c.metrics(0))
        assert sent <= forwarded * 1.05, f"node 0 sent {sent} bytes; forwarding needs {forwarded}"
        assert sent < 0.85 * without, f"node 0 sent {sent} bytes; without forwarding it sends {without}"
        # The core's counters reach /metrics with each node's next snapshot, so they are read
        # until they agree: every copy node 0 counts as forwarded, a relay passed on (a relay
        # may also have passed on a copy node 0 meanwhile sent itself, so >=).
        def counts() -> tuple[float, float]:
            return (counter(c.metrics(0), "peerstore_replicas_forwarded_total"),
                    sum(counter(c.metrics(i), "peerstore_pieces_forwarded_total") for i in range(1, 5)))

        def agree() -> bool:
            replicas, relayed = counts()
            return 0 < replicas <= relayed

        wait_for(agree, 30, "node 0 and the relays to count the forwards")
        assert_every_copy_on_disk(c, "run/fwd")
        assert_gets_exact(c, tmp_path / "out", {"run/fwd": source}, "after a forwarded put")


@pytest.mark.timeout(400)
def test_a_relay_killed_mid_put_costs_neither_the_put_nor_a_byte(tmp_path):
    source = model(tmp_path, 160 * MiB, seed=42)
    with ProcCluster(tmp_path / "cluster", 5) as c:
        c.start_all()
        c.wait_alive(5, timeout=60, via=[0])
        put = subprocess.Popen(
            [sys.executable, "-m", "peerstore", "--config", str(c.nodes[0].config_path), "--quiet",
             "put", str(source), "--name", "run/fwd"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        try:
            relay = wait_for(
                lambda: next((i for i in range(1, 5)
                              if counter(c.metrics(i), "peerstore_pieces_forwarded_total") > 0), None)
                or (put.poll() is not None and -1),
                120, "a node to forward a piece", interval=0.05)
            assert relay != -1, "the put ended before any node forwarded"
            c.kill(relay)  # SIGKILL, with forwards of this put in flight or queued
            out, err = put.communicate(timeout=240)
        finally:
            if put.poll() is None:
                put.kill()
        assert put.returncode == 0, f"put failed after relay {relay} died:\n{out}\n{err}\n{c.log_tails()}"
        assert_gets_exact(c, tmp_path / "out", {"run/fwd": source}, f"with relay {relay} dead")
        c.start(relay)
        c.wait_alive(5, timeout=60, via=[0])
        manifest = stored_manifest(c, "run/fwd")
        # Every copy the put counted is on a disk (the dead relay's too, now it is back).
        assert disk_tolerance(c, manifest, set(range(5))) >= manifest.tolerance
        assert_gets_exact(c, tmp_path / "out2", {"run/fwd": source}, "after the relay came back")
