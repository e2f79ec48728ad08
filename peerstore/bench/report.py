"""Phase results, the aims from issue 5, and the table and JSON they are shown as."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from peerstore.bench.commands import Finished

COPY_ONCE = "baseline: cp + sync"
POLICY_COPIES = "baseline: policy bytes, parallel cp + sync"

# (phase, baseline, lowest ratio) -- the aims of issue 5, checked against the same run.
RATIO_AIMS = (
    ("put", POLICY_COPIES, 0.7),
    ("get", COPY_ONCE, 0.7),
    ("get, 2 nodes down", COPY_ONCE, 0.4),
)
PEAK_RSS_AIM_MIB = 300.0
REPAIR_AIM = 0.5  # issue 12: repair bytes/s >= this x the same run's put MB/s, at the default pacing


@dataclass
class PhaseResult:
    """One measured phase. ``bytes`` are checkpoint bytes (not bytes stored), but for
    repair: the bytes it re-created."""

    phase: str
    kind: str  # "baseline", "put", "get" or "repair" (bytes re-created)
    bytes: int
    seconds: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # "nodes", "cli"/"tools", total
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)  # per node; None: down
    cli_peak_rss_mib: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the phase failed; its figures are then not results

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 and not self.error else 0.0

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_seconds.values())

    @property
    def max_peak_rss_mib(self) -> float | None:
        peaks = [v for v in self.peak_rss_mib.values() if v is not None]
        return max(peaks) if peaks else None


@dataclass
class Outcome:
    """What a phase body reports back to the meter."""

    bytes: int
    seconds: float
    commands: list[Finished] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    tool_cpu_seconds: float = 0.0  # CPU of tools run outside ``commands`` (baselines)


def ratio(result: PhaseResult, baseline: PhaseResult | None) -> float | None:
    if baseline is None or baseline.mb_s <= 0 or result.error:
        return None
    return result.mb_s / baseline.mb_s


AGAIN = " (again at end)"


def find(results: Sequence[PhaseResult], phase: str) -> PhaseResult | None:
    """The successful result of ``phase``, if any."""
    return next((r for r in results if r.phase == phase and not r.error), None)


def baseline(results: Sequence[PhaseResult], name: str) -> PhaseResult | None:
    """The faster run of baseline ``name`` (it runs before and after the cluster phases,
    and other jobs on the machine only ever slow it down), if any succeeded."""
    runs = [r for r in results if r.phase in (name, name + AGAIN) and not r.error]
    return max(runs, key=lambda r: r.mb_s, default=None)


def aims(results: Sequence[PhaseResult]) -> list[dict[str, Any]]:
    """Each aim of issue 5 this run can judge: its measured value and whether it is met."""
    out = []
    for phase, baseline_name, floor in RATIO_AIMS:
        result = find(results, phase)
        value = ratio(result, baseline(results, baseline_name)) if result else None
        if value is not None:
            out.append({"aim": f"{phase} >= {floor} x {baseline_name}", "value": round(value, 3),
                        "met": value >= floor})
    for r in results:
        value = r.extra.get("ratio_to_put")
        if r.kind == "repair" and not r.error and value is not None and r.extra.get("default_pacing"):
            out.append({"aim": f"{r.phase} >= {REPAIR_AIM} x its put", "value": value, "met": value >= REPAIR_AIM})
    peaks = [(r.phase, r.max_peak_rss_mib) for r in results
             if r.kind != "baseline" and r.max_peak_rss_mib and not r.error]
    if peaks:
        phase, worst = max(peaks, key=lambda p: p[1])
        out.append({"aim": f"peak RSS per node < {PEAK_RSS_AIM_MIB:g} MiB (worst: {phase})",
                    "value": round(worst, 1), "met": worst < PEAK_RSS_AIM_MIB})
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def phase_table(results: Sequence[PhaseResult], nodes: int) -> str:
    copy_once, policy = baseline(results, COPY_ONCE), baseline(results, POLICY_COPIES)
    headers = ["phase", "MB/s", "x cp+sync", "x policy cp", "seconds", "CPU s", "all CPU s"]
    headers += [f"n{i} MiB" for i in range(nodes)] + ["anon MiB", "CLI MiB"]
    rows = []
    for r in results:
        peaks = [r.peak_rss_mib.get(f"node-{i}") for i in range(nodes)]
        rows.append([r.phase, "FAILED" if r.error else f"{r.mb_s:.0f}",
                     _fmt(ratio(r, copy_once)), _fmt(ratio(r, policy)),
                     f"{r.seconds:.1f}", f"{r.cpu_total:.1f}", _fmt(r.extra.get("machine_cpu_seconds"), 1),
                     *(_fmt(p, 0) for p in peaks),
                     _fmt(max(anon.values(), default=None) if (anon := r.extra.get("peak_anon_mib")) else None, 0),
                     _fmt(r.cli_peak_rss_mib, 0)])
    return format_table(headers, rows)


def notes_block(results: Sequence[PhaseResult]) -> str:
    return "\n".join(f"  {r.phase}: {r.error or r.notes}" for r in results if r.notes or r.error)


def aims_block(checks: Sequence[dict[str, Any]]) -> str:
    return "\n".join(f"  [{'met' if a['met'] else 'MISSED'}] {a['aim']}: {a['value']}" for a in checks)


def phase_json(result: PhaseResult, results: Sequence[PhaseResult]) -> dict[str, Any]:
    data = asdict(result)
    data["mb_s"] = round(result.mb_s, 2)
    data["cpu_seconds"]["total"] = round(result.cpu_total, 3)
    data["ratio_to_copy_once"] = ratio(result, baseline(results, COPY_ONCE))
    data["ratio_to_policy_copies"] = ratio(result, baseline(results, POLICY_COPIES))
    return data


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["shard size", "runs", "put MB/s", "get MB/s", "put CPU s", "get CPU s", "put peak MiB",
               "get peak MiB", "pieces"]
    cells = [[r["shard_size"], str(r["runs"]), f"{r['put_mb_s']:.0f}", f"{r['get_mb_s']:.0f}",
              f"{r['put_cpu_seconds']:.1f}",
              f"{r['get_cpu_seconds']:.1f}", _fmt(r["put_peak_rss_mib"], 0), _fmt(r["get_peak_rss_mib"], 0),
              str(r["pieces"])] for r in rows]
    return format_table(headers, cells)
