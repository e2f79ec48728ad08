"""The verify verdict (peerstore.core.checkup.assess): problems found and what repair does."""

from __future__ import annotations

from peerstore.core.checkup import CORRUPT, GONE, OK, UNCHECKED, assess
from peerstore.model.catalog import CatalogEntry
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import Policy

NODES = [f"{i:x}" * 16 for i in range(1, 6)]  # five 16-hex node ids
A, B, C, D, E = NODES


def pid(tag: str) -> bytes:
    return tag.encode().ljust(32, b".")


def manifest(stripes: list[tuple[list[bytes], list[bytes]]], tolerance: int = 2) -> Manifest:
    entries = tuple(StripeEntry(k=len(d), p=len(p), block_size=100, data_ids=tuple(d),
                                data_lengths=(100,) * len(d), parity_ids=tuple(p)) for d, p in stripes)
    size = sum(100 * len(d) for d, _ in stripes)
    return Manifest(name="run1/step-1", version=VersionId(1, A), policy=Policy(stripe_width=2, parity=1),
                    files=(FileEntry("model.bin", size, 0o644, b"\0" * 32, entries),),
                    placement=tuple((A,) * (2 * len(d) + len(p)) for d, p in stripes),
                    tolerance=tolerance, created=0.0, is_dir=False)


def healthy(m: Manifest) -> tuple[dict, dict]:
    """Every data shard on two nodes, parity on a third, all intact."""
    holders, verdicts = {}, {}
    for _, index, stripe in m.iter_stripes():
        for position, piece in enumerate(stripe.piece_ids):
            nodes = {NODES[(index + 2 * position) % 5], NODES[(index + 2 * position + 1) % 5]} \
                if position < stripe.k else {NODES[(index + 4) % 5]}
            holders.setdefault(piece, set()).update(nodes)
    for piece, nodes in holders.items():
        for node in nodes:
            verdicts[(node, piece)] = OK
    return holders, verdicts


M = manifest([([pid("d0"), pid("d1")], [pid("p0")]), ([pid("d2"), pid("d3")], [pid("p1")])], tolerance=1)
ENTRY = CatalogEntry.for_manifest(M)


def test_a_healthy_checkpoint_has_no_problems():
    holders, verdicts = healthy(M)
    check = assess(ENTRY, M, holders, verdicts, alive=NODES, sizes={p: 100 for p in holders})
    assert check.ok and check.problems == ()
    assert check.pieces == 6 and check.copies_expected == 10 and check.copies_ok == 10
    assert check.tolerance_now >= 1 and check.bytes == 1000
    assert check.as_dict()["ok"] is True


def test_a_corrupt_copy_is_reported_with_its_node_and_the_replica_repair_copies_from():
    holders, verdicts = healthy(M)
    bad_node = sorted(holders[pid("d1")])[0]
    other = sorted(holders[pid("d1")])[1]
    verdicts[(bad_node, pid("d1"))] = CORRUPT
    check = assess(ENTRY, M, holders, verdicts, alive=NODES)
    assert not check.ok
    [problem] = [p for p in check.problems if p.kind == "corrupt"]
    assert problem.node == bad_node and problem.piece_id == pid("d1")
    assert problem.stripe == 0 and problem.position == 1 and problem.file == "model.bin"
    assert f"from the intact copy on {other[:8]}" in problem.repair
    assert not [p for p in check.problems if p.kind == "missing"]  # the bad copy is not also "missing"
    assert check.copies_ok == 9


def test_with_no_intact_copy_left_repair_rebuilds_from_parity_or_says_it_cannot_yet():
    holders, verdicts = healthy(M)
    for node in holders[pid("d0")]:
        verdicts[(node, pid("d0"))] = CORRUPT
    check = assess(ENTRY, M, holders, verdicts, alive=NODES)
    corrupt = [p for p in check.problems if p.kind == "corrupt"]
    assert len(corrupt) == 2 and all("from parity" in p.repair for p in corrupt)
    verdicts[(next(iter(holders[pid("p0")])), pid("p0"))] = CORRUPT
    check = assess(ENTRY, M, holders, verdicts, alive=NODES)
    assert check.tolerance_now == -1
    assert any(p.kind == "unreadable" for p in check.problems)
    assert all("only when more pieces are back" in p.repair for p in check.problems
               if p.kind == "corrupt" and p.piece_id == pid("d0"))


def test_missing_copies_on_dead_nodes_and_pieces_gone_meanwhile_are_counted_against_the_policy():
    holders, verdicts = healthy(M)
    lost = sorted(holders[pid("d2")])[0]
    holders[pid("d2")] = holders[pid("d2")] - {lost}  # its holder is dead: not asked
    gone = next(iter(holders[pid("p1")]))
    verdicts[(gone, pid("p1"))] = GONE
    check = assess(ENTRY, M, holders, verdicts, alive=NODES)
    missing = {p.piece_id: p for p in check.problems if p.kind == "missing"}
    assert set(missing) == {pid("d2"), pid("p1")}
    assert "1 of the 2 copies" in missing[pid("d2")].detail and "grace" in missing[pid("d2")].repair
    assert "removed it while verify ran" in missing[pid("p1")].detail
    assert check.tolerance_now == 0  # losing the last holder of d2 leaves stripe 1 one piece short
    assert any(p.kind == "tolerance" and "at put it survived 1" in p.detail for p in check.problems)


def test_a_holder_that_did_not_answer_is_unchecked_not_corrupt_and_not_missing():
    holders, verdicts = healthy(M)
    silent = sorted(holders[pid("d3")])[0]
    for key in [k for k in verdicts if k[0] == silent]:
        verdicts[key] = UNCHECKED
    check = assess(ENTRY, M, holders, verdicts, alive=NODES)
    kinds = {p.kind for p in check.problems}
    assert "unchecked" in kinds and "corrupt" not in kinds and "missing" not in kinds
    assert all(p.node == silent for p in check.problems if p.kind == "unchecked")


def test_no_manifest_means_nothing_could_be_checked():
    check = assess(ENTRY, None, {}, {}, alive=NODES)
    assert not check.ok and check.problems[0].kind == "no_manifest" and check.tolerance_now == -1


def test_problems_are_bounded_and_the_rest_counted():
    stripes = [([pid(f"d{i}a"), pid(f"d{i}b")], [pid(f"p{i}")]) for i in range(150)]
    m = manifest(stripes, tolerance=1)
    check = assess(CatalogEntry.for_manifest(m), m, {}, {}, alive=NODES)  # nothing held anywhere
    assert len(check.problems) == 200 and check.more_problems == 150 * 3 + 1 - 200


def test_the_report_is_all_well_only_when_every_checkpoint_is_and_every_node_answered():
    from peerstore.core.verify import verify_report

    holders, verdicts = healthy(M)
    well = assess(ENTRY, M, holders, verdicts, alive=NODES)
    assert verify_report(A, NODES, [], [well], copies=10, nbytes=1000)["ok"] is True
    assert verify_report(A, NODES, [E], [well], copies=10, nbytes=1000)["ok"] is False  # E said nothing
    sick = assess(ENTRY, M, {}, {}, alive=NODES)
    report = verify_report(A, NODES, [], [well, sick], copies=10, nbytes=1000)
    assert report["ok"] is False and [c["ok"] for c in report["checkpoints"]] == [True, False]
    assert report["checked"] == {"checkpoints": 2, "copies": 10, "bytes": 1000}
