"""``peerstore verify [NAME[@V]]``: check checkpoints end to end, through any node.

The coordinator resolves the versions to check (one, or every live one), loads their
manifests, asks every live node which of their pieces it holds (``QueryPieces``), then
asks each holder to re-read and hash its own copies (``VerifyPieces``, at most
``MAX_VERIFY_IDS`` per request, one request per holder at a time, each with a deadline
that grows with the bytes it asks to re-read). A holder that finds a copy corrupt
quarantines it and asks for its repair, exactly as its scrub would. The verdict per
checkpoint comes from ``core/checkup.py``. Progress (bytes re-read so far) is reported
to the client as it goes.
"""

from __future__ import annotations

from typing import Any

from peerstore.core import checkup
from peerstore.core import events as ev
from peerstore.core.context import NodeContext, Operation
from peerstore.core.integrity import bit
from peerstore.core.manifests import fetch_manifests
from peerstore.errors import FormatError
from peerstore.model.catalog import CatalogEntry, CatalogNotFound
from peerstore.model.manifest import Manifest
from peerstore.wire import messages as msg

VERIFY_MIN_RATE = 4e6  # bytes/s a holder re-reads at least (a slow SD card, busy): sets deadlines
PROGRESS_EVERY = 0.5  # seconds between progress replies


def verify_timeout(base: float, nbytes: int) -> float:
    """How long a holder may take to re-read ``nbytes`` and answer."""
    return base + nbytes / VERIFY_MIN_RATE


