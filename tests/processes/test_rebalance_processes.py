"""Rebalance with real node processes (issue 12 §2): a sixth machine joins five.

At five nodes the best tolerance is 2; at six it is 3. After the new node joins, repair
raises every checkpoint to 3, rebalance drops what the raise left surplus, and the new
node ends up holding about its share. Checked on the piece files themselves, then by
killing the three nodes whose loss hurts most: every get is byte-identical.
"""

from __future__ import annotations

import itertools
import json

import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.processes.test_gc_processes import pieces_bytes
from tests.processes.test_repair_processes import disk_tolerance, tolerances_now
from tests.support.real_nodes import MiB, assert_gets_exact, model, put_each

pytestmark = pytest.mark.procs

EXTRA = {
    "repair": {"grace_seconds": 4.0},
    "gc": {"interval_seconds": 2.0, "lease_seconds": 3.0, "margin_seconds": 1.0},
}


def node_bytes(c: ProcCluster, i: int) -> int:
    total = 0
    for path in (c.nodes[i].data_dir / "pieces").glob("*/*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


@pytest.mark.timeout(600)
def test_a_sixth_node_gets_data_and_tolerance_reaches_3(tmp_path):
    with ProcCluster(tmp_path / "cluster", 6, extra=EXTRA) as c:
        for i in range(5):
            c.start(i)
        c.wait_alive(5, timeout=60, via=[0])
        sources = {
            "run1/step-1": model(tmp_path, 8 * MiB + 999, seed=31),
            "run1/step-2": model(tmp_path, 9 * MiB, seed=32),
            "run2/final": model(tmp_path, 8 * MiB + 3, seed=33),
        }
        manifests = put_each(c, sources, tolerance=2)
        five = set(range(5))
        assert all(disk_tolerance(c, m, five) == 2 for m in manifests.values())

        c.start(5)
        c.wait_alive(6, timeout=60, via=[0])
        six = set(range(6))
        try:
            wait_for(lambda: all(disk_tolerance(c, m, six) == 3 for m in manifests.values())
                     and all(v == 3 for v in tolerances_now(c, 0).values()),
                     timeout=240, what="tolerance 3 for every checkpoint", interval=1.0)
        except TimeoutError as err:
            raise AssertionError(f"{err}: {tolerances_now(c, 0)}\n{c.log_tails()}") from None
        assert node_bytes(c, 5) > 0, "nothing moved onto the new node"

        # Surplus from the raise is dropped: the disks settle near the policy's worth.
        def settled() -> bool:
            first = pieces_bytes(c)
            return first == pieces_bytes(c) and all(
                (c.metrics(i) or "").find("peerstore_rebalance_left 0") >= 0 for i in six)

        wait_for(settled, timeout=120, what="rebalance to go quiet", interval=2.0)
        share = pieces_bytes(c) / 6
        dropped = sum(_counter(c.metrics(i), "peerstore_rebalance_pieces_dropped_total") for i in six)
        assert dropped > 0, "the raise to tolerance 3 left no surplus copy to drop: rebalance never ran"
        assert node_bytes(c, 5) >= 0.5 * share, f"the new node holds {node_bytes(c, 5)}; a sixth is {share:.0f}"
        listing = json.loads(c.cli("ls", "--json", check=True).stdout)
        assert {e["name"] for e in listing} == set(sources)

        # The three nodes (not the coordinator) whose loss leaves the least.
        def left(trio: tuple[int, ...]) -> int:
            return min(disk_tolerance(c, m, six - set(trio)) for m in manifests.values())

        worst = min(itertools.combinations(sorted(six - {0}), 3), key=left)
        assert left(worst) >= 0
        for i in worst:
            c.kill(i)
        assert_gets_exact(c, tmp_path / "out", sources, f"after three kills {worst}")


def _counter(text: str | None, name: str) -> float:
    for line in (text or "").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
