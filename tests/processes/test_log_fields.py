"""Real ``peerstore node`` processes tag their JSON log lines with the structured fields
Promtail labels (``event``) and Loki queries (``checkpoint``, ``peer``): issue 15, "Logs"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.real_nodes import MiB, model

pytestmark = pytest.mark.procs

DEAD_WAIT = 60.0  # seconds for gossip to declare a kill -9'd node dead (about 10 with 3 nodes)
LOG_WAIT = 20.0
VERSION = r"\d+(\.[0-9a-f]{16})?"  # NAME@V as `peerstore get` takes it


def records(path: Path) -> list[dict]:
    """The JSON lines of a node's log (a line that is not JSON fails the test)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def events(path: Path, event: str) -> list[dict]:
    return [r for r in records(path) if r.get("event") == event]


def json_log(c: ProcCluster, i: int) -> Path:
    return c.nodes[i].root / "json.log"


@pytest.fixture
def cluster(tmp_path):
    with ProcCluster(tmp_path / "cluster", 3) as c:
        for node in c.nodes:
            c.write_config(node, log={"format": "json", "file": str(node.root / "json.log")})
        c.start_all()
        yield c


def test_put_get_and_a_dead_peer_log_their_event_checkpoint_and_peer(cluster, tmp_path):
    c = cluster
    ids = [node.node_id for node in c.nodes]
    src = model(tmp_path, 8 * MiB, seed=7)
    c.cli("put", str(src), "--name", "run1/fields", check=True)
    c.cli("get", "run1/fields", "--out", str(tmp_path / "back"), via=1, check=True)
    assert (tmp_path / "back").read_bytes() == src.read_bytes()

    # The coordinator: put_started (the name) and put_done (NAME@V) for the same operation.
    (done,) = wait_for(lambda: events(json_log(c, 0), "put_done"), LOG_WAIT, "node 0's put_done line")
    (started,) = events(json_log(c, 0), "put_started")
    assert started["checkpoint"] == "run1/fields" and started["level"] == "INFO"
    assert re.fullmatch(rf"run1/fields@{VERSION}", done["checkpoint"]), done
    assert done["op"] == started["op"] and done["size"] == src.stat().st_size and done["node_id"] == ids[0]
    assert done["msg"].startswith("stored run1/fields@")  # the message stays human

    # The node the get went through: get_started (the spec asked for) and get_done (NAME@V).
    (got,) = wait_for(lambda: events(json_log(c, 1), "get_done"), LOG_WAIT, "node 1's get_done line")
    (asked,) = events(json_log(c, 1), "get_started")
    assert asked["checkpoint"] == "run1/fields" and got["checkpoint"] == done["checkpoint"]
    assert got["op"] == asked["op"]

    # Membership: node 0 saw the others join, then the killed one die, each named by its id.
    joined = {r["peer"] for r in events(json_log(c, 0), "peer_joined")}
    assert {ids[1], ids[2]} <= joined
    c.kill(2)
    dead = wait_for(lambda: [r for r in events(json_log(c, 0), "peer_dead") if r.get("peer") == ids[2]],
                    DEAD_WAIT, "node 0 logging node 2 dead")
    assert dead[0]["level"] == "WARNING" and dead[0]["peer_name"]
    assert not [r for r in events(json_log(c, 0), "peer_dead") if r.get("peer") != ids[2]]

    # A failed operation says so too: a get of a name that does not exist.
    assert c.cli("get", "run1/none", "--out", str(tmp_path / "none")).returncode == 4
    failed = wait_for(lambda: events(json_log(c, 0), "get_failed"), LOG_WAIT, "node 0's get_failed line")
    (asked,) = [r for r in events(json_log(c, 0), "get_started") if r["op"] == failed[0]["op"]]
    assert asked["checkpoint"] == "run1/none" and failed[0]["level"] == "WARNING"
