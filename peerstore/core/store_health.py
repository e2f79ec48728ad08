"""Whether this node's store accepts writes.

A disk that turned read-only (EROFS: what a failing disk or SD card is remounted as)
makes every write fail. The shell only observes it (``StoreHealthChanged``); the core
decides what follows, so the daemon and the simulator behave alike:

- the node refuses pieces from its peers at once, with a reason containing ``READ_ONLY``
  (a put treats that as final for this target and places the pieces elsewhere), and does
  not coordinate puts (their version counters must be written durably here);
- its node report (``status``) says so, with the reason and since when;
- every ``PROBE_INTERVAL`` seconds it asks the shell to try a small durable write
  (``ProbeStore``); one that succeeds makes the store writable again.

Pure: no I/O, no clock (``now`` comes in with every call).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from peerstore.core import events as ev

READ_ONLY = "read-only disk"
PROBE_INTERVAL = 30.0  # seconds between two probes of a read-only store


class _Node(Protocol):
    stats: Any

    def local(self, make: Callable[[Any], Any], on_done: Callable[[float, Any], None]) -> None: ...


class StoreHealth:
    """The store's state as the core sees it: writable, or read-only since when and why."""

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.problem: str | None = None
        self.since: float | None = None
        self._probe_at: float | None = None
        self._probing = False

    @property
    def writable(self) -> bool:
        return self.problem is None

    def refusal(self) -> str | None:
        """Why this node takes no new piece (None while it does)."""
        return None if self.problem is None else f"{READ_ONLY}: {self.problem}"

    def observe(self, now: float, writable: bool, reason: str = "") -> None:
        """The shell saw the store turn read-only, or writable again."""
        if writable:
            self.problem = self.since = self._probe_at = None
            return
        if self.problem is None:
            self.since = now
            self.node.stats["store_read_only"] += 1
        self.problem = (reason or "writes fail with EROFS")[:200]
        if not self._probing:
            self._probe_at = now + PROBE_INTERVAL

    def next_deadline(self) -> float | None:
        return None if self._probing else self._probe_at

    def tick(self, now: float) -> None:
        if self._probe_at is None or self._probing or now < self._probe_at:
            return
        self._probing, self._probe_at = True, None
        self.node.local(lambda tag: ev.ProbeStore(tag), self._probed)

    def _probed(self, now: float, done: ev.StoreProbed) -> None:
        self._probing = False
        if self.problem is None:
            return  # the shell already said it is writable again
        if done.ok:
            self.observe(now, True)
        else:
            self.problem = (done.error or self.problem)[:200]
            self._probe_at = now + PROBE_INTERVAL

    def report(self, now: float) -> dict[str, Any]:
        """The ``"store"`` key of the node report."""
        return {
            "writable": self.problem is None,
            "problem": self.problem,
            "read_only_for": None if self.since is None else round(now - self.since, 1),
        }


def read_only_nodes(nodes: Any) -> dict[str, str]:
    """From ``Status.nodes`` ((node id, report or None), ...): the nodes whose store is
    read-only, and why (for ``status``)."""
    out = {}
    for node_id, report in nodes or ():
        store = report.get("store") if isinstance(report, dict) else None
        if isinstance(store, dict) and store.get("writable") is False:
            out[str(node_id)] = str(store.get("problem") or "writes fail")[:300]
    return out
