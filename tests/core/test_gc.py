"""Garbage-collection decisions (peerstore.core.gc): leases, references, retention, majority."""

from __future__ import annotations

import math

import blake3
import pytest

from peerstore.core.gc import (
    MAX_LEASE_SECONDS,
    LeaseTable,
    batches,
    cluster_summary as gc_summary,
    has_majority,
    live_manifest_ids,
    plan_deletions,
    referenced_pieces,
    retention_tombstones,
    tombstoned_manifest_ids,
    unreferenced,
)
from peerstore.model.catalog import Catalog, CatalogEntry
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import Policy

NODE = "aaaaaaaaaaaaaaaa"
OTHER = "bbbbbbbbbbbbbbbb"
LEASE, MARGIN = 120.0, 60.0


def pid(n: int) -> bytes:
    return blake3.blake3(f"piece {n}".encode()).digest()


def manifest(name: str, counter: int, pieces: list[int], node: str = NODE) -> Manifest:
    """A one-stripe checkpoint whose data shards are ``pieces`` (no parity)."""
    k = len(pieces)
    stripe = StripeEntry(k=k, p=0, block_size=100, data_ids=tuple(pid(n) for n in pieces),
                         data_lengths=(100,) * k, parity_ids=())
    return Manifest(
        name=name, version=VersionId(counter, node), policy=Policy(stripe_width=max(k, 1), parity=0, min_tolerance=0),
        files=(FileEntry("f", 100 * k, 0o644, bytes(32), (stripe,)),),
        placement=((node,) * 2 * k,), tolerance=0, created=0.0, is_dir=False,
    )


def entry(m: Manifest) -> CatalogEntry:
    return CatalogEntry.for_manifest(m)


def leases(boot: float = 0.0) -> LeaseTable:
    table = LeaseTable(LEASE, MARGIN)
    table.started(boot)
    return table


# ----------------------------------------------------------------- leases


def test_nothing_is_collectable_before_the_node_was_told_the_time():
    table = LeaseTable(LEASE, MARGIN)
    assert table.protected(pid(1), 1e12)
    assert table.boot_until == math.inf


@pytest.mark.parametrize(
    "boot, granted_at, seconds, now, protected",
    [
        # Held at boot, never leased since: protected for lease + margin after the boot.
        (1000.0, None, None, 1000.0 + LEASE + MARGIN - 0.001, True),
        (1000.0, None, None, 1000.0 + LEASE + MARGIN, False),
        # Granted after boot: lease + margin from the grant.
        (0.0, 500.0, None, 500.0 + LEASE + MARGIN - 0.001, True),
        (0.0, 500.0, None, 500.0 + LEASE + MARGIN, False),
        # A peer asking for a shorter lease gets ours; a longer one is honoured...
        (0.0, 500.0, 10.0, 500.0 + LEASE + MARGIN - 0.001, True),
        (0.0, 500.0, 600.0, 500.0 + 600.0 + MARGIN - 0.001, True),
        (0.0, 500.0, 600.0, 500.0 + 600.0 + MARGIN, False),
        # ... up to a day.
        (0.0, 0.0, 10 * MAX_LEASE_SECONDS, MAX_LEASE_SECONDS + MARGIN, False),
    ],
)
def test_a_piece_is_protected_until_its_lease_and_the_margin_have_passed(boot, granted_at, seconds, now, protected):
    table = leases(boot)
    if granted_at is not None:
        table.grant(granted_at, [pid(1)], seconds)
    assert table.protected(pid(1), now) is protected


def test_renewal_extends_and_a_shorter_grant_never_shortens():
    table = leases()
    table.grant(0.0, [pid(1)], 1000.0)
    table.grant(10.0, [pid(1)])  # shorter: the 1000 s lease stays
    assert table.expires(pid(1)) == 1000.0
    table.grant(990.0, [pid(1)])
    assert table.expires(pid(1)) == 990.0 + LEASE


def test_started_twice_keeps_the_first_boot_time():
    table = leases(5.0)
    table.started(500.0)
    assert table.boot_until == 5.0 + LEASE


