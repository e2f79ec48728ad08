"""The pending queue, driven through its whole protocol by a fake shell on a virtual clock."""

from __future__ import annotations

import json
from collections.abc import Callable

import blake3
import pytest

from peerstore.errors import FormatError
from peerstore.watch.naming import Naming
from peerstore.watch.observe import FileStat
from peerstore.watch.pending import (
    MAX_STATE_BYTES,
    Drop,
    Failed,
    Hashed,
    HashFiles,
    Log,
    Observe,
    Persist,
    QueueSettings,
    ReadChanged,
    StartPut,
    Stored,
    Vanished,
    WatchQueue,
    stat_mismatch,
)
from tests.watch.builders import FakeFS, safetensors_bytes, torch_zip_bytes

ROOT = "/w/runs"
SETTLE, RETRY = 5.0, 10.0
FULL = safetensors_bytes([("w", "U8", [4000], 0, 4000)])


def _state(step: int) -> bytes:
    return json.dumps({"global_step": step}).encode()


class Harness:
    """A fake shell: carries out effects against a FakeFS, answers puts by ``put_policy``.

    Puts are answered immediately unless ``hold_puts``; then they wait in ``held``.
    ``during_read`` runs after a put's files are read and before they are re-stated.
    """

    def __init__(self, settings: QueueSettings | None = None, naming: Naming | None = None,
                 roots: tuple[str, ...] = (ROOT,), fs: FakeFS | None = None):
        self.q = WatchQueue(roots, naming, settings or QueueSettings(settle_seconds=SETTLE, retry_seconds=RETRY))
        self.fs = fs or FakeFS(ROOT)
        self.now = 0.0
        self.observed_at: list[tuple[float, str]] = []
        self.hashes: list[HashFiles] = []
        self.puts: list[tuple[float, StartPut, dict[str, bytes]]] = []
        self.drops: list[Drop] = []
        self.logs: list[str] = []
        self.persisted: bytes | None = None
        self.persist_count = 0
        self.put_policy: Callable[[StartPut], object] = lambda put: None  # None: succeed
        self.hold_puts = False
        self.held: list[StartPut] = []
        self.during_read: Callable[[], None] | None = None
        self.answer_observes = True
        self.versions = 0

    # -- the world

    def write(self, path: str, data: bytes, **flags) -> None:
        self.fs.write(path, data, self.now, **flags)
        self.feed(self.q.touched(ROOT, path, self.now))

    def replace(self, path: str, data: bytes) -> None:
        self.fs.replace(path, data, self.now)
        self.feed(self.q.touched(ROOT, path, self.now))

    def remove(self, prefix: str) -> None:
        for path in self.fs.remove_tree(prefix):
            self.feed(self.q.touched(ROOT, path, self.now))

    def rename(self, src: str, dst: str) -> None:
        for a, b in self.fs.rename_tree(src, dst):
            self.feed(self.q.touched(ROOT, a, self.now))
            self.feed(self.q.touched(ROOT, b, self.now))

    def advance(self, until: float) -> None:
        """Run the virtual clock to ``until``, calling tick at every deadline (bounded)."""
        for _ in range(10_000):
            deadline = self.q.next_deadline()
            if deadline is None or deadline > until:
                break
            self.now = max(self.now, deadline)
            self.feed(self.q.tick(self.now))
        else:
            raise AssertionError("the queue kept asking for ticks")
        self.now = until
        self.feed(self.q.tick(self.now))

    # -- the shell

    def feed(self, effects: list) -> None:
        queue = list(effects)
        for _ in range(10_000):
            if not queue:
                return
            effect = queue.pop(0)
            queue.extend(self.carry_out(effect))
        raise AssertionError("effects never settled")

    def carry_out(self, effect) -> list:
        if isinstance(effect, Observe):
            if not self.answer_observes:
                return []
            self.observed_at.append((self.now, effect.unit))
            obs = self.fs.observe(effect.unit, effect.context, self.now)
            if obs is None:
                return self.q.vanished(effect.root, effect.unit, self.now)
            return self.q.observed(obs, self.now)
        if isinstance(effect, HashFiles):
            self.hashes.append(effect)
            outcome = self._read(effect.files, hashes=True)
            return self.q.hashed(effect.root, effect.unit, effect.attempt, outcome, self.now)
        if isinstance(effect, StartPut):
            if self.hold_puts:
                self.held.append(effect)
                return []
            return self.answer_put(effect)
        if isinstance(effect, Drop):
            self.drops.append(effect)
        elif isinstance(effect, Log):
            self.logs.append(effect.message)
        elif isinstance(effect, Persist):
            self.persisted = effect.blob
            self.persist_count += 1
        else:
            raise AssertionError(f"unknown effect {effect!r}")
        return []

    def answer_put(self, put: StartPut) -> list:
        data = {p.path: self.fs.files[p.path].data for p in put.files if p.path in self.fs.files}
        outcome = self.put_policy(put) or self._read(put.files, hashes=True)
        if isinstance(outcome, Hashed):
            self.versions += 1
            self.puts.append((self.now, put, data))
            outcome = Stored(f"{self.versions}.ab12cd34ef567890", outcome.content, 1_700_000_000.0 + self.now)
        return self.q.put_done(put.root, put.unit, put.attempt, outcome, self.now)

    def release(self) -> None:
        held, self.held = self.held, []
        for put in held:
            self.feed(self.answer_put(put))

    def _read(self, files: tuple[FileStat, ...], hashes: bool):
        content = []
        for expected in files:
            f = self.fs.files.get(expected.path)
            if f is None:
                return Vanished()
            data = f.data
            if self.during_read is not None:
                hook, self.during_read = self.during_read, None
                hook()
            problem = stat_mismatch(expected, self.fs.stat(expected.path))
            if problem:
                return ReadChanged(problem)
            content.append((expected.path, blake3.blake3(data).hexdigest()))
        return Hashed(tuple(content))

    def stored_units(self) -> list[str]:
        return [put.unit for _, put, _ in self.puts]


