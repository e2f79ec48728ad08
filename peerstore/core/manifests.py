"""Find a manifest: from the local store first, then from live peers one at a time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

from peerstore.core import events as ev
from peerstore.ec import piece_id
from peerstore.errors import FormatError
from peerstore.model.manifest import Manifest
from peerstore.wire import messages as msg

if TYPE_CHECKING:
    from peerstore.core.messenger import Messenger


class ManifestFetch:
    """Load and verify manifest ``manifest_id``; ``on_done(now, manifest or None)``.

    A copy whose hash does not match, or that does not decode, is skipped like a
    missing one. Peers are asked in a random order so one slow node is not everyone's
    first choice."""

    def __init__(self, node: "Messenger", manifest_id: bytes,
                 on_done: Callable[[float, Manifest | None], None], timeout: float | None = None):
        self.node = node
        self.timeout = timeout  # per peer asked (None: the messenger's default)
        self.manifest_id = manifest_id
        self.on_done = on_done
        self.sources: list[str] | None = None

    def start(self) -> None:
        self.node.local(
            lambda tag: ev.LoadManifest(tag, self.manifest_id),
            lambda t, done: self._got(t, done.blob),
        )

    def _got(self, now: float, blob: bytes | None) -> None:
        if blob is not None and piece_id(blob) == self.manifest_id:
            try:
                manifest = Manifest.decode(blob)
            except FormatError:
                pass
            else:
                self.on_done(now, manifest)
                return
        if self.sources is None:
            self.sources = sorted(self.node.alive - {self.node.node_id})
            self.node.rng.shuffle(self.sources)
        if not self.sources:
            self.on_done(now, None)
            return
        peer = self.sources.pop(0)
        self.node.request(
            now, peer,
            lambda req: msg.FetchManifest(req, manifest_id=self.manifest_id),
            lambda t, reply, payload: self._got(
                t, reply.blob if isinstance(reply, msg.ManifestData) and reply.found else None),
            lambda t, why: self._got(t, None), timeout=self.timeout,
        )


def fetch_manifests(node: "Messenger", now: float, manifest_ids: Iterable[bytes],
                    into: dict[bytes, Manifest | None], on_done: Callable[[float], None],
                    wanted: Callable[[], bool] = lambda: True, timeout: float | None = None) -> None:
    """Load every manifest of ``manifest_ids`` not yet in ``into``, one after another, into
    ``into`` (None for one no node could give); then ``on_done(now)``. Stops quietly once
    ``wanted()`` is false (the operation that asked has finished)."""
    missing = [mid for mid in dict.fromkeys(manifest_ids) if mid not in into]

    def next_one(now: float) -> None:
        if not wanted():
            return
        while missing and missing[0] in into:
            missing.pop(0)
        if not missing:
            on_done(now)
            return
        mid = missing.pop(0)

        def loaded(t: float, manifest: Manifest | None) -> None:
            into[mid] = manifest
            next_one(t)

        ManifestFetch(node, mid, loaded, timeout).start()

    next_one(now)