def test_prune_forgets_only_leases_whose_protection_ended():
    table = leases()
    table.grant(0.0, [pid(1)])
    table.grant(100.0, [pid(2)])
    table.prune(LEASE + MARGIN)
    assert len(table) == 1 and table.protected(pid(2), LEASE + MARGIN)


def test_a_lease_table_refuses_nonsense_timings():
    with pytest.raises(ValueError):
        LeaseTable(0.0, 1.0)
    with pytest.raises(ValueError):
        LeaseTable(1.0, -1.0)


# ----------------------------------------------------------------- what may be deleted

A1 = manifest("run1", 1, [1, 2, 3])
A2 = manifest("run1", 2, [3, 4, 5])  # shares piece 3 with A1 (dedup)
B1 = manifest("run2", 1, [6])
LATER = LEASE + MARGIN + 1.0  # every boot lease has run out


@pytest.mark.parametrize(
    "live, tombstoned, leased, expected",
    [
        # Piece 7 is no version's: a failed or abandoned put's orphan.
        ([A1, A2, B1], [], [], {7}),  # everything else is referenced
        ([A2, B1], [A1], [], {1, 2, 7}),  # rm A1: its own pieces go, the shared piece 3 stays
        ([B1], [A1, A2], [], {1, 2, 3, 4, 5, 7}),  # rm both versions: all of run1 goes
        ([B1], [A1, A2], [2, 4], {1, 3, 5, 7}),  # a running put (same content) leases 2 and 4: kept
        ([], [A1, A2, B1], [], {1, 2, 3, 4, 5, 6, 7}),
        ([A1, A2, B1], [], [7], set()),  # the orphan while its put still runs: kept
    ],
)
def test_plan_deletions(live, tombstoned, leased, expected):
    catalog = Catalog(entries=[entry(m) for m in live + tombstoned],
                      tombstones=[(m.name, m.version) for m in tombstoned])
    by_id = {m.id: m for m in live + tombstoned}
    referenced = referenced_pieces(by_id[mid] for mid in live_manifest_ids(catalog))
    table = leases()
    table.grant(LATER - 1.0, [pid(n) for n in leased])
    inventory = {pid(n) for n in range(1, 8)}
    assert set(plan_deletions(inventory, referenced, table, LATER)) == {pid(n) for n in expected}


def test_a_tombstoned_piece_re_referenced_by_a_committed_put_is_kept():
    # A1 removed; a put of the same content commits as version 3 before GC decides.
    again = manifest("run1", 3, [1, 2, 3])
    catalog = Catalog(entries=[entry(A1), entry(again)], tombstones=[("run1", A1.version)])
    referenced = referenced_pieces([again])
    assert live_manifest_ids(catalog) == {again.id}
    assert plan_deletions({pid(1), pid(2), pid(3)}, referenced, leases(), LATER) == []


def test_plan_deletions_skips_busy_pieces_holds_to_its_limit_and_is_ordered():
    inventory = [pid(n) for n in range(20)]
    out = plan_deletions(inventory, set(), leases(), LATER, busy={pid(0)}, limit=5)
    assert out == sorted(set(inventory) - {pid(0)})[:5]


def test_nothing_goes_during_the_boot_lease():
    assert plan_deletions({pid(1)}, set(), leases(100.0), 100.0 + LEASE + MARGIN - 1) == []
    assert plan_deletions({pid(1)}, set(), leases(100.0), 100.0 + LEASE + MARGIN) == [pid(1)]


def test_unreferenced_splits_awaiting_from_leased_bytes():
    table = leases()
    table.grant(LATER, [pid(2)])
    sizes = {pid(1): 100, pid(2): 30, pid(3): 7}
    got = unreferenced({pid(1), pid(2), pid(3), pid(4)}, {pid(3)}, table, LATER, sizes)
    assert (got.awaiting, got.awaiting_pieces, got.leased, got.leased_pieces) == (100, 2, 30, 1)


def test_tombstoned_manifests_exclude_ones_a_live_version_names():
    catalog = Catalog(entries=[entry(A1), entry(A2)], tombstones=[("run1", A1.version), ("run9", A1.version)])
    assert tombstoned_manifest_ids(catalog) == {A1.id}
    assert live_manifest_ids(catalog) == {A2.id}


