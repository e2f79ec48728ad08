"""Issue 15, bug 3: a node reads files a client names (a put's ``local_root``) only for a
client of its own user on its Unix socket, and then only regular files inside the root.

Two real daemons run in process (a put needs two machines' worth of nodes). Over TCP, from
any address, ``local_root`` is refused before anything starts and the CLI streams instead;
over the Unix socket the kernel's peer uid must be the node's. The node's own checks hold
whatever the client sent: no symlink below the root is followed, '..' and relative roots
are refused, and a FIFO is refused at once without wedging a worker thread.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from peerstore.model.policy import Policy
from peerstore.shell.client import NodeClient
from peerstore.shell.client.connection import open_local_wire, open_wire
from peerstore.shell.config import Config
from peerstore.shell.daemon.node import Daemon
from peerstore.shell.identity import load_or_create_identity
from peerstore.shell.peercred import client_socket_path, peer_uid
from peerstore.wire import ConnectionClosed, Message
from peerstore.wire import client_protocol as cp
from peerstore.testing.procs import free_port

KEY = bytes(range(32))
NOBODY = 65534


def make_daemon(data_dir: Path, seeds: tuple = ()) -> Daemon:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = Config(source="test", data_dir=data_dir, cluster_key=KEY, listen_host="127.0.0.1", listen_port=free_port(),
                    metrics_port=0, mdns=False, seeds=seeds, policy=Policy(shard_size=64 * 1024, min_tolerance=0))
    return Daemon(config, load_or_create_identity(data_dir))


def with_cluster(root: Path, test: Callable[[Daemon], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Run two daemons (data in ``root``/a and ``root``/b) and ``test(a)`` against them."""

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            a = make_daemon(root / "a")
            port = await nursery.start(a.run)
            b = make_daemon(root / "b", (("127.0.0.1", port),))
            await nursery.start(b.run)
            with trio.fail_after(timeout):
                while sum(1 for row in a.member_rows() if row.get("state") == "alive") < 2:
                    await trio.sleep(0.02)
                result = await test(a)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def client(a: Daemon, local: bool = True) -> NodeClient:
    """The CLI's NodeClient for node ``a``, finding its socket from its data_dir as the CLI does."""
    return NodeClient("127.0.0.1", a.listen_port, KEY, 10,
                      local_socket=client_socket_path(a.config.data_dir) if local else None)


async def next_frame(wire: Any) -> dict:
    """The next header that is not progress (a payload is read and dropped)."""
    while True:
        event = await wire.next_event()
        if isinstance(event, ConnectionClosed):
            return {"t": "closed"}
        if not isinstance(event, Message):
            continue
        if event.payload_len:
            await wire.read_payload(event, lambda view: None)
        if event.header.get("t") != "progress":
            return dict(event.header)


async def answer(wire: Any, header: dict) -> dict:
    """Send one request on ``wire`` and return the node's final answer (progress skipped)."""
    try:
        await wire.send(header)
        return await next_frame(wire)
    finally:
        await wire.aclose()


def local_put(path: Path, *, size: int, single: bool = True, files: list[str] | None = None,
              root: str | None = None) -> dict:
    files = files or [path.name]
    return cp.put_request("t/x", [(f, size, 0o644) for f in files], not single, root or str(path))


def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(b"root's secret\n" * 100)
    os.chmod(path, 0o600)
    return path


def stored_names(a: Daemon) -> set[str]:
    return set(a.core.catalog.names())


# -- (a) TCP refuses local_root; the Unix socket from our own user takes it


def test_local_root_over_tcp_is_refused_and_nothing_is_read(tmp_path):
    target = secret(tmp_path)

    async def test(a: Daemon) -> None:
        wire = await open_wire("127.0.0.1", a.listen_port, KEY, 10)
        reply = await answer(wire, local_put(target, size=target.stat().st_size))
        assert cp.is_local_refused(reply), reply
        assert "Unix socket" in reply["reason"] and "stream" in reply["reason"]
        assert stored_names(a) == set()
        assert a.metrics.registry.get_sample_value("peerstore_errors_total", {"kind": "local_refused"}) == 1

    with_cluster(tmp_path, test)


