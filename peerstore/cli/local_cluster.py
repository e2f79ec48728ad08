"""``peerstore local N``: a demo cluster of N nodes on this machine (``./launch.sh --local N``).

Layout under ``DATA/local`` (DATA defaults to ``./data``)::

    cluster.key          the cluster key, made once; reruns reuse it and the nodes' data
    client.yaml          what the CLI reads (same key, node 1's port) when run from the
                         directory holding DATA, so `peerstore put ...` needs no flags
    node-<i>/config.yaml node i: listens on 127.0.0.1:BASE+i, metrics on METRICS+i
                         (0 turns metrics off), mdns off, every other node as a seed
    node-<i>/store/      node i's data directory
    node-<i>/node.log    node i's log, written by the node itself (config ``log.file``), rotated
                         at LOCAL_LOG_MAX_BYTES into node.log.1 ... (LOCAL_LOG_BACKUPS kept)
    node-<i>/stderr.log  what node i printed outside its log this run (why it could not start,
                         a crash's traceback); rewritten on each start

The supervisor starts each node as ``python -m peerstore node --config ...`` in its own
session, so a Ctrl-C in the terminal reaches only the supervisor, which then stops the
nodes in order: SIGTERM, and SIGKILL for any still running after ``stop_timeout``. A
node that dies on its own is reported with the tail of its log and of its stderr.log; the
others keep running (stopping a node is how you try out the cluster's fault tolerance).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from peerstore.cli.overrides import apply_overrides
from peerstore.shell.config import CLUSTER_KEY_BYTES, render_config
from peerstore.shell.durable import write_file_atomic
from peerstore.errors import UsageError

MAX_NODES = 64
LOCAL_DIR = "local"
KEY_FILE = "cluster.key"
CLIENT_CONFIG = "client.yaml"
LOCAL_MEMORY_BUDGET = "64MiB"  # N nodes share one machine; the default is sized for one node per machine
STARTUP_WAIT = 30.0  # seconds to wait for every node to accept connections before the banner
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 20
LOCAL_LOG_MAX_BYTES = "4MiB"  # each node's node.log rotates here: at most (backups + 1) x this on disk
LOCAL_LOG_BACKUPS = 3
_POLL = 0.2


@dataclass(frozen=True)
class LocalNode:
    """One node of the local cluster and where its files are."""

    index: int
    directory: Path
    port: int
    metrics_port: int  # 0: metrics off

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "stderr.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def plan_cluster(count: int, base_port: int = 7420, root: Path = Path("data") / LOCAL_DIR,
                 metrics_base_port: int = 9420) -> list[LocalNode]:
    """The nodes of a local cluster; UsageError for a count or ports that cannot work."""
    if not 1 <= count <= MAX_NODES:
        raise UsageError(f"a local cluster has 1 to {MAX_NODES} nodes, not {count}")
    if not 1 <= base_port or base_port + count > 65535:
        raise UsageError(f"--base-port {base_port} with {count} nodes needs ports up to {base_port + count}; "
                         "the highest is 65535")
    if metrics_base_port and not (1 <= metrics_base_port and metrics_base_port + count <= 65535):
        raise UsageError(f"--metrics-base-port {metrics_base_port} with {count} nodes goes past port 65535")
    node_ports = set(range(base_port + 1, base_port + count + 1))
    metric_ports = set(range(metrics_base_port + 1, metrics_base_port + count + 1)) if metrics_base_port else set()
    if node_ports & metric_ports:
        raise UsageError(f"node ports {base_port + 1}-{base_port + count} overlap the metrics ports; "
                         "choose another --base-port or --metrics-base-port")
    return [
        LocalNode(i, root / f"node-{i}", base_port + i, metrics_base_port + i if metrics_base_port else 0)
        for i in range(1, count + 1)
    ]


def load_or_create_key(root: Path) -> str:
    """The cluster key kept in ``root/cluster.key``, made on first use."""
    path = root / KEY_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(CLUSTER_KEY_BYTES)
        write_file_atomic(path, (key + "\n").encode(), mode=0o600)
        return key
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    if not re.fullmatch(r"[0-9a-fA-F]{%d}" % (2 * CLUSTER_KEY_BYTES), text):
        raise UsageError(f"{path} does not hold a cluster key ({2 * CLUSTER_KEY_BYTES} hex characters); "
                         "delete it to start a fresh local cluster")
    return text.lower()


def _with_memory_budget(text: str, budget: str) -> str:
    replaced, count = re.subn(r"(?m)^(  memory_budget: ).*$", lambda m: m.group(1) + budget, text)
    if count != 1:
        raise RuntimeError("render_config's template no longer has one transfer.memory_budget line")
    return replaced


def node_config(node: LocalNode, nodes: list[LocalNode], key: str,
                overrides: Sequence[tuple[str, Any]] = ()) -> str:
    """The config file of ``node``: loopback only, every other node a seed, no mDNS, and
    the ``--set`` ``overrides`` (dotted key, value) applied (ConfigError if one is bad)."""
    text = render_config(
        data_dir="store", cluster_key=key, listen_host="127.0.0.1", listen_port=node.port,
        metrics_port=node.metrics_port, node_name=f"local-{node.index}", mdns=False,
        seeds=[other.address for other in nodes if other is not node],
    )
    header = f"# {node.name} of a local peerstore cluster, written by `peerstore local`; rewritten on each run.\n"
    text = _with_memory_budget(text, LOCAL_MEMORY_BUDGET)
    if overrides:
        header += "# With " + " ".join(f"--set {k}" for k, _ in overrides) + " applied.\n"
    text = apply_overrides(text, [*_log_settings(overrides), *overrides], base_dir=node.directory)
    return header + text


def _log_settings(overrides: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Each node logs to its own rotated node.log (relative: beside its config); ``--set``
    may change the rotation or the format, not the file."""
    for key, _ in overrides:
        if key in ("log", "log.file"):
            raise UsageError(f"--set {key}: peerstore local sets log.file per node (node I logs to "
                             "DATA/local/node-I/node.log); set log.format, log.max_bytes or log.backups instead")
    given = {key for key, _ in overrides}
    ours = [("log.file", "node.log"), ("log.max_bytes", LOCAL_LOG_MAX_BYTES), ("log.backups", LOCAL_LOG_BACKUPS)]
    return [(key, value) for key, value in ours if key not in given]


