"""Throwaway Linux network namespaces for tests that need a real LAN (mDNS, gossip).

``make_hosts(n)`` builds a private layer-2 segment: a hub namespace holding a Linux bridge,
and ``n`` host namespaces, each wired to the bridge by a veth pair whose inside end is
``eth0`` with address ``10.77.0.{i+1}/24``. Everything, the bridge included, lives in
namespaces the test created, so the host's own interfaces are never touched. The
namespaces are removed in a ``finally``, and leftovers of crashed earlier runs (whose
process is gone) are removed at the next start. Names carry the creating process's pid,
so parallel runs do not clash.

Needs root and iproute2 (``ip``); ``unavailable_reason()`` says why a test must skip.
Test-only: nothing in the daemon imports this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from peerstore.bench.lan import pid_alive

FAMILY = "pstest"  # every namespace made here is named "pstest-<pid>-..."
_FAMILY_RE = re.compile(rf"{FAMILY}-(\d+)-")
MAX_HOSTS = 32
DEVICE = "eth0"  # the veth end inside each host namespace
PREFIX_LEN = 24
IP_TIMEOUT = 10.0  # seconds one `ip` command may take
STOP_GRACE = 3.0  # seconds a process gets between SIGTERM and SIGKILL


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries the command and its stderr."""


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (not root, no `ip`, no netns support), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespace tests need root (run the suite as root, e.g. in CI)"
    if shutil.which("ip") is None:
        return "network namespace tests need iproute2's `ip` (apt-get install -y iproute2)"
    probe = f"{FAMILY}-{os.getpid()}-probe"
    try:
        run_ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace here: {exc}"
    with contextlib.suppress(NetnsError):
        run_ip("netns", "del", probe)
    return None


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (bounded by IP_TIMEOUT); raises NetnsError when it fails and ``check``."""
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done


def list_namespaces() -> list[str]:
    """Names of all network namespaces `ip netns` knows."""
    out = run_ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_leftovers() -> list[str]:
    """Delete namespaces of this family whose creating process is gone; returns their names."""
    removed = []
    for name in list_namespaces():
        match = _FAMILY_RE.match(name)
        if match and not pid_alive(int(match.group(1))):
            run_ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One host namespace: its name, index and current address on the bridge."""

    ns: str
    index: int
    address: str


@dataclass
class Bridge:
    """A hub namespace with bridge ``br0`` and the host namespaces plugged into it."""

    prefix: str
    subnet: str = "10.77.0"
    hub: str = ""
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hub = f"{self.prefix}hub"

    def create(self, n: int) -> None:
        """Build the hub and ``n`` hosts. On failure, whatever was made is removed."""
        if not 0 < n <= MAX_HOSTS:
            raise ValueError(f"asked for {n} hosts; between 1 and {MAX_HOSTS} are supported")
        try:
            run_ip("netns", "add", self.hub)
            run_ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            # Flood all multicast: no IGMP snooping state to wait for.
            run_ip("-n", self.hub, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
            run_ip("-n", self.hub, "link", "set", "br0", "up")
            for i in range(n):
                host = Host(ns=f"{self.prefix}h{i}", index=i, address=f"{self.subnet}.{i + 1}")
                run_ip("netns", "add", host.ns)
                self.hosts.append(host)
                port = f"p{i}"
                run_ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", DEVICE,
                    "netns", host.ns)
                run_ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
                run_ip("-n", host.ns, "link", "set", "lo", "up")
                run_ip("-n", host.ns, "link", "set", DEVICE, "multicast", "on", "up")
                run_ip("-n", host.ns, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", DEVICE)
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Delete every namespace this bridge made (their veths and the bridge go with them)."""
        for name in [h.ns for h in self.hosts] + [self.hub]:
            run_ip("netns", "del", name, check=False)
        self.hosts.clear()

    def host(self, index: int) -> Host:
        return self.hosts[index]

    def change_address(self, index: int, new_ip: str) -> None:
        """Give host ``index`` the address ``new_ip`` instead of its current one."""
        host = self.hosts[index]
        change_address(host.ns, new_ip)
        host.address = new_ip


def unique_prefix(tag: str = "") -> str:
    """A namespace name prefix unique to this process (and ``tag``)."""
    tag = re.sub(r"[^a-z0-9]", "", tag.lower())[:8]
    return f"{FAMILY}-{os.getpid()}-{tag}"


@contextlib.contextmanager
def make_hosts(n: int, prefix: str | None = None) -> Iterator[Bridge]:
    """``n`` host namespaces on a private bridge; always removed on exit."""
    cleanup_leftovers()
    bridge = Bridge(prefix or unique_prefix())
    if not _FAMILY_RE.match(bridge.prefix):
        raise ValueError(f"prefix {bridge.prefix!r} must come from unique_prefix() so leftovers can be found")
    bridge.create(n)
    try:
        yield bridge
    finally:
        bridge.destroy()


def run_in(ns: str, argv: Sequence[str], **popen_kwargs: object) -> subprocess.Popen[str]:
    """Start ``argv`` inside namespace ``ns`` (stdout and stderr merged, text, own session).

    ``ip netns exec`` execs the program, so the Popen's pid is the program's own.
    """
    options: dict[str, object] = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
    options.update(popen_kwargs)
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **options)  # type: ignore[call-overload]


def set_link(ns: str, up: bool) -> None:
    """Bring the namespace's ``eth0`` up or down (down: the host drops off the LAN)."""
    run_ip("-n", ns, "link", "set", DEVICE, "up" if up else "down")


def change_address(ns: str, new_ip: str, prefix_len: int = PREFIX_LEN) -> None:
    """Replace every IPv4 address on the namespace's ``eth0`` with ``new_ip``."""
    run_ip("-n", ns, "-4", "addr", "flush", "dev", DEVICE)
    run_ip("-n", ns, "addr", "add", f"{new_ip}/{prefix_len}", "dev", DEVICE)


class Output:
    """Collects a process's output lines on a reader thread, so tests can poll without blocking."""

    MAX_LINES = 10_000

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                if len(self._lines) < self.MAX_LINES:
                    self._lines.append(line.rstrip("\n"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def text(self) -> str:
        return "\n".join(self.lines())

    def stop(self) -> None:
        """Terminate the process (SIGKILL after a grace period) and finish reading."""
        stop_process(self.process)
        self._thread.join(timeout=STOP_GRACE)


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``STOP_GRACE`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
