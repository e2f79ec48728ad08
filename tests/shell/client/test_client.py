"""NodeClient and CheckpointWriter against the in-process fake node."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from peerstore.shell.client import CheckpointWriter, NodeClient, is_loopback, scan_source
from peerstore.errors import (
    AuthError,
    CodecError,
    FormatError,
    InvalidNameError,
    NodeUnreachable,
    NotFoundError,
    OutcomeUnknownError,
    PeerstoreError,
    TargetExists,
    UsageError,
)
from tests.support.fake_node import KEY, FakeNode, build_manifest, random_bytes, run_client, snapshot, write_tree

SMALL = 300_000  # > one 4 x 64 KiB stripe, so files have several stripes


def run(node: FakeNode, fn, *, timeout: float = 5.0, key: bytes = KEY):
    """Serve ``node`` and run ``fn(client)`` against it in one trio.run."""
    return run_client(node, fn, timeout=timeout, key=key)


def temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".peerstore-tmp-")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = write_tree(tmp_path / "ckpt", {
        "model.safetensors": random_bytes(SMALL, 1),
        "optimizer.pt": random_bytes(70_000, 2),
        "nested/deeper/state.json": b'{"step": 500}',
        "empty.txt": b"",
    })
    os.chmod(src / "optimizer.pt", 0o640)
    return src


# -- put


@pytest.mark.parametrize("stream", [False, True])
def test_put_then_get_directory_round_trips_bytes_and_modes(tmp_path, tree, stream):
    node = FakeNode()
    result = run(node, lambda c: c.put(tree, "run1/step-500", stream=stream))
    assert result["name"] == "run1/step-500" and result["streamed"] is stream
    assert ("local_root" in node.requests[0]) is not stream
    assert node.data_frames == (3 if stream else 0)  # the empty file needs no data frame
    got = run(node, lambda c: c.get("run1/step-500", tmp_path / "out"))
    assert got["path"] == str(tmp_path / "out") and got["files"] == 4
    assert snapshot(tmp_path / "out") == snapshot(tree)
    assert (tmp_path / "out" / "optimizer.pt").stat().st_mode & 0o777 == 0o640
    assert temps(tmp_path) == []


def test_put_single_file_and_get_into_an_existing_directory(tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(random_bytes(SMALL, 3))
    node = FakeNode()
    run(node, lambda c: c.put(src, "llama/base", stream=True))
    (tmp_path / "restore").mkdir()
    got = run(node, lambda c: c.get("llama/base", tmp_path / "restore"))
    assert Path(got["path"]) == tmp_path / "restore" / "model.safetensors"
    assert (tmp_path / "restore" / "model.safetensors").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("name", ["../evil", "/abs", "a//b", "x@3", ""])
def test_put_refuses_bad_names_before_connecting(tmp_path, tree, name):
    node = FakeNode()
    with pytest.raises(InvalidNameError):
        run(node, lambda c: c.put(tree, name))
    assert node.requests == []


@pytest.mark.parametrize(
    "mode, error",
    [
        ("fail", PeerstoreError),
        ("unknown", OutcomeUnknownError),
        ("drop_after_data", OutcomeUnknownError),
    ],
)
def test_put_failures_say_whether_the_outcome_is_known(tree, mode, error):
    node = FakeNode(put_mode=mode)
    with pytest.raises(error) as info:
        run(node, lambda c: c.put(tree, "run1/x", stream=True))
    if error is OutcomeUnknownError:
        assert "peerstore ls" in str(info.value)
    else:
        assert not isinstance(info.value, OutcomeUnknownError)


def test_put_dropped_after_local_request_is_outcome_unknown(tree):
    with pytest.raises(OutcomeUnknownError, match="may or may not have committed: run 'peerstore ls run1/x'"):
        run(FakeNode(put_mode="drop_after_request"), lambda c: c.put(tree, "run1/x"))


def test_put_to_a_frozen_node_times_out_as_outcome_unknown(tree):
    with pytest.raises(OutcomeUnknownError, match="went silent"):
        run(FakeNode(put_mode="freeze"), lambda c: c.put(tree, "run1/x"), timeout=0.5)


def test_streamed_put_dropped_before_all_data_was_sent_is_a_plain_failure(tmp_path):
    # The fake drops right after the request: the client cannot have sent everything,
    # so the node cannot have committed.
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(16 * 1024 * 1024, 4))
    with pytest.raises(PeerstoreError) as info:
        run(FakeNode(put_mode="drop_after_request"), lambda c: c.put(big, "run1/big", stream=True))
    assert not isinstance(info.value, OutcomeUnknownError)
    assert "did not complete" in str(info.value)


# -- scanning what to put


def test_scan_sorts_paths_and_keeps_modes(tree):
    source = scan_source(tree)
    assert source.is_dir
    assert [f.path for f in source.files] == sorted(f.path for f in source.files)
    assert {f.path: f.mode for f in source.files}["optimizer.pt"] == 0o640
    assert source.total_size == SMALL + 70_000 + len(b'{"step": 500}')


def test_scan_stores_a_symlink_inside_as_a_file(tree):
    os.symlink("model.safetensors", tree / "alias.safetensors")
    files = {f.path: f for f in scan_source(tree).files}
    assert files["alias.safetensors"].size == SMALL


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root, outside: os.symlink(outside, root / "leak"), "outside"),
        (lambda root, outside: os.symlink(root / "nested", root / "dirlink"), "symlink to a directory"),
        (lambda root, outside: os.mkfifo(root / "pipe"), "not a regular file"),
        (lambda root, outside: os.symlink(root / "missing", root / "broken"), "broken symlink"),
    ],
)
def test_scan_refuses_what_is_not_a_regular_file_inside(tmp_path, tree, make, message):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    make(tree, outside)
    with pytest.raises(UsageError, match=message):
        scan_source(tree)


def test_scan_refuses_missing_paths_and_empty_directories(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        scan_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no files"):
        scan_source(tmp_path / "empty")


# -- get: writing safely


def test_get_refuses_an_existing_file_before_contacting_the_node(tmp_path, tree):
    node = FakeNode()
    node.add("run1/x", [("a.bin", b"abc", 0o644)], is_dir=False)
    target = tmp_path / "x"
    target.write_bytes(b"precious")
    with pytest.raises(TargetExists, match="--force"):
        run(node, lambda c: c.get("run1/x", target))
    assert node.requests == [] and target.read_bytes() == b"precious"


def test_get_refuses_an_existing_directory_for_a_directory_checkpoint(tmp_path, tree):
    node = FakeNode()
    run(node, lambda c: c.put(tree, "run1/dir", stream=True))
    existing = write_tree(tmp_path / "existing", {"keep.txt": b"keep"})
    with pytest.raises(TargetExists):
        run(node, lambda c: c.get("run1/dir", existing))
    assert snapshot(existing) == {"keep.txt": b"keep"} and temps(tmp_path) == []


@pytest.mark.parametrize("existing_is_dir", [False, True])
def test_get_force_replaces_an_existing_target(tmp_path, tree, existing_is_dir):
    node = FakeNode()
    run(node, lambda c: c.put(tree, "run1/dir", stream=True))
    out = tmp_path / "out"
    if existing_is_dir:
        write_tree(out, {"old.txt": b"old"})
    else:
        out.write_bytes(b"old file")
    run(node, lambda c: c.get("run1/dir", out, force=True))
    assert snapshot(out) == snapshot(tree)
    assert temps(tmp_path) == []


@pytest.mark.parametrize(
    "mode, error",
    [
        ("fail_midway", PeerstoreError),
        ("drop_midway", NodeUnreachable),
        ("bad_hash", CodecError),      # payload does not match its "h"
        ("bad_bytes", PeerstoreError),  # consistent frame, wrong whole-file hash
        ("hostile", FormatError),       # a manifest path with ".."
        ("wrong_id", CodecError),       # manifest is not the one the entry names
    ],
)
@pytest.mark.parametrize("is_dir", [False, True])
def test_failed_get_leaves_the_existing_target_and_no_temps(tmp_path, mode, error, is_dir):
    node = FakeNode(get_mode=mode)
    node.add("run1/x", [("model.bin", random_bytes(SMALL, 5), 0o644)], is_dir=is_dir)
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    with pytest.raises(error):
        run(node, lambda c: c.get("run1/x", out, force=True))
    assert out.read_bytes() == b"precious"
    assert temps(tmp_path) == []
    assert not (tmp_path / "escaped").exists()


def test_get_from_a_frozen_node_times_out(tmp_path):
    node = FakeNode(get_mode="freeze")
    node.add("run1/x", [("model.bin", random_bytes(SMALL, 6), 0o644)], is_dir=False)
    with pytest.raises(NodeUnreachable, match="went silent"):
        run(node, lambda c: c.get("run1/x", tmp_path / "out"), timeout=0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", [True, None])  # None: the node does not say; the client asks ls
def test_missing_checkpoint_is_not_found(tmp_path, flag):
    node = FakeNode(not_found_flag=flag)
    node.add("run1/x", [("a.bin", b"abc", 0o644)], is_dir=False)
    for spec in ("run1/nope", "run1/x@7"):
        with pytest.raises(NotFoundError):
            run(node, lambda c: c.get(spec, tmp_path / "out"))
        with pytest.raises(NotFoundError):
            run(node, lambda c: c.rm(spec))


def test_failure_of_an_existing_checkpoint_is_not_not_found(tmp_path):
    node = FakeNode(get_mode="fail_midway", not_found_flag=None)
    node.add("run1/x", [("a.bin", random_bytes(SMALL, 7), 0o644)], is_dir=False)
    with pytest.raises(PeerstoreError) as info:
        run(node, lambda c: c.get("run1/x", tmp_path / "out"))
    assert not isinstance(info.value, NotFoundError)


def test_ls_status_rm(tree):
    node = FakeNode()
    run(node, lambda c: c.put(tree, "run1/a", stream=True))
    run(node, lambda c: c.put(tree, "run1/a", stream=True))
    entries = run(node, lambda c: c.ls("run1/a"))
    assert [e["version"] for e in entries] == [1, 2]
    status = run(node, lambda c: c.status())
    assert len(status["checkpoints"]) == 2 and status["members"]
    removed = run(node, lambda c: c.rm("run1/a@1"))
    assert removed["versions"] == [entries[0]["version_id"]]
    assert [e["version"] for e in run(node, lambda c: c.ls())] == [2]


# -- connecting


def test_wrong_cluster_key_names_the_config():
    async def attempt(c):
        c.config_source = "/etc/peerstore.yaml"
        return await c.ls()

    with pytest.raises(AuthError, match="refused our cluster key: check cluster_key in /etc/peerstore.yaml"):
        run(FakeNode(), attempt, key=bytes(32))


def test_no_node_listening_says_how_to_start_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(NodeUnreachable, match=r"no peerstore node at 127.0.0.1:\d+ — start one with ./launch.sh"):
            trio.run(NodeClient("127.0.0.1", port, KEY, 2).ls)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("localhost", True),
    ("10.0.0.5", False), ("pi4.local", False), ("0.0.0.0", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# -- the writer on its own


def test_writer_refuses_out_of_order_stripes_and_cleans_up(tmp_path):
    content = random_bytes(SMALL, 8)
    manifest = build_manifest("run1/x", 1, [("m.bin", content, 0o644)], is_dir=False)
    writer = CheckpointWriter(manifest, tmp_path / "out")
    writer.open()
    assert temps(tmp_path)
    with pytest.raises(CodecError, match="where the manifest puts"):
        writer.begin_stripe(0, 4096, 1000)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_commit_a_short_checkpoint(tmp_path):
    content = random_bytes(SMALL, 9)
    manifest = build_manifest("run1/x", 1, [("m.bin", content, 0o644)], is_dir=False)
    writer = CheckpointWriter(manifest, tmp_path / "out")
    writer.open()
    stripe = 4 * 64 * 1024
    writer.begin_stripe(0, 0, stripe)
    writer.write(content[:stripe])
    writer.end_stripe()
    with pytest.raises(PeerstoreError, match="after 1 of 2 stripes"):
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_creates_empty_files_and_missing_parents(tmp_path):
    manifest = build_manifest("run1/x", 1, [("a/empty", b"", 0o600), ("b", b"", 0o644)], is_dir=True)
    writer = CheckpointWriter(manifest, tmp_path / "new" / "parent" / "out")
    writer.open()
    target = writer.commit()
    assert snapshot(target) == {"a/empty": b"", "b": b""}
    assert (target / "a" / "empty").stat().st_mode & 0o777 == 0o600


def test_get_into_a_directory_named_with_a_trailing_slash(tmp_path):
    node = FakeNode()
    node.add("llama/base", [("model.safetensors", random_bytes(SMALL, 10), 0o644)], is_dir=False)
    got = run(node, lambda c: c.get("llama/base", tmp_path / "new", into_dir=True))
    assert Path(got["path"]) == tmp_path / "new" / "model.safetensors"
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(TargetExists, match="not a directory"):
        run(node, lambda c: c.get("llama/base", tmp_path / "afile", into_dir=True, force=True))


def test_a_directory_checkpoint_may_replace_an_empty_directory(tmp_path, tree):
    node = FakeNode()
    run(node, lambda c: c.put(tree, "run1/dir", stream=True))
    (tmp_path / "empty").mkdir()
    run(node, lambda c: c.get("run1/dir", tmp_path / "empty"))
    assert snapshot(tmp_path / "empty") == snapshot(tree) and temps(tmp_path) == []


def test_put_of_more_files_than_one_request_can_carry_is_refused_before_connecting(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(1200):  # ~80 bytes of header each: past the 64 KiB frame header limit
        (root / f"shard-{i:05d}-of-01200-with-a-long-descriptive-name.bin").write_bytes(b"x")
    node = FakeNode()
    with pytest.raises(UsageError, match="1200 files do not fit in one put request"):
        run(node, lambda c: c.put(root, "run1/many"))
    assert node.requests == []
