"""What ``peerstore verify`` prints: the node's verify report as text, and its exit code.

The report is the plain dict the node sends (``VerifyDone`` on the wire, see
``peerstore.core.checkup`` for the per-checkpoint fields); ``--json`` prints it as is.
"""

from __future__ import annotations

from typing import Any

from peerstore.shell.client.progress import human_size

EXIT_ALL_WELL = 0
EXIT_PROBLEMS = 1
MAX_LINES_PER_CHECKPOINT = 50  # problems shown per checkpoint in text; --json has them all


def exit_code(report: dict[str, Any]) -> int:
    """0 when every checked checkpoint is well and every node answered, 1 otherwise."""
    return EXIT_ALL_WELL if report.get("ok") is True else EXIT_PROBLEMS


def format_report(report: dict[str, Any], where: str) -> str:
    checkpoints = [c for c in report.get("checkpoints") or [] if isinstance(c, dict)]
    checked = report.get("checked") if isinstance(report.get("checked"), dict) else {}
    members = report.get("members") or []
    copies, nbytes = _int(checked.get("copies")), _int(checked.get("bytes"))
    lines = [f"verified {len(checkpoints)} checkpoint version(s) through {where}: {copies} piece "
             f"cop{'y' if copies == 1 else 'ies'} ({human_size(nbytes)}) re-read and hashed by their "
             f"holders on {len(members)} live node(s)"]
    silent = [str(n) for n in report.get("silent") or []]
    if silent:
        lines.append(f"NOT CHECKED: {', '.join(n[:8] for n in silent)} did not answer, so the pieces "
                     "they hold were not counted; run verify again once they answer")
    if not checkpoints:
        lines.append("no checkpoints stored")
    width = max((len(_label(c)) for c in checkpoints), default=0)
    for c in checkpoints:
        problems = [p for p in c.get("problems") or [] if isinstance(p, dict)]
        more = _int(c.get("more_problems"))
        state = "ok" if c.get("ok") else f"{len(problems) + more} problem(s)"
        lines.append(f"{_label(c).ljust(width)}  {state:<14} tolerance {_tolerance(c.get('tolerance_now'))} "
                     f"(at put {c.get('tolerance_reported', '?')}), {c.get('copies_ok', '?')} of "
                     f"{c.get('copies_expected', '?')} copies intact")
        for p in problems[:MAX_LINES_PER_CHECKPOINT]:
            lines.append(f"  {str(p.get('kind', '?')).upper()}: {p.get('detail', '')}")
            lines.append(f"    repair: {p.get('repair', '')}")
        hidden = len(problems) - MAX_LINES_PER_CHECKPOINT
        if hidden > 0 or more:
            lines.append(f"  ... and {max(hidden, 0) + more} more (see --json)")
    bad = [c for c in checkpoints if not c.get("ok")]
    if report.get("ok") is True:
        lines.append("all well")
    elif bad or silent:
        lines.append(f"{len(bad)} checkpoint version(s) with problems. Corrupt copies are already in "
                     "quarantine and repair re-creates them by itself (see 'peerstore status'); run "
                     "'peerstore verify' again to confirm")
    return "\n".join(lines)


def _label(c: dict[str, Any]) -> str:
    return f"{c.get('name', '?')}@{c.get('version', '?')}"


def _tolerance(value: Any) -> str:
    return "LOST" if value == -1 else str(value) if isinstance(value, int) else "?"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def format_scrub(nodes: list[Any]) -> list[str]:
    """The scrub part of `peerstore status`: each node's last scrub result."""
    rows, notes = [], []
    periods = set()
    for node in nodes:
        if not isinstance(node, dict):
            continue
        name = str(node.get("id", "?"))[:8]
        report = node.get("report")
        scrub = report.get("scrub") if isinstance(report, dict) else None
        if not isinstance(scrub, dict):
            rows.append([name, "no answer", "-", "-", "-"])
            continue
        if not scrub.get("enabled"):
            rows.append([name, "off (scrub.period: 0)", "-", "-", "-"])
            continue
        periods.add(scrub.get("period"))
        age, last_bad = scrub.get("last_pass_age"), scrub.get("last_pass_corrupt")
        last = "none finished yet" if not isinstance(age, (int, float)) else \
            f"{_ago(age)} ago, {last_bad if isinstance(last_bad, int) else '?'} corrupt"
        done, total = _int(scrub.get("pass_done")), _int(scrub.get("pass_total"))
        rows.append([name, last, str(_int(scrub.get("corrupt_found"))), f"{done} of {total} pieces",
                     f"{_int(scrub.get('rate')) / 1e6:.2f} MB/s"])
        if _int(scrub.get("corrupt_found")):
            latest = [str(p)[:16] for p in scrub.get("recent_corrupt") or []][-3:]
            notes.append(f"scrub on {name} found {_int(scrub.get('corrupt_found'))} corrupt piece(s) since it "
                         f"started (latest {', '.join(latest) or '?'}): quarantined and re-created from the "
                         "other copies; check that disk (SMART, dmesg)")
        if scrub.get("behind"):
            notes.append(f"scrub on {name} cannot re-read all its pieces within scrub.period at "
                         "scrub.max_bytes_per_second: a pass takes longer (raise the rate or the period)")
    if not rows:
        return []
    every = ", ".join(_ago(p) for p in sorted(p for p in periods if isinstance(p, (int, float))))
    lines = [f"scrub (every piece re-read once every {every or '?'}):"]
    widths = [max(len(r[i]) for r in rows + [_SCRUB_HEADERS]) for i in range(len(_SCRUB_HEADERS))]
    for row in [_SCRUB_HEADERS, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return lines + notes


_SCRUB_HEADERS = ["NODE", "LAST PASS", "CORRUPT FOUND", "THIS PASS", "RATE"]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
