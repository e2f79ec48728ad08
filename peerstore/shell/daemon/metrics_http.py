"""The ``/metrics`` HTTP endpoint, bounded: an idle timeout per connection and a cap on
connections served at once. It also serves Prometheus HTTP service discovery on
``/discovery`` (https://prometheus.io/docs/prometheus/latest/http_sd/): the metrics
endpoints of every member this node knows, so Prometheus pointed at one node finds all.

prometheus-client's own server gives every connection a thread for as long as the client
keeps it open, so a few hundred idle connections pin a few hundred threads. Here a
connection that sends or reads nothing for ``idle_timeout`` seconds is closed, and one
arriving while ``max_connections`` are being served is closed at once (a Prometheus
scrape retries at its next interval).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from prometheus_client.exposition import MetricsHandler

IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent (a scrape takes milliseconds)
MAX_CONNECTIONS = 16  # served at once; Prometheus uses one per scrape
DISCOVERY_PATH = "/discovery"

Targets = list[dict[str, Any]]  # http_sd's form: [{"targets": ["host:port"], "labels": {...}}]


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``max_connections`` at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections closed because every slot was taken
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _discovery_handler(base: type, targets: Callable[[], Targets] | None) -> type:
    """``base`` (a MetricsHandler) that also answers ``GET /discovery`` with ``targets()``."""

    def do_GET(self: Any) -> None:  # noqa: N802 (http.server's name)
        if urlparse(self.path).path != DISCOVERY_PATH:
            base.do_GET(self)
            return
        if targets is None:
            self.send_error(404, "service discovery is not served here")
            return
        body = json.dumps(targets()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    return type("DiscoveryMetricsHandler", (base,), {"do_GET": do_GET})


def serve_metrics(registry: Any, host: str, port: int, *, idle_timeout: float = IDLE_TIMEOUT,
                  max_connections: int = MAX_CONNECTIONS,
                  discovery: Callable[[], Targets] | None = None) -> BoundedHTTPServer:
    """Serve ``registry`` on http://host:port/metrics from a daemon thread, and
    ``discovery()`` (called in that thread: return a ready list, do not compute it from
    state another thread changes) on ``/discovery``; the server (``server_address`` says
    the port when ``port`` is 0)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    base = _discovery_handler(MetricsHandler.factory(registry), discovery)
    handler = type("BoundedMetricsHandler", (base,), {"timeout": idle_timeout})
    server_class = type("MetricsServer", (BoundedHTTPServer,), {"address_family": family})
    server = server_class((sockaddr[0], port), handler, max_connections)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
