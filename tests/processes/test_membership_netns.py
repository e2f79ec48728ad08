"""Real nodes on four hosts (network namespaces on a private bridge), finding each other
by mDNS alone: a link going down, a host coming back with another address, and a running
node whose address changes. Needs root and iproute2; skips with the reason otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peerstore.shell.config import generate_cluster_key
from tests.support import netns as nt
from peerstore.testing.make_checkpoint import write_safetensors
from tests.support.paths import REPO

pytestmark = [pytest.mark.netns, pytest.mark.needs_real]

PORT = 7420
HOSTS = 4


@pytest.fixture(scope="module")
def netns_ready():
    reason = nt.unavailable_reason()
    if reason:
        pytest.skip(reason)


class Hosts:
    def __init__(self, bridge: nt.Bridge, root: Path):
        self.bridge = bridge
        self.root = root
        self.key = generate_cluster_key()
        self.procs: dict[int, subprocess.Popen] = {}
        self.outputs: dict[int, nt.Output] = {}

    def config(self, i: int) -> Path:
        path = self.root / f"node-{i}.yaml"
        path.write_text(yaml.safe_dump({
            "data_dir": str(self.root / f"data-{i}"), "cluster_key": self.key,
            "listen": {"host": "0.0.0.0", "port": PORT}, "metrics": {"port": 0},
            "mdns": True, "node_name": f"host{i}", "policy": {"shard_size": "256KiB"},
            "transfer": {"request_timeout": 5.0},
        }))
        return path

    def start(self, i: int) -> None:
        argv = [sys.executable, "-m", "peerstore", "node", "--config", str(self.config(i))]
        self.procs[i] = nt.run_in(self.bridge.host(i).ns, argv, cwd=REPO)
        self.outputs[i] = nt.Output(self.procs[i])

    def cli(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["ip", "netns", "exec", self.bridge.host(i).ns, sys.executable, "-m", "peerstore",
                "--config", str(self.root / f"node-{i}.yaml"), "--quiet", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def members(self, i: int) -> dict[str, dict]:
        result = self.cli(i, "status", "--json", timeout=30)
        if result.returncode != 0:
            return {}
        return {m["id"]: m for m in json.loads(result.stdout)["members"]}

    def node_id(self, i: int) -> str:
        return (self.root / f"data-{i}" / "node.id").read_text().strip()

    def views(self) -> str:
        out = []
        for i in self.procs:
            out.append(f"--- host {i} ({self.bridge.host(i).address}) view ---")
            for node, m in sorted(self.members(i).items()):
                out.append(f"  {node} {m['address']} {m['state']}")
            out.append(f"--- host {i} log tail ---\n" + "\n".join(self.outputs[i].lines()[-20:]))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            nt.stop_process(proc)
        for output in self.outputs.values():
            output.stop()


def until(hosts: Hosts, predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    if not nt.wait_until(predicate, timeout, interval=0.5):
        pytest.fail(f"{what}: not within {timeout}s\n{hosts.views()}")
    return time.monotonic() - started


def test_mdns_only_cluster_survives_link_loss_readdressing_and_dhcp(netns_ready, tmp_path):
    with nt.make_hosts(HOSTS, nt.unique_prefix("member")) as bridge:
        hosts = Hosts(bridge, tmp_path)
        try:
            for i in range(HOSTS):
                hosts.start(i)
            ids = {i: None for i in range(HOSTS)}

            def everyone_sees(count: int, among=range(HOSTS)) -> bool:
                return all(sum(m["state"] == "alive" for m in hosts.members(i).values()) == count for i in among)

            took = until(hosts, lambda: everyone_sees(HOSTS), 40, "all four nodes find each other by mDNS")
            print(f"formed one cluster by mDNS in {took:.1f}s")
            ids = {i: hosts.node_id(i) for i in range(HOSTS)}

            src = tmp_path / "model.safetensors"
            write_safetensors(src, "llama-135m", seed=3, size=8 * 1024 * 1024)
            assert hosts.cli(0, "put", str(src), "--name", "run/m").returncode == 0

            nt.set_link(bridge.host(3).ns, up=False)
            took = until(hosts, lambda: all(hosts.members(i).get(ids[3], {}).get("state") == "dead" for i in range(3)),
                         30, "host 3 declared dead on every other node")
            print(f"link down -> dead everywhere in {took:.1f}s")
            out = tmp_path / "restored"
            got = hosts.cli(1, "get", "run/m", "--out", str(out))
            assert got.returncode == 0, got.stderr
            assert out.read_bytes() == src.read_bytes()

            bridge.change_address(3, "10.77.0.50")
            nt.set_link(bridge.host(3).ns, up=True)
            took = until(hosts, lambda: all(
                hosts.members(i).get(ids[3], {}).get("state") == "alive"
                and hosts.members(i)[ids[3]]["address"].startswith("10.77.0.50:") for i in range(3)),
                10, "host 3 back, with its new address, alive everywhere")
            print(f"back with a new address -> alive everywhere in {took:.1f}s")

            bridge.change_address(1, "10.77.0.61")
            took = until(hosts, lambda: all(
                hosts.members(i).get(ids[1], {}).get("address", "").startswith("10.77.0.61:")
                and hosts.members(i)[ids[1]]["state"] == "alive" for i in (0, 2, 3)),
                20, "the cluster following host 1's new address")
            print(f"running node re-addressed -> followed in {took:.1f}s")
            out2 = tmp_path / "restored-2"
            assert hosts.cli(1, "get", "run/m", "--out", str(out2)).returncode == 0
            assert out2.read_bytes() == src.read_bytes()
        finally:
            hosts.stop()