# -- finishing and storing once


def test_a_safetensors_file_written_in_chunks_is_stored_once_after_it_settles():
    h = Harness()
    for i, cut in enumerate([100, 1000, 2500, len(FULL)]):
        h.now = float(i)
        h.write("latest/model.safetensors", FULL[:cut])
    h.advance(3.0 + SETTLE - 0.01)
    assert h.puts == []
    assert h.q.pending()[0].reason.startswith("changed")
    h.advance(60.0)
    assert len(h.puts) == 1
    at, put, data = h.puts[0]
    assert put.name == "latest/model.safetensors" and not put.is_dir
    assert put.path_in_checkpoint(put.files[0].path) == "model.safetensors"
    assert data == {"latest/model.safetensors": FULL}
    assert 3.0 + SETTLE <= at <= 3.0 + SETTLE + 1.0 + 0.01  # within settle plus one debounce
    assert h.q.stats().stored == 1 and h.q.stats().pending == 0


def test_presized_then_filled_is_not_stored_before_the_fill_ends():
    h = Harness()
    header_end = len(FULL) - 4000
    h.write("latest/model.safetensors", FULL[:header_end] + bytes(4000))  # structurally complete already
    for i in range(1, 4):
        h.advance(i * 3.0)  # pauses shorter than the settle time
        h.write("latest/model.safetensors", FULL[: header_end + 1000 * i] + bytes(4000 - 1000 * i))
    h.advance(9.0 + 0.5)
    h.write("latest/model.safetensors", FULL)
    h.advance(100.0)
    assert [d for _, _, d in h.puts] == [{"latest/model.safetensors": FULL}]


def test_hf_checkpoint_staged_as_tmp_and_renamed_is_stored_once_complete():
    h = Harness()
    h.write("llama/tmp-checkpoint-500/model.safetensors", FULL)
    h.write("llama/tmp-checkpoint-500/optimizer.pt", torch_zip_bytes())
    h.advance(30.0)
    h.write("llama/tmp-checkpoint-500/trainer_state.json", _state(500))
    h.advance(60.0)
    assert h.observed_at == [] and h.puts == []  # staging directories are never looked at
    h.rename("llama/tmp-checkpoint-500", "llama/checkpoint-500")
    h.advance(200.0)
    assert len(h.puts) == 1
    _, put, data = h.puts[0]
    assert put.name == "llama/checkpoint-500" and put.is_dir
    assert sorted(put.path_in_checkpoint(f.path) for f in put.files) == [
        "model.safetensors", "optimizer.pt", "trainer_state.json"]