class VerifyOperation(Operation):
    def __init__(self, node: NodeContext, op_id: int, cmd: ev.VerifyCommand):
        super().__init__(node, op_id, cmd.client)
        self.spec = cmd.spec
        self.entries: list[CatalogEntry] = []
        self.manifests: dict[bytes, Manifest | None] = {}
        self.sizes: dict[bytes, int] = {}
        self.holders: dict[bytes, set[str]] = {}
        self.verdicts: dict[tuple[str, bytes], str] = {}
        self.silent: set[str] = set()  # alive, but did not answer the inventory query
        self.work: dict[str, list[bytes]] = {}  # per holder: pieces still to re-read
        self.busy: set[str] = set()  # holders with a request outstanding
        self.total = 0
        self.done = 0
        self.last_progress = float("-inf")

    # -- what to check -------------------------------------------------------------------

    def start(self, now: float) -> None:
        self._resolve(now, refreshed=False)

    def _resolve(self, now: float, refreshed: bool) -> None:
        if self.finished:
            return
        catalog = self.node.catalog
        if self.spec is None:
            self.entries = sorted((e for name in catalog.names() for e in catalog.live_versions(name)),
                                  key=lambda e: (e.name, e.version))
            self._next_manifest(now)
            return
        try:
            self.entries = [catalog.resolve(self.spec)]
        except (CatalogNotFound, FormatError) as err:
            if refreshed or isinstance(err, FormatError):
                self.finish(ev.Failed(str(err)))
            else:  # this node may have just come back: catch up once, then look again
                self.node.refresh_catalog(now, lambda t, acks: self._resolve(t, refreshed=True))
            return
        self._next_manifest(now)

    def _next_manifest(self, now: float) -> None:
        fetch_manifests(self.node, now, [e.manifest_id for e in self.entries], self.manifests, self._query,
                        wanted=lambda: not self.finished)

    # -- who holds what ------------------------------------------------------------------

    def _query(self, now: float) -> None:
        for manifest in self.manifests.values():
            if manifest is None:
                continue
            for _, _, stripe in manifest.iter_stripes():
                for position, pid in enumerate(stripe.piece_ids):
                    size = stripe.data_lengths[position] if position < stripe.k else stripe.block_size
                    self.sizes[pid] = max(size, self.sizes.get(pid, 0))
        ids = sorted(self.sizes)
        me = self.node.node_id
        for pid in ids:
            self.holders[pid] = {me} if pid in self.node.inventory else set()
        peers = sorted(self.node.alive - {me})
        chunks = [tuple(ids[i: i + msg.MAX_QUERY_IDS]) for i in range(0, len(ids), msg.MAX_QUERY_IDS)]
        waiting = {"n": len(peers) * len(chunks)}
        if not waiting["n"]:
            self._verify(now)
            return

        def answered(t: float, peer: str, chunk: tuple[bytes, ...], reply: Any) -> None:
            if isinstance(reply, msg.PiecesHeld):
                for i, pid in enumerate(chunk):
                    if bit(reply.held, i):
                        self.holders[pid].add(peer)
            else:
                self.silent.add(peer)
            waiting["n"] -= 1
            if waiting["n"] == 0:
                self._verify(t)

        for peer in peers:
            for chunk in chunks:
                self.node.request(
                    now, peer, lambda req, chunk=chunk: msg.QueryPieces(req, piece_ids=chunk),
                    lambda t, reply, payload, peer=peer, chunk=chunk: answered(t, peer, chunk, reply),
                    lambda t, why, peer=peer, chunk=chunk: answered(t, peer, chunk, None),
                )

    # -- re-reading every copy -----------------------------------------------------------

    def _verify(self, now: float) -> None:
        if self.finished:
            return
        for pid, nodes in sorted(self.holders.items()):
            for node in sorted(nodes):
                self.work.setdefault(node, []).append(pid)
                self.total += self.sizes.get(pid, 0)
        self._progress(now, force=True)
        self._pump(now)

    def _pump(self, now: float) -> None:
        if self.finished:
            return
        for holder in sorted(self.work):
            if holder not in self.busy and self.work[holder]:
                self._ask(now, holder)
        if not self.busy:
            self._report()

    def _ask(self, now: float, holder: str) -> None:
        queue = self.work[holder]
        chunk = tuple(queue[: msg.MAX_VERIFY_IDS])
        del queue[: len(chunk)]
        self.busy.add(holder)
        nbytes = sum(self.sizes.get(pid, 0) for pid in chunk)
        if holder == self.node.node_id:
            self.node.integrity.check_own(now, chunk, lambda t, verdicts: self._answered(t, holder, chunk, verdicts))
            return

        def replied(t: float, reply: Any, payload: Any) -> None:
            if not isinstance(reply, msg.PiecesVerified) or reply.busy:  # busy: counted as silent
                self._answered(t, holder, chunk, {})
                return
            self._answered(t, holder, chunk, {
                pid: checkup.OK if bit(reply.ok, i) else checkup.CORRUPT if bit(reply.held, i) else checkup.GONE
                for i, pid in enumerate(chunk)
            })

        self.node.request(
            now, holder, lambda req: msg.VerifyPieces(req, piece_ids=chunk), replied,
            lambda t, why: self._answered(t, holder, chunk, {}),
            timeout=verify_timeout(self.node.settings.request_timeout, nbytes),
        )

    def _answered(self, now: float, holder: str, chunk: tuple[bytes, ...], verdicts: dict[bytes, str]) -> None:
        """A holder's answer about ``chunk``; pieces it did not answer for stay UNCHECKED,
        and a holder that failed one request is not asked again (it is slow or gone)."""
        self.busy.discard(holder)
        for pid in chunk:
            self.verdicts[(holder, pid)] = verdicts.get(pid, checkup.UNCHECKED)
            self.done += self.sizes.get(pid, 0)
        if not verdicts:
            for pid in self.work.pop(holder, []):
                self.verdicts[(holder, pid)] = checkup.UNCHECKED
                self.done += self.sizes.get(pid, 0)
        self._progress(now)
        self._pump(now)

    def _progress(self, now: float, force: bool = False) -> None:
        if force or now - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = now
            self.reply(ev.Progress(self.done, self.total))

    # -- the verdict ---------------------------------------------------------------------

    def _report(self) -> None:
        if self.finished:
            return
        alive = sorted(self.node.alive)
        checks = [
            checkup.assess(e, self.manifests.get(e.manifest_id), self.holders, self.verdicts,
                           alive=alive, sizes=self.sizes)
            for e in self.entries
        ]
        reread = [(n, pid) for (n, pid), v in self.verdicts.items() if v != checkup.UNCHECKED]
        self.finish(ev.VerifyDone(verify_report(
            self.node.node_id, alive, sorted(self.silent), checks,
            copies=len(reread), nbytes=sum(self.sizes.get(pid, 0) for _, pid in reread))))


def verify_report(node_id: str, alive: list[str], silent: list[str], checks: list[checkup.CheckpointCheck],
                  *, copies: int, nbytes: int) -> dict[str, Any]:
    """The plain-data report the client prints (``peerstore.cli.verify_report``):
    ``copies`` piece copies of ``nbytes`` bytes were re-read by their holders."""
    return {
        "ok": not silent and all(c.ok for c in checks),
        "node_id": node_id,
        "members": alive,
        "silent": silent,
        "checked": {"checkpoints": len(checks), "copies": copies, "bytes": nbytes},
        "checkpoints": [c.as_dict() for c in checks],
    }
