"""Links between nodes are bounded by silence, not by time in our own queue (issue 14):
``WireStream.stall`` with ``unless_silent`` and ``poll_progress``, as the daemon's peer
send path and its progress loop use them (shell/daemon/node.py, peers.py)."""

from __future__ import annotations

import functools
import socket
import threading
import time

import pytest
import trio

from peerstore.shell.wirestream import LOWAT, PeerClosed, PeerSilent, WireStream, blocking_receive, dial

KEY = b"k" * 32
STALL = 0.5
PAYLOAD = 2 << 20


async def linked_pair(nursery: trio.Nursery) -> tuple[WireStream, WireStream]:
    """A dialled node link and the other end's stream, both authenticated."""
    accepted: trio.MemoryChannel = trio.open_memory_channel(1)
    send, receive = accepted

    async def serve(stream: trio.SocketStream) -> None:
        wire = WireStream(stream, role="server", cluster_key=KEY, node_id="b" * 16)
        await wire.handshake(5)
        await send.send(wire)
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = await dial("127.0.0.1", port, cluster_key=KEY, node_id="a" * 16, timeout=5)
    client.stall = STALL
    server = await receive.receive()
    return client, server


async def poll(wire: WireStream) -> None:
    """What the daemon's progress loop does (every PROGRESS_INTERVAL; faster here)."""
    while True:
        await trio.sleep(0.05)
        wire.poll_progress()


async def send_piece(wire: WireStream, done: list) -> None:
    try:
        with wire.unless_silent():
            await wire.send({"t": "store_piece"}, bytes(PAYLOAD))
        done.append("sent")
    except PeerClosed as err:  # PeerSilent, or the connection it closed
        done.append(err)


def test_sends_queued_behind_each_other_wait_as_long_as_bytes_flow():
    """Two pieces through a peer that reads about 3 MB/s: the second waits for the first
    (about 1.4 s in all, three times the stall bound) and neither fails."""
    async def main() -> tuple[list, float]:
        async with trio.open_nursery() as nursery:
            client, server = await linked_pair(nursery)
            nursery.start_soon(poll, client)

            async def slow_reader() -> None:
                while True:
                    await server.stream.receive_some(64 * 1024)
                    await trio.sleep(0.02)

            nursery.start_soon(slow_reader)
            done: list = []
            started = trio.current_time()
            async with trio.open_nursery() as sends:
                sends.start_soon(send_piece, client, done)
                sends.start_soon(send_piece, client, done)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        return done, elapsed

    done, elapsed = trio.run(main)
    assert done == ["sent", "sent"]
    assert elapsed > 2 * STALL


def test_a_peer_that_stops_reading_fails_the_send_and_the_one_queued_behind_it():
    async def main() -> tuple[list, float]:
        async with trio.open_nursery() as nursery:
            client, _server = await linked_pair(nursery)  # the server never reads
            nursery.start_soon(poll, client)
            done: list = []
            started = trio.current_time()
            with trio.fail_after(30):
                async with trio.open_nursery() as sends:
                    sends.start_soon(send_piece, client, done)
                    sends.start_soon(send_piece, client, done)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        return done, elapsed

    done, elapsed = trio.run(main)
    assert len(done) == 2 and isinstance(done[0], PeerSilent) and isinstance(done[1], PeerClosed), done
    assert "nothing moved for 0.5 s" in str(done[0])
    assert elapsed < 4 * STALL + 2  # the buffers fill at once; then the silence bound


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    receiver.setblocking(False)
    return sender, receiver


@pytest.mark.parametrize("chunk, count, pause", [
    (1000, 30, 0.03),  # 33 KB/s: under 64 KiB per LOWAT_WAIT, read as it comes
    (100_000, 3, 0.05),  # bursts: woken per 64 KiB
])
def test_a_payload_receive_completes_and_leaves_the_socket_waking_per_byte(chunk, count, pause):
    """blocking_receive waits for RECEIVE_LOWAT bytes per wake-up; a link slower than that
    is read as it comes, and the socket's SO_RCVLOWAT is 1 again afterwards (trio's own
    receives of small frames must not wait for 64 KiB)."""
    sender, receiver = tcp_pair()
    chunks = [bytes([i]) * chunk for i in range(count)]

    def trickle() -> None:
        for piece in chunks:
            sender.sendall(piece)
            time.sleep(pause)

    writer = threading.Thread(target=trickle)
    writer.start()
    buffer = bytearray(chunk * count)
    moved: list[int] = []
    started = time.monotonic()
    blocking_receive(receiver.fileno(), memoryview(buffer), timeout=STALL * 4, count=moved.append)
    writer.join()
    assert bytes(buffer) == b"".join(chunks) and sum(moved) == chunk * count
    assert time.monotonic() - started < 5
    if LOWAT is not None:
        assert receiver.getsockopt(socket.SOL_SOCKET, LOWAT) == 1
    sender.close()
    receiver.close()
