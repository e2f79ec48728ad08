"""The catalog CRDT: merge laws, resolving specs, removal semantics, strict encoding."""

import dataclasses

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerstore.errors import FormatError, InvalidNameError, PeerstoreError
from peerstore.model.catalog import Catalog, CatalogConflict, CatalogEntry, CatalogNotFound
from peerstore.model.codec import FORMAT_VERSION
from peerstore.model.names import VersionId

A = "aaaaaaaaaaaaaaaa"
B = "bbbbbbbbbbbbbbbb"
C = "ab12cd34ef567890"
LAWS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def entry(name: str, counter: int, node: str = A, size: int = 100, created: float = 0.0) -> CatalogEntry:
    version = VersionId(counter, node)
    return CatalogEntry(
        name=name,
        version=version,
        manifest_id=blake3.blake3(f"{name}@{version}".encode()).digest(),
        size=size,
        files=1,
        tolerance=1,
        created=created,
    )


# Small alphabets so independently drawn catalogs overlap and collide.
versions = st.builds(VersionId, st.integers(1, 4), st.sampled_from([A, B, C]))
names = st.sampled_from(["run1", "run1/step-500", "llama/ckpt"])
entries = st.builds(
    lambda n, v, size: CatalogEntry(n, v, blake3.blake3(f"{n}@{v}".encode()).digest(), size, 1, 1, 0.0),
    names,
    versions,
    st.sampled_from([1, 2]),  # two sizes for one key: a crash-reused version id: both kept
)
catalogs = st.builds(Catalog, st.lists(entries, max_size=8), st.lists(st.tuples(names, versions), max_size=4))


# ----------------------------------------------------------------- CRDT laws


def merged(*parts: Catalog) -> Catalog:
    out = parts[0].copy()
    for part in parts[1:]:
        out.merge(part)
    return out


@given(catalogs, catalogs)
@LAWS
def test_merge_is_commutative(a, b):
    assert merged(a, b) == merged(b, a)
    assert merged(a, b).digest() == merged(b, a).digest()


@given(catalogs, catalogs, catalogs)
@LAWS
def test_merge_is_associative(a, b, c):
    assert merged(merged(a, b), c) == merged(a, merged(b, c))


@given(catalogs, catalogs)
@LAWS
def test_merge_is_idempotent_and_reports_change(a, b):
    ab = merged(a, b)
    assert ab.merge(b) is False
    assert ab.merge(ab.copy()) is False
    assert merged(a, a) == a
    assert a.copy().merge(b) is (merged(a, b) != a)


@given(catalogs, catalogs)
@LAWS
def test_merge_never_loses_a_tombstone_or_an_entry_key(a, b):
    ab = merged(a, b)
    assert a.tombstones | b.tombstones == ab.tombstones
    keys = {(e.name, e.version) for e in a.entries | b.entries}
    assert {(e.name, e.version) for e in ab.entries} == keys


@given(catalogs)
@LAWS
def test_encoding_round_trips_and_digest_tracks_state(catalog):
    data = catalog.encode()
    again = Catalog.decode(data)
    assert again == catalog
    assert again.encode() == data
    assert again.digest() == catalog.digest() == blake3.blake3(data).digest()


@given(catalogs, catalogs)
@LAWS
def test_digests_are_equal_exactly_when_states_are(a, b):
    assert (a.digest() == b.digest()) == (a == b)


def test_digest_changes_after_a_mutation():
    catalog = Catalog([entry("run1", 1)])
    before = catalog.digest()
    catalog.add(entry("run1", 2))
    after_add = catalog.digest()
    catalog.tombstone("run1", VersionId(1, A))
    assert len({before, after_add, catalog.digest()}) == 3


# ----------------------------------------------------------------- queries


def test_live_versions_latest_and_names():
    catalog = Catalog([entry("run1", 2, B), entry("run1", 1), entry("run1", 2, A), entry("other", 1)])
    assert [e.version for e in catalog.live_versions("run1")] == [VersionId(1, A), VersionId(2, A), VersionId(2, B)]
    assert catalog.latest("run1").version == VersionId(2, B)  # counter ties broken by node id
    assert catalog.latest("missing") is None
    assert catalog.names() == ["other", "run1"]
    catalog.rm("other")
    assert catalog.names() == ["run1"]
    assert len(catalog) == 4  # entries are kept; tombstones hide them


