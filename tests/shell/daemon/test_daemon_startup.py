"""What the daemon refuses at start-up, and why: it never runs on state it cannot trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerstore.shell.config import Config
from peerstore.shell.daemon.node import Daemon
from peerstore.errors import FormatError
from peerstore.shell.identity import load_or_create_identity
from peerstore.model.catalog import Catalog, CatalogEntry, encode_counters
from peerstore.model.codec import seal
from peerstore.model.names import VersionId
from peerstore.shell.store import MetaStore

KEY = bytes(range(32))


def daemon(data_dir: Path) -> Daemon:
    return Daemon(Config(source="test", data_dir=data_dir, cluster_key=KEY), load_or_create_identity(data_dir))


def test_reserved_counters_are_loaded_so_a_restarted_node_never_reuses_a_version(tmp_path: Path):
    MetaStore(tmp_path).save_counters(seal(encode_counters({"run1/step": 7})))
    assert daemon(tmp_path).core.own_counters == {"run1/step": 7}


def test_a_corrupt_counters_file_stops_the_node_with_the_file_named(tmp_path: Path):
    MetaStore(tmp_path).save_counters(b"\x93not msgpack of counters")
    with pytest.raises(FormatError, match=r"counters\.bin.*version ids unique"):
        daemon(tmp_path)


def test_a_rotten_catalog_file_is_moved_aside_and_the_node_starts_empty(tmp_path: Path, caplog):
    catalog = Catalog([CatalogEntry("run1", VersionId(1, "ab" * 8), bytes(32), 10, 1, 1, 0.0)])
    sealed = bytearray(seal(catalog.encode()))
    sealed[-3] ^= 0x10  # one bit of rot, which may still decode: the checksum catches it
    meta = MetaStore(tmp_path)
    meta.save_catalog(bytes(sealed))
    node = daemon(tmp_path)
    assert len(node.core.catalog) == 0  # filled in again by its peers once it runs
    assert not meta.catalog_path.exists()
    assert [p.name.startswith("catalog.bin") for p in (tmp_path / "quarantine").iterdir()] == [True]
    assert "does not match its checksum" in caplog.text


def test_a_sealed_counters_file_with_rot_stops_the_node(tmp_path: Path):
    sealed = bytearray(seal(encode_counters({"run1": 3})))
    sealed[-1] ^= 1
    MetaStore(tmp_path).save_counters(bytes(sealed))
    with pytest.raises(FormatError, match="checksum"):
        daemon(tmp_path)
