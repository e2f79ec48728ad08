"""What a process costs, read from ``/proc``: CPU seconds and resident memory.

Linux only. Every reader returns None for a process that has gone, so a meter survives a
node being killed in the middle of a phase.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from peerstore.model.policy import KiB, MiB

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_split(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of every thread of ``pid`` so far, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs have spent not idle since boot (user, nice, system, irq,
    softirq, steal), or None without /proc/stat. The difference over a phase, against
    what the measured processes used, shows how much else ran (other jobs, writeback)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...), or None if unavailable."""
    prefix = key.encode() + b":"
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS (``clear_refs`` 5, Linux 4.0+); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class _Watched:
    label: str
    pid: int
    cpu_start: tuple[float, float] | None
    cpu_last: tuple[float, float] | None
    peak_kib: int = 0
    peak_anon_kib: int = 0
    hwm_reset: bool = False


@dataclass
class Usage:
    """What the watched processes used over one phase."""

    cpu_seconds: dict[str, float] = field(default_factory=dict)
    system_cpu_seconds: dict[str, float] = field(default_factory=dict)  # the kernel's part of cpu_seconds
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    peak_anon_mib: dict[str, float] = field(default_factory=dict)  # sampled RssAnon: heap, not page cache
    peak_from_hwm: bool = False  # True when every peak is the kernel's high-water mark


class Meter:
    """Samples CPU time and RSS of labelled processes every ``interval`` seconds.

    At start each process's VmHWM is reset when the kernel allows it, so the peak read at
    the end (or when the process dies, the last sample) covers this phase only. Peaks are
    the larger of VmHWM and the sampled VmRSS. RssAnon (heap and buffers, without mapped
    files) has no kernel high-water mark, so its peak is sampled only.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, label: str, pid: int) -> None:
        """Start measuring ``pid`` (idempotent per pid)."""
        with self._lock:
            if pid in self._watched:
                return
            cpu = cpu_split(pid)
            self._watched[pid] = _Watched(label, pid, cpu, cpu, hwm_reset=reset_peak_rss(pid))
            self._sample_one(self._watched[pid])

    def _sample_one(self, w: _Watched) -> None:
        cpu = cpu_split(w.pid)
        if cpu is None:
            return
        w.cpu_last = cpu
        for key in ("VmRSS", "VmHWM") if w.hwm_reset else ("VmRSS",):
            kib = status_kib(w.pid, key)
            if kib is not None:
                w.peak_kib = max(w.peak_kib, kib)
        anon = status_kib(w.pid, "RssAnon")
        if anon is not None:
            w.peak_anon_kib = max(w.peak_anon_kib, anon)

    def sample(self) -> None:
        with self._lock:
            for w in self._watched.values():
                self._sample_one(w)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Meter:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Usage:
        """Stop sampling (idempotent) and return the usage so far, summed per label."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.sample()
        usage = Usage(peak_from_hwm=bool(self._watched) and all(w.hwm_reset for w in self._watched.values()))
        with self._lock:
            for w in self._watched.values():
                start, last = w.cpu_start or (0.0, 0.0), w.cpu_last or (0.0, 0.0)
                user, system = max(last[0] - start[0], 0.0), max(last[1] - start[1], 0.0)
                usage.cpu_seconds[w.label] = usage.cpu_seconds.get(w.label, 0.0) + user + system
                usage.system_cpu_seconds[w.label] = usage.system_cpu_seconds.get(w.label, 0.0) + system
                usage.peak_rss_mib[w.label] = max(usage.peak_rss_mib.get(w.label, 0.0), w.peak_kib * KiB / MiB)
                usage.peak_anon_mib[w.label] = max(usage.peak_anon_mib.get(w.label, 0.0),
                                                   w.peak_anon_kib * KiB / MiB)
        return usage
