"""Scraping with nothing to list: a real Prometheus, given the repo's scrape job pointed at
one node's /discovery, finds and scrapes every node of a real 3-node cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml

from peerstore.testing.procs import ProcCluster, free_port
from tests.support.paths import REPO

pytestmark = [pytest.mark.procs, pytest.mark.needs_real]

PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
DEADLINE = 45.0  # until every node is an active, healthy target (refresh and scrape: 1 s)


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5) as reply:
        return json.load(reply)


def scrape_job(discovery_url: str) -> dict:
    """The repo's peerstore job, its http_sd pointed at ``discovery_url``, fast intervals."""
    jobs = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    job = next(j for j in jobs if j["job_name"] == "peerstore")
    assert [sd["url"].rsplit("/", 1)[1] for sd in job["http_sd_configs"]] == ["discovery"] * len(job["http_sd_configs"])
    return {**job, "scrape_interval": "1s", "scrape_timeout": "1s",
            "http_sd_configs": [{"url": discovery_url, "refresh_interval": "1s"}]}


@pytest.mark.timeout(180)
def test_prometheus_pointed_at_one_node_scrapes_all_three(tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed; CI installs it (see .ci/run)")
    with ProcCluster(tmp_path / "cluster", 3) as cluster:
        for node in cluster.nodes:
            cluster.write_config(node, node_name=f"box-{node.index}")
        cluster.start_all()
        ids = {node.node_id: f"box-{node.index}" for node in cluster.nodes}
        expected = {f"127.0.0.1:{node.metrics_port}": node.node_id for node in cluster.nodes}

        port = free_port()
        config = tmp_path / "prometheus.yml"
        url = f"http://127.0.0.1:{cluster.nodes[0].metrics_port}/discovery"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape_job(url)]}))
        log_path = tmp_path / "prometheus.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + DEADLINE
            targets: list[dict] = []
            while time.monotonic() < deadline:
                try:
                    targets = api(port, "targets?state=active")["data"]["activeTargets"]
                except OSError:
                    targets = []
                if {t["labels"]["instance"] for t in targets if t["health"] == "up"} == set(expected):
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"not all 3 nodes became healthy targets within {DEADLINE:.0f}s: {targets}\n"
                            + log_path.read_text()[-2000:] + cluster.log_tails(10))
            assert len(targets) == 3
            for target in targets:
                labels = target["labels"]
                assert labels["job"] == "peerstore"
                assert labels["node_id"] == expected[labels["instance"]]
                assert labels["node_name"] == ids[labels["node_id"]]
                assert target["discoveredLabels"]["__meta_peerstore_member_state"] == "alive"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