def test_hf_checkpoint_written_in_place_waits_for_trainer_state_even_past_the_settle_time():
    h = Harness()
    h.write("llama/checkpoint-500/model.safetensors", FULL)
    h.advance(100.0)
    assert h.puts == []
    [info] = h.q.pending()
    assert "trainer_state.json not written" in info.reason and info.name == "llama/checkpoint-500"
    h.write("llama/checkpoint-500/trainer_state.json", _state(500))
    h.advance(200.0)
    assert len(h.puts) == 1 and len(h.puts[0][1].files) == 2


def test_a_writer_holding_the_file_open_past_the_settle_time_is_waited_for():
    """Linux: the shell reports no IN_CLOSE_WRITE since the last modification."""
    h = Harness()
    h.write("llama/run.bin", b"x" * 100, closed_after_write=False)
    h.advance(50.0)
    assert h.puts == [] and "not closed" in h.q.pending()[0].reason
    h.write("llama/run.bin", b"x" * 200, closed_after_write=True)
    h.advance(100.0)
    assert [d for _, _, d in h.puts] == [{"llama/run.bin": b"x" * 200}]


def test_unfinished_units_are_looked_at_every_retry_period_without_events():
    h = Harness()
    h.write("llama/checkpoint-5/model.safetensors", FULL)
    h.advance(100.0)
    times = [t for t, _ in h.observed_at]
    assert times[0] == pytest.approx(1.0)  # one debounce after the event
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps and all(g == pytest.approx(RETRY) for g in gaps)


def test_a_unit_that_keeps_changing_is_still_looked_at_every_retry_period():
    h = Harness()
    for i in range(300):
        h.now = i * 0.1  # an event every 0.1 s: the debounce alone would never fire
        h.write("llama/log.bin", b"x" * (i + 1))
        h.feed(h.q.tick(h.now))
    assert len(h.observed_at) >= 2
    assert all(b - a <= RETRY + 0.11 for a, b in zip([0.0] + [t for t, _ in h.observed_at], [t for t, _ in h.observed_at], strict=False))


# -- failures and retries


def test_a_put_failing_then_succeeding():
    h = Harness()
    outcomes = [Failed("too_few_nodes", "1 of 2 nodes reachable"), None]
    tries: list[float] = []

    def policy(put):
        tries.append(h.now)
        return outcomes.pop(0)

    h.put_policy = policy
    h.write("llama/model.pt", torch_zip_bytes())
    h.advance(100.0)
    assert len(tries) == 2 and tries[1] - tries[0] == pytest.approx(RETRY)
    assert len(h.puts) == 1
    stats = h.q.stats()
    assert stats.stored == 1 and stats.failures == (("too_few_nodes", 1),) and stats.pending == 0
    assert stats.last_success == pytest.approx(1_700_000_000.0 + tries[1])
    assert stats.last_stored == "llama/model.pt@1.ab12cd34ef567890"
    assert any("could not be stored (1 of 2 nodes reachable); retrying in 10 s" in m for m in h.logs)


def test_failure_kinds_are_bounded_metric_labels():
    h = Harness()
    kinds = iter(["Bad Label!", *(f"k{i}" for i in range(100))])
    h.put_policy = lambda put: Failed(next(kinds), "x")
    h.write("llama/model.pt", torch_zip_bytes())
    h.advance(RETRY * 45)
    failures = dict(h.q.stats().failures)
    assert len(failures) <= 32 and failures["other"] >= 1


def test_read_changed_sends_the_unit_back_to_pending_and_the_new_content_is_stored():
    h = Harness()
    h.write("llama/model.pt", torch_zip_bytes(3))
    newer = torch_zip_bytes(4)
    h.during_read = lambda: h.fs.write("llama/model.pt", newer, h.now)  # a writer came back
    h.advance(100.0)
    assert h.q.stats().read_changed == 1
    assert [d for _, _, d in h.puts] == [{"llama/model.pt": newer}]
    assert any("changed while being read" in m for m in h.logs)


