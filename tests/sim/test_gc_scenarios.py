"""Garbage collection in the simulator: the scenarios pass on fresh seeds, and the checks
behind them catch a collector that ignores leases or references."""

from __future__ import annotations

import pytest

from peerstore.core import gc
from peerstore.core.node import NodeCore
from sim import gc_scenarios  # noqa: F401 - registers the scenarios
from sim.scenarios import SCENARIOS, run

SEEDS = range(700, 706)


@pytest.mark.parametrize("name", ["gc-vs-concurrent-put", "rm-frees-space"])
def test_gc_scenarios_hold_their_invariants(name):
    assert name in SCENARIOS
    for seed in SEEDS:
        result = run(name, seed)
        assert result.ok, (result.reproduce, result.violations)


def test_the_scenarios_really_free_space():
    result = run("gc-vs-concurrent-put", SEEDS[0])
    freed = [n for n in result.notes if n.startswith(gc_scenarios.NOTE_PREFIX)]
    assert freed and " 0 bytes freed" not in freed[0], result.notes


class IgnoresLeases(NodeCore):
    """Bug: GC takes pieces whose lease is still running (a put in progress holds them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gc.leases.protected = lambda pid, now: False


def test_a_collector_that_ignores_leases_is_caught():
    results = [run("gc-vs-concurrent-put", seed, core_class=IgnoresLeases) for seed in SEEDS]
    caught = [r for r in results if any("not durable" in v or "tolerance" in v or "GC on" in v
                                        for v in r.violations)]
    assert len(caught) >= len(results) - 1, [(r.seed, r.violations[:2]) for r in results]


def test_the_shell_check_catches_gc_deleting_a_live_versions_pieces(monkeypatch):
    # Every node's collector plans as if nothing were referenced: the shell's check on the
    # DeletePieces effect must say so the moment a live version's piece is chosen.
    monkeypatch.setattr(gc, "plan_deletions", _ignore_references(gc.plan_deletions))
    result = run("rm-frees-space", SEEDS[0])
    assert any("GC on" in v and "live version" in v for v in result.violations), result.violations


def _ignore_references(planned):
    def plan(inventory, referenced, leases, now, **kw):
        return planned(inventory, frozenset(), leases, now, **kw)

    return plan
