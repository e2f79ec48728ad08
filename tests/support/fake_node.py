"""An in-process fake node that speaks the client protocol, for the CLI's unit tests.

It keeps checkpoints in memory with real (canonical, decodable) manifests and can be
told to misbehave: fail, drop the connection, freeze, corrupt bytes, send a hostile
manifest. It is a test double for the client's own logic, not a model of the daemon.
Run it inside a test's trio.run (``await nursery.start(node.serve)``) or in a thread
(``with node.running():``) when the code under test calls trio.run itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import blake3
import msgpack
import trio

from peerstore.ec.layout import iter_stripes
from peerstore.model.catalog import Catalog, CatalogEntry, CatalogNotFound
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import Policy
from peerstore.wire import ConnectionClosed, HandshakeComplete, Message
from peerstore.wire.client_protocol import entry_dict, failed, local_refused, parse_put
from peerstore.shell.wirestream import WireStream

KEY = bytes(range(32))
NODE_ID = "0123456789abcdef"
POLICY = Policy(shard_size=64 * 1024, stripe_width=4, parity=2)


def build_manifest(name: str, counter: int, files: list[tuple[str, bytes, int]], is_dir: bool) -> Manifest:
    """A valid manifest for ``files`` [(path, content, mode)] under the test policy."""
    entries, placement = [], []
    for path, content, mode in files:
        stripes = []
        for span in iter_stripes(len(content), POLICY.shard_size, POLICY.stripe_width):
            shards = [content[s.offset: s.offset + s.length] for s in span.shards]
            stripes.append(StripeEntry(
                k=span.k, p=POLICY.parity, block_size=span.block_size,
                data_ids=tuple(blake3.blake3(s).digest() for s in shards),
                data_lengths=tuple(len(s) for s in shards),
                parity_ids=tuple(blake3.blake3(b"parity%d" % i + shards[0]).digest() for i in range(POLICY.parity)),
            ))
            placement.append((NODE_ID,) * (2 * span.k + POLICY.parity))
        entries.append(FileEntry(path, len(content), mode, blake3.blake3(content).digest(), tuple(stripes)))
    return Manifest(name=name, version=VersionId(counter, NODE_ID), policy=POLICY, files=tuple(entries),
                    placement=tuple(placement), tolerance=1, created=time.time(), is_dir=is_dir)


@dataclass
class Stored:
    manifest: Manifest
    contents: list[bytes]

    @property
    def entry(self) -> CatalogEntry:
        return CatalogEntry.for_manifest(self.manifest)


@dataclass
class FakeNode:
    """Knobs (set before the request): put_mode, get_mode, not_found_flag."""

    put_mode: str = "ok"  # ok | fail | unknown | drop_after_request | drop_after_data | freeze
    get_mode: str = "ok"  # ok | fail_midway | drop_midway | bad_hash | bad_bytes | hostile | wrong_id | freeze
    not_found_flag: bool | None = True  # None: omit "not_found" (the client must probe with ls)
    stored: list[Stored] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    data_frames: int = 0
    port: int = 0
    local_socket: Path | None = None  # like a node's Unix socket: only here is local_root read

    def add(self, name: str, files: list[tuple[str, bytes, int]], is_dir: bool) -> Stored:
        counter = 1 + sum(1 for s in self.stored if s.manifest.name == name)
        stored = Stored(build_manifest(name, counter, files, is_dir), [c for _, c, _ in files])
        self.stored.append(stored)
        return stored

    def catalog(self) -> Catalog:
        return Catalog([s.entry for s in self.stored])

    # -- serving

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        run_dir = Path(tempfile.mkdtemp(prefix="fake-node-"))
        self.local_socket = run_dir / "client.sock"
        unix = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await unix.bind(str(self.local_socket))
            unix.listen(16)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, partial(self._handle, local=True), [trio.SocketListener(unix)])
                task_status.started(self.port)
                await trio.serve_listeners(self._handle, listeners)
        finally:
            unix.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    @contextmanager
    def running(self):
        """Serve from a background thread for as long as the block runs."""
        ready = threading.Event()
        token: dict = {}

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                token["cancel"] = nursery.cancel_scope
                token["trio"] = trio.lowlevel.current_trio_token()
                await nursery.start(self.serve)
                ready.set()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        thread.start()
        assert ready.wait(10), "fake node did not start"
        try:
            yield self
        finally:
            trio.from_thread.run_sync(token["cancel"].cancel, trio_token=token["trio"])
            thread.join(10)

    async def _handle(self, stream: trio.SocketStream, local: bool = False) -> None:
        wire = WireStream(stream, role="server", cluster_key=KEY, node_id=NODE_ID, where="client", idle=30)
        try:
            event = await wire.next_event()
            if not isinstance(event, HandshakeComplete):
                return
            event = await wire.next_event()
            if not isinstance(event, Message):
                return
            self.requests.append(dict(event.header))
            if "local_root" in event.header and not local:  # as the node: only on its Unix socket
                await wire.send(local_refused("local_root only on the node's Unix socket; stream the files"))
                return
            handler = getattr(self, "_on_" + event.header["t"])
            await handler(wire, event.header)
        except Exception:  # a client that went away is the normal end of many tests
            pass
        finally:
            await wire.aclose()

    async def _on_put(self, wire: WireStream, header: dict) -> None:
        name, files, is_dir, local_root = parse_put(header)
        if self.put_mode == "drop_after_request" or self.put_mode == "freeze" and local_root:
            if self.put_mode == "freeze":
                await trio.sleep_forever()
            return
        contents = [bytearray() for _ in files]
        total = sum(size for _, size, _ in files)
        if local_root is not None:
            root = Path(local_root)
            for i, (path, _, _) in enumerate(files):
                contents[i] += (root / path if is_dir else root).read_bytes()
        else:
            while sum(len(c) for c in contents) < total:
                event = await wire.next_event()
                if isinstance(event, ConnectionClosed):
                    return
                assert isinstance(event, Message) and event.header["t"] == "data"
                index, offset = event.header["file"], event.header["offset"]
                assert offset == len(contents[index])
                await wire.read_payload(event, contents[index].extend)
                self.data_frames += 1
                await wire.send({"t": "progress", "done": sum(len(c) for c in contents), "total": total})
        if self.put_mode == "freeze":
            await trio.sleep_forever()
        if self.put_mode == "drop_after_data":
            return
        if self.put_mode == "fail":
            await wire.send(failed("not enough live nodes to place the checkpoint"))
            return
        if self.put_mode == "unknown":
            await wire.send(failed("lost track of the commit", unknown=True))
            return
        stored = self.add(name, [(p, bytes(c), m) for (p, _, m), c in zip(files, contents)], is_dir)
        m = stored.manifest
        await wire.send({"t": "put_done", "name": name, "version": str(m.version), "tolerance": m.tolerance,
                         "size": m.total_size(), "pieces": len(m.piece_ids()), "manifest_id": m.id.hex()})

    async def _on_get(self, wire: WireStream, header: dict) -> None:
        try:
            entry = self.catalog().resolve(header["spec"])
        except CatalogNotFound as err:
            reply = failed(str(err))
            if self.not_found_flag is not None:
                reply["not_found"] = self.not_found_flag
            await wire.send(reply)
            return
        stored = next(s for s in self.stored if s.manifest.id == entry.manifest_id)
        blob = stored.manifest.encode()
        if self.get_mode == "hostile":
            doc = msgpack.unpackb(blob, raw=False)
            doc["files"][0]["path"] = "../escaped"
            blob = msgpack.packb(doc, use_bin_type=True)
        manifest_id = blake3.blake3(blob).digest() if self.get_mode != "wrong_id" else bytes(32)
        await wire.send({"t": "manifest"}, blob)
        await wire.send({"t": "entry", "name": entry.name, "version": str(entry.version), "manifest_id": manifest_id})
        sent = 0
        for index, f in enumerate(stored.manifest.files):
            offset = 0
            for stripe in f.stripes:
                length = sum(stripe.data_lengths)
                data = stored.contents[index][offset: offset + length]
                if sent == 1 and self.get_mode in ("fail_midway", "drop_midway", "freeze"):
                    if self.get_mode == "fail_midway":
                        await wire.send(failed("every holder of stripe 1 is down"))
                    if self.get_mode == "freeze":
                        await trio.sleep_forever()
                    return
                if self.get_mode == "bad_hash" and sent == 0:
                    h = blake3.blake3(data).digest()
                    frame = wire.conn.send_message({"t": "stripe", "file": index, "offset": offset}, len(data), h)
                    await wire._send_all(frame + bytes([data[0] ^ 1]) + data[1:])
                else:
                    if self.get_mode == "bad_bytes" and sent == 0:
                        data = bytes([data[0] ^ 1]) + data[1:]
                    await wire.send({"t": "stripe", "file": index, "offset": offset}, data)
                offset += length
                sent += 1
        m = stored.manifest
        await wire.send({"t": "get_done", "name": m.name, "version": str(m.version), "size": m.total_size(),
                         "degraded": 0, "fallbacks": 0})

    async def _on_ls(self, wire: WireStream, header: dict) -> None:
        catalog = self.catalog()
        names = [header["name"]] if header.get("name") else catalog.names()
        entries = [entry_dict(e) for n in names for e in catalog.live_versions(n)]
        await wire.send({"t": "listing", "entries": entries})

    async def _on_status(self, wire: WireStream, header: dict) -> None:
        checkpoints = [{**entry_dict(s.entry), "pieces": len(s.manifest.piece_ids()), "tolerance_now": 1}
                       for s in self.stored]
        members = [{"node_id": NODE_ID, "name": "fake", "addr": f"127.0.0.1:{self.port}", "state": "alive"}]
        await wire.send({"t": "status", "node_id": NODE_ID, "members": members, "checkpoints": checkpoints})

    async def _on_rm(self, wire: WireStream, header: dict) -> None:
        catalog = self.catalog()
        try:
            versions = catalog.rm(header["spec"])
        except CatalogNotFound as err:
            reply = failed(str(err))
            if self.not_found_flag is not None:
                reply["not_found"] = self.not_found_flag
            await wire.send(reply)
            return
        self.stored = [s for s in self.stored if s.manifest.version not in versions or
                       s.manifest.name != header["spec"].split("@")[0]]
        await wire.send({"t": "removed", "versions": [str(v) for v in versions]})


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create files under root (making directories); returns root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def random_bytes(n: int, seed: int = 0) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "big")).digest(n) if n else b""


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under root (relative path -> bytes)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def run_client(node: "FakeNode", fn, *, timeout: float = 5.0, key: bytes = KEY):
    """Serve ``node`` and run ``fn(client)`` against it (a NodeClient that finds its local
    socket) in one trio.run; an exception from ``fn`` is raised here."""
    from peerstore.shell.client import NodeClient

    async def main():
        box = {}
        async with trio.open_nursery() as nursery:
            port = await nursery.start(node.serve)
            try:
                box["value"] = await fn(NodeClient("127.0.0.1", port, key, timeout, local_socket=node.local_socket))
            except Exception as err:  # noqa: BLE001 - re-raised outside the nursery
                box["error"] = err
            nursery.cancel_scope.cancel()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return trio.run(main)
