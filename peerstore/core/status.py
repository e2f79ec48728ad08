"""``status``: every live checkpoint with its tolerance *now*, from real inventories.

Tolerance is computed over the nodes that actually hold each piece, as reported by every
live node (QueryPieces), not over the placement hint in the manifest. Every live node is
also asked for its report about itself (ReportNode: its last scrub result, ...), at the
same time.

Status answers promptly: every request it makes waits at most ``settings.status_timeout``
(a fixed deadline, a timer like every other in the core). A member that does not answer
by then (frozen, or unreachable but not yet declared dead by gossip) is not asked again
within this status, and is named in ``Status.unanswered``: its report is missing and the
pieces it holds are not counted, so tolerance may read lower than it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from peerstore.model import placement
from peerstore.core import events as ev
from peerstore.core.manifests import fetch_manifests
from peerstore.core.context import NodeContext, Operation
from peerstore.core.node_report import decode_report
from peerstore.core.repair import health, stripes_of
from peerstore.model.catalog import CatalogEntry
from peerstore.model.manifest import Manifest
from peerstore.wire import messages as msg


class StatusOperation(Operation):
    def __init__(self, node: NodeContext, op_id: int, client: Any):
        super().__init__(node, op_id, client)
        self.entries: list[CatalogEntry] = [
            e for name in node.catalog.names() for e in node.catalog.live_versions(name)
        ]
        self.manifests: dict[bytes, Manifest | None] = {}
        self.holders: dict[bytes, set[str]] = {}
        self.queries_left = 0
        self.reports: dict[str, dict[str, Any] | None] = {}
        self.reports_left = 0
        self.result: ev.Status | None = None  # ready, waiting for the last node reports
        self.bound = node.settings.status_timeout
        self.unanswered: dict[str, str] = {}  # peer -> "timeout" / "unreachable"

    def start(self, now: float) -> None:
        self._ask_reports(now)
        self._next_manifest(now)

    def _ask_reports(self, now: float) -> None:
        self.reports[self.node.node_id] = self.node.node_report(now)
        peers = sorted(self.node.alive - {self.node.node_id})
        self.reports_left = len(peers)

        def answered(peer: str, reply: Any) -> None:
            self.reports[peer] = decode_report(reply.blob) if isinstance(reply, msg.NodeReport) else None
            self.reports_left -= 1
            self._finish_when_ready()

        for peer in peers:
            self.node.request(
                now, peer, lambda req: msg.ReportNode(req),
                lambda t, reply, payload, peer=peer: answered(peer, reply),
                lambda t, why, peer=peer: (self._no_answer(peer, why), answered(peer, None)),
                timeout=self.bound,
            )

    def _no_answer(self, peer: str, why: str) -> None:
        self.unanswered.setdefault(peer, why)

    def _next_manifest(self, now: float) -> None:
        fetch_manifests(self.node, now, [e.manifest_id for e in self.entries], self.manifests, self._query,
                        timeout=self.bound)

    def _query(self, now: float) -> None:
        ids = sorted({pid for m in self.manifests.values() if m for pid in m.piece_ids()})
        for pid in ids:
            self.holders[pid] = {self.node.node_id} if pid in self.node.inventory else set()
        chunks = [tuple(ids[i: i + msg.MAX_QUERY_IDS]) for i in range(0, len(ids), msg.MAX_QUERY_IDS)]
        self.queries_left = len(chunks)
        if not chunks:
            self._report()
            return
        # A member that already let a request run out is not waited for twice.
        peers = sorted(self.node.alive - {self.node.node_id} - set(self.unanswered))
        for chunk in chunks:
            waiting = {"n": len(peers)}

            def answered(t: float, peer: str, reply: Any, chunk: tuple[bytes, ...] = chunk,
                         waiting: dict = waiting) -> None:
                if isinstance(reply, msg.PiecesHeld):
                    for i, pid in enumerate(chunk):
                        if i // 8 < len(reply.held) and reply.held[i // 8] >> (i % 8) & 1:
                            self.holders[pid].add(peer)
                waiting["n"] -= 1
                if waiting["n"] == 0:
                    self._chunk_done()

            if not peers:
                self._chunk_done()
            for peer in peers:
                self.node.request(
                    now, peer, lambda req, chunk=chunk: msg.QueryPieces(req, piece_ids=chunk),
                    lambda t, reply, payload, peer=peer, answered=answered: answered(t, peer, reply),
                    lambda t, why, peer=peer, answered=answered: (self._no_answer(peer, why),
                                                                  answered(t, peer, None)),
                    timeout=self.bound,
                )

    def _chunk_done(self) -> None:
        self.queries_left -= 1
        if self.queries_left == 0:
            self._report()

    def _report(self) -> None:
        rows = []
        stripes = {mid: stripes_of(m, mid) for mid, m in self.manifests.items() if m is not None}
        against_policy = health(stripes, self.holders, self.node.alive)
        for entry in self.entries:
            manifest = self.manifests.get(entry.manifest_id)
            if manifest is None:
                rows.append(ev.CheckpointStatus(entry, pieces=0, tolerance=-1))
                continue
            tolerance = placement.checkpoint_tolerance(
                (
                    ([frozenset(self.holders.get(pid, ())) for pid in stripe.piece_ids], stripe.k)
                    for _, _, stripe in manifest.iter_stripes()
                ),
                empty=len(self.node.alive) - 1,
            )
            policy = against_policy[entry.manifest_id]
            rows.append(ev.CheckpointStatus(entry, pieces=len(manifest.piece_ids()), tolerance=tolerance,
                                            best=policy.best, below_policy=policy.below_policy,
                                            repair_bytes=policy.repair_bytes))
        self.result = ev.Status(self.node.node_id, tuple(sorted(self.node.alive)), tuple(rows),
                                conflicts=tuple(self.node.catalog.conflicts()),
                                repair_bytes_left=sum(h.repair_bytes for h in against_policy.values()))
        self._finish_when_ready()

    def _finish_when_ready(self) -> None:
        if self.result is not None and self.reports_left == 0 and not self.finished:
            nodes = tuple(sorted(self.reports.items()))
            # Every node repairs the stripes it owns: the cluster's rate is the sum of theirs.
            rate = sum(float(r["repair"].get("rate") or 0) for _, r in nodes
                       if r and isinstance(r.get("repair"), dict))
            left = self.result.repair_bytes_left
            eta = left / rate if rate > 0 and left else None
            unanswered = tuple(sorted(self.unanswered.items()))
            self.finish(dataclasses.replace(self.result, nodes=nodes, repair_rate=rate, repair_eta=eta,
                                            unanswered=unanswered))
