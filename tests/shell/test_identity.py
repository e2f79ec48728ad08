import os
import re

import pytest

from peerstore.errors import FormatError, StoreError
from peerstore.shell.identity import NodeIdentity, load_or_create_identity


def test_first_start_creates_identity_format_and_epoch_one(tmp_path):
    data = tmp_path / "a" / "data"
    ident = load_or_create_identity(data)
    assert re.fullmatch(r"[0-9a-f]{16}", ident.node_id)
    assert ident.boot_epoch == 1
    assert (data / "FORMAT").read_text() == "peerstore-data 1\n"
    assert (data / "node.id").read_text().strip() == ident.node_id
    assert (data / "boot.epoch").read_text().strip() == "1"
    assert not [p for p in os.listdir(data) if ".tmp-" in p]


def test_id_is_stable_and_epoch_strictly_increases_across_restarts(tmp_path):
    idents = [load_or_create_identity(tmp_path) for _ in range(5)]
    assert len({i.node_id for i in idents}) == 1
    assert [i.boot_epoch for i in idents] == [1, 2, 3, 4, 5]


def test_distinct_data_dirs_get_distinct_ids(tmp_path):
    ids = {load_or_create_identity(tmp_path / str(i)).node_id for i in range(8)}
    assert len(ids) == 8


def test_identity_is_immutable(tmp_path):
    ident = load_or_create_identity(tmp_path)
    with pytest.raises(AttributeError):
        ident.boot_epoch = 9  # type: ignore[misc]
    assert ident == NodeIdentity(ident.node_id, 1)


def test_epoch_continues_from_a_stored_value(tmp_path):
    load_or_create_identity(tmp_path)
    (tmp_path / "boot.epoch").write_text("41\n")
    assert load_or_create_identity(tmp_path).boot_epoch == 42


def test_interrupted_first_start_recovers(tmp_path):
    # A crash after FORMAT and boot.epoch=0 but before node.id: the next start finishes the job.
    (tmp_path / "FORMAT").write_text("peerstore-data 1\n")
    (tmp_path / "boot.epoch").write_text("0\n")
    assert load_or_create_identity(tmp_path).boot_epoch == 1


# (file, content, words the error must contain); each starts from a healthy data dir.
DAMAGE = [
    ("node.id", "", "node.id is corrupt"),
    ("node.id", "xyz\n", "node.id is corrupt"),
    ("node.id", "0123456789ABCDEF\n", "node.id is corrupt"),
    ("node.id", "0123456789abcdef0\n", "node.id is corrupt"),
    ("node.id", "a" * 1000, "node.id is corrupt"),
    ("node.id", b"\xff" * 16, "not ASCII"),
    ("node.id", None, "node.id is missing"),
    ("boot.epoch", "many\n", "boot.epoch is corrupt"),
    ("boot.epoch", "-3\n", "boot.epoch is corrupt"),
    ("boot.epoch", "", "boot.epoch is corrupt"),
    ("boot.epoch", None, "boot.epoch is missing"),
    ("FORMAT", "peerstore-data 2\n", "version 2"),
    ("FORMAT", "peerstore-data 0\n", "version 0"),
    ("FORMAT", "something else\n", "not a peerstore FORMAT"),
    ("FORMAT", None, "FORMAT is missing"),
]


@pytest.mark.parametrize("name,content,words", DAMAGE, ids=[f"{d[0]}={d[1]!r:.12}" for d in DAMAGE])
def test_damage_raises_format_error_naming_the_file_and_keeps_it(tmp_path, name, content, words):
    load_or_create_identity(tmp_path)
    path = tmp_path / name
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FormatError) as err:
        load_or_create_identity(tmp_path)
    assert str(path) in str(err.value)
    assert words in str(err.value)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, "a refused start must not change the data directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_id_file_is_a_format_error(tmp_path):
    load_or_create_identity(tmp_path)
    (tmp_path / "node.id").chmod(0)
    with pytest.raises(FormatError, match="cannot read"):
        load_or_create_identity(tmp_path)


def test_id_file_that_is_a_directory_is_a_format_error(tmp_path):
    load_or_create_identity(tmp_path)
    (tmp_path / "node.id").unlink()
    (tmp_path / "node.id").mkdir()
    with pytest.raises(FormatError, match="node.id"):
        load_or_create_identity(tmp_path)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "data").write_text("oops")
    with pytest.raises(FormatError, match="not a directory"):
        load_or_create_identity(tmp_path / "data")


def test_data_dir_that_cannot_be_created_is_a_store_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create data_dir"):
        load_or_create_identity(tmp_path / "file" / "data")