def test_batches_cut_at_their_size():
    ids = [pid(n) for n in range(5)]
    assert batches(ids, 2) == [ids[:2], ids[2:4], ids[4:]]
    assert batches([], 2) == []


# ----------------------------------------------------------------- retention


def versions(n: int, name: str = "run1", node: str = NODE) -> list[CatalogEntry]:
    return [entry(manifest(name, c, [100 + c], node)) for c in range(1, n + 1)]


@pytest.mark.parametrize(
    "keep_last, entries, tombstoned, expected",
    [
        (None, versions(5), [], []),  # default: keep everything
        (3, versions(5), [], [1, 2]),
        (3, versions(3), [], []),
        (1, versions(5), [], [1, 2, 3, 4]),
        (2, versions(5), [5], [1, 2]),  # rm of the newest: the two newest *live* stay
        (2, versions(5), [1, 2, 3], []),  # already removed: nothing new
    ],
)
def test_retention_keeps_the_newest_live_versions_per_name(keep_last, entries, tombstoned, expected):
    catalog = Catalog(entries=entries + versions(4, "other"),
                      tombstones=[("run1", VersionId(c, NODE)) for c in tombstoned])
    got = retention_tombstones(catalog, keep_last)
    assert [(n, v.counter) for n, v in got if n == "run1"] == [("run1", c) for c in expected]
    others = [v.counter for n, v in got if n == "other"]
    assert others == ([] if keep_last is None else list(range(1, max(0, 4 - keep_last) + 1)))


def test_retention_orders_concurrent_versions_by_version_id_and_is_idempotent():
    # Two coordinators stored counter 3 at once: 3.aaaa < 3.bbbb; keep_last=1 keeps 3.bbbb.
    catalog = Catalog(entries=versions(3) + [entry(manifest("run1", 3, [999], OTHER))])
    victims = retention_tombstones(catalog, 1)
    assert [str(v) for _, v in victims] == ["1." + NODE, "2." + NODE, "3." + NODE]
    for name, version in victims:
        catalog.tombstone(name, version)
    assert retention_tombstones(catalog, 1) == []


def test_retention_refuses_keep_last_below_one():
    with pytest.raises(ValueError):
        retention_tombstones(Catalog(), 0)


# ----------------------------------------------------------------- majority


@pytest.mark.parametrize(
    "alive, members, majority",
    [
        ({"a"}, {"a"}, True),  # one node
        ({"a", "b", "c"}, {"a", "b", "c", "d", "e"}, True),
        ({"a", "b"}, {"a", "b", "c", "d", "e"}, False),  # the small side of a partition
        ({"a", "b"}, {"a", "b", "c", "d"}, False),  # exactly half is not a majority
        ({"a"}, {"a", "b"}, False),
        ({"a", "b", "x"}, {"a", "b", "c", "d"}, True),  # a new node counts with the rest (3 of 5)
    ],
)
def test_majority(alive, members, majority):
    assert has_majority(alive, members) is majority


# ----------------------------------------------------------------- status


def test_cluster_summary_adds_up_the_nodes_that_answered_and_names_blocked_ones():
    reports = [
        ("a", {"gc": {"awaiting_bytes": 100, "awaiting_pieces": 2, "leased_bytes": 5, "freed_bytes": 7, "blocked": ""}}),
        ("b", {"gc": {"awaiting_bytes": 50, "awaiting_pieces": 1, "blocked": "this node does not see a majority"}}),
        ("c", None),  # did not answer
        ("d", {"scrub": {}}),  # an older node without a gc section
        ("e", {"gc": {"awaiting_bytes": -3, "awaiting_pieces": True, "blocked": 7}}),  # nonsense is ignored
    ]
    out = gc_summary(reports)
    assert out == {"awaiting_bytes": 150, "awaiting_pieces": 3, "leased_bytes": 5, "freed_bytes": 7, "nodes": 3,
                   "blocked": {"b": "this node does not see a majority"}}
