"""The watcher's shell on real files: a separate writer process writes checkpoints at a
realistic pace (tests/support/ckpt_writer.py) while a real `Watcher` (watchdog, /proc,
threads, the persisted queue) watches; a recording Storer reads what it is asked to store
with the same stat checks a real put makes.

Every test asserts that only complete checkpoints were stored (every stored byte equals
what the writer finished), each exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
import trio

from peerstore.shell.watcher import PutPlan, StoredVersion, Watcher
from peerstore.watch.naming import Naming
from peerstore.watch.pending import Failed, QueueSettings, ReadChanged
from tests.support.ckpt_writer import expected_bytes
from tests.support.paths import REPO

SETTLE, RETRY = 0.5, 1.0
LINUX = sys.platform.startswith("linux")
WAIT = 25.0  # seconds any one condition may take


class RecordingStorer:
    """Reads exactly the planned files, checking each one's stat before and after (as a
    put does), and records what it stored. ``fail`` answers the next puts with failures;
    ``before_read`` runs (in the reading thread) before a put reads its files."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, dict[str, bytes]]] = []
        self.attempts = 0
        self.fail: list[Failed] = []
        self.before_read = None

    async def store(self, plan: PutPlan):
        self.attempts += 1
        if self.fail:
            return self.fail.pop(0)
        result = await trio.to_thread.run_sync(self._read, plan)
        if isinstance(result, ReadChanged):
            return result
        self.stored.append((plan.name, result))
        return StoredVersion(f"{len(self.stored)}.00000000000000aa",
                             tuple(blake3.blake3(result[f.path]).hexdigest() for f in plan.files))

    def _read(self, plan: PutPlan):
        if self.before_read is not None:
            hook, self.before_read = self.before_read, None
            hook(plan)
        out = {}
        for f in plan.files:
            with open(f.local, "rb") as handle:
                before = os.fstat(handle.fileno())
                if (before.st_size, before.st_mtime_ns, before.st_ino) != (f.size, f.mtime_ns, f.inode):
                    return ReadChanged(f"{f.path} changed before it was read")
                content = handle.read()
                after = os.fstat(handle.fileno())
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                    before.st_size, before.st_mtime_ns, before.st_ctime_ns):
                return ReadChanged(f"{f.path} changed while it was read")
            out[f.path] = content
        return out

    def names(self) -> list[str]:
        return [name for name, _ in self.stored]


def start_writer(scenario: str, directory: Path, **options) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tests.support.ckpt_writer", scenario, str(directory)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


async def read_line(proc: subprocess.Popen, expected: str) -> None:
    with trio.fail_after(WAIT):
        line = await trio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
    assert line.strip() == expected, f"writer said {line!r}, expected {expected!r}"


async def finish(proc: subprocess.Popen) -> None:
    await read_line(proc, "done")
    with trio.fail_after(WAIT):
        code = await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
    assert code == 0


async def until(predicate, what: str, timeout: float = WAIT):
    deadline = trio.current_time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await trio.sleep(0.05)


def expected(scenario: str, prefix: str = "", **kw) -> dict[str, bytes]:
    """The writer's finished files as a checkpoint stores them (paths inside it)."""
    files = expected_bytes(scenario, kw.get("seed", 1), kw.get("size", 1 << 20), kw.get("step", 500), kw.get("name"))
    return {path.split("/", 1)[1] if "/" in path else path: content for path, content in files.items()}


def watcher_for(root: Path, storer: RecordingStorer, state: Path | None = None, **kw) -> Watcher:
    settings = QueueSettings(settle_seconds=kw.pop("settle", SETTLE), retry_seconds=RETRY)
    return Watcher([root], storer, settings=settings, state_path=state, **kw)


def run(body, timeout: float = 50.0):
    async def main():
        with trio.fail_after(timeout):
            await body()
    trio.run(main)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    (root / "llama").mkdir(parents=True)
    return root


# -- formats written at a realistic pace


