"""Scrub and verify scenarios (issue 12, bit rot): registered with the others in
``sim.scenarios.SCENARIOS`` when this module is imported (``sim.chaos`` does).

``scrub-finds-rot``: bits flip in stored pieces, once and then now and again while the
cluster runs. Every rotten copy must be found by the holder's own scrub within one scrub
period (plus a read's pacing), be quarantined, and be re-created, so that afterwards every
piece of every committed checkpoint has its policy's copies genuine on disk again and
``verify`` through any node reports all well. No get may fail meanwhile.
"""

from __future__ import annotations

from typing import Any

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from sim.clients import ClientRecord
from sim.content import TrainingRun
from sim.scenarios import Run, scenario

PERIOD = 600.0  # the scenario's scrub.period (virtual seconds)
SHARD = 256 * 1024
NOTE_PREFIX = "scrub:"


def scrub_settings(period: float = PERIOD, shard: int = SHARD) -> CoreSettings:
    return CoreSettings(policy=Policy(shard_size=shard), scrub_period=period)


def verify(r: Run, via: str | None = None, spec: str | None = None) -> ClientRecord:
    """``peerstore verify [spec]`` through ``via``; the record's final reply is VerifyDone."""
    client = r.cluster.command(via or r.pick(), lambda c: ev.VerifyCommand(c, spec), "verify")
    r.report.operations += 1
    record = r.cluster.clients[client]
    r.wait(record)
    return record


def report_of(record: ClientRecord) -> dict[str, Any] | None:
    return record.final.report if isinstance(record.final, ev.VerifyDone) else None


def short_copies(r: Run, committed: list[ClientRecord]) -> list[str]:
    """What keeps committed checkpoints below their policy on the running disks: pieces
    with fewer genuine copies than the policy asks (two per data shard, one per parity
    chunk), and a tolerance over genuine copies below the one reported at put."""
    cluster, out = r.cluster, []
    running = [cluster.nodes[i] for i in cluster.running_ids()]
    for put in committed:
        manifest = cluster.find_manifest(put.final.manifest_id)
        if manifest is None:
            out.append(f"{put.name}: no manifest")
            continue
        tolerance = cluster.durable_tolerance(manifest, cluster.running_ids())
        if tolerance < put.final.tolerance:
            out.append(f"{put.name}: tolerance {tolerance} < {put.final.tolerance} at put")
        for _, index, stripe in manifest.iter_stripes():
            for position, pid in enumerate(stripe.piece_ids):
                need = manifest.policy.replicas if position < stripe.k else 1
                have = sum(1 for n in running if n.disk.genuine(pid))
                if have < need:
                    out.append(f"{put.name} stripe {index} position {position}: {have} of {need}")
    return out


def rot_one(r: Run, committed: list[ClientRecord], rotted: dict[tuple[str, bytes], float]) -> None:
    """Flip bits in one genuine copy of a committed piece, at most one rotten copy per
    stripe at a time, so the piece can always be re-created."""
    cluster = r.cluster
    put = r.rng.choice(committed)
    manifest = cluster.find_manifest(put.final.manifest_id)
    if manifest is None:
        return
    _, _, stripe = r.rng.choice(list(manifest.iter_stripes()))
    if any(pid in stripe.piece_ids for _, pid in cluster.corrupted):
        return
    pid = r.rng.choice(stripe.piece_ids)
    holders = [i for i in cluster.holders(pid) if cluster.nodes[i].disk.genuine(pid) and cluster.nodes[i].running]
    if holders:
        node = r.rng.choice(holders)
        cluster.corrupt(node, pid)
        rotted[(node, pid)] = cluster.loop.now


