"""Real node processes: bit rot in piece files is found by `peerstore verify` and by scrub,
quarantined, and repaired, after which verify reports all well (issue 12, scrub and verify)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.real_nodes import MiB, piece_path, stored_manifest

pytestmark = pytest.mark.procs

NODES = 4


def verify(c: ProcCluster, *args: str, via: int = 0) -> tuple[int, dict]:
    result = c.cli("verify", *args, "--json", via=via, timeout=120)
    assert result.returncode in (0, 1), f"verify exited {result.returncode}: {result.stderr}\n{c.log_tails()}"
    return result.returncode, json.loads(result.stdout)


def flip(path: Path) -> None:
    """Flip one byte in the middle of a file, in place (same inode, same size)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def rot_some(c: ProcCluster, names: list[str], count: int) -> list[tuple[int, bytes]]:
    """Flip bytes in ``count`` piece files: distinct pieces, on different nodes where
    possible, at most one per stripe so every one is repairable."""
    chosen: list[tuple[int, bytes]] = []
    for name in names:
        for _, _, stripe in stored_manifest(c, name).iter_stripes():
            if len(chosen) == count:
                return chosen
            for pid in stripe.piece_ids:
                holders = [i for i in range(NODES) if piece_path(c, i, pid).exists()]
                free = [i for i in holders if i not in {n for n, _ in chosen}] or holders
                if free and pid not in {p for _, p in chosen}:
                    flip(piece_path(c, free[0], pid))
                    chosen.append((free[0], pid))
                    break
    assert len(chosen) == count
    return chosen


def corrupt_problems(report: dict) -> set[tuple[str, str]]:
    return {(p["node"], p["piece_id"]) for c in report["checkpoints"] for p in c["problems"]
            if p["kind"] == "corrupt"}


def put_two(c: ProcCluster, tmp_path: Path) -> list[Path]:
    sources = []
    for seed, size in ((1, 6 * MiB + 12345), (2, 5 * MiB)):
        path = tmp_path / f"model-{seed}.bin"
        path.write_bytes(random.Random(seed).randbytes(size))
        sources.append(path)
    c.cli("put", str(sources[0]), "--name", "run1/a", check=True)
    c.cli("put", str(sources[1]), "--name", "run1/b", via=1, check=True)
    return sources


def test_verify_reports_flipped_bytes_and_after_repair_reports_all_well(tmp_path):
    with ProcCluster(tmp_path / "cluster", NODES, extra={"scrub": {"period": 0}}) as c:  # scrub off
        c.start_all()
        sources = put_two(c, tmp_path)
        code, report = verify(c)
        assert code == 0 and report["ok"], report
        assert report["checked"]["checkpoints"] == 2 and report["checked"]["copies"] > 0

        rotten = rot_some(c, ["run1/a", "run1/b"], 3)
        code, report = verify(c, via=2)
        assert code == 1 and not report["ok"]
        assert corrupt_problems(report) == {(c.nodes[i].node_id, pid.hex()) for i, pid in rotten}
        for problem in (p for ck in report["checkpoints"] for p in ck["problems"] if p["kind"] == "corrupt"):
            assert "re-creates it from" in problem["repair"]
        for i, pid in rotten:  # moved aside, never served again
            assert any(p.name.startswith(f"piece-{pid.hex()}") for p in (c.nodes[i].data_dir / "quarantine").iterdir())
        wait_for(lambda: verify(c)[0] == 0, 60, "verify to report all well after repair")

        [(i, pid)] = rot_some(c, ["run1/b"], 1)
        text = c.cli("verify", via=3)
        print(text.stdout)
        assert text.returncode == 1, text
        assert f"CORRUPT: the copy of" in text.stdout and f"on {c.nodes[i].node_id[:8]} does not match" in text.stdout
        assert "repair: " in text.stdout and "re-creates it from" in text.stdout
        wait_for(lambda: c.cli("verify", via=3).stdout.endswith("all well\n"), 60, "all well again, in text")
        code, report = verify(c, "run1/a", via=1)
        assert code == 0 and report["checked"]["checkpoints"] == 1
        for src, name in zip(sources, ["run1/a", "run1/b"]):
            out = tmp_path / (name.replace("/", "-") + ".out")
            c.cli("get", name, "--out", str(out), via=3, check=True)
            assert out.read_bytes() == src.read_bytes()
        assert c.cli("verify", "no/such").returncode == 4


def test_scrub_finds_rot_by_itself_and_status_shows_its_last_result(tmp_path):
    with ProcCluster(tmp_path / "cluster", NODES, extra={"scrub": {"period": 5}}) as c:
        c.start_all()
        put_two(c, tmp_path)
        rotten = rot_some(c, ["run1/a", "run1/b"], 2)
        nodes = {c.nodes[i].node_id for i, _ in rotten}

        def scrub_found_them() -> bool:
            status = c.status() or {}
            found = {n["id"] for n in status.get("nodes", [])
                     if (n.get("report") or {}).get("scrub", {}).get("corrupt_found", 0) >= 1}
            return nodes <= found

        wait_for(scrub_found_them, 60, "scrub on the rotten nodes to find the flipped pieces")
        wait_for(lambda: verify(c)[0] == 0, 60, "verify to report all well after scrub and repair")

        def every_node_finished_a_pass() -> bool:  # a pass takes about one period (5 s)
            rows = (c.status() or {}).get("nodes", [])
            return len(rows) == NODES and all(
                (row.get("report") or {}).get("scrub", {}).get("passes", 0) >= 1
                and row["report"]["scrub"].get("last_pass_age") is not None for row in rows)

        wait_for(every_node_finished_a_pass, 30, "every node to finish a scrub pass")
        text = c.cli("status").stdout
        assert "scrub" in text.lower()
        i = rotten[0][0]
        metrics = c.metrics(i)
        found = re.search(r"peerstore_scrub_corrupt_found_total ([0-9.e+]+)", metrics)
        assert found and float(found.group(1)) >= 1