def client_config(nodes: list[LocalNode], key: str) -> str:
    """What the CLI reads to find the local cluster (node 1) with the shared key."""
    first = nodes[0]
    text = render_config(
        data_dir=f"{first.name}/store", cluster_key=key, listen_host="127.0.0.1", listen_port=first.port,
        metrics_port=0, node_name=None, mdns=False, seeds=[n.address for n in nodes],
    )
    header = ("# The peerstore CLI's view of the local cluster, written by `peerstore local`.\n"
              "# Commands go to node 1; pass --node 127.0.0.1:PORT to use another. Not a node config.\n")
    return header + text


def prepare_cluster(count: int, base_port: int = 7420, data: Path = Path("data"),
                    metrics_base_port: int = 9420,
                    overrides: Sequence[tuple[str, Any]] = ()) -> tuple[list[LocalNode], Path]:
    """Write every node's config (with ``overrides``: ``--set``) and client.yaml; returns
    the nodes and client.yaml's path. A bad override fails before anything is written."""
    root = data / LOCAL_DIR
    nodes = plan_cluster(count, base_port, root, metrics_base_port)
    key = load_or_create_key(root)
    texts = [node_config(node, nodes, key, overrides) for node in nodes]
    for node, text in zip(nodes, texts):
        (node.directory / "store").mkdir(parents=True, exist_ok=True)
        write_file_atomic(node.config_path, text.encode(), mode=0o600)
    client_path = root / CLIENT_CONFIG
    write_file_atomic(client_path, client_config(nodes, key).encode(), mode=0o600)
    return nodes, client_path