def test_stat_mismatch_names_what_changed():
    a = FileStat("x/y", 10, 5, 7)
    assert stat_mismatch(a, a) is None
    assert stat_mismatch(a, FileStat("x/y", 11, 5, 7)) == "x/y: size changed from 10 to 11"
    assert "inode" in stat_mismatch(a, FileStat("x/y", 10, 5, 8))
    assert "mtime_ns" in stat_mismatch(a, FileStat("x/y", 10, 6, 7))
    assert stat_mismatch(a, None) == "x/y disappeared"


# -- deletion


def test_a_checkpoint_deleted_while_pending_is_dropped_with_one_line():
    h = Harness()
    h.write("llama/checkpoint-100/model.safetensors", FULL)
    h.write("llama/checkpoint-100/extra.bin", b"1")
    h.advance(20.0)  # observed, waiting for trainer_state.json
    h.remove("llama/checkpoint-100")  # save_total_limit rotation
    h.advance(100.0)
    assert h.puts == []
    assert [(d.unit, d.reason) for d in h.drops] == [("llama/checkpoint-100", "deleted before it was stored")]
    assert h.q.stats().pending == 0 and h.q.stats().dropped == 1


def test_a_checkpoint_deleted_while_being_stored_is_dropped():
    h = Harness()
    h.hold_puts = True
    h.write("llama/model.pt", torch_zip_bytes())
    h.advance(20.0)
    assert len(h.held) == 1
    h.fs.remove_tree("llama/model.pt")
    h.release()
    assert [d.reason for d in h.drops] == ["deleted before it was stored"] and h.puts == []


def test_a_path_that_appears_and_vanishes_before_it_is_seen_is_forgotten_quietly():
    h = Harness()
    h.write("llama/model.pt", b"x")
    h.fs.remove_tree("llama/model.pt")
    h.advance(20.0)
    assert h.drops == [] and h.q.stats().pending == 0


# -- versions and exactly once


SAME_SHAPE = safetensors_bytes([("w", "U8", [4000], 0, 4000)], data=bytes(4000))  # new weights, same size


@pytest.mark.parametrize(
    ("new", "hashed"),
    [(SAME_SHAPE, 1), (safetensors_bytes([("w", "U8", [8], 0, 8)]), 0)],
    ids=["same size: hashed first", "other size: stored directly"],
)
def test_a_rewrite_with_new_content_becomes_a_new_version_of_the_same_name(new, hashed):
    h = Harness()
    h.write("latest/model.safetensors", FULL)
    h.advance(20.0)
    h.replace("latest/model.safetensors", new)
    h.advance(40.0)
    assert [put.name for _, put, _ in h.puts] == ["latest/model.safetensors"] * 2
    assert h.puts[1][2] == {"latest/model.safetensors": new}
    assert len(h.hashes) == hashed
    assert h.q.stored_version(ROOT, "latest/model.safetensors") == "2.ab12cd34ef567890"


def test_unchanged_content_is_not_stored_again():
    h = Harness()
    h.write("latest/model.safetensors", FULL)
    h.advance(20.0)
    h.write("latest/model.safetensors", FULL)  # same bytes, new mtime
    h.advance(40.0)
    assert len(h.puts) == 1 and len(h.hashes) == 1
    assert h.q.stats().unchanged == 1
    h.feed(h.q.touched(ROOT, "latest/model.safetensors", h.now))  # an event, nothing changed
    h.advance(60.0)
    assert len(h.puts) == 1 and len(h.hashes) == 1  # equal fingerprint: not even hashed


def test_a_change_reported_during_a_put_is_checked_again_afterwards():
    h = Harness()
    h.hold_puts = True
    h.write("llama/final/a.bin", b"1")
    h.advance(20.0)
    assert len(h.held) == 1
    h.write("llama/final/b.bin", b"2")  # a file the put does not know about
    h.release()
    h.advance(60.0)
    h.release()
    assert [sorted(d) for _, _, d in h.puts] == [["llama/final/a.bin"], ["llama/final/a.bin", "llama/final/b.bin"]]


