"""What the cluster stored, read from the nodes' data directories beside the running nodes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import blake3

from peerstore.model.manifest import Manifest
from peerstore.testing.procs import ProcCluster


def stored_manifest(data_dir: Path, name: str) -> Manifest | None:
    """The newest manifest named ``name`` a node holds, read straight from its files.

    (Not through MetaStore: opening one sweeps temp files, unsafe beside a live node.)
    """
    best: Manifest | None = None
    manifests = data_dir / "manifests"
    for entry in os.scandir(manifests) if manifests.is_dir() else ():
        if len(entry.name) != 64 or not entry.is_file():
            continue
        data = Path(entry.path).read_bytes()
        if blake3.blake3(data).hexdigest() != entry.name:
            continue
        manifest = Manifest.decode(data)
        if manifest.name == name and (best is None or manifest.version > best.version):
            best = manifest
    return best


def replica_pair(manifest: Manifest, spare: str) -> tuple[str, str]:
    """Both holders of one data shard, neither of them ``spare`` (the node the CLI talks
    to). The placement hint of a stripe lists data0 A, data0 B, data1 A, ..., parity."""
    for _, index, stripe in manifest.iter_stripes():
        hint = manifest.placement[index]
        for i in range(stripe.k):
            a, b = hint[2 * i], hint[2 * i + 1]
            if spare not in (a, b) and a != b:
                return a, b
    raise RuntimeError("no data shard has both replicas away from the coordinating node; "
                       "run with more nodes")


def share_times(c: ProcCluster, name: str, started: float) -> dict[str, Any]:
    """Per node: pieces of ``name`` it holds and when the last one landed (seconds
    after the put started, from the piece files' mtimes)."""
    manifest = stored_manifest(c.nodes[0].data_dir, name)
    if manifest is None:
        return {}
    ids = manifest.piece_ids()
    pieces, last = {}, {}
    for node in c.nodes:
        times = []
        for pid in ids:
            path = node.data_dir / "pieces" / pid.hex()[:2] / pid.hex()
            try:
                times.append(path.stat().st_mtime)
            except FileNotFoundError:
                continue
        pieces[f"node-{node.index}"] = len(times)
        last[f"node-{node.index}"] = round(max(times) - started, 2) if times else None
    return {"pieces_per_node": pieces, "share_done_seconds": last}

