"""A node killed with ``kill -9`` and restarted on the same data dir serves its pieces again.

The pieces are found on disk, not taken on trust: the test picks two other nodes to kill so
that some stripe can only be rebuilt with the restarted node's pieces, so a byte-identical
get proves the restarted node serves what it held before the crash.
"""

from __future__ import annotations

import itertools

import pytest

from peerstore.model.manifest import Manifest
from peerstore.testing.procs import ProcCluster
from tests.support.real_nodes import MiB, model, piece_path, stored_manifest, stripe_slots

pytestmark = pytest.mark.procs


def holders_on_disk(c: ProcCluster, manifest: Manifest) -> dict[bytes, set[int]]:
    """Piece id -> indices of the nodes whose disk has its file."""
    return {pid: {n.index for n in c.nodes if piece_path(c, n.index, pid).is_file()}
            for pid in manifest.piece_ids()}


def readable(manifest: Manifest, holders: dict[bytes, set[int]], alive: set[int]) -> list[bool]:
    """Per stripe: do the live nodes hold at least k distinct positions?"""
    out = []
    for (_, _, stripe), slots in zip(manifest.iter_stripes(), stripe_slots(manifest)):
        positions = {position for _, position, pid in slots if holders[pid] & alive}
        out.append(len(positions) >= stripe.k)
    return out


def kill_plan(c: ProcCluster, manifest: Manifest) -> tuple[int, tuple[int, int], int]:
    """(node to restart, two others to kill, a stripe only the restarted node can save)."""
    holders = holders_on_disk(c, manifest)
    everyone = {n.index for n in c.nodes}
    for restarted in sorted(everyone):
        for others in itertools.combinations(sorted(everyone - {restarted}), 2):
            with_it = readable(manifest, holders, everyone - set(others))
            without_it = readable(manifest, holders, everyone - set(others) - {restarted})
            assert all(with_it), f"tolerance 2 promised, but losing nodes {others} loses stripes"
            needy = [s for s, (a, b) in enumerate(zip(with_it, without_it)) if a and not b]
            if needy:
                return restarted, others, needy[0]
    raise AssertionError("no node's pieces are ever the only way to a stripe; use a bigger checkpoint")


@pytest.mark.timeout(600)
def test_kill9_restart_then_only_the_restarted_node_can_serve_a_stripe(tmp_path):
    with ProcCluster(tmp_path / "cluster", 5) as c:
        c.start_all(timeout=60)
        src = model(tmp_path, 24 * MiB, seed=11)
        done = c.cli("put", str(src), "--name", "m", check=True, timeout=180)
        assert "tolerance 2" in done.stdout
        manifest = stored_manifest(c, "m")
        restarted, (x, y), stripe = kill_plan(c, manifest)
        held_before = {pid for pid, nodes in holders_on_disk(c, manifest).items() if restarted in nodes}

        c.kill(restarted)  # kill -9: nothing flushed, no goodbye
        c.start(restarted)
        c.wait_alive(5, timeout=60)
        held_after = {pid for pid, nodes in holders_on_disk(c, manifest).items() if restarted in nodes}
        assert held_after == held_before, "the restarted node's piece files changed on disk"

        c.kill(x)
        c.kill(y)
        via = next(n.index for n in c.nodes if n.index not in (restarted, x, y))
        out = tmp_path / "out"
        got = c.cli("get", "m", "--out", str(out), via=via, timeout=180)
        assert got.returncode == 0, (
            f"get via node {via} failed after restarting node {restarted} and killing {x} and {y}; "
            f"stripe {stripe} needs node {restarted}'s pieces\nstdout: {got.stdout}\nstderr: {got.stderr}\n"
            f"{c.log_tails()}"
        )
        assert out.read_bytes() == src.read_bytes()
