"""One node's report about itself for ``status``: a small msgpack map, one key per subsystem.

``status`` asks every live node (``ReportNode``) and shows each answer. ``"scrub"`` is the
last scrub result; other subsystems add their own key (e.g. bytes awaiting GC, repair
progress). Decoding is strict and bounded: the map comes from another node.
"""

from __future__ import annotations

from typing import Any

from peerstore.core.scrub import ScrubSummary
from peerstore.errors import FormatError
from peerstore.model.codec import pack, unpack

MAX_REPORT_BYTES = 64 * 1024
MAX_DEPTH = 4  # the map, a subsystem's map, and two more levels inside it


def scrub_section(summary: ScrubSummary) -> dict[str, Any]:
    """The ``"scrub"`` key: plain numbers, seconds relative to the report's moment."""
    last = summary.last_pass
    return {
        "enabled": summary.enabled,
        "period": summary.period,
        "rate": round(summary.rate),
        "behind": summary.behind,
        "passes": summary.passes,
        "pieces_checked": summary.pieces_checked,
        "bytes_checked": summary.bytes_checked,
        "corrupt_found": summary.corrupt_found,
        "pass_done": summary.pass_done,
        "pass_total": summary.pass_total,
        "last_pass_age": None if last is None else summary.at - last.finished,
        "overdue_age": summary.overdue_age,
        "last_pass_seconds": None if last is None else last.finished - last.started,
        "last_pass_pieces": None if last is None else last.pieces,
        "last_pass_corrupt": None if last is None else last.corrupt,
        "recent_corrupt": [p.hex() for p in summary.recent_corrupt],
    }


def encode_report(report: dict[str, Any]) -> bytes:
    """The report as sent; a report that cannot be encoded within the bound (a bug in some
    subsystem's section) is replaced by one that says so, never an exception in the core."""
    try:
        blob = pack(report)
    except FormatError as err:
        return pack({"error": f"this node's report could not be encoded: {err}"[:500]})
    if len(blob) > MAX_REPORT_BYTES or decode_report(blob) is None:
        return pack({"error": f"this node's report ({len(blob)} bytes) exceeds the bounds of a node report"})
    return blob


def decode_report(blob: bytes) -> dict[str, Any] | None:
    """The report map, or None if it is malformed (the node is then shown without one)."""
    try:
        doc = unpack(blob, "node report", max_bytes=MAX_REPORT_BYTES, max_str=4096, max_bin=4096,
                     max_array=1024, max_map=256, use_list=True)
    except FormatError:
        return None
    return doc if isinstance(doc, dict) and _plain(doc, 0) else None


def _plain(value: Any, depth: int) -> bool:
    """Only maps with string keys, lists, strings, numbers, booleans and None, not too deep."""
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))