def test_the_same_request_on_the_unix_socket_from_our_user_is_read_by_the_node(tmp_path):
    target = secret(tmp_path)

    async def test(a: Daemon) -> None:
        assert a.local_socket == client_socket_path(a.config.data_dir)
        assert (a.local_socket.parent.stat().st_mode & 0o777) == 0o700
        wire = await open_local_wire(a.local_socket, KEY, 10)
        assert wire is not None
        assert peer_uid(wire.stream.socket) == os.geteuid()  # the node sees us, as us
        reply = await answer(wire, local_put(target, size=target.stat().st_size))
        assert reply["t"] == "put_done", reply
        got = await client(a).get("t/x", tmp_path / "out")
        assert got["bytes"] == target.stat().st_size
        assert (tmp_path / "out").read_bytes() == target.read_bytes()

    with_cluster(tmp_path, test)


# -- (b) another user on the Unix socket


async def as_another_user(sock: Path, port: int, secret_path: Path, mine: Path) -> dict:
    """What a client of another user sees: can it connect, does the node read a file for
    it, and does the CLI's put of its own file still work (by streaming)."""
    out: dict[str, Any] = {"uid": os.geteuid()}
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(sock))
        out["connect"] = "ok"
    except OSError as err:
        out["connect"] = err.errno
        return out
    finally:
        probe.close()
    wire = await open_local_wire(sock, KEY, 10)
    assert wire is not None
    out["reply"] = await answer(wire, local_put(secret_path, size=secret_path.stat().st_size))
    result = await NodeClient("127.0.0.1", port, KEY, 10, local_socket=sock).put(mine, "t/mine")
    out["fallback_streamed"] = result["streamed"]
    return out


class ChildAs:
    """A forked child that becomes ``uid`` (no exec: the venv's interpreter may sit where
    that user cannot run it) and then runs ``as_another_user`` with the arguments given."""

    def __init__(self, uid: int):
        self.args_r, self.args_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.pid = os.fork()  # before any trio.run of this test: the child runs its own
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(self.args_w)
                os.close(self.out_r)
                args = json.loads(_read_line(self.args_r))
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                out = trio.run(as_another_user, Path(args[0]), args[1], Path(args[2]), Path(args[3]))
                os.write(self.out_w, json.dumps(out).encode() + b"\n")
                code = 0
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                os.write(self.out_w, json.dumps({"error": repr(err)}).encode() + b"\n")
            finally:
                os._exit(code)
        os.close(self.args_r)
        os.close(self.out_w)

    def run(self, *args: Any) -> dict:
        # Lines, not EOF: the other child holds copies of these pipes' ends.
        os.write(self.args_w, json.dumps([str(a) if isinstance(a, Path) else a for a in args]).encode() + b"\n")
        out = _read_line(self.out_r)
        os.waitpid(self.pid, 0)
        self.pid = 0
        return json.loads(out or b'{"error": "no output"}')

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
        for fd in (self.args_w, self.out_r):
            os.close(fd)