def test_a_change_while_observing_is_not_taken_as_finished():
    h = Harness()
    h.answer_observes = False
    h.write("llama/x.bin", b"1")
    h.advance(20.0)
    obs = h.fs.observe("llama/x.bin", (), h.now - 10.0)  # taken at 10.0, before the event below
    h.now = 20.0
    h.fs.write("llama/x.bin", b"12", h.now)
    h.feed(h.q.touched(ROOT, "llama/x.bin", h.now))
    h.feed(h.q.observed(obs, h.now))
    assert h.puts == []


def test_only_one_put_at_a_time_and_the_others_say_why_they_wait():
    h = Harness()
    h.hold_puts = True
    h.write("llama/a.pt", torch_zip_bytes())
    h.write("llama/b.pt", torch_zip_bytes())
    h.advance(20.0)
    assert len(h.held) == 1
    reasons = {p.unit: (p.state, p.reason) for p in h.q.pending()}
    waiting = "llama/b.pt" if h.held[0].unit == "llama/a.pt" else "llama/a.pt"
    assert reasons[waiting] == ("ready", "finished; waiting for a free put slot")
    h.release()
    assert len(h.held) == 1 and h.held[0].unit == waiting
    h.release()
    assert sorted(h.stored_units()) == ["llama/a.pt", "llama/b.pt"]


def test_stale_answers_are_ignored():
    h = Harness()
    h.hold_puts = True
    h.write("llama/a.pt", torch_zip_bytes())
    h.advance(20.0)
    [put] = h.held
    ok = Stored("9.ab12cd34ef567890", (), 1.0)
    assert h.q.put_done(ROOT, "llama/a.pt", put.attempt + 1, ok, h.now) == []
    assert h.q.hashed(ROOT, "llama/a.pt", put.attempt, Hashed(()), h.now) == []
    assert h.q.stats().stored == 0


def test_an_unanswered_observe_is_asked_again():
    h = Harness(QueueSettings(settle_seconds=SETTLE, retry_seconds=RETRY, observe_timeout=30.0))
    h.answer_observes = False
    h.write("llama/a.pt", torch_zip_bytes())
    h.advance(100.0)
    sent = []
    h.carry_out = lambda e, sent=sent: sent.append((h.now, e)) or []
    h.advance(200.0)
    assert [t for t, e in sent if isinstance(e, Observe)] == pytest.approx([121.0, 151.0, 181.0])


# -- context: DeepSpeed's latest pointer


def test_the_deepspeed_pointer_wakes_its_tag_directory():
    h = Harness()
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        h.write(f"gpt/global_step500/{name}", torch_zip_bytes())
    h.write("gpt/latest", b"global_step400")
    h.advance(12.0)
    assert h.puts == [] and "names 'global_step400'" in h.q.pending()[0].reason
    h.write("gpt/latest", b"global_step500")
    h.advance(h.now + 1.5)  # well before the next retry
    assert h.stored_units() == ["gpt/global_step500"]


# -- patterns, names, bounds


def test_excluded_units_are_never_looked_at():
    h = Harness(naming=Naming(exclude=("*.ckpt",)))
    h.write("llama/last.ckpt", torch_zip_bytes())
    h.write("llama/model.pt", torch_zip_bytes())
    h.advance(60.0)
    assert {u for _, u in h.observed_at} == {"llama/model.pt"} and h.stored_units() == ["llama/model.pt"]


def test_two_roots_giving_one_name_are_refused_once():
    fs = FakeFS(ROOT)
    h = Harness(roots=(ROOT, "/other/runs"), fs=fs)
    h.write("checkpoint-5", b"x")
    effects = h.q.touched("/other/runs", "checkpoint-5", h.now) + h.q.touched("/other/runs", "checkpoint-5", h.now)
    drops = [e for e in effects if isinstance(e, Drop)]
    assert len(drops) == 1 and "already used by checkpoint-5 in /w/runs; set a name prefix" in drops[0].reason


def test_a_name_too_long_is_dropped_with_its_reason():
    h = Harness()
    h.write("llama/" + "x" * 250, b"1")
    assert len(h.drops) == 1 and "shorten the path" in h.drops[0].reason and h.q.stats().pending == 0


