"""Real mDNS between network namespaces on a private bridge (root + iproute2 only)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import netns as nt
from tests.support.paths import REPO

pytestmark = [pytest.mark.netns, pytest.mark.needs_real]

DISCOVERY_DEADLINE = 20.0
READDRESS_DEADLINE = 10.0
PROCESS_SECONDS = 50  # each selftest exits by itself after this, whatever happens here


@pytest.fixture(scope="module")
def netns_ready():
    reason = nt.unavailable_reason()
    if reason:
        pytest.skip(reason)


def selftest(bridge, index, cluster_key, node_id):
    argv = [sys.executable, "-m", "peerstore.shell.daemon.mdns", "--selftest", "--cluster-key", cluster_key.hex(),
            "--node-id", node_id, "--name", f"h{index}", "--port", str(7000 + index),
            "--gossip-port", str(8000 + index), "--duration", str(PROCESS_SECONDS), "--log-level", "info"]
    return nt.Output(nt.run_in(bridge.host(index).ns, argv, cwd=REPO))


def peers_seen(output):
    """node id -> (addresses, time seen) from a selftest's latest reports."""
    seen = {}
    for line in output.lines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "peer":
                if event["removed"]:
                    seen.pop(event["node_id"], None)
                else:
                    seen[event["node_id"]] = (tuple(event["addresses"]), event["t"])
    return seen


def test_three_nodes_find_each_other_ignore_a_foreign_cluster_and_follow_an_address_change(netns_ready):
    key, foreign_key = os.urandom(32), os.urandom(32)
    ids = [os.urandom(8).hex() for _ in range(4)]
    outputs = []
    with nt.make_hosts(4, nt.unique_prefix("mdns")) as bridge:
        try:
            for i in range(4):
                outputs.append(selftest(bridge, i, key if i < 3 else foreign_key, ids[i]))

            def all_found():
                return all(set(peers_seen(outputs[i])) == set(ids[:3]) - {ids[i]} for i in range(3))

            assert nt.wait_until(all_found, DISCOVERY_DEADLINE), "not everyone found the others"
            time.sleep(0.5)  # anything wrong (the foreign node, ourselves) would show up by now
            for i in range(3):
                seen = peers_seen(outputs[i])
                assert set(seen) == set(ids[:3]) - {ids[i]}
                for j in set(range(3)) - {i}:
                    assert seen[ids[j]][0] == (bridge.host(j).address,)
            assert peers_seen(outputs[3]) == {}, "the foreign node saw members of another cluster"
            latency = max(t for i in range(3) for _, t in peers_seen(outputs[i]).values())
            print(f"\nmDNS: every node saw the other two {latency:.2f} s after its process started")

            new_ip = "10.77.0.102"
            bridge.change_address(2, new_ip)
            changed_at = time.monotonic()
            outputs[2].process.send_signal(signal.SIGUSR1)

            def moved():
                return all(peers_seen(outputs[i]).get(ids[2], ((),))[0] == (new_ip,) for i in (0, 1))

            assert nt.wait_until(moved, READDRESS_DEADLINE), "peers did not follow the new address"
            print(f"mDNS: peers saw only the new address {time.monotonic() - changed_at:.2f} s after the change")
            assert peers_seen(outputs[3]) == {}
        except BaseException:
            for i, out in enumerate(outputs):
                out.stop()
                print(f"----- h{i} ({'foreign' if i == 3 else 'member'}) node {ids[i]} -----\n{out.text()}")
            raise
        finally:
            for out in outputs:
                out.stop()
    assert not [n for n in nt.list_namespaces() if n.startswith(bridge.prefix)]


def test_helpers_clean_up_leftovers_toggle_links_and_run_programs_directly(netns_ready):
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = f"{nt.FAMILY}-{finished.pid}-crashed"  # as if left behind by a run that died
    live = f"{nt.unique_prefix('live')}x"
    nt.run_ip("netns", "add", stale)
    nt.run_ip("netns", "add", live)
    try:
        removed = nt.cleanup_leftovers()
        assert stale in removed and live not in removed
        assert stale not in nt.list_namespaces() and live in nt.list_namespaces()
    finally:
        nt.run_ip("netns", "del", stale, check=False)
        nt.run_ip("netns", "del", live, check=False)

    with nt.make_hosts(2, nt.unique_prefix("helpers")) as bridge:
        ns = bridge.host(1).ns
        nt.set_link(ns, up=False)
        assert "state DOWN" in nt.run_ip("-n", ns, "link", "show", nt.DEVICE).stdout
        nt.set_link(ns, up=True)
        nt.change_address(ns, "10.77.0.200")
        shown = nt.run_ip("-n", ns, "-4", "addr", "show", nt.DEVICE).stdout
        assert "10.77.0.200/24" in shown and "10.77.0.2/" not in shown
        proc = nt.run_in(ns, ["sh", "-c", "echo $$; ip -4 -o addr show dev eth0"])
        out, _ = proc.communicate(timeout=10)
        assert out.splitlines()[0] == str(proc.pid)  # `ip netns exec` execs: signals reach the program
        assert "10.77.0.200/24" in out
    assert not [n for n in nt.list_namespaces() if n.startswith(bridge.prefix)]
