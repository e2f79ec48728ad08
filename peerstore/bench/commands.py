"""Run a command with a deadline and account for it: wall time, CPU seconds, peak RSS."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from peerstore.bench.procstat import KiB, MiB

SLOWEST_RATE = 2e6  # bytes/s: a command slower than this is stuck, not slow


def command_timeout(nbytes: int) -> float:
    """How long a command moving ``nbytes`` may take before it counts as stuck."""
    return 120.0 + nbytes / SLOWEST_RATE


@dataclass(frozen=True)
class Finished:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float

    def describe(self) -> str:
        return (f"{' '.join(self.argv)} exited {self.returncode}\n"
                f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}")


class CommandFailed(RuntimeError):
    def __init__(self, finished: Finished, context: str = ""):
        super().__init__(finished.describe() + (f"\n{context}" if context else ""))
        self.finished = finished


class Running:
    """A started command whose accounting comes from ``wait4`` (so only its own usage)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None):
        self.argv = tuple(str(a) for a in argv)
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self._err: IO[bytes] = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> Finished:
        """Reap the command; kill it (and raise TimeoutError) if it outlives ``timeout``."""
        deadline = self.started + timeout
        pause = 0.002
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.send_signal(signal.SIGKILL)
                os.wait4(self.proc.pid, 0)
                self.proc.returncode = -signal.SIGKILL
                self._close()
                raise TimeoutError(f"{' '.join(self.argv)} did not finish within {timeout:g} s; killed it")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        seconds = time.monotonic() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = self._read(self._out), self._read(self._err)
        self._close()
        return Finished(self.argv, self.proc.returncode, stdout, stderr, seconds,
                        usage.ru_utime + usage.ru_stime, usage.ru_maxrss * KiB / MiB)

    @staticmethod
    def _read(handle: IO[bytes]) -> str:
        handle.seek(0)
        return handle.read().decode(errors="replace")

    def _close(self) -> None:
        self._out.close()
        self._err.close()

    def kill(self) -> None:
        """Kill and reap it if it is still running (for cleanup paths)."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
                os.wait4(self.proc.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.proc.returncode = -signal.SIGKILL
            self._close()


def run(argv: Sequence[str], timeout: float, check: bool = True, context: str = "") -> Finished:
    """Run ``argv`` to completion within ``timeout`` seconds."""
    running = Running(argv)
    try:
        finished = running.wait(timeout)
    finally:
        running.kill()
    if check and finished.returncode != 0:
        raise CommandFailed(finished, context)
    return finished


def sync(timeout: float = 600.0) -> Finished:
    """``sync``: everything written so far reaches the disk."""
    return run(["sync"], timeout)


def drop_page_cache() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if not allowed (not root)."""
    sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def can_drop_page_cache() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)
