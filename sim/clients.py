"""What each simulated client saw: the record a put, get or other command leaves behind.

The shell fills a record in from the core's replies (``sim.shell``), the checks and the
ledger judge it (``sim.checks``, ``sim.ledger``), scenarios and tests read it. It lives
here, below all of them, so none of them imports the cluster for its type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peerstore.core import events as ev
from peerstore.model.manifest import Manifest
from sim.content import FileModel


@dataclass
class ClientRecord:
    """What one client saw: every reply, and for gets, what it received."""

    kind: str
    node: str
    sources: list[FileModel] = field(default_factory=list)
    name: str = ""
    replies: list[Any] = field(default_factory=list)
    final: Any = None
    manifest: Manifest | None = None
    delivered: dict[int, bool] = field(default_factory=dict)  # stripe -> bytes correct
    disconnected: bool = False
    started: float = 0.0
    finished: float | None = None
    client: int = 0
    seen: frozenset[Any] = frozenset()  # gets: versions of the name its node knew when it started
    entry: Any = None  # gets: the catalog entry the node resolved

    @property
    def done(self) -> bool:
        return self.final is not None or self.disconnected

    @property
    def ok(self) -> bool:
        return self.final is not None and not isinstance(self.final, ev.Failed)
