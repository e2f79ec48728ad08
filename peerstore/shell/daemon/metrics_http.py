"""The ``/metrics`` HTTP endpoint, bounded: an idle timeout per connection and a cap on
connections served at once.

prometheus-client's own server gives every connection a thread for as long as the client
keeps it open, so a few hundred idle connections pin a few hundred threads. Here a
connection that sends or reads nothing for ``idle_timeout`` seconds is closed, and one
arriving while ``max_connections`` are being served is closed at once (a Prometheus
scrape retries at its next interval).
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import MetricsHandler

IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent (a scrape takes milliseconds)
MAX_CONNECTIONS = 16  # served at once; Prometheus uses one per scrape


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


def serve_metrics(registry: Any, host: str, port: int, *, idle_timeout: float = IDLE_TIMEOUT,
                  max_connections: int = MAX_CONNECTIONS) -> BoundedHTTPServer:
    """Serve ``registry`` on http://host:port/metrics from a daemon thread; the server
    (``server_address`` says the port when ``port`` is 0)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    handler = type("BoundedMetricsHandler", (MetricsHandler.factory(registry),), {"timeout": idle_timeout})
    server_class = type("MetricsServer", (BoundedHTTPServer,), {"address_family": family})
    server = server_class((sockaddr[0], port), handler, max_connections)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
