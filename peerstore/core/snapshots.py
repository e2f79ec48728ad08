"""A node's own state on its disk: written one snapshot at a time, sealed with a checksum,
and read back on boot by the one rule both shells follow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from peerstore.errors import FormatError
from peerstore.model.catalog import Catalog, decode_counters
from peerstore.model.codec import unseal

if TYPE_CHECKING:
    from peerstore.core.messenger import Messenger

Done = Callable[[float, bool, str], None]  # (now, ok, error)


class SnapshotWriter:
    """Makes the state that ``snapshot()`` encodes durable, on request.

    At most one write is outstanding, so the shell never has to order two snapshots of
    the same state: requests made during a write share the next one, which encodes the
    state as it is then. Each ``on_done`` runs once a snapshot taken after its request
    is durable (or has failed)."""

    def __init__(self, node: "Messenger", snapshot: Callable[[], bytes],
                 effect: Callable[[Any, bytes], Any], done_ok: Callable[[Any], tuple[bool, str]]):
        self.node = node
        self.snapshot = snapshot
        self.effect = effect
        self.done_ok = done_ok
        self.writing = False
        self.waiting: list[Done] = []
        self.last_ok = True  # did the last write succeed (nothing written yet: the disk has it all)

    @property
    def idle(self) -> bool:
        """The state as of the last request is durable: no write running, waiting or failed."""
        return not self.writing and not self.waiting and self.last_ok

    def request(self, on_done: Done) -> None:
        self.waiting.append(on_done)
        if not self.writing:
            self._write()

    def _write(self) -> None:
        waiters, self.waiting = self.waiting, []
        self.writing = True
        blob = self.snapshot()

        def written(now: float, completion: Any) -> None:
            self.writing = False
            ok, error = self.done_ok(completion)
            self.last_ok = ok
            for on_done in waiters:
                on_done(now, ok, error)
            if self.waiting and not self.writing:
                self._write()

        self.node.local(lambda tag: self.effect(tag, blob), written)


def restore_catalog(data: bytes | None) -> tuple[Catalog, str]:
    """The catalog a node boots with from its catalog file, and what was wrong with the
    file ("" if nothing). A rotten file is not fatal: every node holds the whole catalog,
    so the node starts empty and catches up from its peers; the shell moves the file
    aside and says so."""
    if data is None:
        return Catalog(), ""
    try:
        return Catalog.decode(unseal(data, "the catalog file")), ""
    except FormatError as err:
        return Catalog(), str(err)


def restore_counters(data: bytes | None) -> dict[str, int]:
    """The version counters a node reserved, from its counters file. Unlike the catalog,
    they exist nowhere else, and without them a version id could be handed out twice: a
    rotten file raises FormatError, and the node must not start."""
    if data is None:
        return {}
    return decode_counters(unseal(data, "the counters file"))
