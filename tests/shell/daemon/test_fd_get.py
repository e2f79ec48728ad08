"""Issue 14 §3: the node's side of a get written into descriptors its local CLI passed.

Two real daemons in process. A client on the Unix socket asks for descriptors; the node
offers to take them only there, checks each (a regular file open for writing, not
append-only; one per listed file) and refuses anything else with a reason, writing
nothing; a client may ask to stream instead, and over TCP the node always streams.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import trio

from peerstore.shell import fdpass
from peerstore.shell.client.connection import open_local_wire, open_wire
from peerstore.shell.daemon.node import Daemon
from peerstore.wire import Message
from peerstore.wire import client_protocol as cp
from tests.shell.daemon.test_local_trust import KEY, client, next_frame, with_cluster

SIZE = 300_000  # a few 64 KiB stripes' worth


def source(tmp_path: Path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "src.bin").write_bytes(data)
    return data


async def store(a: Daemon, tmp_path: Path) -> None:
    await client(a, local=False).put(tmp_path / "src.bin", "t/x", stream=True)


async def start_fd_get(wire: Any) -> dict:
    """Ask for t/x with descriptors; the entry's header."""
    await wire.send(cp.get_request("t/x", fds=True))
    assert (await next_frame(wire))["t"] == "manifest"
    entry = await next_frame(wire)
    assert entry["t"] == "entry", entry
    return entry


