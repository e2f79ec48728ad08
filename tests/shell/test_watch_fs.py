"""The watcher's file-system helpers on real files: paths, observing, /proc writers, hashing."""

from __future__ import annotations

import os
import sys

import blake3
import pytest

from peerstore.shell import watch_fs
from peerstore.watch.detect import check_safetensors, check_torch_zip
from peerstore.watch.observe import FileStat
from peerstore.watch.pending import Hashed, ReadChanged, Vanished
from tests.watch.builders import big_safetensors, torch_zip_bytes


@pytest.mark.parametrize("path,expected", [
    ("/w/runs", ""), ("/w/runs/a/b", "a/b"), ("/w/runsx/a", None), ("/w/other", None), ("/w/runs/a/../b", None),
])
def test_relative(path, expected):
    assert watch_fs.relative("/w/runs", path) == expected


def test_a_large_safetensors_header_is_read_in_a_second_round(tmp_path):
    data = big_safetensors(3000)  # its header is larger than the first read
    (tmp_path / "m.safetensors").write_bytes(data)
    f = watch_fs.observe_file(str(tmp_path / "m.safetensors"), "m.safetensors", False, None)
    assert len(f.head) > 64 * 1024 and check_safetensors(f) is None
    assert (f.size, f.inode) == (len(data), (tmp_path / "m.safetensors").stat().st_ino)


def test_a_torch_archive_is_observed_by_head_and_tail(tmp_path):
    data = torch_zip_bytes(entries=50)
    (tmp_path / "m.pt").write_bytes(data)
    f = watch_fs.observe_file(str(tmp_path / "m.pt"), "m.pt", False, None)
    assert f.head == data[:4] and f.tail == data[-len(f.tail):] and check_torch_zip(f) is None
    (tmp_path / "cut.pt").write_bytes(data[:-10])
    cut = watch_fs.observe_file(str(tmp_path / "cut.pt"), "cut.pt", False, None)
    assert check_torch_zip(cut) is not None


def test_symlinks_and_special_files_are_not_observed(tmp_path):
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    assert watch_fs.observe_file(str(tmp_path / "link"), "link", False, None) is None
    assert watch_fs.observe_file(str(tmp_path / "fifo"), "fifo", False, None) is None
    assert watch_fs.observe_unit(tmp_path, "link", (), 0.0) is None
    assert watch_fs.observe_unit(tmp_path, "missing", (), 0.0) is None


def test_a_directory_unit_lists_its_regular_files_and_the_context(tmp_path):
    unit = tmp_path / "run" / "global_step5"
    unit.mkdir(parents=True)
    (unit / "a.bin").write_bytes(b"a")
    (unit / "sub").mkdir()
    (unit / "sub" / "b.bin").write_bytes(b"bb")
    (unit / "link").symlink_to(unit / "a.bin")
    (tmp_path / "run" / "latest").write_text("global_step5")
    obs = watch_fs.observe_unit(tmp_path, "run/global_step5", ("run/latest",), 12.5, unclosed=("run/global_step5/a.bin",))
    assert obs.is_dir and obs.observed_at == 12.5
    assert [(f.path, f.size, f.closed_after_write) for f in obs.files] == [
        ("run/global_step5/a.bin", 1, False), ("run/global_step5/sub/b.bin", 2, None)]
    assert [c.path for c in obs.context] == ["run/latest"] and obs.context[0].head == b"global_step5"


@pytest.mark.skipif(not watch_fs.proc_available(), reason="needs /proc (Linux)")
def test_proc_finds_files_open_for_writing(tmp_path):
    written, read = tmp_path / "w", tmp_path / "r"
    written.write_bytes(b"")
    read.write_bytes(b"x")
    keys = {p: (p.stat().st_dev, p.stat().st_ino) for p in (written, read)}
    with open(written, "ab"), open(read, "rb"):
        writers = watch_fs.find_writers(set(keys.values()))
        f = watch_fs.observe_file(str(written), "w", False, writers)
        assert f.open_for_write is True
    assert writers.open == {keys[written]}
    after = watch_fs.find_writers(set(keys.values()))
    assert keys[written] not in after.open
    if after.complete:
        assert watch_fs.observe_file(str(written), "w", False, after).open_for_write is False


def test_hash_files_checks_each_file_against_its_judged_stat(tmp_path):
    (tmp_path / "a").write_bytes(b"alpha")
    st = (tmp_path / "a").stat()
    good = FileStat("a", st.st_size, st.st_mtime_ns, st.st_ino)
    assert watch_fs.hash_files(tmp_path, (good,)) == Hashed((("a", blake3.blake3(b"alpha").hexdigest()),))
    stale = FileStat("a", st.st_size, st.st_mtime_ns - 1, st.st_ino)
    assert isinstance(watch_fs.hash_files(tmp_path, (stale,)), ReadChanged)
    assert isinstance(watch_fs.hash_files(tmp_path, (FileStat("gone", 1, 1, 1),)), Vanished)


def test_scan_lists_regular_files_only_and_stops_at_its_limit(tmp_path):
    for i in range(5):
        (tmp_path / "d").mkdir(exist_ok=True)
        (tmp_path / "d" / f"f{i}").write_bytes(b"x")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "d" / "f0")
    result = watch_fs.scan(tmp_path)
    assert result.files == tuple(f"d/f{i}" for i in range(5)) and not result.truncated
    assert watch_fs.scan(tmp_path, limit=3).truncated
    if sys.platform.startswith("linux") and os.geteuid() != 0:
        (tmp_path / "d").chmod(0)
        assert watch_fs.scan(tmp_path).unreadable
