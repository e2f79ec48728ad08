"""Issue 14, section 1, on real processes: five nodes in network namespaces whose links are
shaped to 20 Mbit/s both ways (peerstore/bench/lan.py, what ``bench --link`` runs). With
the default settings the put sends two shards to each of four peers at once: 32 MiB behind a
2.5 MB/s NIC, about 13 s in our own send queue, longer than the 10 s request timeout. The
put must still succeed (a request times out on its peer's silence, not on our queue) and
the get return identical bytes. Needs root, iproute2 and tc; skips with the reason else."""

from __future__ import annotations

import json
import os

import pytest

from peerstore.bench.lan import LanCluster, shaped_lan, unavailable_reason

pytestmark = [pytest.mark.netns, pytest.mark.needs_real]

RATE = 20e6  # bits/s
SIZE = 24 * 10**6  # two stripes; the coordinator sends about 48 MB: about 20 s at the limit


@pytest.fixture(scope="module")
def lan_ready():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.timeout(120)
def test_a_put_with_default_settings_survives_a_20_mbit_link_and_gets_back_identical(lan_ready, tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(SIZE))
    out = tmp_path / "restored.bin"
    with shaped_lan(5, RATE) as lan:
        cluster = LanCluster(tmp_path / "cluster", 5, shard_size="4MiB", lan=lan)
        try:
            for node in cluster.nodes:
                cluster.start(node.index)
            cluster.wait_alive(5, timeout=30)
            put = cluster.cli("put", str(source), "--name", "slow/model", "--json", timeout=60)
            assert put.returncode == 0, f"{put.stderr}\n{cluster.log_tails()}"
            assert json.loads(put.stdout)["tolerance"] >= 1
            got = cluster.cli("get", "slow/model", "--out", str(out), timeout=60)
            assert got.returncode == 0, f"{got.stderr}\n{cluster.log_tails()}"
            assert out.read_bytes() == source.read_bytes()
        finally:
            cluster.close()