@pytest.mark.parametrize("scenario,options", [
    ("safetensors", {"chunk": 128 * 1024, "pause": 0.1}),
    ("safetensors", {"chunk": 128 * 1024, "pause": 0.05, "gap": 1.2}),  # closed half-way for > settle
    ("presize", {"chunk": 128 * 1024, "pause": 0.1}),
    ("torchzip", {"chunk": 128 * 1024, "pause": 0.1}),
    ("torchzip", {"chunk": 128 * 1024, "pause": 0.05, "gap": 1.2}),
], ids=["safetensors", "safetensors-closed-halfway", "presize-then-fill", "torch-zip", "torch-zip-closed-halfway"])
def test_a_single_file_checkpoint_is_stored_once_and_whole(runs, scenario, options):
    storer = RecordingStorer()

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            writer = start_writer(scenario, runs / "llama", **options)
            if options.get("gap"):
                await read_line(writer, "gap")
                await trio.sleep(options["gap"] - 0.2)  # well past the settle time, file closed
                assert storer.stored == [], "stored half a file"
            await finish(writer)
            await until(lambda: storer.stored, "the checkpoint to be stored")
            await trio.sleep(SETTLE + RETRY)  # nothing more comes
            n.cancel_scope.cancel()

    run(body)
    name = "model.pt" if scenario == "torchzip" else "model.safetensors"
    assert storer.names() == [f"llama/{name}"]
    assert storer.stored[0][1] == expected(scenario, size=1 << 20)


@pytest.mark.parametrize("options", [{}, {"no_stage": True, "gap": 1.2}], ids=["staged-and-renamed", "in-place-with-a-pause"])
def test_a_hugging_face_checkpoint_is_stored_once_trainer_state_last(runs, options):
    storer = RecordingStorer()

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            writer = start_writer("hf", runs / "llama", step=500, chunk=256 * 1024, pause=0.05, **options)
            if options.get("gap"):
                await read_line(writer, "gap")
                await until(lambda: any("trainer_state.json not written yet" in p.reason for p in w.queue.pending()),
                            "the checkpoint to wait for trainer_state.json")
                await trio.sleep(0.8)
                assert storer.stored == []
            await finish(writer)
            await until(lambda: storer.stored, "the checkpoint to be stored")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    run(body)
    assert storer.names() == ["llama/checkpoint-500"]
    assert storer.stored[0][1] == expected("hf", step=500)


def test_a_distributed_checkpoint_waits_for_its_metadata(runs):
    storer = RecordingStorer()

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            writer = start_writer("dcp", runs / "llama", name="step_300", chunk=128 * 1024, pause=0.05, gap=1.2)
            await read_line(writer, "gap")
            await until(lambda: any(".metadata not written yet" in p.reason for p in w.queue.pending()),
                        "the checkpoint to wait for .metadata")
            await trio.sleep(0.8)
            assert storer.stored == []
            await finish(writer)
            await until(lambda: storer.stored, "the checkpoint to be stored")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    run(body)
    assert storer.names() == ["llama/step_300"]
    assert storer.stored[0][1] == expected("dcp", name="step_300")


@pytest.mark.skipif(not LINUX, reason="only Linux can tell a file is still open for writing")
@pytest.mark.parametrize("signals", ["both", "close-events", "proc"])
def test_a_writer_pausing_past_the_settle_time_with_the_file_open_is_waited_for(runs, signals):
    storer = RecordingStorer()

    async def body():
        w = watcher_for(runs, storer, probe_writers=signals != "close-events", close_events=signals != "proc")
        async with trio.open_nursery() as n:
            await n.start(w.run)
            writer = start_writer("hold", runs / "llama", hold=2.5, size=1 << 20)
            await read_line(writer, "holding")
            await until(lambda: any("open for writing" in p.reason or "not closed yet" in p.reason
                                    for p in w.queue.pending()), "the file to be seen open")
            await trio.sleep(1.5)  # three settle times with no write at all
            assert storer.stored == [], "stored a file its writer still held open"
            await read_line(writer, "released")
            await finish(writer)
            await until(lambda: storer.stored, "the file to be stored")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    run(body)
    assert storer.names() == ["llama/data.raw"]
    assert storer.stored[0][1] == expected("hold", size=1 << 20)


# -- versions, deletions, failures, restarts


