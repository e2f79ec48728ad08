"""Putting an explicit file list (the watcher's), and refusing files that change under a put.

Against the in-process fake node. The streamed put checks each file before it sends the
file's last bytes, so a file changed while it was read never reaches a commit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import peerstore.shell.client.api as api
from peerstore.errors import CHANGED_DURING_PUT, SourceChangedError, UsageError
from peerstore.shell.client.sources import SourceFile, explicit_source
from peerstore.wire.client_protocol import failed, parse_put_stats
from tests.support.fake_node import FakeNode, random_bytes, run_client, write_tree

MiB = 1 << 20


def run(node: FakeNode, fn, *, timeout: float = 10.0):
    return run_client(node, fn, timeout=timeout)


def listed(root: Path, *paths: str) -> list[SourceFile]:
    out = []
    for path in paths:
        st = (root / path).stat()
        out.append(SourceFile(path, root / path, st.st_size, st.st_mode & 0o7777, st.st_mtime_ns, st.st_ino))
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "checkpoint-5", {
        "model.safetensors": random_bytes(300_000, 1),
        "trainer_state.json": b'{"global_step": 5}',
        ".DS_Store": b"junk",
    })


@pytest.mark.parametrize("stream", [False, True])
def test_put_files_stores_exactly_the_listed_files(tree, stream):
    node = FakeNode()
    files = listed(tree, "trainer_state.json", "model.safetensors")
    run(node, lambda c: c.put_files("run/checkpoint-5", tree, True, files, stream=stream))
    (stored,) = node.stored
    assert [f.path for f in stored.manifest.files] == ["model.safetensors", "trainer_state.json"]
    assert stored.contents == [(tree / "model.safetensors").read_bytes(), (tree / "trainer_state.json").read_bytes()]
    request = node.requests[0]
    stats = parse_put_stats(request)
    if stream:
        assert "local_root" not in request and stats == [None, None]
    else:  # the node compares these with what it opens
        assert stats == [(f.mtime_ns, f.inode) for f in sorted(files, key=lambda f: f.path)]


def test_explicit_source_refuses_what_cannot_be_one_checkpoint(tree):
    with pytest.raises(UsageError, match="nothing to store"):
        explicit_source(tree, True, [])
    with pytest.raises(UsageError, match="exactly one file"):
        explicit_source(tree / "model.safetensors", False, listed(tree, "model.safetensors", "trainer_state.json"))


@pytest.mark.parametrize("change", ["in-place", "append", "truncate"])
def test_a_file_changed_while_a_streamed_put_reads_it_fails_before_its_end_is_sent(tmp_path, monkeypatch, change):
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(9 * MiB))  # three data chunks
    calls = []
    real = api.read_chunk

    def read_then_change(f, buffer, want):
        out = real(f, buffer, want)
        calls.append(want)
        if len(calls) == 1:  # after the first chunk was read
            time.sleep(0.02)
            with open(path, "r+b") as w:
                if change == "in-place":
                    w.seek(8 * MiB)
                    w.write(b"x" * 4096)
                elif change == "append":
                    w.seek(0, 2)
                    w.write(b"more")
                else:
                    w.truncate(5 * MiB)
        return out

    monkeypatch.setattr(api, "read_chunk", read_then_change)
    node = FakeNode()
    with pytest.raises(SourceChangedError, match=CHANGED_DURING_PUT):
        run(node, lambda c: c.put(path, "torn", stream=True))
    assert node.stored == []
    assert node.data_frames < 3, "the file's last chunk was sent"


def test_a_file_changed_since_it_was_listed_is_refused_when_opened(tree):
    files = listed(tree, "model.safetensors")
    time.sleep(0.02)
    (tree / "model.safetensors").write_bytes(random_bytes(300_000, 9))  # same size, new bytes
    node = FakeNode()
    with pytest.raises(SourceChangedError, match=CHANGED_DURING_PUT):
        run(node, lambda c: c.put_files("run/m", tree / "model.safetensors", False, files, stream=True))
    assert node.stored == [] and node.data_frames == 0


class ChangedNode(FakeNode):
    async def _on_put(self, wire, header):
        await wire.send(failed(f"reading a.bin failed: /x/a.bin {CHANGED_DURING_PUT} (size changed from 1 to 2)"))


def test_a_node_reporting_a_changed_file_is_a_source_change(tree):
    with pytest.raises(SourceChangedError, match="size changed"):
        run(ChangedNode(), lambda c: c.put(tree, "run/x"))