def _read_line(fd: int, limit: int = 1 << 20) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def shared_tmp():
    """A directory other users can search (pytest's own tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="ps-trust-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.needs_real
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run a child as another user")
def test_another_user_cannot_have_the_node_read_files(shared_tmp):
    tmp_path = shared_tmp
    target = secret(tmp_path)  # 0600: the child cannot read it itself
    mine = tmp_path / "mine.bin"
    mine.write_bytes(os.urandom(100_000))
    os.chmod(mine, 0o644)

    children = [ChildAs(NOBODY), ChildAs(NOBODY)]

    async def test(a: Daemon) -> dict:
        args = (a.local_socket, a.listen_port, target, mine)
        # The 0700 directory keeps other users from even connecting.
        first = await trio.to_thread.run_sync(children[0].run, *args)
        # Loosened by mistake, the node still asks the kernel who connected and refuses.
        os.chmod(a.local_socket.parent, 0o755)
        os.chmod(a.local_socket, 0o777)
        second = await trio.to_thread.run_sync(children[1].run, *args)
        return {"first": first, "second": second, "names": stored_names(a)}

    try:
        seen = with_cluster(tmp_path, test)
    finally:
        for child in children:
            child.close()
    assert seen["first"]["uid"] == NOBODY and seen["first"]["connect"] == 13  # EACCES
    second = seen["second"]
    assert second["connect"] == "ok"
    assert cp.is_local_refused(second["reply"]), second
    assert second["fallback_streamed"] is True  # the CLI streamed its own file instead
    assert seen["names"] == {"t/mine"}


# -- (c) FIFOs and devices: refused at once, and the node goes on serving


def test_fifos_are_refused_promptly_and_do_not_wedge_the_workers(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "model.safetensors")
    ok = tmp_path / "ok.bin"
    ok.write_bytes(os.urandom(200_000))
    requests = 40  # trio's worker thread limit: each wedged thread used to be lost for good

    async def test(a: Daemon) -> None:
        replies: list[dict] = []

        async def one(i: int) -> None:
            wire = await open_local_wire(a.local_socket, KEY, 10)
            assert wire is not None
            if i % 3 == 0:
                header = local_put(tree, size=10, single=False, files=["model.safetensors"])
            elif i % 3 == 1:
                header = local_put(fifo, size=10)
            else:
                header = local_put(Path("/dev/zero"), size=10)
            header["name"] = f"t/fifo{i}"
            replies.append(await answer(wire, header))

        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for i in range(requests):
                        nursery.start_soon(one, i)
        finally:
            release_readers(fifo, tree / "model.safetensors")
        assert len(replies) == requests
        assert all(r["t"] == "failed" and "not a regular file" in r["reason"] for r in replies), replies[:3]
        with trio.fail_after(10):
            put = await client(a).put(ok, "t/after")
            got = await client(a).get("t/after", tmp_path / "out")
        assert put["streamed"] is False and got["bytes"] == ok.stat().st_size
        assert (tmp_path / "out").read_bytes() == ok.read_bytes()

    with_cluster(tmp_path, test)


def release_readers(*fifos: Path) -> None:
    """Unblock any reader stuck opening these FIFOs (only a broken node has one)."""
    for fifo in fifos:
        for _ in range(64):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                break


# -- (d) symlinks, '..' and relative roots


def test_symlinks_and_escapes_are_refused(tmp_path):
    target = secret(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(target.read_bytes())
    tree = tmp_path / "tree"
    (tree / "inner").mkdir(parents=True)
    (tree / "inner" / "ok.bin").write_bytes(b"fine")
    (tree / "link.bin").symlink_to(target)
    (tree / "sub").symlink_to(outside, target_is_directory=True)
    link = tmp_path / "link-to-secret"
    link.symlink_to(target)
    size = target.stat().st_size

    cases = {
        "single file is a symlink": local_put(link, size=size),
        "file in the root is a symlink": local_put(tree, size=size, single=False, files=["link.bin"]),
        "directory in the root is a symlink": local_put(tree, size=size, single=False, files=["sub/secret"]),
        "dot-dot path": local_put(tree, size=size, single=False, files=["inner/../../secret"]),
        "relative root": local_put(tree, size=size, single=False, files=["secret"], root="tree/../outside"),
        "dot-dot root": local_put(tree, size=size, single=False, files=["secret"], root=f"{tree}/../outside"),
    }

    async def test(a: Daemon) -> dict:
        out = {}
        for what, header in cases.items():
            wire = await open_local_wire(a.local_socket, KEY, 10)
            assert wire is not None
            out[what] = await answer(wire, header)
        out["names"] = stored_names(a)
        return out

    seen = with_cluster(tmp_path, test)
    assert seen.pop("names") == set()
    for what, reply in seen.items():
        assert reply["t"] == "failed" and not cp.is_local_refused(reply), (what, reply)
    for what in ("single file is a symlink", "file in the root is a symlink", "directory in the root is a symlink"):
        assert "is a symlink, or below one" in seen[what]["reason"], (what, seen[what])
    for what in ("dot-dot path", "relative root", "dot-dot root"):
        assert "bad request" in seen[what]["reason"] and "'..'" in seen[what]["reason"], (what, seen[what])


# -- (e) the CLI: the fast local path when it can, streaming otherwise


def test_cli_put_takes_the_local_path_and_streams_when_it_cannot(tmp_path):
    tree = tmp_path / "ckpt"
    (tree / "nested").mkdir(parents=True)
    (tree / "model.safetensors").write_bytes(os.urandom(300_000))
    (tree / "nested" / "state.json").write_bytes(b'{"step": 5}')
    with_link = tmp_path / "with-link"
    with_link.mkdir()
    (with_link / "model.safetensors").write_bytes(os.urandom(70_000))
    (with_link / "alias.safetensors").symlink_to(with_link / "model.safetensors")

    async def test(a: Daemon) -> dict:
        out = {
            "local": await client(a).put(tree, "run/local"),
            "stream_flag": await client(a).put(tree, "run/flag", stream=True),
            "remote": await client(a, local=False).put(tree, "run/remote"),  # a node elsewhere: no socket
            "no_socket": await NodeClient("127.0.0.1", a.listen_port, KEY, 10,
                                          local_socket=tmp_path / "none" / "client.sock").put(tree, "run/gone"),
            "in_tree_link": await client(a).put(with_link, "run/link"),  # the node follows no symlink
        }
        for name in ("run/local", "run/remote", "run/link"):
            await client(a).get(name, tmp_path / "out" / name)
        return out

    seen = with_cluster(tmp_path, test)
    assert seen["local"]["streamed"] is False
    assert all(seen[k]["streamed"] is True for k in ("stream_flag", "remote", "no_socket", "in_tree_link"))
    for name in ("run/local", "run/remote"):
        out = tmp_path / "out" / name
        assert (out / "model.safetensors").read_bytes() == (tree / "model.safetensors").read_bytes()
        assert (out / "nested" / "state.json").read_bytes() == b'{"step": 5}'
    link_out = tmp_path / "out" / "run" / "link"
    assert (link_out / "alias.safetensors").read_bytes() == (with_link / "model.safetensors").read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the /proc/self/fd route is Linux's")
def test_a_data_dir_too_long_for_a_socket_path_still_gets_the_local_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    ok = tmp_path / "ok.bin"
    ok.write_bytes(os.urandom(100_000))

    async def test(a: Daemon) -> dict:
        assert len(str(a.local_socket)) > 108 and a.local_socket.exists()
        return await client(a).put(ok, "t/deep")

    assert with_cluster(deep, test)["streamed"] is False


def test_the_cli_uses_the_socket_of_its_configs_node_only(tmp_path):
    from argparse import Namespace

    from peerstore.cli.commands import default_node, local_socket

    config = Config(source="test", data_dir=tmp_path / "data", cluster_key=KEY, listen_port=7777)
    mine = client_socket_path(tmp_path / "data")
    assert local_socket(Namespace(node=None), config) == mine
    assert local_socket(Namespace(node=default_node(config)), config) == mine
    assert local_socket(Namespace(node=("127.0.0.1", 7778)), config) is None  # another node: stream
    assert local_socket(Namespace(node=("10.0.0.5", 7777)), config) is None


def test_this_machine_is_loopback_or_an_address_it_can_bind():
    from peerstore.shell.client.connection import is_this_machine
    from peerstore.shell.netaddr import detect_address

    assert is_this_machine("127.0.0.1") and is_this_machine("localhost") and is_this_machine("::1")
    assert is_this_machine(detect_address("0.0.0.0"))  # this machine's LAN address
    assert not is_this_machine("192.0.2.1")  # TEST-NET-1: nobody's
    assert not is_this_machine("example.com")  # names are not resolved


def test_an_unknown_platform_knows_no_peer_and_so_trusts_none(monkeypatch):
    from peerstore.shell import peercred

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peercred.peer_uid(left) == os.geteuid() and peercred.same_user(left)
        monkeypatch.setattr(peercred.sys, "platform", "sunos5")
        assert peercred.peer_uid(left) is None and not peercred.same_user(left)
