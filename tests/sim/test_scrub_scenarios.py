"""Scrub and verify in the simulator: the scrub-finds-rot scenario on fresh seeds, its
determinism, verify's report on the real core, a get that meets rot, and proof that the
scenario fails when scrub or the repair request is broken."""

from __future__ import annotations

import pytest

from peerstore.core import events as ev
from peerstore.core.integrity import Integrity
from peerstore.core.scrub import Scrubber
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from sim import scrub_scenarios  # noqa: F401 - registers the scenario
from sim.cluster import Cluster
from sim.content import FileModel
from sim.scenarios import SCENARIOS, run

FRESH = range(7300, 7306)  # seeds no one tuned the scenario on
SHARD = 64 * 1024


def cluster(seed: int, scrub_period: float = 0.0) -> Cluster:
    return Cluster(5, seed, settings=CoreSettings(policy=Policy(shard_size=SHARD), scrub_period=scrub_period))


def put(c: Cluster, name: str = "run1/step-1", seed: int = 1):
    [record] = c.wait(c.put(c.ids[0], name, [FileModel.generate("m.bin", SHARD * 10 + 77, SHARD, seed=seed)]))
    assert record.ok, record.final
    return record, c.manifest_of(record)


def verify(c: Cluster, via: str, spec: str | None = None) -> dict:
    [record] = c.wait(c.command(via, lambda client: ev.VerifyCommand(client, spec), "verify"))
    assert isinstance(record.final, ev.VerifyDone), record.final
    progress = [r for r in record.replies if isinstance(r, ev.Progress)]
    assert progress and progress[-1].done <= progress[-1].total
    return record.final.report


def corrupt_problems(report: dict) -> set[tuple[str, str]]:
    return {(p["node"], p["piece_id"]) for c in report["checkpoints"] for p in c["problems"] if p["kind"] == "corrupt"}


def test_the_scenario_is_registered():
    assert "scrub-finds-rot" in SCENARIOS


def test_scrub_finds_rot_holds_on_fresh_seeds():
    for seed in FRESH:
        result = run("scrub-finds-rot", seed)
        assert result.ok, f"{result.reproduce}: {result.violations}"


def test_a_run_is_a_function_of_its_seed():
    first, second = run("scrub-finds-rot", 7400), run("scrub-finds-rot", 7400)
    assert first.digest == second.digest and first.violations == second.violations


def test_verify_names_each_rotten_copy_quarantines_it_and_after_repair_reports_all_well():
    c = cluster(21)  # scrub off: verify is what finds the rot
    record, manifest = put(c)
    report = verify(c, c.ids[2])
    assert report["ok"] and report["checked"]["checkpoints"] == 1 and report["checked"]["copies"] == 11 * 2 + 3 * 2  # 11 shards, 3 stripes
    stripes = list(manifest.iter_stripes())
    rotten = set()
    for (_, _, stripe), position in zip(stripes[:2], (1, 4)):  # a data shard copy, a parity chunk
        pid = stripe.piece_ids[position]
        node = c.holders(pid)[0]
        c.corrupt(node, pid)
        rotten.add((node, pid.hex()))
    report = verify(c, c.ids[3])
    assert not report["ok"] and corrupt_problems(report) == rotten
    check = report["checkpoints"][0]
    assert check["copies_ok"] == check["copies_expected"] - 2
    assert all("re-creates it from" in p["repair"] for p in check["problems"] if p["kind"] == "corrupt")
    assert not c.corrupted, "verify left a rotten copy in place"  # quarantined by its holder
    assert c.run_until(lambda: verify(c, c.ids[4])["ok"], max_time=300, step=10)
    assert report["checked"]["copies"] == check["copies_expected"]  # the rotten ones were re-read too


def test_verify_of_an_unknown_name_fails_and_a_silent_node_is_not_all_well():
    c = cluster(22)
    put(c)
    [record] = c.wait(c.command(c.ids[1], lambda client: ev.VerifyCommand(client, "no/such"), "verify"))
    assert isinstance(record.final, ev.Failed) and "no/such" in record.final.reason
    c.freeze(c.ids[4])  # alive to the others for a while, answers nothing
    report = verify(c, c.ids[0])
    assert not report["ok"]
    assert report["silent"] == [c.ids[4]]  # its inventory query timed out: named, not guessed


def test_a_get_that_meets_a_rotten_copy_has_it_quarantined_and_re_created():
    c = cluster(23)
    record, manifest = put(c)
    _, _, stripe = next(manifest.iter_stripes())
    pid = stripe.data_ids[0]
    for node in c.holders(pid):  # both copies: the get meets rot whichever it asks first
        c.corrupt(node, pid)
    [get] = c.wait(c.get(c.ids[3], "run1/step-1"))
    assert get.ok and get.final.fallbacks + get.final.degraded_stripes >= 1
    assert c.run_until(lambda: not c.corrupted and sum(c.nodes[i].disk.genuine(pid) for i in c.ids) >= 2,
                       max_time=300, step=5), "the rotten copy a get met was not replaced"


def test_status_carries_every_node_s_last_scrub_result():
    c = cluster(24, scrub_period=120.0)
    record, manifest = put(c)
    pid = manifest.files[0].stripes[0].data_ids[2]
    node = c.holders(pid)[0]
    c.corrupt(node, pid)
    c.run_for(300)
    [status] = c.wait(c.command(c.ids[0], lambda client: ev.StatusCommand(client), "status"))
    reports = dict(status.final.nodes)
    assert set(reports) == set(c.ids)
    assert all(r["scrub"]["passes"] >= 1 and r["scrub"]["last_pass_age"] is not None for r in reports.values())
    assert reports[node]["scrub"]["corrupt_found"] == 1 and reports[node]["scrub"]["recent_corrupt"] == [pid.hex()]


@pytest.mark.parametrize("bug, symptom", [
    ("scrub never reads", "rot not found"),
    ("nothing is re-created", "short of their copies"),
])
def test_the_scenario_fails_when_scrub_or_its_repair_request_is_broken(bug, symptom):
    with pytest.MonkeyPatch.context() as patch:
        if bug == "scrub never reads":
            patch.setattr(Scrubber, "poll", lambda self, now, inventory: None)
        else:
            patch.setattr(Integrity, "found_corrupt",
                          lambda self, now, piece, where: None)  # found, then ignored
        results = [run("scrub-finds-rot", seed) for seed in FRESH[:3]]
    assert all(not r.ok for r in results), [r.violations for r in results]
    assert any(symptom in v for r in results for v in r.violations), [r.violations for r in results]
