"""The metrics endpoint closes idle connections and serves a bounded number at once, so
idle connections cannot pin a thread each forever."""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from peerstore.shell.daemon.metrics import Metrics
from peerstore.shell.daemon.metrics_http import serve_metrics
from peerstore.testing.procs import free_port


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("peerstore_test_things", "Things", registry=reg).inc(3)
    return reg


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_an_idle_connection_is_closed_after_the_idle_timeout():
    server = serve_metrics(registry(), "127.0.0.1", 0, idle_timeout=0.5)
    try:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port)) as idle:
            started = time.monotonic()
            assert closed_by_server(idle, within=5.0)
            assert time.monotonic() - started < 3.0
        assert "peerstore_test_things_total 3.0" in scrape(port)
    finally:
        server.shutdown()
        server.server_close()


def test_connections_beyond_the_cap_are_closed_at_once_and_scrapes_resume():
    server = serve_metrics(registry(), "127.0.0.1", 0, idle_timeout=1.0, max_connections=4)
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        time.sleep(0.2)  # all four are being served (and hold their slots)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            assert closed_by_server(extra, within=0.5)
        assert server.refused >= 1
        time.sleep(1.5)  # the idle ones time out and give their slots back
        assert "peerstore_test_things_total 3.0" in scrape(port)
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_the_daemon_metrics_endpoint_is_the_bounded_one():
    metrics = Metrics()
    port = free_port()
    metrics.serve("127.0.0.1", port)
    assert "peerstore_errors_total" in scrape(port)
    with socket.create_connection(("127.0.0.1", port)) as idle:
        assert closed_by_server(idle, within=30.0), "an idle connection held its thread"
