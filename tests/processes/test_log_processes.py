"""Real ``peerstore node`` processes logging JSON lines to a rotating file (config ``log:``),
the way a node under launchd does and Promtail's peerstore-file job reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peerstore.testing.procs import ProcCluster, wait_for
from tests.support.real_nodes import MiB, model

pytestmark = pytest.mark.procs

FIELDS = {"ts", "level", "logger", "msg", "node_id", "node_name"}
ROTATE_BYTES = 1024  # the smallest log.max_bytes: a few records per file
BACKUPS = 2
LOG_WAIT = 30.0  # seconds for lines to reach the file
MAX_PUTS = 40  # each put through node 1 logs a line there; enough to rotate several times


def json_lines(path: Path) -> list[dict]:
    """Every line of the file, parsed (a line that is not JSON fails the test)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise AssertionError(f"{path}:{number} is not a JSON line ({err}): {line!r}") from None
    return out


@pytest.fixture
def cluster(tmp_path):
    with ProcCluster(tmp_path / "cluster", 2) as c:
        c.write_config(c.nodes[0], node_name="alpha",
                       log={"format": "json", "file": str(tmp_path / "logs0" / "node.log")})
        c.write_config(c.nodes[1], log={"format": "json", "file": str(tmp_path / "logs1" / "node.log"),
                            "max_bytes": ROTATE_BYTES, "backups": BACKUPS})
        c.start_all()
        yield c


def test_a_node_writes_json_lines_with_its_fields_and_rotates_bounded(cluster, tmp_path):
    c = cluster
    c.cli("put", str(model(tmp_path, 8 * MiB, seed=1)), "--name", "run1/logs", check=True)
    log0 = tmp_path / "logs0" / "node.log"
    lines = wait_for(lambda: json_lines(log0), LOG_WAIT, "node 0's log lines")
    node_id = c.nodes[0].node_id
    for line in lines:
        assert FIELDS <= set(line), line
        assert line["node_name"] == "alpha" and line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert all(line["node_id"] == node_id for line in lines)
    assert c.nodes[0].log_path.read_text().strip() == ""  # stderr stays empty: everything went to the file

    logs1 = tmp_path / "logs1"
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(range(256)) * 4)
    rotated = 0
    for i in range(MAX_PUTS):
        c.cli("put", str(small), "--name", f"small/{i}", via=1, check=True)
        if (logs1 / f"node.log.{BACKUPS}").exists():
            rotated += 1
            if rotated > 5:  # more rotations after the last backup exists: the count stays bounded
                break
    assert rotated > 5, f"node 1's log did not rotate {BACKUPS} times in {MAX_PUTS} puts"
    names = sorted(p.name for p in logs1.iterdir())
    assert names == ["node.log"] + [f"node.log.{i}" for i in range(1, BACKUPS + 1)], names
    for name in names[1:]:  # rotated before a record would pass the limit
        size = (logs1 / name).stat().st_size
        assert size <= ROTATE_BYTES, (name, size)
        assert all(FIELDS <= set(line) for line in json_lines(logs1 / name))

    assert c.stop(0) == 0
    last = json_lines(log0)[-1]
    assert last["msg"] == "stopped" and last["event"] == "node_stopped"  # an extra= field
