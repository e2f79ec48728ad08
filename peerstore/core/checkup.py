"""What ``peerstore verify`` concludes about one checkpoint, from what the nodes said.

Pure: the verify operation (``core/verify.py``) gathers the facts (the manifest, who holds
each piece by its inventory, and each holder's re-read of its own copy) and
:func:`assess` turns them into a verdict: the problems found, and for each one what repair
will do about it. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from peerstore.model import placement
from peerstore.model.catalog import CatalogEntry
from peerstore.model.manifest import Manifest

# A holder's answer about its own copy of a piece.
OK = "ok"  # re-read, hashes to its id
CORRUPT = "corrupt"  # re-read, does not: moved to quarantine, repair asked for
GONE = "gone"  # listed in its inventory a moment ago, not held any more when re-read
UNCHECKED = "unchecked"  # the holder did not answer in time
VERDICTS = (OK, CORRUPT, GONE, UNCHECKED)

MAX_PROBLEMS = 200  # listed per checkpoint; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a checkpoint, and what repair will do about it."""

    kind: str  # corrupt | missing | unchecked | no_manifest | tolerance | unreadable
    detail: str
    repair: str
    piece_id: bytes | None = None
    node: str | None = None
    file: str | None = None
    stripe: int | None = None  # global stripe index (placement order)
    position: int | None = None  # 0..k-1 data, k.. parity

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "detail": self.detail, "repair": self.repair}
        for key in ("node", "file", "stripe", "position"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.piece_id is not None:
            out["piece_id"] = self.piece_id.hex()
        return out


@dataclass(frozen=True)
class CheckpointCheck:
    """The verdict on one checkpoint version."""

    entry: CatalogEntry
    pieces: int  # distinct pieces the manifest names
    copies_expected: int  # by the policy: two of each data shard, one of each parity chunk
    copies_ok: int  # re-read and intact
    tolerance_reported: int  # at commit, as `ls` shows it
    tolerance_now: int  # over intact copies on live nodes; -1: not restorable now
    problems: tuple[Problem, ...] = ()
    more_problems: int = 0  # problems beyond MAX_PROBLEMS, not listed
    bytes: int = 0  # bytes of the intact copies re-read

    @property
    def ok(self) -> bool:
        return not self.problems and not self.more_problems

    def as_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name, "version": e.version.counter, "version_id": str(e.version),
            "manifest_id": e.manifest_id.hex(), "size": e.size, "ok": self.ok,
            "pieces": self.pieces, "copies_expected": self.copies_expected, "copies_ok": self.copies_ok,
            "tolerance_reported": self.tolerance_reported, "tolerance_now": self.tolerance_now,
            "problems": [p.as_dict() for p in self.problems], "more_problems": self.more_problems,
        }


@dataclass
class _Piece:
    """Where one distinct piece id occurs in a checkpoint, and how many copies it needs."""

    first: tuple[int, int, int]  # (file index, global stripe, position) of its first occurrence
    needed: int
    stripes: list[tuple[int, int]] = field(default_factory=list)  # (global stripe, position)