def test_add_reports_only_real_changes():
    catalog = Catalog()
    assert catalog.add(entry("run1", 1)) is True
    assert catalog.add(entry("run1", 1)) is False
    assert catalog.tombstone("run1", VersionId(1, A)) is True
    assert catalog.tombstone("run1", VersionId(1, A)) is False


def test_two_entries_under_one_version_are_both_kept_and_reported_never_chosen():
    small, large = entry("run1", 2, size=1), entry("run1", 2, size=2)
    small, large = small, dataclasses.replace(large, manifest_id=bytes(32))  # two different checkpoints
    older = entry("run1", 1)
    one, two = Catalog([small, older]), Catalog([large])
    one.merge(Catalog([large]))
    two.merge(Catalog([small, older]))
    assert one == two and one.digest() == two.digest()
    assert {small, large} <= one.entries
    assert one.conflicts() == [(large, small)]
    assert Catalog.decode(one.encode()).conflicts() == [(large, small)]  # survives persistence
    for spec in ("run1", "run1@2"):
        with pytest.raises(CatalogConflict, match="claimed by 2 different checkpoints"):
            one.resolve(spec)
    assert one.resolve("run1@1") == older  # other versions are unaffected
    assert one.rm("run1@1") == [older.version]
    assert one.rm("run1") == [small.version]  # rm hides the conflicting version as a whole
    assert one.conflicts() == [(large, small)]  # still reported: nothing is dropped


def test_claims_that_differ_only_in_listing_details_still_resolve_to_their_manifest():
    one, two = entry("run1", 2, size=1), entry("run1", 2, size=2)  # same manifest id
    catalog = Catalog([one, two])
    assert catalog.conflicts() == [(one, two)]  # reported all the same
    assert catalog.resolve("run1@2").manifest_id == one.manifest_id


RESOLVE_CATALOG = [entry("run1", 1), entry("run1", 2), entry("run1", 3, A), entry("run1", 3, B), entry("run2", 5, C)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("run1", VersionId(3, B)),
        ("run1@1", VersionId(1, A)),
        ("run1@2", VersionId(2, A)),
        ("run1@3.a", VersionId(3, A)),
        ("run1@3.bbbb", VersionId(3, B)),
        (f"run1@3.{B}", VersionId(3, B)),
        ("run1@3.BB", VersionId(3, B)),
        ("run2@5", VersionId(5, C)),
        ("run2@5.ab12", VersionId(5, C)),
    ],
)
def test_resolve_finds_the_named_version(spec, expected):
    assert Catalog(RESOLVE_CATALOG).resolve(spec).version == expected


def test_resolve_reports_ambiguous_counters_with_full_choices():
    with pytest.raises(CatalogNotFound) as info:
        Catalog(RESOLVE_CATALOG).resolve("run1@3")
    assert info.value.choices == (f"run1@3.{A}", f"run1@3.{B}")
    assert f"run1@3.{A}" in str(info.value) and "ambiguous" in str(info.value)
    assert isinstance(info.value, PeerstoreError)


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("run1@9", "run1@1."),  # lists the live versions
        ("run1@3.c", "run1@3."),
        ("run", "run1"),  # suggests close names
        ("run1/step-5", "run1"),
        ("zzz", "others exist"),
    ],
)
def test_resolve_misses_say_what_exists(spec, shown):
    with pytest.raises(CatalogNotFound) as info:
        Catalog(RESOLVE_CATALOG).resolve(spec)
    assert shown in str(info.value)


def test_resolve_in_an_empty_catalog_says_so():
    with pytest.raises(CatalogNotFound, match="empty"):
        Catalog().resolve("run1")


def test_resolve_rejects_malformed_specs_as_invalid_names():
    with pytest.raises(InvalidNameError):
        Catalog(RESOLVE_CATALOG).resolve("run1@three")


def test_tombstoned_versions_do_not_resolve():
    catalog = Catalog(RESOLVE_CATALOG)
    assert catalog.rm("run1@3.b") == [VersionId(3, B)]
    assert catalog.resolve("run1").version == VersionId(3, A)
    assert catalog.resolve("run1@3").version == VersionId(3, A)  # no longer ambiguous
    with pytest.raises(CatalogNotFound, match="removed"):
        catalog.resolve(f"run1@3.{B}")
    assert not catalog.is_live("run1", VersionId(3, B))
    assert catalog.is_live("run1", VersionId(3, A))


