"""The progress line: formatting, throttling, and silence when nobody is watching."""

from __future__ import annotations

import io

import pytest

from peerstore.shell.client.progress import Progress, format_progress, human_duration, human_size


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"), (10 * 1024**2, "10.0 MiB"),
        (int(123.4 * 1024**2), "123 MiB"), (5 * 1024**3, "5.00 GiB"), (3 * 1024**4, "3.00 TiB"),
    ],
)
def test_human_size(n, text):
    assert human_size(n) == text


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (9.4, "0:09"), (754, "12:34"), (3723, "1:02:03"), (-5, "0:00")])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    "done, total, rate, text",
    [
        (0, 100 * 1024**2, None, "get x  0 B / 100 MiB    0%"),
        (50 * 1024**2, 100 * 1024**2, 10e6, "get x  50.0 MiB / 100 MiB   50%  10.0 MB/s  ETA 0:05"),
        (100 * 1024**2, 100 * 1024**2, 10e6, "get x  100 MiB / 100 MiB  100%  10.0 MB/s"),
        (2048, 0, None, "get x  2.00 KiB"),
    ],
)
def test_format_progress(done, total, rate, text):
    assert format_progress("get x", done, total, rate) == text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_redraws_in_place_at_most_five_times_a_second():
    clock, stream = FakeClock(), Tty()
    progress = Progress("put x", stream=stream, clock=clock)
    progress.start(10_000_000)
    for i in range(1, 101):  # 100 updates over one second
        clock.now += 0.01
        progress.update(i * 100_000)
    draws = stream.getvalue().count("\r")
    assert 4 <= draws <= 6
    assert progress.rate() == pytest.approx(10_000_000, rel=0.05)
    progress.finish()
    assert stream.getvalue().endswith("\r")


def test_silent_when_not_a_terminal_or_disabled():
    for stream, enabled in ((io.StringIO(), None), (Tty(), False)):
        progress = Progress("put x", stream=stream, clock=FakeClock(), enabled=enabled)
        progress.start(100)
        progress.update(50)
        progress.finish()
        assert stream.getvalue() == ""


def test_rate_follows_recent_speed():
    clock = FakeClock()
    progress = Progress(stream=io.StringIO(), clock=clock, enabled=False)
    progress.start(10**9)
    for _ in range(50):  # 5 s at 1 MB/s
        clock.now += 0.1
        progress.advance(100_000)
    for _ in range(50):  # then 5 s at 10 MB/s
        clock.now += 0.1
        progress.advance(1_000_000)
    assert progress.rate() == pytest.approx(10e6, rel=0.1)
