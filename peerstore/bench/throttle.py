"""Make one process slow without touching its code: stop it for part of every period.

SIGSTOP/SIGCONT on a duty cycle models a peer with a fraction of the CPU, disk and
network of the others (a Raspberry Pi on an SD card next to a desktop): everything it
does, it does at roughly ``1 - stopped_fraction`` of the speed.
"""

from __future__ import annotations

import os
import signal
import threading


class DutyCycle:
    """Stop ``pid`` for ``stopped_fraction`` of every ``period`` seconds while in use.

    Always leaves the process running (SIGCONT) on exit, even if the thread fails.
    """

    def __init__(self, pid: int, period: float = 0.2, stopped_fraction: float = 0.5):
        if not 0 < period <= 10:
            raise ValueError(f"period must be in (0, 10] seconds, got {period}")
        if not 0 <= stopped_fraction < 1:
            raise ValueError(f"stopped_fraction must be in [0, 1), got {stopped_fraction}")
        self.pid = pid
        self.period = period
        self.stopped_fraction = stopped_fraction
        self.cycles = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        stopped_ms = self.period * self.stopped_fraction * 1000
        return f"SIGSTOP {stopped_ms:.0f} ms of every {self.period * 1000:.0f} ms"

    def _signal(self, sig: int) -> bool:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _run(self) -> None:
        stopped = self.period * self.stopped_fraction
        try:
            while not self._stop.is_set():
                if stopped > 0 and not self._signal(signal.SIGSTOP):
                    return
                self._stop.wait(stopped)
                if not self._signal(signal.SIGCONT):
                    return
                self.cycles += 1
                self._stop.wait(self.period - stopped)
        finally:
            self._signal(signal.SIGCONT)

    def __enter__(self) -> DutyCycle:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"duty-cycle-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._signal(signal.SIGCONT)
