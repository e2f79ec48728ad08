"""``python -m peerstore.bench --link RATE``: the nodes on an emulated LAN.

Each node runs in its own network namespace, wired by a veth pair to a bridge in a hub
namespace (``10.78.0.{i+1}/24``). Both ends of every veth are shaped with ``tc tbf`` to
RATE, so every host has a RATE NIC in each direction, as on a switch. In the same run a
plain TCP transfer measures what the links carry, and put and get are reported against
the NIC limits the stored layout implies:

- **put**: the coordinator's egress limit without forwarded replication: the bytes it
  would send if it sent every copy itself (every slot of every stripe not placed on
  itself) at the measured link rate, divided by the put's time. With forwarding (the
  default) the ratio goes past 1; the bytes node 0 really sent are reported too, and the
  same put runs again on a cluster with ``transfer.forward_replicas: false``;
- **get**: its ingress limit: the data shards it holds no copy of, at the link rate,
  divided by the get's time.

Needs Linux, root, iproute2's ``ip`` and ``tc``. Everything lives in namespaces this run
created (``psbench-<pid>-*``), removed in a ``finally`` and on SIGTERM; leftovers of a run
whose process is gone are removed at the next start. Every command and wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peerstore.bench.commands import Running
from peerstore.bench.procstat import Meter
from peerstore.bench.runner import Bench, Options, Outcome, cli_env, log
from peerstore.bench.stored import stored_manifest
from peerstore.model.manifest import Manifest
from peerstore.testing.procs import NodeProc, ProcCluster

FAMILY = "psbench"
_FAMILY_RE = re.compile(rf"{FAMILY}-(\d+)-")
SUBNET = "10.78.0"
DEVICE = "eth0"
PORT = 7420
COMMAND_TIMEOUT = 10.0  # seconds one `ip` or `tc` command may take
MIN_RATE, MAX_RATE = 1e6, 10e9  # bits/s accepted for --link
PLAIN_SECONDS = 4.0  # how long the plain transfer runs at the nominal rate
PLAIN_MIN, PLAIN_MAX = 4 * 10**6, 512 * 10**6  # its bytes
TBF_LATENCY = "50ms"  # queue a tbf holds before it drops
IDLE_SECONDS = 5.0  # the idle cluster is metered this long (its CPU is subtracted per GB)


class LanError(RuntimeError):
    """A namespace or shaping command failed; the message names it and its stderr."""


def parse_rate(text: str) -> float:
    """``100mbit``, ``1gbit``, ``500kbit`` (tc's units) to bits per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)bit\s*", text.lower())
    if not match:
        raise ValueError(f"expected a rate like 100mbit or 1gbit, got {text!r}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]
    if not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(f"the link rate must be 1mbit to 10gbit, got {text}")
    return value


def unavailable_reason() -> str | None:
    """Why ``--link`` cannot run here, in words that say what to do; None when it can."""
    if not sys.platform.startswith("linux"):
        return "--link needs Linux (network namespaces and tc)"
    if os.geteuid() != 0:
        return "--link needs root (it creates network namespaces): run it with sudo"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            return f"--link needs `{tool}`: apt-get install -y {package}"
    probe = f"{FAMILY}-{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        try:
            run("ip", "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "a1")
            run("tc", "-n", probe, "qdisc", "add", "dev", "a0", "root", "tbf", "rate", "10mbit",
                "burst", "16kb", "latency", TBF_LATENCY)
        finally:
            run("ip", "netns", "del", probe, check=False)
    except LanError as err:
        return f"cannot build a shaped network namespace here: {err}"
    return None


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``ip``/``tc`` command, bounded by COMMAND_TIMEOUT."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LanError(f"{' '.join(argv)}: {err}") from None
    if check and done.returncode != 0:
        raise LanError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` still there (a namespace's creator, say)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers() -> list[str]:
    """Remove namespaces of earlier runs whose process is gone; returns their names."""
    removed = []
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _FAMILY_RE.match(name)
        if match and not pid_alive(int(match.group(1))):
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def tbf(rate_bits: float) -> list[str]:
    """tc arguments of a token bucket at ``rate_bits``: a burst of about 5 ms of the rate
    (at least 16 KiB, so a full-size frame always fits)."""
    burst = max(16 * 1024, int(rate_bits / 8 * 0.005))
    return ["tbf", "rate", f"{int(rate_bits)}bit", "burst", str(burst), "latency", TBF_LATENCY]


@dataclass
class Lan:
    """A hub namespace with bridge ``br0`` and ``n`` host namespaces, every veth shaped."""

    n: int
    rate_bits: float
    prefix: str = field(default_factory=lambda: f"{FAMILY}-{os.getpid()}-")
    made: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.prefix}hub"

    def ns(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    @staticmethod
    def address(i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def create(self) -> None:
        """Build it; on failure whatever was made is removed."""
        try:
            run("ip", "netns", "add", self.hub)
            self.made.append(self.hub)
            run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", self.hub, "link", "set", "br0", "up")
            shape = tbf(self.rate_bits)
            for i in range(self.n):
                ns, port = self.ns(i), f"p{i}"
                run("ip", "netns", "add", ns)
                self.made.append(ns)
                run("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", DEVICE, "netns", ns)
                run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
                run("ip", "-n", ns, "link", "set", DEVICE, "up")
                run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", DEVICE)
                run("tc", "-n", ns, "qdisc", "add", "dev", DEVICE, "root", *shape)  # the host's upload
                run("tc", "-n", self.hub, "qdisc", "add", "dev", port, "root", *shape)  # its download
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        for name in reversed(self.made):
            run("ip", "netns", "del", name, check=False)
        self.made.clear()

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]


@contextlib.contextmanager
def shaped_lan(n: int, rate_bits: float) -> Iterator[Lan]:
    """``n`` shaped hosts, removed on exit whatever happens (SIGTERM too)."""
    cleanup_leftovers()
    lan = Lan(n, rate_bits)
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.getsignal(signal.SIGTERM) if main else None

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    if main:
        signal.signal(signal.SIGTERM, terminate)
    try:
        lan.create()
        yield lan
    finally:
        lan.destroy()
        if main:
            signal.signal(signal.SIGTERM, previous)


# -- the plain transfer -----------------------------------------------------------------

_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(float(sys.argv[2]))
c, _ = s.accept(); c.settimeout(float(sys.argv[2])); buf = bytearray(1 << 20); got = 0; first = None
while True:
    n = c.recv_into(buf)
    if not n: break
    first = first or time.monotonic(); got += n
print(got, time.monotonic() - (first or time.monotonic()), flush=True)
"""
_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
left = int(sys.argv[3]); block = bytes(1 << 20)
while left > 0:
    n = min(left, len(block)); c.sendall(block[:n]); left -= n
c.shutdown(socket.SHUT_WR); c.recv(1)
"""


def plain_transfer(lan: Lan, src: int, dst: int, nbytes: int, timeout: float) -> tuple[int, float]:
    """Send ``nbytes`` over plain TCP from host ``src`` to host ``dst``; (bytes, seconds)
    as the receiver saw them (first byte to the last)."""
    port = str(PORT + 100)
    receiver = subprocess.Popen([*lan.exec_prefix(dst), sys.executable, "-c", _RECEIVER, port, str(timeout)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # let it listen
        sender = subprocess.run([*lan.exec_prefix(src), sys.executable, "-c", _SENDER, lan.address(dst), port,
                                 str(nbytes), str(timeout)], capture_output=True, text=True, timeout=timeout)
        out, err = receiver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the plain transfer from host {src} to host {dst} took over {timeout:g} s") from None
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(timeout=5)
    if sender.returncode != 0 or receiver.returncode != 0:
        raise RuntimeError(f"the plain transfer from host {src} to host {dst} failed: {sender.stderr or err}")
    got, seconds = out.split()
    return int(got), float(seconds)


# -- what the stored layout implies -----------------------------------------------------


def layout_bytes(manifest: Manifest, coordinator: str) -> tuple[int, int, int]:
    """(bytes the coordinator must send in a put without forwarding, the same with
    forwarded replication (one copy of each data shard, its holder forwards the other),
    data bytes it holds no copy of in a get), from the manifest's placement (data0 A,
    data0 B, data1 A, ..., parity...)."""
    send = forwarded = remote = 0
    for _, index, stripe in manifest.iter_stripes():
        hint = manifest.placement[index]
        for i, length in enumerate(stripe.data_lengths):
            pair = hint[2 * i], hint[2 * i + 1]
            send += length * sum(1 for node in pair if node != coordinator)
            forwarded += length
            remote += length if coordinator not in pair else 0
        for j in range(stripe.p):
            parity = stripe.block_size if hint[2 * stripe.k + j] != coordinator else 0
            send += parity
            forwarded += parity
    return send, forwarded, remote


def bytes_sent(metrics_text: str) -> float:
    """Payload bytes a node sent to all peers, from its Prometheus text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("peerstore_bytes_sent_total{"))


# -- a cluster on the LAN ---------------------------------------------------------------


@dataclass
class LanCluster(ProcCluster):
    """ProcCluster's nodes, one per namespace, with the default transfer settings."""

    lan: Lan | None = None

    def ports(self, i: int) -> tuple[int, int]:
        return PORT, PORT + 1  # every node has its own namespace

    def write_config(self, node: NodeProc, **override: Any) -> None:
        config = {
            "data_dir": str(node.data_dir), "cluster_key": self.cluster_key,
            "listen": {"host": Lan.address(node.index), "port": PORT},
            "metrics": {"host": "127.0.0.1", "port": PORT + 1},
            "seeds": [f"{Lan.address(o.index)}:{PORT}" for o in self.nodes if o is not node],
            "mdns": False, "policy": {"shard_size": self.shard_size}, **self.extra, **override,
        }
        node.config_path.write_text(yaml.safe_dump(config))

    def prefix(self, i: int) -> list[str]:
        assert self.lan is not None
        return self.lan.exec_prefix(i)

    def metrics(self, i: int) -> str:
        """Node ``i``'s Prometheus text (its metrics port is inside its namespace)."""
        fetch = (f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{PORT + 1}/metrics', "
                 "timeout=5).read().decode())")
        return subprocess.run([*self.prefix(i), sys.executable, "-c", fetch], capture_output=True, text=True,
                              timeout=30, check=True).stdout


# -- the benchmark ----------------------------------------------------------------------


class LanBench(Bench):
    """Link baselines, then put and get through node 0, on a shaped LAN."""

    def __init__(self, options: Options, rate_bits: float):
        super().__init__(options)
        self.rate_bits = rate_bits
        self.lan: Lan | None = None
        self.link_rate: dict[str, float] = {}  # measured bytes/s: "egress", "ingress" of host 0
        self.idle_cpu = 0.0  # CPU-seconds per second the idle cluster spends (gossip, metrics)

    def new_cluster(self, root: Path, shard_size: str, extra: dict[str, Any]) -> ProcCluster:
        return LanCluster(root, self.options.nodes, shard_size=shard_size, extra=extra, lan=self.lan)

    def cli(self, *args: str, via: int = 0) -> Running:
        c = self._cluster()
        assert isinstance(c, LanCluster)
        return Running([*c.prefix(via), sys.executable, "-m", "peerstore", "--config", str(c.nodes[via].config_path),
                        "--quiet", *args], env=cli_env())

    def run(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            with shaped_lan(self.options.nodes, self.rate_bits) as lan:
                self.lan = lan
                log(f"{self.options.nodes} hosts in network namespaces {lan.prefix}*, every veth shaped "
                    f"to {self.rate_bits / 1e6:g} Mbit/s both ways")
                try:
                    self.run_group("link baselines", self.link_baselines)
                    if not self.failures:
                        self.run_group("put and get over the link", self.put_and_get)
                finally:
                    self.close_cluster()
        finally:
            self.cleanup()

    def link_baselines(self) -> None:
        nbytes = int(min(PLAIN_MAX, max(PLAIN_MIN, self.rate_bits / 8 * PLAIN_SECONDS)))
        timeout = 60.0 + 4 * nbytes / (self.rate_bits / 8)
        for key, src, dst in (("egress", 0, 1), ("ingress", 1, 0)):
            def body(src: int = src, dst: int = dst) -> Outcome:
                got, seconds = plain_transfer(self._lan(), src, dst, nbytes, timeout)
                return Outcome(got, seconds, notes=(
                    f"plain TCP host {src} -> host {dst}: {got * 8 / seconds / 1e6:.1f} Mbit/s, "
                    f"{got * 8 / seconds / self.rate_bits:.3f}x the nominal {self.rate_bits / 1e6:g} Mbit/s"))

            result = self.measure(f"baseline: plain TCP, host {src} -> host {dst}", "baseline", body, meter_nodes=False)
            self.link_rate[key] = result.bytes / result.seconds

    def put_and_get(self) -> None:
        """Put (forwarded replication, the default) and get through node 0; then the same
        put on a fresh cluster whose nodes forward nothing, the baseline of issue 14's §5."""
        model = self.model(seed=0)
        c = self.fresh_cluster()
        self.idle_cpu = self.idle_cpu_per_second(c)
        put = self.put("put", model, "bench/model")
        no_forward = self._judge_put(put, c)
        get = self.get("get", "bench/model", model)
        self._judge(get, self._layout(c)[2], self.link_rate["ingress"], "ingress", "data bytes it holds no copy of")
        c = self.fresh_cluster(extra={"transfer": {"forward_replicas": False}})
        plain = self.put("put, no forwarding", model, "bench/model")
        self._judge_put(plain, c)
        if put.seconds > 0 and plain.seconds > 0 and not put.error and not plain.error:
            put.extra["speedup_over_no_forwarding_put"] = round(plain.seconds / put.seconds, 2)
            put.notes += f"; {plain.seconds / put.seconds:.2f}x as fast as the put without forwarding"
            log(f"put: {put.extra['speedup_over_no_forwarding_put']}x as fast as the put without forwarding "
                f"({put.seconds:.1f} s vs {plain.seconds:.1f} s); the no-forwarding NIC limit is "
                f"{no_forward:.1f} s")

    def _layout(self, c: ProcCluster) -> tuple[int, int, int]:
        manifest = stored_manifest(c.nodes[0].data_dir, "bench/model")
        if manifest is None:
            raise RuntimeError(f"node 0 holds no manifest of bench/model\n{c.log_tails()}")
        return layout_bytes(manifest, c.nodes[0].node_id)

    def _judge_put(self, put: Any, c: ProcCluster) -> float:
        """Report ``put`` against the no-forwarding egress limit (the ratio) and the
        forwarding one, and what node 0 really sent; the no-forwarding limit in seconds."""
        send, forwarded, _ = self._layout(c)
        rate = self.link_rate["egress"]
        self._judge(put, send, rate, "egress", "bytes it must send without forwarding")
        assert isinstance(c, LanCluster)
        sent = bytes_sent(c.metrics(0))
        put.extra.update({"forwarding_limit_bytes": forwarded, "forwarding_limit_seconds": round(forwarded / rate, 2),
                          "coordinator_sent_bytes": int(sent),
                          "coordinator_sent_per_checkpoint_byte": round(sent / put.bytes, 3) if put.bytes else None})
        if put.bytes:
            put.notes += (f"; node 0 sent {sent / put.bytes:.2f}x the checkpoint (forwarding needs "
                          f"{forwarded / put.bytes:.2f}x, none {send / put.bytes:.2f}x)")
        return send / rate

    def idle_cpu_per_second(self, c: ProcCluster) -> float:
        """CPU-seconds per second the whole idle cluster spends (gossip, metrics)."""
        meter = Meter()
        for node in c.nodes:
            if node.running and node.proc is not None:
                meter.watch(f"node-{node.index}", node.proc.pid)
        with meter:
            time.sleep(IDLE_SECONDS)
        return sum(meter.stop().cpu_seconds.values()) / IDLE_SECONDS

    def _judge(self, result: Any, nbytes: int, rate: float, side: str, what: str) -> None:
        limit = nbytes / rate
        value = limit / result.seconds if result.seconds > 0 and not result.error else None
        gb = result.bytes / 1e9
        net = max(0.0, result.cpu_total - self.idle_cpu * result.seconds)  # what the transfer cost
        result.extra.update({"nic_limit_bytes": nbytes, "nic_limit_seconds": round(limit, 2),
                             "link_bytes_per_second": round(rate), "ratio_to_nic_limit": value,
                             "cpu_seconds_per_gb": round(result.cpu_total / gb, 2) if gb else None,
                             "idle_cpu_per_second": round(self.idle_cpu, 3),
                             "cpu_seconds_per_gb_net_of_idle": round(net / gb, 2) if gb else None})
        result.notes = "; ".join(filter(None, [result.notes, (
            f"{value:.2f}x the node's {side} limit ({nbytes / 1e6:.0f} MB, the {what}, at the measured "
            f"{rate * 8 / 1e6:.1f} Mbit/s: {limit:.1f} s)" if value is not None else ""),
            f"{result.cpu_total / gb:.1f} CPU-s per GB for the whole cluster, {net / gb:.1f} net of its idle "
            f"{self.idle_cpu:.2f} CPU-s/s" if gb else ""]))
        log(f"{result.phase}: {result.notes}")

    def _lan(self) -> Lan:
        if self.lan is None:
            raise RuntimeError("no LAN is up")
        return self.lan


def lan_summary(results: Sequence[Any]) -> str:
    """The ratio lines of a --link run, for the report."""
    lines = []
    for r in results:
        value = r.extra.get("ratio_to_nic_limit")
        if value is not None:
            lines.append(f"  {r.phase}: {value:.2f}x the NIC limit ({r.extra['nic_limit_seconds']} s for "
                         f"{r.extra['nic_limit_bytes'] / 1e6:.0f} MB), {r.extra['cpu_seconds_per_gb']} CPU-s/GB "
                         f"({r.extra['cpu_seconds_per_gb_net_of_idle']} net of idle)")
    return "\n".join(lines)

