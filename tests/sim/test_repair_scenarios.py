"""The self-healing scenarios (sim/repair_scenarios.py) on fresh seeds, their determinism,
and proof that they fail when the owner rule or the majority rule is broken."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import peerstore.core.rebalance as rebalance
import peerstore.core.repair as repair_plan
import peerstore.core.repairer as repairer
from peerstore.core.quorum import MembershipTracker
from sim import repair_scenarios  # noqa: F401 - registers the scenarios
from sim.scenarios import SCENARIOS, run

NAMES = ["node-loss-repair", "repair-interrupted", "flapping-around-grace", "partition-no-repair-storm",
         "join-rebalance", "return-surplus"]
FRESH = range(7100, 7106)  # seeds no one tuned the scenarios on


def test_the_scenarios_are_registered():
    assert set(NAMES) <= set(SCENARIOS)


@pytest.mark.parametrize("name", NAMES)
def test_scenario_holds_on_fresh_seeds(name):
    for seed in FRESH:
        result = run(name, seed)
        assert result.ok, f"{result.reproduce}: {result.violations}"


def test_a_run_is_a_function_of_its_seed():
    first, second = run("repair-interrupted", 7200), run("repair-interrupted", 7200)
    assert first.digest == second.digest and first.violations == second.violations


@contextlib.contextmanager
def every_node_owns_every_stripe() -> Iterator[None]:
    """The injected bug: each node believes it owns every stripe it plans or starts."""
    current: dict[str, str | None] = {"me": None}
    original_owner, planned, pump = repair_plan.owner_of, repairer.RepairService._planned, repairer.RepairService.pump

    def owner_of(stripe, alive):  # type: ignore[no-untyped-def]
        return current["me"] or original_owner(stripe, alive)

    def as_me(method):  # type: ignore[no-untyped-def]
        def wrapped(self, *args):  # type: ignore[no-untyped-def]
            current["me"] = self.node.node_id
            try:
                return method(self, *args)
            finally:
                current["me"] = None
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repair_plan, "owner_of", owner_of)
        patch.setattr(repairer, "owner_of", owner_of)
        patch.setattr(repairer.RepairService, "_planned", as_me(planned))
        patch.setattr(repairer.RepairService, "pump", as_me(pump))
        yield


def test_breaking_the_owner_rule_fails_node_loss_repair():
    with every_node_owns_every_stripe():
        results = [run("node-loss-repair", seed) for seed in FRESH[:3]]
    failed = [r for r in results if not r.ok]
    assert len(failed) == len(results), [r.violations for r in results]
    assert any("owner rule" in v for r in failed for v in r.violations)


def test_breaking_the_majority_rule_fails_partition_no_repair_storm():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MembershipTracker, "has_majority", lambda self: True)
        results = [run("partition-no-repair-storm", seed) for seed in FRESH]
    failed = [r for r in results if not r.ok]
    assert failed, "a minority that repairs went unnoticed"
    assert any("minority side" in v for r in failed for v in r.violations)


def test_a_rebalance_that_drops_copies_its_stripes_need_fails_return_surplus():
    """The injected bug: the rebalance planner takes every stripe for at policy, so it
    drops copies the stripes need; the surplus-drop invariant must catch it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rebalance, "at_policy", lambda *args: True)
        results = [run("return-surplus", seed) for seed in FRESH[:2]]
    failed = [r for r in results if not r.ok]
    assert len(failed) == len(results), [r.violations for r in results]
    assert any("rebalance on" in v and "below the policy" in v for r in failed for v in r.violations)