@scenario(nodes=5, settings=scrub_settings())
def scrub_finds_rot(r: Run) -> None:
    """Bits flip in stored pieces, a batch at once and more while the cluster runs (at
    most one rotten copy per stripe). Each holder's scrub finds its rotten copies within
    a scrub period, quarantines them and has them re-created; then every piece has its
    policy's genuine copies again, verify through any node reports all well, and gets
    stay exact throughout."""
    cluster = r.cluster
    training = TrainingRun(r.rng, r.checkpoint)
    committed = [p for p in (r.put(files=training.next()) for _ in range(r.rng.randint(2, 4))) if p.ok]
    r.expect(bool(committed), "every put failed on a healthy cluster")
    if not committed:
        return
    rotted: dict[tuple[str, bytes], float] = {}
    for _ in range(r.rng.randint(2, 6)):
        rot_one(r, committed, rotted)
    found_at: dict[tuple[str, bytes], float] = {}

    def note_found() -> bool:
        for key in rotted:
            if key not in found_at and key not in cluster.corrupted:
                found_at[key] = cluster.loop.now
        return False

    end = cluster.loop.now + PERIOD
    while cluster.loop.now < end:  # more rot now and then; a get through the rot
        cluster.run_until(note_found, max_time=r.rng.uniform(20, 120), step=1.0)
        roll = r.rng.random()
        if roll < 0.3:
            rot_one(r, committed, rotted)
        elif roll < 0.5:
            put = r.rng.choice(committed)
            r.expect_get(put.name, "a get while pieces rot and scrub repairs them")
    last_rot = max(rotted.values(), default=cluster.loop.now)
    # Every rotten copy is found within one period of its rot, plus slack for the pace
    # of reads and the repair that follows.
    deadline = last_rot + PERIOD * 1.2
    cluster.run_until(lambda: (note_found(), not (set(rotted) - set(found_at)))[1],
                      max_time=max(0.0, deadline - cluster.loop.now) + 1.0, step=1.0)
    late = {k: found_at.get(k, cluster.loop.now) - t for k, t in rotted.items()
            if found_at.get(k, float("inf")) - t > PERIOD * 1.2}
    r.expect(not late, f"rot not found within 1.2 scrub periods: {[(n[:4], p.hex()[:8]) for n, p in late]}")
    scrubbed = sum(cluster.nodes[i].core.integrity.scrubber.corrupt_found for i in cluster.running_ids()
                   if cluster.nodes[i].core is not None)
    r.expect(scrubbed + _found_otherwise(r) >= len(rotted),
             f"{len(rotted)} copies rotted but scrub (or a get) reported only {scrubbed}")
    restored = cluster.run_until(lambda: not short_copies(r, committed), max_time=PERIOD, step=1.0)
    r.expect(restored, f"pieces still short of their copies after scrub and repair: {short_copies(r, committed)[:5]}")
    record = verify(r)
    report = report_of(record)
    r.expect(report is not None and report["ok"],
             f"verify after repair is not all well: {record.final if report is None else _problems(report)}")
    detect = [found_at[k] - t for k, t in rotted.items() if k in found_at]
    r.note(f"{NOTE_PREFIX} rotted={len(rotted)} found={len(found_at)} "
           f"max_detect={max(detect, default=0):.0f}s period={PERIOD:g}")
    for put in committed:
        r.expect_get(put.name, "after scrub found and repair replaced the rotten copies")


def _found_otherwise(r: Run) -> int:
    """Rotten copies a get, a verify or rebalance found first (they take the same path), or
    that rebalance dropped as surplus before anyone re-read them (the rot went with them)."""
    cores = [r.cluster.nodes[i].core for i in r.cluster.running_ids() if r.cluster.nodes[i].core is not None]
    return r.cluster.rot_dropped + sum(c.stats["corrupt_found_by_get"] + c.stats["corrupt_found_by_verify"]
                                       + c.stats["corrupt_found_by_rebalance"] for c in cores)


def _problems(report: dict[str, Any]) -> list[str]:
    return [f"{c['name']}@{c['version']}: {p['kind']} {p['detail']}"
            for c in report["checkpoints"] for p in c["problems"]][:5] + [f"silent: {report['silent']}"]