def test_a_rewrite_is_a_new_version_and_an_identical_rewrite_is_not(runs):
    storer = RecordingStorer()
    path = runs / "latest" / "model.safetensors"
    path.parent.mkdir()

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            for count, seed in ((1, 1), (2, 2)):
                await finish(start_writer("safetensors", path.parent, seed=seed, chunk=256 * 1024, pause=0.05))
                await until(lambda: len(storer.stored) == count, f"version {count}")
            # the same bytes again (truncated and rewritten: new mtime, same content)
            await finish(start_writer("safetensors", path.parent, seed=2, chunk=256 * 1024, pause=0.05))
            await until(lambda: w.queue.stats().unchanged == 1, "the identical rewrite to be recognised")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()
            assert w.queue.stats().unchanged == 1

    run(body)
    assert storer.names() == ["latest/model.safetensors"] * 2
    assert storer.stored[0][1] == expected("safetensors", seed=1)
    assert storer.stored[1][1] == expected("safetensors", seed=2)


def test_a_checkpoint_deleted_while_pending_is_dropped_and_never_stored(runs, caplog):
    storer = RecordingStorer()
    checkpoint = runs / "llama" / "checkpoint-7"

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await finish(start_writer("safetensors", checkpoint, chunk=256 * 1024, pause=0.02))
            await until(lambda: any("trainer_state.json" in p.reason for p in w.queue.pending()),
                        "the checkpoint to wait for trainer_state.json")
            shutil.rmtree(checkpoint)
            await until(lambda: not w.queue.pending(), "the deleted checkpoint to leave the queue")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    with caplog.at_level("INFO", logger="peerstore.watch"):
        run(body)
    assert storer.stored == [] and storer.attempts == 0
    assert [r.message for r in caplog.records if "deleted before it was stored" in r.message] != []


def test_a_failed_put_is_retried_and_stored_once(runs):
    storer = RecordingStorer()
    storer.fail = [Failed("too_few_nodes", "only 1 live node"), Failed("disk_full", "no space left")]

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await finish(start_writer("safetensors", runs / "llama", chunk=512 * 1024, pause=0.02))
            await until(lambda: storer.attempts == 1, "the first attempt")
            pending = w.queue.pending()
            assert pending and "could not be stored: only 1 live node" in pending[0].reason
            await until(lambda: storer.stored, "the retry to succeed", timeout=4 * RETRY + 5)
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()
            assert dict(w.queue.stats().failures) == {"too_few_nodes": 1, "disk_full": 1}
            assert w.metrics()["failures"] == {"too_few_nodes": 1, "disk_full": 1}

    run(body)
    assert storer.attempts == 3 and storer.names() == ["llama/model.safetensors"]


def test_a_file_modified_in_place_after_it_was_judged_finished_is_stored_only_as_finally_written(runs):
    storer = RecordingStorer()
    path = runs / "llama" / "notes.txt"
    final = b"second, longer version of the notes\n" * 1000

    def modify(plan: PutPlan) -> None:  # between the queue's judgement and the put's read
        with open(path, "r+b") as f:
            f.write(final)

    storer.before_read = modify

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            path.write_bytes(b"first version\n" * 1000)
            await until(lambda: storer.stored, "the final version to be stored")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()
            assert w.queue.stats().read_changed == 1

    run(body)
    assert storer.attempts == 2
    assert storer.stored == [("llama/notes.txt", {"notes.txt": final})]


def test_a_restart_stores_what_was_pending_and_what_finished_meanwhile_exactly_once(runs, tmp_path):
    storer = RecordingStorer()
    state = tmp_path / "data" / "watch-queue.json"
    state_blob = {}

    async def first():
        w = watcher_for(runs, storer, state=state)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await finish(start_writer("hf", runs / "llama", step=100, chunk=256 * 1024, pause=0.01))
            await until(lambda: storer.names() == ["llama/checkpoint-100"], "checkpoint-100")
            # checkpoint-200 without its trainer_state.json: pending when the watcher stops
            await finish(start_writer("safetensors", runs / "llama" / "checkpoint-200", chunk=256 * 1024, pause=0.01))
            await until(lambda: any(p.unit == "llama/checkpoint-200" and "trainer_state" in p.reason
                                    for p in w.queue.pending()), "checkpoint-200 to be pending")
            n.cancel_scope.cancel()
        state_blob["saved"] = json.loads(state.read_bytes())

    async def second():
        (runs / "llama" / "checkpoint-200" / "trainer_state.json").write_text(json.dumps({"global_step": 200}))
        await finish(start_writer("hf", runs / "llama", step=300, chunk=256 * 1024, pause=0.01))
        w = watcher_for(runs, storer, state=state)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await until(lambda: len(storer.stored) == 3, "the two checkpoints finished while it was down")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    run(first)
    assert state_blob["saved"]["pending"] == [[str(runs), "llama/checkpoint-200"]]
    run(second)
    assert sorted(storer.names()) == ["llama/checkpoint-100", "llama/checkpoint-200", "llama/checkpoint-300"]
    assert dict(storer.stored)["llama/checkpoint-300"] == expected("hf", step=300)