def test_the_queue_is_bounded():
    h = Harness(QueueSettings(settle_seconds=SETTLE, retry_seconds=RETRY, max_units=3))
    for i in range(5):
        h.write(f"llama/checkpoint-{i}/model.safetensors", FULL)
    assert h.q.stats().pending == 3
    assert len(h.drops) == 2 and all("already holds 3 pending" in d.reason for d in h.drops)


def test_unknown_roots_are_a_programming_error():
    with pytest.raises(ValueError, match="unknown watch root"):
        WatchQueue([ROOT]).touched("/elsewhere", "a/b", 0.0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="retry_seconds"):
        QueueSettings(retry_seconds=0)
    with pytest.raises(ValueError, match="max_active"):
        QueueSettings(max_active=0)


# -- persistence and restarts


def test_state_round_trips_and_a_restart_stores_nothing_twice():
    h = Harness()
    h.write("llama/checkpoint-1/model.safetensors", FULL)
    h.write("llama/checkpoint-1/trainer_state.json", _state(1))
    h.advance(20.0)
    h.write("llama/checkpoint-2/model.safetensors", FULL)  # pending at the restart
    h.advance(25.0)
    assert len(h.puts) == 1 and h.persisted is not None
    blob = h.persisted
    assert json.loads(blob)["pending"] == [[ROOT, "llama/checkpoint-2"]]

    # restart: a new queue, the same files, then the scan reports every file again
    h2 = Harness(fs=h.fs)
    h2.now = 1000.0
    h2.feed(h2.q.load(blob, h2.now))
    assert [p.unit for p in h2.q.pending()] == ["llama/checkpoint-2"]
    assert h2.q.encode() == blob
    for path in sorted(h.fs.files):
        h2.feed(h2.q.touched(ROOT, path, h2.now))
    h2.feed(h2.q.scan_finished(ROOT, ["llama/checkpoint-1", "llama/checkpoint-2"], h2.now))
    h2.write("llama/checkpoint-2/trainer_state.json", _state(2))  # finished after the restart
    h2.advance(1100.0)
    assert h2.stored_units() == ["llama/checkpoint-2"]  # checkpoint-1 was not stored again
    assert h2.hashes == []
    assert h2.q.stats().last_stored == "llama/checkpoint-2@1.ab12cd34ef567890"


def test_a_checkpoint_finished_while_the_watcher_was_down_is_found_by_the_scan():
    fs = FakeFS(ROOT)
    fs.write("llama/model.pt", torch_zip_bytes(), 0.0)
    h = Harness(fs=fs)
    h.now = 500.0
    h.feed(h.q.touched(ROOT, "llama/model.pt", h.now))
    h.advance(520.0)
    assert h.stored_units() == ["llama/model.pt"]


def test_a_pending_checkpoint_deleted_while_the_watcher_was_down_is_dropped_on_start():
    h = Harness()
    h.write("llama/checkpoint-3/model.safetensors", FULL)
    h.advance(5.0)
    blob = h.persisted
    h.fs.remove_tree("llama/checkpoint-3")
    h2 = Harness(fs=h.fs)
    h2.feed(h2.q.load(blob, 0.0))
    assert [d.reason for d in h2.drops] == ["deleted before it was stored"]


def test_scan_finished_forgets_units_that_are_gone():
    h = Harness()
    h.write("llama/a.pt", torch_zip_bytes())
    h.advance(20.0)
    assert h.q.stored_version(ROOT, "llama/a.pt") is not None
    h.feed(h.q.scan_finished(ROOT, [], h.now))
    assert h.q.stored_version(ROOT, "llama/a.pt") is None
    assert json.loads(h.persisted)["stored"] == []


def test_load_leaves_out_roots_no_longer_watched():
    h = Harness(roots=(ROOT, "/old"))
    h.write("llama/a.pt", torch_zip_bytes())
    h.advance(20.0)
    q = WatchQueue(["/old"])
    q.load(h.persisted, 0.0)
    assert q.stored_version(ROOT, "llama/a.pt") is None and q.stats().last_stored is not None


def test_load_only_into_a_fresh_queue():
    h = Harness()
    h.write("llama/a.pt", b"1")
    with pytest.raises(ValueError, match="before any other input"):
        h.q.load(h.q.encode(), 0.0)


