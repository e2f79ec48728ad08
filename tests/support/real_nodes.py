"""Helpers for tests on real node processes (``ProcCluster``): a test checkpoint, and what
the nodes hold on disk, read from their data directories rather than taken on trust."""

from __future__ import annotations

import itertools

from pathlib import Path

from peerstore.model import placement
from peerstore.model.manifest import Manifest
from peerstore.model.placement import StripePlacement
from peerstore.model.policy import MiB
from peerstore.shell.store import MetaStore
from peerstore.testing.make_checkpoint import write_safetensors
from peerstore.testing.procs import ProcCluster

__all__ = ["MiB", "model", "piece_path", "stored_manifest", "stripe_slots"]


def model(tmp_path: Path, size: int, seed: int = 1) -> Path:
    """A safetensors file of ``size`` bytes (the 1B model's layout from 200 MiB on)."""
    path = tmp_path / f"model-{seed}.safetensors"
    write_safetensors(path, "llama-1b" if size >= 200 * MiB else "llama-135m", seed=seed, size=size)
    return path


def stored_manifest(c: ProcCluster, name: str) -> Manifest:
    """The manifest of checkpoint ``name``, as some node stored it on disk."""
    for node in c.nodes:
        meta = MetaStore(node.data_dir)
        for mid in meta.manifest_ids():
            manifest = Manifest.decode(meta.get_manifest(mid))
            if manifest.name == name:
                return manifest
    raise AssertionError(f"no node holds a manifest of {name}")


def stripe_slots(manifest: Manifest) -> list[list[tuple[str, int, bytes]]]:
    """Per stripe, (node, position, piece id) for every copy the placement hint names."""
    out = []
    for (_, _, stripe), hint in zip(manifest.iter_stripes(), manifest.placement, strict=True):
        nodes = StripePlacement.from_hint(hint, stripe.k, len(stripe.parity_ids)).positions()
        out.append([(node, position, pid)
                    for position, (pid, holders) in enumerate(zip(stripe.piece_ids, nodes, strict=True))
                    for node in holders])
    return out


def piece_path(c: ProcCluster, i: int, pid: bytes) -> Path:
    """Where node ``i`` keeps piece ``pid`` (the file may not exist)."""
    return c.nodes[i].data_dir / "pieces" / pid.hex()[:2] / pid.hex()


def put_each(c: ProcCluster, sources: dict[str, Path], tolerance: int) -> dict[str, Manifest]:
    """Put every source under its name through node 0; each must report ``tolerance``."""
    for name, path in sources.items():
        done = c.cli("put", str(path), "--name", name, check=True, timeout=180)
        assert f"tolerance {tolerance}" in done.stdout, done.stdout
    return {name: stored_manifest(c, name) for name in sources}


def assert_gets_exact(c: ProcCluster, out_dir: Path, sources: dict[str, Path], why: str) -> None:
    """Every source comes back byte-identical through node 0."""
    for name, path in sources.items():
        out = out_dir / name.replace("/", "_")
        got = c.cli("get", name, "--out", str(out), via=0, timeout=180)
        assert got.returncode == 0, (f"get {name} {why} failed\nstdout: {got.stdout}\n"
                                     f"stderr: {got.stderr}\n{c.log_tails()}")
        assert out.read_bytes() == path.read_bytes()


def disk_tolerance(c: ProcCluster, manifest: Manifest, nodes: set[int]) -> int:
    """Exact tolerance of what the disks of ``nodes`` hold (read from the piece files)."""
    stripes = []
    for _, _, stripe in manifest.iter_stripes():
        holders = [{i for i in nodes if piece_path(c, i, pid).is_file()} for pid in stripe.piece_ids]
        stripes.append((holders, stripe.k))
    return placement.checkpoint_tolerance(stripes, empty=len(nodes) - 1)


def kill_hardest(c: ProcCluster, manifests: dict[str, Manifest], nodes: set[int], count: int) -> tuple[int, ...]:
    """Kill the ``count`` nodes of ``nodes`` (never node 0, the coordinator) whose loss
    leaves the stored checkpoints the least tolerance, going by the piece files; returns them."""
    def left(victims: tuple[int, ...]) -> int:
        return min(disk_tolerance(c, m, nodes - set(victims)) for m in manifests.values())

    worst = min(itertools.combinations(sorted(nodes - {0}), count), key=left)
    assert left(worst) >= 0, f"losing {worst} would already lose data"
    for i in worst:
        c.kill(i)
    return worst
