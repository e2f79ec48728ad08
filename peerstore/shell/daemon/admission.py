"""What the daemon lets in before a connection has proved the cluster key.

- :class:`HandshakeGate` caps pending (unauthenticated) handshakes in total and per source
  address. A new connection is always let in: when a cap is reached, the oldest pending
  handshake of the address holding the most is dropped to make room. A flood of
  half-open connections then costs the node a bounded number of file descriptors, and a
  real peer or CLI connecting meanwhile still gets its turn (its handshake takes
  milliseconds; the flood's connections are the ones waiting out the timeout).
- :class:`LogLimiter` lets a noisy warning (a wrong-key handshake, repeated by whoever
  holds the wrong key) through at most once per interval, with a count of the rest.
- :func:`raise_open_file_limit` raises the soft open-file limit towards the hard one at
  start, where the platform allows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from peerstore.shell.logs import fields

log = logging.getLogger("peerstore.node")

MAX_PENDING_HANDSHAKES = 256
MAX_PENDING_PER_ADDRESS = 16
WANTED_OPEN_FILES = 65536
MACOS_OPEN_MAX = 10240  # macOS refuses a soft limit above OPEN_MAX even when the hard one is unlimited


class HandshakeGate:
    """Pending handshakes by source address; ``admit`` returns a ticket to give back with
    ``done``. A dropped handshake has its ``cancel()`` called (a trio.CancelScope's)."""

    def __init__(self, max_total: int = MAX_PENDING_HANDSHAKES, max_per_address: int = MAX_PENDING_PER_ADDRESS):
        if max_total < 1 or max_per_address < 1:
            raise ValueError("handshake caps must be at least 1")
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._pending: dict[str, OrderedDict[int, Any]] = {}
        self._total = 0
        self._next = 0
        self.dropped = 0  # handshakes dropped to make room (a metric)

    @property
    def pending(self) -> int:
        return self._total

    def pending_from(self, address: str) -> int:
        return len(self._pending.get(address, ()))

    def admit(self, address: str, scope: Any) -> tuple[str, int]:
        """Register a handshake from ``address`` (cancelled through ``scope`` if it must
        make room for a newer one); returns its ticket."""
        if self.pending_from(address) >= self.max_per_address:
            self._drop_oldest(address)
        elif self._total >= self.max_total:
            self._drop_oldest(max(self._pending, key=lambda a: len(self._pending[a])))
        self._next += 1
        self._pending.setdefault(address, OrderedDict())[self._next] = scope
        self._total += 1
        return address, self._next

    def done(self, ticket: tuple[str, int]) -> None:
        """The handshake ended (authenticated, failed or dropped): forget it."""
        address, number = ticket
        waiting = self._pending.get(address)
        if waiting is not None and waiting.pop(number, None) is not None:
            self._total -= 1
            if not waiting:
                del self._pending[address]

    def _drop_oldest(self, address: str) -> None:
        waiting = self._pending[address]
        number, scope = next(iter(waiting.items()))
        self.done((address, number))
        self.dropped += 1
        scope.cancel()


class LogLimiter:
    """At most one message per ``interval`` seconds; the ones held back are counted and
    reported with the next one let through."""

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """None to stay quiet; else how many were held back since the last one logged."""
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return None
        self._last = now
        held, self.suppressed = self.suppressed, 0
        return held


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit);
    (old, new) soft limits, or None where there is no such limit or it cannot change."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on a POSIX system
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    unlimited = resource.RLIM_INFINITY
    target = wanted if hard == unlimited else min(wanted, hard)
    if soft == unlimited or soft >= target:
        return soft, soft
    for candidate in (target, min(target, MACOS_OPEN_MAX)):
        if candidate <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
        except (OSError, ValueError):
            continue
        return soft, candidate
    log.warning("could not raise the open-file limit above %d (hard limit %s); a busy node may run "
                "out of file descriptors: raise it with ulimit -n or LimitNOFILE=", soft,
                "unlimited" if hard == unlimited else hard, extra=fields("open_file_limit_low", limit=soft))
    return soft, soft
