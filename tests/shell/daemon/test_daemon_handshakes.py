"""The daemon's side of unauthenticated connections, in process: pending handshakes stay
under the per-address cap while a real peer still gets in, and a wrong-key handshake
repeated over and over is logged once per interval (and counted every time)."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from peerstore.errors import AuthError
from peerstore.shell.config import Config
from peerstore.shell.daemon.admission import MAX_PENDING_PER_ADDRESS
from peerstore.shell.daemon.node import Daemon
from peerstore.shell.identity import load_or_create_identity
from peerstore.shell.wirestream import dial
from peerstore.testing.procs import free_port

KEY = bytes(range(32))
WRONG = bytes(32)


def make_daemon(data_dir: Path) -> Daemon:
    config = Config(source="test", data_dir=data_dir, cluster_key=KEY, listen_host="127.0.0.1", listen_port=free_port(),
                    metrics_port=0, mdns=False)
    return Daemon(config, load_or_create_identity(data_dir))


def test_half_open_connections_stay_capped_and_a_peer_still_gets_in(tmp_path: Path):
    daemon = make_daemon(tmp_path)
    seen: dict[str, int] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            flood = []
            for _ in range(5 * MAX_PENDING_PER_ADDRESS):
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", port))
                flood.append(sock)
            with trio.move_on_after(10):  # until the node has accepted them all (slow under load)
                while daemon.handshakes.dropped < 4 * MAX_PENDING_PER_ADDRESS:
                    await trio.sleep(0.05)
            seen["pending"] = daemon.handshakes.pending
            seen["dropped"] = daemon.handshakes.dropped
            wire = await dial("127.0.0.1", port, cluster_key=KEY, node_id="0123456789abcdef", timeout=5)
            seen["peer"] = wire.peer_id == daemon.node_id
            await wire.aclose()
            for sock in flood:
                sock.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen["pending"] <= MAX_PENDING_PER_ADDRESS
    assert seen["dropped"] >= 4 * MAX_PENDING_PER_ADDRESS
    assert seen["peer"]


def test_wrong_key_warnings_are_rate_limited_but_all_counted(tmp_path: Path, caplog):
    daemon = make_daemon(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            for i in range(20):
                try:
                    wire = await dial("127.0.0.1", port, cluster_key=WRONG, node_id=f"{i + 1:016x}", timeout=5)
                except (AuthError, OSError, trio.TooSlowError, Exception):  # refused, as it should be
                    continue
                await wire.aclose()
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="peerstore.node"):
        trio.run(main)
    warnings = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    counted = daemon.metrics.registry.get_sample_value("peerstore_errors_total", {"kind": "auth"})
    assert counted == 20