def assess(entry: CatalogEntry, manifest: Manifest | None, holders: Mapping[bytes, Collection[str]],
           verdicts: Mapping[tuple[str, bytes], str], *, alive: Collection[str],
           sizes: Mapping[bytes, int] | None = None) -> CheckpointCheck:
    """The verdict on ``entry``.

    ``holders[pid]``: the live nodes whose inventory listed ``pid``. ``verdicts[(node,
    pid)]``: that node's answer about its copy (OK, CORRUPT, GONE or UNCHECKED; a missing
    key counts as UNCHECKED). ``alive``: the members that were asked. ``sizes``: bytes
    per piece, to count the bytes re-read (optional).
    """
    if manifest is None:
        problem = Problem("no_manifest", "no live node could hand out its manifest, so its pieces were not "
                          "checked", "none: bring back the nodes that were down, then run verify again")
        return CheckpointCheck(entry, 0, 0, 0, entry.tolerance, -1, (problem,))
    pieces = _pieces(manifest)
    intact = {pid: frozenset(n for n in holders.get(pid, ()) if verdicts.get((n, pid), UNCHECKED) == OK)
              for pid in pieces}
    stripes = list(manifest.iter_stripes())
    readable = {index: _readable_positions(stripe.piece_ids, intact) for _, index, stripe in stripes}
    problems: list[Problem] = []

    for pid, where in pieces.items():
        file_index, stripe_index, position = where.first
        base = dict(piece_id=pid, file=manifest.files[file_index].path, stripe=stripe_index, position=position)
        what = _describe(stripe_index, position, stripes[stripe_index][2].k)
        by_verdict: dict[str, list[str]] = {v: [] for v in VERDICTS}
        for node in sorted(holders.get(pid, ())):
            by_verdict[verdicts.get((node, pid), UNCHECKED)].append(node)
        good = by_verdict[OK]
        source = _source(pid, good, where, readable, stripes)
        for node in by_verdict[CORRUPT]:
            problems.append(Problem(
                "corrupt", f"the copy of {what} on {_short(node)} does not match its BLAKE3 id; "
                f"it was moved to that node's quarantine", f"{_short(node)} re-creates it {source}",
                node=node, **base))
        for node in by_verdict[UNCHECKED]:
            problems.append(Problem(
                "unchecked", f"{_short(node)} holds {what} but did not answer in time",
                "none yet: run verify again once that node answers", node=node, **base))
        held = len(good) + len(by_verdict[UNCHECKED]) + len(by_verdict[CORRUPT])
        if held < where.needed:
            short = where.needed - held
            gone = f"; {', '.join(_short(n) for n in by_verdict[GONE])} removed it while verify ran" \
                if by_verdict[GONE] else ""
            problems.append(Problem(
                "missing", f"{what} has {held} of the {where.needed} copies the policy asks for on live "
                f"nodes{gone}", f"re-created on {short} other node{'s' if short > 1 else ''} {source} (for a "
                "node that is only down, after repair.grace_seconds)", **base))

    tolerance_now = placement.checkpoint_tolerance(
        (([intact[pid] for pid in stripe.piece_ids], stripe.k) for _, _, stripe in stripes),
        empty=len(alive) - 1,
    )
    if tolerance_now < 0:
        bad = sorted(i for i, count in readable.items() if count < stripes[i][2].k)
        problems.append(Problem(
            "unreadable", f"{len(bad)} stripe(s) have fewer intact pieces on live nodes than they need "
            f"(first: stripe {bad[0]}), so it cannot be restored now",
            "none until the nodes that were down come back; then run verify again"))
    elif tolerance_now < entry.tolerance:
        problems.append(Problem(
            "tolerance", f"survives {tolerance_now} more node failure(s) now; at put it survived "
            f"{entry.tolerance}", "restored by the repairs above"))

    copies_ok = sum(min(len(intact[pid]), where.needed) for pid, where in pieces.items())
    sizes = sizes or {}
    return CheckpointCheck(
        entry=entry, pieces=len(pieces), copies_expected=sum(w.needed for w in pieces.values()),
        copies_ok=copies_ok, tolerance_reported=entry.tolerance, tolerance_now=tolerance_now,
        problems=tuple(problems[:MAX_PROBLEMS]), more_problems=max(0, len(problems) - MAX_PROBLEMS),
        bytes=sum(sizes.get(pid, 0) * len(intact[pid]) for pid in pieces),
    )


def _pieces(manifest: Manifest) -> dict[bytes, _Piece]:
    """Every distinct piece id, where it first occurs, and the copies it needs: a data
    shard two (``policy.replicas``), a parity chunk one; the same bytes stored at a data
    and a parity position need the larger."""
    out: dict[bytes, _Piece] = {}
    for file_index, index, stripe in manifest.iter_stripes():
        for position, pid in enumerate(stripe.piece_ids):
            needed = manifest.policy.replicas if position < stripe.k else 1
            piece = out.get(pid)
            if piece is None:
                piece = out[pid] = _Piece((file_index, index, position), needed)
            piece.needed = max(piece.needed, needed)
            piece.stripes.append((index, position))
    return out


def _readable_positions(piece_ids: tuple[bytes, ...], intact: Mapping[bytes, frozenset[str]]) -> int:
    return sum(1 for pid in piece_ids if intact[pid])


def _source(pid: bytes, good: list[str], where: _Piece, readable: Mapping[int, int], stripes: list) -> str:
    """Where repair gets the bytes of ``pid`` from: a replica, or parity, or nowhere now."""
    if good:
        return f"from the intact copy on {_short(good[0])}"
    for index, position in where.stripes:
        k = stripes[index][2].k
        if readable[index] >= k:
            return f"from parity (stripe {index} has {readable[index]} intact pieces, {k} needed)"
    index = where.stripes[0][0]
    return (f"only when more pieces are back: no intact copy, and stripe {index} has "
            f"{readable[index]} of the {stripes[index][2].k} intact pieces a rebuild needs")


def _describe(stripe: int, position: int, k: int) -> str:
    kind = f"data shard {position}" if position < k else f"parity chunk {position - k}"
    return f"{kind} of stripe {stripe}"


def _short(node: str) -> str:
    return node[:8]
