"""The CLI starts fast: a get, put or ls loads only what those commands need (issue 14 §3:
start-up is a large share of a local restore). Checked in a fresh interpreter, by what
``sys.modules`` holds after the CLI ran."""

from __future__ import annotations

import json
import subprocess
import sys

# Heavy modules no client command needs: the daemon's (zeroconf, prometheus_client, the
# daemon shell), the core's events and SWIM, erasure coding (zfec), and the service
# installer's XML helpers.
NOT_FOR_CLIENT_COMMANDS = (
    "zeroconf",
    "zfec",
    "prometheus_client",
    "peerstore.shell.daemon",
    "peerstore.core.events",
    "peerstore.core.membership",
    "peerstore.gossip.swim",
    "peerstore.watch.detect",
    "xml.sax",
    "plistlib",
)

_PROBE = """
import json, sys
from peerstore.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _loaded_after(*argv: str) -> tuple[int, set[str]]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], set(result["modules"])


def _unwanted(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in NOT_FOR_CLIENT_COMMANDS))


def test_get_help_loads_no_daemon_core_or_installer_modules():
    code, modules = _loaded_after("get", "--help")
    assert code == 0
    assert "peerstore.shell.client.api" in modules  # the probe did load the get path
    assert _unwanted(modules) == []


def test_a_failing_get_loads_no_daemon_core_or_installer_modules(tmp_path):
    # Runs the command to the point where it needs a config (none there): parsing, the
    # handler and the client are all loaded by then.
    code, modules = _loaded_after("get", "run1/x", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "peerstore.shell.config" in modules
    assert _unwanted(modules) == []


def test_the_status_view_still_reads_incarnations():
    # core.membership is imported lazily there: the member table must still split it.
    from peerstore.cli.commands import _incarnation

    assert _incarnation({"incarnation": (3 << 32) | 5}) == "boot 3, seq 5"
