"""`peerstore watch` arguments and the watcher's lines in `peerstore status` and `--once`."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerstore.cli.commands import EXIT_USAGE, build_parser, format_status, main
from peerstore.cli.watch_command import format_once_report, once_exit_code
from peerstore.shell.watcher import OnceReport
from peerstore.watch.pending import Drop, PendingInfo, WatchStats

STATS = WatchStats(pending=1, stored=2, unchanged=1, dropped=1, read_changed=0, failures=(),
                   last_success=1_800_000_000.0, last_stored="llama/checkpoint-100@2")


def test_watch_arguments():
    args = build_parser().parse_args(["watch", "runs/", "--once", "--name-prefix", "pi/", "--include", "checkpoint-*",
                                      "--include", "step-*", "--exclude", "*-tmp", "--settle", "0.5"])
    assert (args.dir, args.once, args.name_prefix, args.include, args.exclude, args.settle) == \
        ("runs/", True, "pi/", ["checkpoint-*", "step-*"], ["*-tmp"], 0.5)


@pytest.mark.parametrize("argv", [["watch"], ["watch", "runs/", "--settle", "-1"], ["watch", "runs/", "--settle", "x"]])
def test_bad_watch_arguments_are_usage_errors(argv, capsys):
    assert main(argv) == EXIT_USAGE


def test_status_shows_what_is_watched_pending_and_last_stored():
    status = {"node_id": "ab" * 8, "members": [], "checkpoints": [], "watch": {
        "dirs": ["/home/me/runs", "/mnt/gone"], "missing": ["/mnt/gone"],
        "pending": [{"name": "llama/checkpoint-600", "path": "/home/me/runs/llama/checkpoint-600", "state": "waiting",
                     "reason": "trainer_state.json not written yet (the Trainer writes it last)",
                     "waiting_seconds": 4.2}],
        "pending_count": 3, "last_stored": "llama/checkpoint-500@1", "last_success": 1_800_000_000.0,
        "failures": {"too_few_nodes": 2, "disk_full": 0},
    }}
    text = format_status(status, "127.0.0.1:7420")
    assert "watching /home/me/runs, /mnt/gone (missing: watched once it exists)" in text
    assert "last stored: llama/checkpoint-500@1 at " in text
    assert "store failures since start: too_few_nodes 2" in text and "disk_full" not in text
    row = next(line for line in text.splitlines() if line.startswith("llama/checkpoint-600"))
    assert "waiting" in row and "4 s" in row and "trainer_state.json not written yet" in row
    assert "... and 2 more" in text


def test_status_of_a_node_that_watches_nothing_says_nothing_about_watching():
    assert "watching" not in format_status({"node_id": "x", "members": [], "checkpoints": []}, "n")
    idle = format_status({"node_id": "x", "watch": {"dirs": ["/r"], "pending": [], "last_stored": None}}, "n")
    assert "last stored: nothing yet" in idle and "no checkpoints pending" in idle


def test_once_report_says_what_waits_and_why():
    pending = (PendingInfo("/r", "llama/checkpoint-9", "llama/checkpoint-9", "waiting",
                           "trainer_state.json not written yet", 0.0),)
    report = OnceReport(pending, (Drop("/r", "x y", "cannot be named: too long"),), STATS)
    text = format_once_report(report)
    assert "stored 2 checkpoint(s), 1 unchanged since last stored; last stored llama/checkpoint-100@2" in text
    assert "not stored: /r/x y: cannot be named: too long" in text
    assert "/r/llama/checkpoint-9 (as llama/checkpoint-9): trainer_state.json not written yet" in text
    assert once_exit_code(report) == 1
    assert once_exit_code(OnceReport((), (), STATS)) == 0


def test_watch_of_a_missing_directory_is_a_usage_error(tmp_path: Path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ncluster_key: {'ab' * 32}\n")
    assert main(["--config", str(config), "watch", str(tmp_path / "nope"), "--once"]) == EXIT_USAGE
    assert "not a directory" in capsys.readouterr().err
