"""The daemon's disk-effect handlers: a disk error fails the one effect, is counted and
logged with its path and errno, and a read-only disk is reported to the core before the
failed write (the core then refuses pieces: core/store_health.py). At boot an unreadable
state file stops the node with the file named, instead of a traceback."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import trio

from peerstore.core import events as ev
from peerstore.errors import DiskIOError
from peerstore.shell.config import Config
from peerstore.shell.daemon.node import Daemon
from peerstore.shell.durable import disk_error
from peerstore.shell.identity import load_or_create_identity
from peerstore.shell.store import MetaStore

KEY = bytes(range(32))
PID = bytes(range(32))


def make_daemon(data_dir: Path) -> Daemon:
    return Daemon(Config(source="test", data_dir=data_dir, cluster_key=KEY, mdns=False, metrics_port=0),
                  load_or_create_identity(data_dir))


def drained(daemon: Daemon) -> list:
    out = []
    while True:
        try:
            out.append(daemon.inputs.receive_nowait())
        except trio.WouldBlock:
            return out


@pytest.mark.parametrize("code", [errno.EROFS, errno.EIO, errno.EFBIG, errno.EMFILE])
def test_a_failed_piece_write_fails_only_that_write(tmp_path: Path, monkeypatch, caplog, code):
    daemon = make_daemon(tmp_path)
    target = tmp_path / "tmp" / "piece.partial"

    def broken(pid, data):
        raise disk_error(OSError(code, os.strerror(code), str(target)), target, "writing")

    monkeypatch.setattr(daemon.pieces, "write", broken)

    async def main() -> list:
        handle = daemon.buffers.add(bytearray(10))
        await daemon._do_StorePieceLocal(ev.StorePieceLocal("t", PID, handle))
        return drained(daemon)

    with caplog.at_level(logging.WARNING, logger="peerstore.node"):
        fed = trio.run(main)
    done = fed[-1]
    assert isinstance(done, ev.PieceStoredLocally) and not done.ok
    assert f"[Errno {code} {errno.errorcode[code]}]" in done.error and str(target) in done.error
    health = [e for e in fed if isinstance(e, ev.StoreHealthChanged)]
    assert health == ([ev.StoreHealthChanged(False, health[0].reason)] if code == errno.EROFS else [])
    assert daemon.metrics.registry.get_sample_value("peerstore_errors_total", {"kind": "disk_io"}) == 1
    assert any(str(target) in r.getMessage() and errorcode_in(r.getMessage(), code) for r in caplog.records)


def errorcode_in(message: str, code: int) -> bool:
    return errno.errorcode[code] in message


def test_every_disk_effect_survives_a_raw_os_error(tmp_path: Path, monkeypatch):
    """Whatever a store method raises (a DiskIOError, or an OSError it failed to wrap),
    the effect completes with a failure: nothing escapes into the daemon's nursery."""
    daemon = make_daemon(tmp_path)

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    for name in ("put_manifest", "get_manifest", "save_catalog", "save_counters", "save_membership",
                 "delete_manifest"):
        monkeypatch.setattr(daemon.meta, name, eio)
    for name in ("verify", "remove", "probe_writable"):
        monkeypatch.setattr(daemon.pieces, name, eio)

    async def main() -> list:
        async with trio.open_nursery() as nursery:
            daemon.nursery = nursery
            await daemon._do_StoreManifestLocal(ev.StoreManifestLocal("m", PID, b"x"))
            await daemon._do_LoadManifest(ev.LoadManifest("l", PID))
            await daemon._do_PersistCatalog(ev.PersistCatalog("c", b"x"))
            await daemon._do_PersistCounters(ev.PersistCounters("n", b"x"))
            await daemon._do_PersistMembership(ev.PersistMembership("s", b"x"))
            await daemon._do_DeleteManifests(ev.DeleteManifests("d", (PID,)))
            await daemon._do_ProbeStore(ev.ProbeStore("p"))
            await daemon._do_DeletePieces(ev.DeletePieces("g", (PID,)))
        return drained(daemon)

    fed = trio.run(main)
    kinds = [type(e).__name__ for e in fed]
    assert kinds == ["ManifestStoredLocally", "ManifestLoaded", "CatalogPersisted", "CountersPersisted",
                     "MembershipPersisted", "ManifestsDeleted", "StoreProbed", "PiecesDeleted"]
    assert all(not getattr(e, "ok", False) for e in fed)
    assert fed[-1].piece_ids == () and ("EIO" in fed[-1].error or "Input/output" in fed[-1].error)


def test_an_unreadable_catalog_at_boot_names_the_file(tmp_path: Path, monkeypatch):
    MetaStore(tmp_path).save_catalog(b"catalog")
    real = Path.read_bytes

    def broken(self):
        if self.name == "catalog.bin":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", broken)
    with pytest.raises(DiskIOError, match=r"catalog\.bin failed: \[Errno 5 EIO\]"):
        make_daemon(tmp_path)


def test_a_stripe_for_a_client_already_gone_gives_its_buffers_back(tmp_path: Path):
    """A get's client disconnected while the core still handed over a stripe: the pieces'
    buffers (the shell owns them from DeliverStripe on) are released, not leaked."""
    daemon = make_daemon(tmp_path)
    daemon.nursery = object()  # _dispatch only needs one for the effects it starts as tasks
    handles = [daemon.buffers.add(bytearray(1000)) for _ in range(3)]
    assert len(daemon.buffers) == 3
    daemon._dispatch(ev.DeliverStripe(op=7, client=("gone", 1), stripe=0, file_index=0, offset=0, k=2, p=1,
                                      shard_lengths=(500, 500), pieces=tuple(enumerate(handles)),
                                      piece_ids=(bytes(32),) * 3))
    assert len(daemon.buffers) == 0
    assert any(isinstance(e, ev.StripeDelivered) and not e.ok for e in drained(daemon))