def test_rm_name_removes_every_live_version_seen():
    catalog = Catalog(RESOLVE_CATALOG)
    removed = catalog.rm("run1")
    assert removed == [VersionId(1, A), VersionId(2, A), VersionId(3, A), VersionId(3, B)]
    assert catalog.live_versions("run1") == []
    with pytest.raises(CatalogNotFound, match="removed"):
        catalog.resolve("run1")
    with pytest.raises(CatalogNotFound):
        catalog.rm("run1")  # nothing left to remove
    assert catalog.names() == ["run2"]


def test_tombstone_arriving_before_its_entry_still_hides_it():
    catalog = Catalog(tombstones=[("run1", VersionId(4, B))])
    catalog.add(entry("run1", 4, B))
    assert catalog.live_versions("run1") == []
    assert catalog.latest("run1") is None


def test_next_counter_is_one_past_every_counter_seen():
    catalog = Catalog()
    assert catalog.next_counter("run1") == 1
    catalog.add(entry("run1", 1))
    catalog.add(entry("run1", 3, B))
    catalog.add(entry("other", 9))
    assert catalog.next_counter("run1") == 4
    catalog.rm("run1@3")
    assert catalog.next_counter("run1") == 4  # a removed version still advances the clock
    catalog.tombstone("run1", VersionId(7, C))  # gossip delivered the tombstone first
    assert catalog.next_counter("run1") == 8
    assert catalog.next_counter("other") == 10


def test_concurrent_rm_and_put_keep_the_new_version():
    v1 = entry("run1", 1, A)
    node_a, node_b = Catalog([v1]), Catalog([v1])
    # A removes run1 having seen only v1; meanwhile B stores v2.
    assert node_a.rm("run1") == [v1.version]
    v2 = entry("run1", node_b.next_counter("run1"), B)
    node_b.add(v2)
    node_a.merge(node_b)
    node_b.merge(node_a)
    assert node_a == node_b
    assert [e.version for e in node_a.live_versions("run1")] == [VersionId(2, B)]
    assert node_a.resolve("run1") == v2


# ----------------------------------------------------------------- strict decoding


def pack(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def good_document() -> dict:
    return msgpack.unpackb(Catalog([entry("run1", 1)], [("run1", VersionId(1, B))]).encode(), raw=False)


def test_newer_catalog_format_is_refused_with_upgrade_advice():
    doc = good_document()
    doc["format"] = FORMAT_VERSION + 1
    with pytest.raises(FormatError, match="newer than this peerstore understands.*upgrade peerstore"):
        Catalog.decode(pack(doc))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "unknown"),
        (lambda d: d.pop("tombstones"), "missing"),
        (lambda d: d["entries"][0].__setitem__(0, "../x"), "'..'"),
        (lambda d: d["entries"][0].__setitem__(1, 0), "counter"),
        (lambda d: d["entries"][0].__setitem__(2, "XYZ"), "node id"),
        (lambda d: d["entries"][0].__setitem__(3, b"short"), "32 bytes"),
        (lambda d: d["entries"][0].__setitem__(4, -1), "size"),
        (lambda d: d["entries"][0].__setitem__(7, float("inf")), "finite"),
        (lambda d: d["entries"][0].pop(), "exactly 8"),
        (lambda d: d["tombstones"][0].__setitem__(1, "1"), "integer"),
        (lambda d: d["tombstones"].append("run1"), "array"),
    ],
)
def test_bad_catalog_documents_are_refused(mutate, message):
    doc = good_document()
    Catalog.decode(pack(doc))
    mutate(doc)
    with pytest.raises(FormatError, match=message):
        Catalog.decode(pack(doc))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 G items
        b"\x83\xa6format\x01\xa7entries\xdd\xff\xff\xff\xff",
        b"\x91" * 50_000,
        None,
    ],
)
def test_hostile_catalog_bytes_raise_format_error(data):
    with pytest.raises(FormatError):
        Catalog.decode(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@given(st.one_of(st.binary(max_size=200), msgpack_values.map(pack)))
@LAWS
def test_random_input_only_raises_format_error(data):
    try:
        Catalog.decode(data)
    except FormatError:
        pass


@given(catalogs, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3))
@LAWS
def test_mutated_catalog_encodings_only_raise_format_error(catalog, edits):
    data = bytearray(catalog.encode())
    for position, byte in edits:
        data[position % len(data)] = byte
    try:
        decoded = Catalog.decode(bytes(data))
    except FormatError:
        return
    assert Catalog.decode(decoded.encode()) == decoded
