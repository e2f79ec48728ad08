"""A one-line transfer progress display on stderr, for humans only.

It draws ``  412.0 MiB / 1.2 GiB  34%  85.3 MB/s  ETA 0:09`` and redraws it in place
with ``\\r`` at most ~5 times a second. It stays silent when the stream is not a
terminal (logs, pipes, CI) or when the user passed ``--quiet``, so scripts see only the
command's real output.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

REDRAW_INTERVAL = 0.2  # seconds: ~5 Hz
RATE_WINDOW = 3.0  # seconds of history behind the speed shown
_MAX_SAMPLES = 64


def human_size(n: int) -> str:
    """Bytes in binary units with three significant digits: '0 B', '512 B', '1.5 GiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def human_rate(bytes_per_second: float) -> str:
    """Throughput in decimal megabytes per second, as disks and networks are quoted."""
    return f"{bytes_per_second / 1e6:.1f} MB/s"


def human_duration(seconds: float) -> str:
    """'0:09', '12:34', '1:02:03'."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(label: str, done: int, total: int, rate: float | None) -> str:
    """The progress line for ``done`` of ``total`` bytes at ``rate`` bytes/s (None: unknown yet)."""
    parts = [label] if label else []
    if total > 0:
        percent = min(100, done * 100 // total)
        parts.append(f"{human_size(done)} / {human_size(total)}  {percent:3d}%")
    else:
        parts.append(human_size(done))
    if rate is not None and rate > 0:
        parts.append(human_rate(rate))
        if total > done:
            parts.append(f"ETA {human_duration((total - done) / rate)}")
    return "  ".join(parts)


class Progress:
    """Tracks bytes done of a known total and redraws one stderr line when useful.

    ``enabled=None`` means "only if the stream is a terminal". Call :meth:`update` as
    often as you like (it is throttled) and :meth:`finish` once at the end.
    """

    def __init__(
        self,
        label: str = "",
        total: int = 0,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.label = label
        self.total = total
        self.done = 0
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque(maxlen=_MAX_SAMPLES)
        self._last_draw: float | None = None
        self._width = 0

    def start(self, total: int, label: str | None = None) -> None:
        """(Re)start counting towards ``total`` bytes."""
        self.total = total
        if label is not None:
            self.label = label
        self.done = 0
        self._samples.clear()
        self._samples.append((self._clock(), 0))

    def update(self, done: int) -> None:
        """Record that ``done`` bytes are complete; redraws at most every REDRAW_INTERVAL."""
        now = self._clock()
        self.done = done
        if not self._samples or now - self._samples[-1][0] >= REDRAW_INTERVAL / 2:
            self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        if self._last_draw is None or now - self._last_draw >= REDRAW_INTERVAL:
            self._draw(now)

    def advance(self, n: int) -> None:
        """Record ``n`` more bytes complete."""
        self.update(self.done + n)

    def rate(self, now: float | None = None) -> float | None:
        """Bytes per second over the last few seconds; None until there is a span to measure."""
        if not self._samples:
            return None
        now = self._clock() if now is None else now
        start_time, start_done = self._samples[0]
        span = now - start_time
        if span <= 0.05:
            return None
        return (self.done - start_done) / span

    def line(self, now: float | None = None) -> str:
        return format_progress(self.label, self.done, self.total, self.rate(now))

    def finish(self) -> None:
        """Clear the line so the command's own output starts on a clean row."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0

    def _draw(self, now: float) -> None:
        self._last_draw = now
        if not self.enabled:
            return
        text = self.line(now)
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)
