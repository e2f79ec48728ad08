"""Sample the node processes with py-spy during a phase, and summarise where time goes.

Optional: used only with ``--profile DIR`` and only if py-spy is installed (it is not a
dependency: ``pip install py-spy``). Profiled figures are not comparable with the others,
since the sampler takes CPU from the nodes.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

SAMPLE_RATE = 50  # per second: enough for a few-second phase, light on 2 cores
STOP_TIMEOUT = 30.0
IDLE_FRAMES = ("epoll", "select (selectors", "_wait_for_tstate_lock", "wait (threading", "get_events",
               "serve_forever", "_PollLikeSelector", "WorkerThread._work (trio")


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Recorder:
    """``py-spy record --format raw`` on each given pid until ``stop()``."""

    def __init__(self, exe: str, out_dir: Path, phase: str, pids: dict[str, int]):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.outputs: dict[str, Path] = {}
        self._procs: list[subprocess.Popen] = []
        for label, pid in pids.items():
            path = out_dir / f"{slug(phase)}-{label}.txt"
            self.outputs[label] = path
            self._procs.append(subprocess.Popen(
                [exe, "record", "--format", "raw", "--nonblocking", "--threads", "--rate", str(SAMPLE_RATE),
                 "--pid", str(pid), "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))

    def stop(self) -> dict[str, Path]:
        """Stop sampling (SIGINT makes py-spy write its file); the files written."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return {label: path for label, path in self.outputs.items() if path.exists()}


def _frames(stack: str) -> list[str]:
    # raw lines: "process (pid);thread (0x..);frame (file:line);frame ... count"
    return [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]


def _thread(stack: str) -> str:
    """The thread's name without its id or number: "Trio thread 7" -> "Trio thread"."""
    for part in stack.split(";")[:2]:
        if part.startswith("thread "):
            name = part.split(": ", 1)[-1]
            return re.sub(r"\s+\d+$", "", name)
    return "?"


# Frames every stack of the main thread shares; they say nothing about where time goes.
_ENTRY_FRAMES = ("<module> (", "run_node (", "cmd_node (", "main (peerstore/cli/commands.py", "_run_code (",
                 "_run_module_as_main (")


def summarise(path: Path, top: int = 12) -> str:
    """Busy samples by thread, then the functions that hold them (self and inclusive)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = _frames(stack)
        if not frames or any(idle in frames[-1] for idle in IDLE_FRAMES):
            continue
        count = int(count_text)
        total += count
        threads[_thread(stack)] += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path.name}: no busy samples"
    seconds = total / SAMPLE_RATE
    lines = [f"{path.name}: {total} busy samples (~{seconds:.1f} thread-seconds at {SAMPLE_RATE} Hz)",
             "  by thread: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common(6)),
             "  (busy = not idle by py-spy's test: includes threads blocked in write/fsync, not only CPU)",
             "  self (innermost frame):"]
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["  inclusive (anywhere on the stack, peerstore frames):"]
    ours = [(f, n) for f, n in inclusive.most_common()
            if "peerstore/" in f and not f.startswith(_ENTRY_FRAMES)]
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in ours[:top]]
    return "\n".join(lines)
