"""Repair after node loss, with real node processes (issue 12 §1).

Five nodes, several checkpoints. One node is killed with ``kill -9`` and its data directory
deleted: gone for good. With a short grace period (``repair.grace_seconds`` in the config)
the survivors re-create its pieces until ``status`` reports tolerance 2 (the best at four
nodes) for every checkpoint, which the test also checks on the survivors' disks. Then the
two survivors whose loss hurts most are killed as well: every get is byte-identical.
"""

from __future__ import annotations

import json
import shutil

import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.real_nodes import (
    MiB, assert_gets_exact, disk_tolerance, kill_hardest, model, piece_path, put_each,
)

pytestmark = pytest.mark.procs

GRACE = 4.0


def tolerances_now(c: ProcCluster, via: int) -> dict[str, int]:
    status = c.status(via)
    if not status:
        return {}
    return {row["name"]: row.get("tolerance_now", -9) for row in status.get("checkpoints", [])}


@pytest.mark.timeout(900)
def test_kill9_and_wipe_one_node_then_repair_restores_tolerance_2_and_survives_two_more(tmp_path):
    extra = {"repair": {"grace_seconds": GRACE}}
    with ProcCluster(tmp_path / "cluster", 5, extra=extra) as c:
        c.start_all(timeout=60)
        sources = {
            "run1/step-100": model(tmp_path, 9 * MiB + 12345, seed=21),
            "run1/step-200": model(tmp_path, 14 * MiB, seed=22),
            "run2/final": model(tmp_path, 8 * MiB + 7, seed=23),
        }
        manifests = put_each(c, sources, tolerance=2)

        # Node 0 coordinates from now on. The victim holds a piece no other node holds (a parity
        # chunk), so the rebuild path must run, whatever placement the random node ids gave.
        victim = next(i for i in (3, 1, 2, 4) if _holds_a_sole_copy(c, i, manifests.values()))
        c.kill(victim)
        shutil.rmtree(c.nodes[victim].data_dir)  # gone for good
        survivors = {0, 1, 2, 3, 4} - {victim}
        c.wait_alive(4, timeout=90, via=[0])
        below = tolerances_now(c, 0)
        assert below and min(below.values()) < 2, f"losing a node left every checkpoint at tolerance 2: {below}"

        try:
            wait_for(lambda: (t := tolerances_now(c, 0)) and all(v == 2 for v in t.values()) and len(t) == 3,
                     timeout=240, what="status to report tolerance 2 for every checkpoint", interval=1.0)
        except TimeoutError as err:
            raise AssertionError(f"{err}: {tolerances_now(c, 0)}\n{c.log_tails()}") from None
        listing = json.loads(c.cli("ls", "--json", check=True).stdout)
        assert {e["name"]: e["tolerance"] for e in listing} == {name: 2 for name in sources}
        for name, manifest in manifests.items():
            assert disk_tolerance(c, manifest, survivors) == 2, f"{name}: the disks do not hold tolerance 2"
        metrics = [c.metrics(i) for i in survivors]
        assert sum(_metric(text, "peerstore_repair_bytes_total") for text in metrics) > 0
        # Parity chunks on the lost node had no other copy: the daemon's rebuild path ran.
        assert sum(_metric(text, 'peerstore_core_events_total{kind="repair_rebuilds"}') for text in metrics) > 0

        worst = kill_hardest(c, manifests, survivors, 2)
        assert_gets_exact(c, tmp_path / "out", sources, f"after repair and two more kills {worst}")


def _holds_a_sole_copy(c: ProcCluster, node: int, manifests) -> bool:
    for manifest in manifests:
        for _, _, stripe in manifest.iter_stripes():
            for pid in stripe.piece_ids:
                holders = {i for i in range(len(c.nodes)) if piece_path(c, i, pid).is_file()}
                if holders == {node}:
                    return True
    return False


def _metric(text: str, name: str) -> float:
    """The sum of the samples of ``name`` (a metric name, or a name with its labels)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total