def test_include_exclude_and_junk_decide_what_is_stored(runs):
    storer = RecordingStorer()
    naming = Naming(include=("checkpoint-*",), exclude=("checkpoint-9*",))

    async def body():
        w = watcher_for(runs, storer, naming=naming)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            for step in (5, 90):
                d = runs / "llama" / f"checkpoint-{step}"
                d.mkdir()
                (d / "weights.bin").write_bytes(b"w" * 1000)
                (d / ".DS_Store").write_bytes(b"junk")
                (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            (runs / "llama" / "notes.txt").write_text("not a checkpoint this watcher wants")
            await until(lambda: storer.stored, "checkpoint-5")
            await trio.sleep(SETTLE + 2 * RETRY)
            n.cancel_scope.cancel()

    run(body)
    assert storer.names() == ["llama/checkpoint-5"]
    assert sorted(storer.stored[0][1]) == ["trainer_state.json", "weights.bin"]


def test_lost_events_are_recovered_by_scanning_again(runs):
    storer = RecordingStorer()

    async def body():
        w = watcher_for(runs, storer, event_buffer=0)  # full whenever the loop is busy
        async with trio.open_nursery() as n:
            await n.start(w.run)
            scans = w.scans
            for step in range(1, 6):
                d = runs / "llama" / f"checkpoint-{step}"
                d.mkdir()
                for i in range(20):
                    (d / f"shard-{i}.bin").write_bytes(bytes([step, i]) * 500)
                (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
                # A burst the loop cannot drain in between, as when it is busy: whether the
                # observer thread's own deliveries overflow depends on scheduling, these do.
                for _ in range(3):
                    w._deliver("modified", str(d / "trainer_state.json"), "", False)
            await until(lambda: len(storer.stored) == 5, "all five checkpoints")
            assert w.scans > scans, "the overflow never caused a rescan"
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    run(body)
    assert sorted(storer.names()) == [f"llama/checkpoint-{s}" for s in range(1, 6)]


def test_once_stores_what_is_finished_and_reports_what_waits(runs):
    storer = RecordingStorer()
    (runs / "llama" / "model.safetensors").write_bytes(expected("safetensors")["model.safetensors"])
    unfinished = runs / "llama" / "checkpoint-9"
    unfinished.mkdir()
    (unfinished / "weights.bin").write_bytes(b"x" * 100)
    reports = []

    async def body():
        w = watcher_for(runs, storer)
        started = trio.current_time()
        reports.append(await w.run(once=True))
        assert trio.current_time() - started < SETTLE + RETRY + 6

    run(body)
    report = reports[0]
    assert storer.names() == ["llama/model.safetensors"]
    assert [(p.unit, "trainer_state.json" in p.reason) for p in report.pending] == [("llama/checkpoint-9", True)]


def test_a_run_directory_moved_in_from_elsewhere_is_stored_whole(runs, tmp_path):
    storer = RecordingStorer()
    outside = tmp_path / "elsewhere" / "gpt"
    for step in (1, 2):
        d = outside / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "weights.bin").write_bytes(bytes([step]) * 5000)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    async def body():
        w = watcher_for(runs, storer)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            os.rename(outside, runs / "gpt")  # one event for the run directory, none for its files
            await until(lambda: len(storer.stored) == 2, "both checkpoints of the moved-in run")
            await trio.sleep(SETTLE + RETRY)
            n.cancel_scope.cancel()

    run(body)
    assert sorted(storer.names()) == ["gpt/checkpoint-1", "gpt/checkpoint-2"]
