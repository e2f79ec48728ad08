"""Rebalance with real node processes (issue 12 §2): a sixth machine joins five.

At five nodes the best tolerance is 2; at six it is 3. After the new node joins, repair
raises every checkpoint to 3, rebalance drops what the raise left surplus, and the new
node ends up holding about its share. Checked on the piece files themselves, then by
killing the three nodes whose loss hurts most: every get is byte-identical.
"""

from __future__ import annotations

import json

import pytest

from peerstore.core.rebalance import still_spare
from peerstore.core.repair import stripes_of
from peerstore.testing.procs import ProcCluster, wait_for
from tests.processes.test_gc_processes import pieces_bytes
from tests.processes.test_repair_processes import tolerances_now
from tests.support.real_nodes import (
    MiB, assert_gets_exact, disk_tolerance, kill_hardest, model, piece_path, put_each,
)

pytestmark = pytest.mark.procs

EXTRA = {
    "repair": {"grace_seconds": 4.0},
    "gc": {"interval_seconds": 2.0, "lease_seconds": 3.0, "margin_seconds": 1.0},
}


def spare_on_disk(c: ProcCluster, manifests: dict, nodes: set[int]) -> list[tuple[str, int]]:
    """(piece, node) for every copy on the disks of ``nodes`` the stripes could do without."""
    ids = {i: c.nodes[i].node_id for i in nodes}
    stripes = [s for m in manifests.values() for s in stripes_of(m)]
    holders = {pid: {ids[i] for i in nodes if piece_path(c, i, pid).is_file()}
               for s in stripes for pid in s.piece_ids}
    return [(pid.hex()[:8], i) for pid, hs in holders.items() for i in nodes
            if ids[i] in hs and still_spare(pid, ids[i], stripes, holders, set(ids.values()))]


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

        # Whatever the raise left surplus is dropped: in the end no copy on any disk could
        # go without taking a stripe below the policy (checked from the piece files).
        spare_copies = lambda: spare_on_disk(c, manifests, six)  # noqa: E731
        try:
            wait_for(lambda: not spare_copies(), timeout=180, what="no surplus copy left", interval=2.0)
        except TimeoutError as err:
            raise AssertionError(f"{err}: {spare_copies()[:10]}\n{c.log_tails()}") from None
        share = pieces_bytes(c) / 6
        assert node_bytes(c, 5) >= 0.5 * share, f"the new node holds {node_bytes(c, 5)}; a sixth is {share:.0f}"
        assert all(disk_tolerance(c, m, six) == 3 for m in manifests.values()), "dropping surplus lowered tolerance"
        listing = json.loads(c.cli("ls", "--json", check=True).stdout)
        assert {e["name"] for e in listing} == set(sources)

        worst = kill_hardest(c, manifests, six, 3)
        assert_gets_exact(c, tmp_path / "out", sources, f"after three kills {worst}")



@pytest.mark.timeout(600)
def test_a_node_back_after_its_pieces_were_recreated_leaves_no_surplus(tmp_path):
    with ProcCluster(tmp_path / "cluster", 5, extra=EXTRA) as c:
        c.start_all(timeout=60)
        sources = {"run1/a": model(tmp_path, 9 * MiB, seed=41), "run1/b": model(tmp_path, 8 * MiB + 5, seed=42)}
        manifests = put_each(c, sources, tolerance=2)
        everyone = set(range(5))
        before = pieces_bytes(c)
        away = 3
        c.kill(away)  # its disk stays: it comes back after the grace, with everything it held
        c.wait_alive(4, timeout=90, via=[0])
        wait_for(lambda: all(disk_tolerance(c, m, everyone - {away}) == 2 for m in manifests.values()),
                 timeout=180, what="repair to restore tolerance 2 without the away node", interval=1.0)
        assert spare_on_disk(c, manifests, everyone), "its return should leave surplus copies"
        c.start(away)
        c.wait_alive(5, timeout=90, via=[0])
        try:
            wait_for(lambda: not spare_on_disk(c, manifests, everyone), timeout=180,
                     what="the surplus to be dropped", interval=2.0)
        except TimeoutError as err:
            raise AssertionError(f"{err}: {spare_on_disk(c, manifests, everyone)[:10]}\n{c.log_tails()}") from None
        assert all(disk_tolerance(c, m, everyone) >= 2 for m in manifests.values())
        assert pieces_bytes(c) <= before * 1.1, (pieces_bytes(c), before)
        assert_gets_exact(c, tmp_path / "out", sources, "after the surplus was dropped")