def busy_ports(nodes: list[LocalNode]) -> list[str]:
    """Ports some other process already holds, as 'PORT/tcp' strings."""
    busy = []
    for node in nodes:
        checks = [(node.port, socket.SOCK_STREAM), (node.port, socket.SOCK_DGRAM)]
        if node.metrics_port:
            checks.append((node.metrics_port, socket.SOCK_STREAM))
        for port, kind in checks:
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(f"{port}/{'tcp' if kind == socket.SOCK_STREAM else 'udp'}")
    return busy


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 16 * 1024, start: int = 0) -> str:
    """The last ``lines`` lines of a log (reading at most ``max_bytes`` of it), from byte
    ``start`` on unless the file is shorter than that now (it rotated: all of it counts)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start if start <= size else 0, size - max_bytes))
            data = f.read()
    except OSError as err:
        return f"(cannot read {path}: {err.strerror or err})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class Supervisor:
    """Starts, watches and stops the node processes."""

    def __init__(self, nodes: list[LocalNode], out: TextIO, command: list[str] | None = None):
        self.nodes = nodes
        self.out = out
        self.command = command or [sys.executable, "-m", "peerstore", "node", "--config"]
        self.procs: dict[int, subprocess.Popen] = {}
        self.reported: set[int] = set()
        self.log_starts: dict[int, int] = {}  # node.log's size when each node started
        self.stop_signal: int | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for node in self.nodes:
            self.log_starts[node.index] = _size(node.log_path)
            # The node writes node.log itself (rotated); stderr.log catches only what it prints
            # outside its log (a config error, a crash), so a fresh one each start stays small.
            with open(node.stderr_path, "wb") as stderr:
                stderr.write(f"=== peerstore local: starting {node.name} at {time.ctime()} ===\n".encode())
                stderr.flush()
                self.procs[node.index] = subprocess.Popen(
                    [*self.command, str(node.config_path.resolve())],
                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT,
                    start_new_session=True, env=env,
                )

    def check_children(self) -> int:
        """Report nodes that died since the last check; returns how many are still running."""
        running = 0
        for node in self.nodes:
            proc = self.procs.get(node.index)
            if proc is None:
                continue
            code = proc.poll()
            if code is None:
                running += 1
            elif node.index not in self.reported:
                self.reported.add(node.index)
                self.say(f"peerstore: {node.name} exited with code {code}\n" + self.last_words(node))
        return running

    def last_words(self, node: LocalNode) -> str:
        """What the node logged since it started and what it printed outside its log."""
        parts = []
        logged = log_tail(node.log_path, start=self.log_starts.get(node.index, 0)) if node.log_path.exists() else ""
        if logged.strip():
            parts.append(f"  last lines of {node.log_path}:\n" + _indent(logged))
        printed = [line for line in log_tail(node.stderr_path).splitlines() if not line.startswith("=== ")]
        if printed or not parts:
            parts.append(f"  {node.stderr_path}:\n" + _indent("\n".join(printed)))
        return "\n".join(parts)

    def wait_listening(self, timeout: float) -> list[LocalNode]:
        """Wait until every running node accepts TCP connections; returns those that do."""
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        up: list[LocalNode] = []
        while pending and time.monotonic() < deadline and self.stop_signal is None:
            for node in list(pending):
                proc = self.procs[node.index]
                if proc.poll() is not None:
                    pending.remove(node)
                elif _accepts(node.port):
                    pending.remove(node)
                    up.append(node)
            if pending:
                time.sleep(_POLL)
        return up

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every node, SIGKILL those still running after ``timeout`` seconds."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        if alive:
            self.say(f"stopping {len(alive)} node(s)...")
        for proc in alive:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in alive:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        stubborn = [p for p in alive if p.poll() is None]
        for proc in stubborn:
            _signal(proc, signal.SIGKILL)
        for proc in stubborn:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if stubborn:
            self.say(f"killed {len(stubborn)} node(s) that did not stop within {timeout:g} s")


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (empty log)"


def banner(nodes: list[LocalNode], up: list[LocalNode], client_path: Path) -> str:
    lines = [f"peerstore: local cluster of {len(nodes)} node(s) is up ({len(up)} accepting connections)"
             if len(up) == len(nodes) else
             f"peerstore: started {len(nodes)} node(s); {len(up)} accept connections so far (see the logs)"]
    for node in nodes:
        metrics = f", metrics :{node.metrics_port}" if node.metrics_port else ""
        lines.append(f"  {node.name}  {node.address}{metrics}  log {node.log_path}")
    default_client = Path("data") / LOCAL_DIR / CLIENT_CONFIG
    if client_path.resolve() != default_client.resolve():
        lines.append(f"\nThe CLI needs: export PEERSTORE_CONFIG={client_path.resolve()}")
    lines += [
        "",
        "Try, in another terminal (from this directory):",
        "  .venv/bin/python -m peerstore.testing.make_checkpoint --shape llama-135m model.safetensors",
        "  peerstore put model.safetensors --name demo/model",
        "  peerstore ls",
        "  peerstore status",
        "  peerstore get demo/model --out restored.safetensors",
        "(use ./launch.sh peerstore ... if peerstore is not on your PATH)",
        "",
        "Ctrl-C stops the cluster; its data stays for the next run.",
    ]
    return "\n".join(lines)


def run_local(count: int, *, base_port: int = 7420, data: Path = Path("data"), metrics_base_port: int = 9420,
              out: TextIO | None = None, stop_timeout: float = STOP_TIMEOUT,
              command: list[str] | None = None, overrides: Sequence[tuple[str, Any]] = ()) -> int:
    """Write the configs, start the nodes, wait for Ctrl-C or SIGTERM, stop them.

    Returns 0 after a requested stop, 1 if every node died on its own.
    """
    out = out or sys.stdout
    nodes, client_path = prepare_cluster(count, base_port, data, metrics_base_port, overrides)
    busy = busy_ports(nodes)
    if busy:
        raise UsageError(f"ports already in use: {', '.join(busy)} (is another local cluster running?); "
                         "stop it or pick another --base-port / --metrics-base-port")
    supervisor = Supervisor(nodes, out, command)

    def on_signal(signum: int, frame: object) -> None:
        supervisor.stop_signal = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        up = supervisor.wait_listening(STARTUP_WAIT)
        supervisor.check_children()
        if supervisor.stop_signal is None:
            supervisor.say(banner(nodes, up, client_path))
        while supervisor.stop_signal is None:
            if supervisor.check_children() == 0:
                supervisor.say("peerstore: every node has exited; stopping")
                return 1
            time.sleep(_POLL)
        return 0
    finally:
        supervisor.stop(stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