def bad_descriptors(tmp_path: Path) -> dict[str, int]:
    """What a broken client might pass instead of a file open for writing."""
    (tmp_path / "ro").write_bytes(b"")
    read_r, write_w = os.pipe()
    os.close(write_w)
    return {
        "read-only": os.open(tmp_path / "ro", os.O_RDONLY),
        "append": os.open(tmp_path / "ap", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        "pipe": read_r,
        "directory": os.open(tmp_path, os.O_RDONLY),
    }


def test_the_node_refuses_descriptors_that_are_not_writable_regular_files(tmp_path):
    data = source(tmp_path)
    reasons = {}

    async def test(a: Daemon) -> None:
        await store(a, tmp_path)
        for kind, fd in bad_descriptors(tmp_path).items():
            wire = await open_local_wire(a.local_socket, KEY, 10)
            try:
                entry = await start_fd_get(wire)
                assert entry["fds"] == fdpass.MAX_FDS_PER_FRAME
                await fdpass.send_with_fds(wire, {"t": "fds", "files": [0], "last": True}, [fd])
                reply = await next_frame(wire)
            finally:
                os.close(fd)
                await wire.aclose()
            assert reply["t"] == "failed", (kind, reply)
            reasons[kind] = reply["reason"]
        # the node goes on: an honest local get after those works and is exact
        got = await client(a).get("t/x", tmp_path / "out")
        assert got["node_wrote"] is True and (tmp_path / "out").read_bytes() == data

    with_cluster(tmp_path, test)
    assert "not open for writing" in reasons["read-only"]
    assert "appending" in reasons["append"]
    assert "not a regular file" in reasons["pipe"] and "not a regular file" in reasons["directory"]
    assert (tmp_path / "ap").read_bytes() == b""  # nothing was written through any of them


def test_a_frame_listing_more_files_than_descriptors_is_refused(tmp_path):
    source(tmp_path)

    async def test(a: Daemon) -> dict:
        wire = await open_local_wire(a.local_socket, KEY, 10)
        await store(a, tmp_path)
        fd = os.open(tmp_path / "target", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await start_fd_get(wire)
            await fdpass.send_with_fds(wire, {"t": "fds", "files": [0, 1], "last": True}, [fd])
            return await next_frame(wire)
        finally:
            os.close(fd)
            await wire.aclose()

    reply = with_cluster(tmp_path, test)
    assert reply["t"] == "failed" and "2 files listed but 1 descriptors" in reply["reason"]
    assert (tmp_path / "target").stat().st_size == 0


def test_the_client_may_ask_to_stream_and_tcp_always_streams(tmp_path):
    data = source(tmp_path)

    async def stripes(wire: Any) -> tuple[bytes, dict]:
        got = bytearray()
        while True:
            event = await wire.next_event()
            if isinstance(event, Message):
                if event.header["t"] == "stripe":
                    await wire.read_payload(event, got.extend)
                elif event.payload_len:
                    await wire.read_payload(event, lambda view: None)
                if event.header["t"] in ("get_done", "failed"):
                    return bytes(got), dict(event.header)

    async def test(a: Daemon) -> None:
        await store(a, tmp_path)
        local = await open_local_wire(a.local_socket, KEY, 10)
        await start_fd_get(local)
        await fdpass.send_with_fds(local, {"t": "fds", "files": [], "last": True, "stream": True}, [])
        assert (await next_frame(local)) == {"t": "fds_ok", "stream": True}
        got, done = await stripes(local)
        assert got == data and done["t"] == "get_done" and "written" not in done
        await local.aclose()

        tcp = await open_wire("127.0.0.1", a.listen_port, KEY, 10)
        entry = await start_fd_get(tcp)
        assert "fds" not in entry  # no descriptors over TCP
        got, done = await stripes(tcp)
        assert got == data and done["t"] == "get_done"
        await tcp.aclose()

    with_cluster(tmp_path, test)


def test_fdpass_carries_descriptors_with_an_authenticated_frame(tmp_path):
    """The helper on its own, over a socketpair: the frame and its descriptors arrive together."""
    from peerstore.shell.wirestream import WireStream

    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a = WireStream(trio.SocketStream(trio.socket.from_stdlib_socket(left)), role="client", cluster_key=KEY,
                       node_id="c0123456789abcde")
        b = WireStream(trio.SocketStream(trio.socket.from_stdlib_socket(right)), role="server", cluster_key=KEY,
                       node_id="0123456789abcdef")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.handshake, 5)
            await b.handshake(5)
        target = tmp_path / "f"
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
        await fdpass.send_with_fds(a, {"t": "fds", "files": [7], "last": True}, [fd])
        header, fds = await fdpass.receive_with_fds(b, 4)
        os.close(fd)
        assert header == {"t": "fds", "files": [7], "last": True} and len(fds) == 1
        assert fdpass.check_writable_file(fds[0]) is None
        os.pwrite(fds[0], b"through the passed descriptor", 3)
        fdpass.close_all(fds)
        assert target.read_bytes() == b"\0\0\0through the passed descriptor"
        await a.aclose()
        await b.aclose()

    trio.run(main)


def test_a_directory_of_many_files_passes_its_descriptors_in_batches_or_streams(tmp_path, monkeypatch):
    """70 files: two frames of descriptors. With a limit below the file count the CLI asks
    the node to stream, silently; both results are exact."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    files = {f"f{i:03d}.bin": os.urandom(1000 + i) for i in range(fdpass.MAX_FDS_PER_FRAME + 6)}
    for name, data in files.items():
        (folder / name).write_bytes(data)

    async def test(a: Daemon) -> tuple[dict, dict]:
        await client(a, local=False).put(folder, "t/dir", stream=True)
        batched = await client(a).get("t/dir", tmp_path / "out-batched")
        monkeypatch.setattr("peerstore.shell.client.direct.MAX_FD_FILES", 10)
        streamed = await client(a).get("t/dir", tmp_path / "out-streamed")
        return batched, streamed

    batched, streamed = with_cluster(tmp_path, test)
    assert batched["node_wrote"] is True and batched["written"] == len(files)
    assert streamed["node_wrote"] is False
    for out in ("out-batched", "out-streamed"):
        assert {p.name: p.read_bytes() for p in (tmp_path / out).iterdir()} == files


def test_when_the_kernel_drops_the_descriptors_the_get_streams_silently(tmp_path, monkeypatch):
    """The node's descriptor limit (MSG_CTRUNC), simulated by a receive that reports it:
    the node says stream, the CLI drops the files it made and takes the stream; exact."""
    data = source(tmp_path)
    real = fdpass.receive_with_fds

    async def dropping(wire: Any, max_fds: int) -> Any:
        _, fds = await real(wire, max_fds)
        fdpass.close_all(fds)
        raise fdpass.FdsDropped("the kernel dropped passed descriptors (too many open files here?)")

    async def test(a: Daemon) -> dict:
        await store(a, tmp_path)
        monkeypatch.setattr(fdpass, "receive_with_fds", dropping)
        return await client(a).get("t/x", tmp_path / "out")

    done = with_cluster(tmp_path, test)
    assert done["node_wrote"] is False and "written" not in done
    assert (tmp_path / "out").read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".peerstore-tmp-")]


def test_a_write_the_node_cannot_make_falls_back_to_streaming_the_rest(tmp_path, monkeypatch):
    """The node's own limits (RLIMIT_FSIZE: EFBIG) may forbid a write the user may make:
    after one stripe written through the descriptor, the second fails; the node streams it
    and the rest, the CLI writes them into the same files; exact, and reported as streamed."""
    from peerstore.shell.daemon import fd_writer

    data = source(tmp_path)
    real = fd_writer.FdWriter._write
    calls = []

    def failing(fd: int, effect: Any, pieces: Any) -> None:
        calls.append(effect.stripe)
        if len(calls) == 2:
            os.pwrite(fd, b"partial junk", effect.offset)  # a torn write before the error
            raise OSError(27, "File too large")
        real(fd, effect, pieces)

    async def test(a: Daemon) -> dict:
        await store(a, tmp_path)
        monkeypatch.setattr(fd_writer.FdWriter, "_write", staticmethod(failing))
        done = await client(a).get("t/x", tmp_path / "out")
        assert a.buffers.bytes == 0  # every piece released, the streamed ones too
        return done

    done = with_cluster(tmp_path, test)
    assert calls == [0, 1], calls
    assert done["node_wrote"] is False and "written" not in done
    assert (tmp_path / "out").read_bytes() == data