def _good_state() -> dict:
    return {
        "format": "peerstore-watch-queue", "version": 1, "pending": [[ROOT, "llama/b"]],
        "stored": [[ROOT, "llama/a.pt", "llama/a.pt", "1.ab12cd34ef567890", 5.0, [["llama/a.pt", 3, 4, 5]],
                    [["llama/a.pt", "ab" * 32]]]],
        "last_success": 5.0, "last_stored": "llama/a.pt@1.ab12cd34ef567890",
    }


def _with(**changes) -> bytes:
    state = _good_state()
    state.update(changes)
    return json.dumps(state).encode()


def _stored_with(index: int, value) -> bytes:
    state = _good_state()
    state["stored"][0][index] = value
    return json.dumps(state).encode()


BAD_STATES = [
    ("not json", b"\x00garbage", "not valid JSON"),
    ("not utf-8", b"\xff\xfe", "not valid JSON"),
    ("a list", b"[]", "not a peerstore-watch-queue file"),
    ("wrong format", _with(format="other"), "not a peerstore-watch-queue file"),
    ("newer version", _with(version=2), "format version 2, this peerstore reads version 1"),
    ("extra key", _with(extra=1), "unexpected keys"),
    ("pending not a list", _with(pending={}), "must be lists"),
    ("pending item malformed", _with(pending=[["a"]]), "pending[0] is not [root, unit]"),
    ("pending path escapes", _with(pending=[[ROOT, "../x"]]), "pending[0]"),
    ("stored item short", _with(stored=[[ROOT]]), "stored[0] is not"),
    ("stored name not text", _stored_with(2, 5), "stored[0] name"),
    ("stored version too long", _stored_with(3, "x" * 65), "stored[0] version"),
    ("stored_at not a number", _stored_with(4, "now"), "stored_at"),
    ("file stat malformed", _stored_with(5, [["llama/a.pt", -1, 4, 5]]), "size"),
    ("file mtime not an int", _stored_with(5, [["llama/a.pt", 3, 4.5, 5]]), "mtime_ns"),
    ("content not hex", _stored_with(6, [["llama/a.pt", "zz"]]), "content does not match"),
    ("content for another file", _stored_with(6, [["llama/b.pt", "ab" * 32]]), "content does not match"),
    ("last_success not a number", _with(last_success="x"), "last_success"),
]


@pytest.mark.parametrize(("case", "blob", "problem"), BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_malformed_state_is_refused_saying_what_to_do(case, blob, problem):
    with pytest.raises(FormatError) as info:
        WatchQueue([ROOT]).load(blob, 0.0)
    assert problem in str(info.value) and "move the file aside" in str(info.value)


def test_the_good_state_used_above_loads():
    q = WatchQueue([ROOT])
    effects = q.load(_with(), 0.0)
    assert q.stored_version(ROOT, "llama/a.pt") == "1.ab12cd34ef567890"
    assert [e.unit for e in effects if isinstance(e, Observe)] == ["llama/b"]


def test_oversized_state_is_refused_and_encode_stays_under_the_limit():
    with pytest.raises(FormatError, match="larger than"):
        WatchQueue([ROOT]).load(b" " * (MAX_STATE_BYTES + 1), 0.0)


def test_records_are_bounded_oldest_first():
    h = Harness(QueueSettings(settle_seconds=SETTLE, retry_seconds=RETRY, max_records=2))
    for i in range(3):
        h.write(f"llama/m{i}.pt", torch_zip_bytes())
        h.advance(h.now + 20.0)
    assert h.q.stored_version(ROOT, "llama/m0.pt") is None
    assert h.q.stored_version(ROOT, "llama/m2.pt") is not None
    assert len(json.loads(h.persisted)["stored"]) == 2


def test_persist_is_emitted_when_durable_state_changes_only():
    h = Harness()
    h.write("llama/checkpoint-9/model.safetensors", FULL)
    count = h.persist_count
    assert count == 1  # a new pending unit
    for _ in range(5):
        h.write("llama/checkpoint-9/model.safetensors", FULL)
    h.advance(50.0)
    assert h.persist_count == count  # events and looks change nothing durable
