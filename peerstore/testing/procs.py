"""A cluster of real ``peerstore node`` processes on loopback, for tests and benchmarks.

Every wait polls against a deadline; every process is killed on exit. ``log_tails()``
is what a failing test prints.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from peerstore.shell.config import generate_cluster_key


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (Linux; else IANA's)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def _bindable(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (gossip uses the same number).

    Chosen below the ephemeral range: a port the kernel picked with bind(0) is one it may
    also give, a moment later, to some node's outgoing connection before the node that was
    told to listen on it has bound it."""
    rng = random.SystemRandom()
    low = _ephemeral_low()
    if low > 11_000:
        for _ in range(200):
            port = rng.randrange(10_000, low)
            if _bindable(port):
                return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        if _bindable(port):
            return port
    raise RuntimeError("no free port found")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class NodeProc:
    index: int
    root: Path
    port: int
    metrics_port: int
    proc: subprocess.Popen | None = None
    log_handle: Any = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "node.log"

    @property
    def node_id(self) -> str:
        return (self.data_dir / "node.id").read_text().strip()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ProcCluster:
    root: Path
    size: int
    shard_size: str = "1MiB"
    extra: dict[str, Any] = field(default_factory=dict)
    cluster_key: str = field(default_factory=generate_cluster_key)
    nodes: list[NodeProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            node = NodeProc(i, self.root / f"node-{i}", *self.ports(i))
            node.root.mkdir(exist_ok=True)
            self.nodes.append(node)
        for node in self.nodes:
            self.write_config(node)

    def ports(self, i: int) -> tuple[int, int]:
        """Node ``i``'s (gossip/client port, metrics port)."""
        return free_port(), free_port()

    def prefix(self, i: int) -> list[str]:
        """What node ``i``'s processes (and CLI calls via it) run under: nothing here; a
        network namespace in the LAN bench."""
        return []

    def write_config(self, node: NodeProc, **override: Any) -> None:
        config = {
            "data_dir": str(node.data_dir),
            "cluster_key": self.cluster_key,
            "listen": {"host": "127.0.0.1", "port": node.port},
            "metrics": {"host": "127.0.0.1", "port": node.metrics_port},
            "seeds": [f"127.0.0.1:{other.port}" for other in self.nodes if other is not node],
            "mdns": False,
            "log_level": "info",
            "policy": {"shard_size": self.shard_size},
            "transfer": {"request_timeout": 5.0},
            **self.extra,
            **override,
        }
        node.config_path.write_text(yaml.safe_dump(config))

    # -- processes -----------------------------------------------------------------------

    def start(self, i: int) -> None:
        node = self.nodes[i]
        node.log_handle = open(node.log_path, "ab")
        node.proc = subprocess.Popen(
            [*self.prefix(i), sys.executable, "-m", "peerstore", "node", "--config", str(node.config_path)],
            stdout=node.log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def start_all(self, timeout: float = 30.0) -> "ProcCluster":
        for i in range(self.size):
            self.start(i)
        self.wait_alive(self.size, timeout=timeout)
        return self

    def signal(self, i: int, sig: int) -> None:
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)

    def kill(self, i: int) -> None:
        """kill -9: no goodbye, nothing flushed."""
        self.signal(i, signal.SIGKILL)
        node = self.nodes[i]
        if node.proc is not None:
            node.proc.wait(timeout=10)

    def stop(self, i: int, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        node = self.nodes[i]
        if node.proc is None:
            return None
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)
        return node.proc.returncode

    def freeze(self, i: int) -> None:
        self.signal(i, signal.SIGSTOP)

    def thaw(self, i: int) -> None:
        self.signal(i, signal.SIGCONT)

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait(timeout=10)
            if node.log_handle is not None:
                node.log_handle.close()

    def __enter__(self) -> "ProcCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- talking to it -------------------------------------------------------------------

    def cli(self, *args: str, via: int = 0, timeout: float = 300.0, check: bool = False) -> subprocess.CompletedProcess:
        """Run the real ``peerstore`` CLI against node ``via``."""
        result = subprocess.run(
            [*self.prefix(via), sys.executable, "-m", "peerstore", "--config", str(self.nodes[via].config_path),
             "--quiet", *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"peerstore {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\n{self.log_tails()}"
            )
        return result

    def status(self, via: int = 0) -> dict[str, Any] | None:
        result = self.cli("status", "--json", via=via, timeout=60)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def alive_seen_by(self, via: int) -> set[str]:
        status = self.status(via)
        if not status:
            return set()
        return {m["id"] for m in status.get("members", []) if m.get("state") == "alive"}

    def wait_alive(self, count: int, timeout: float = 30.0, via: list[int] | None = None) -> None:
        """Until every running node (or those in ``via``) sees ``count`` alive members."""
        watchers = via if via is not None else [n.index for n in self.nodes if n.running]
        try:
            wait_for(lambda: all(len(self.alive_seen_by(i)) == count for i in watchers),
                     timeout, f"{count} alive members seen by nodes {watchers}", interval=0.5)
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n{self.log_tails()}") from None

    def index_of(self, node_id: str) -> int:
        return next(n.index for n in self.nodes if n.node_id == node_id)

    def metrics(self, i: int) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.nodes[i].metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log_tails(self, lines: int = 25) -> str:
        out = []
        for node in self.nodes:
            try:
                tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            out.append(f"--- node {node.index} (port {node.port}) log tail ---\n" + "\n".join(tail))
        return "\n".join(out)
