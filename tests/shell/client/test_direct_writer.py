"""The CLI's side of a get the node writes itself (issue 14 §3): DirectWriter creates the
files, someone else (here: the test, standing for the node) writes into the descriptors it
hands out, and it installs the result only when every file reads back with the manifest's
size and whole-file BLAKE3. Bad bytes, short or long files are caught and nothing is
installed."""

from __future__ import annotations

import os
import stat

import pytest

from peerstore.errors import PeerstoreError, TargetExists
from peerstore.shell.client.direct import DirectWriter, fits
from tests.support.fake_node import build_manifest

FILES = [("model.bin", os.urandom(700_000), 0o640), ("sub/opt.bin", os.urandom(90_000), 0o600),
         ("empty", b"", 0o644), ("z.json", b"{}", 0o644)]


def node_writes(writer: DirectWriter, contents: dict[int, bytes]) -> None:
    for index, fd in writer.passed():
        os.pwrite(fd, contents[index], 0)


def test_files_written_through_the_descriptors_are_verified_and_installed(tmp_path):
    manifest = build_manifest("run/x", 1, FILES, is_dir=True)
    writer = DirectWriter(manifest, tmp_path / "out")
    writer.open()
    assert [i for i, _ in writer.passed()] == [0, 1, 3]  # the empty file is ours alone
    node_writes(writer, {i: FILES[i][1] for i in (0, 1, 3)})
    writer.advance(400_000)  # part way: nothing is installed yet
    assert not (tmp_path / "out").exists()
    target = writer.commit()
    for path, content, mode in FILES:
        assert (target / path).read_bytes() == content
        assert stat.S_IMODE((target / path).stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("damage", ["one byte", "short", "long"])
def test_bytes_that_do_not_match_the_manifest_are_never_installed(tmp_path, damage):
    content = FILES[0][1]
    manifest = build_manifest("run/x", 1, [FILES[0]], is_dir=False)
    writer = DirectWriter(manifest, tmp_path / "out")
    writer.open()
    ((_, fd),) = writer.passed()
    bad = {"one byte": content[:1000] + bytes([content[1000] ^ 1]) + content[1001:],
           "short": content[:-1], "long": content + b"!"}[damage]
    os.pwrite(fd, bad, 0)
    with pytest.raises(PeerstoreError, match="BLAKE3|only|bytes where"):
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_existing_target_is_refused_before_anything_is_created(tmp_path):
    (tmp_path / "out").write_bytes(b"keep me")
    manifest = build_manifest("run/x", 1, [FILES[0]], is_dir=False)
    with pytest.raises(TargetExists):
        DirectWriter(manifest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"keep me"


def test_too_many_files_to_hold_open_stream_instead(monkeypatch):
    manifest = build_manifest("run/x", 1, FILES, is_dir=True)
    assert fits(manifest)
    monkeypatch.setattr("peerstore.shell.client.direct.MAX_FD_FILES", 2)
    assert not fits(manifest)
