"""Manifest format: canonical encoding, strict and bounded decoding, consistency checks."""

import dataclasses
import struct
import tracemalloc

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from peerstore.errors import FormatError
from peerstore.model.catalog import CatalogEntry
from peerstore.model.codec import FORMAT_VERSION
from peerstore.model.manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import MIN_SHARD_SIZE, Policy

NODES = tuple(f"{i:016x}" for i in range(1, 9))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fake_id(*parts) -> bytes:
    return blake3.blake3(repr(parts).encode()).digest()


def make_file(path: str, size: int, shard: int, k: int, p: int) -> FileEntry:
    """A file cut the way the striping layer cuts it: shards of ``shard`` bytes (the last
    shorter), ``k`` per stripe (the last stripe may hold fewer)."""
    count = -(-size // shard)
    lengths = [shard] * (count - 1) + ([size - shard * (count - 1)] if count else [])
    stripes = []
    for start in range(0, count, k):
        chunk = tuple(lengths[start : start + k])
        stripes.append(
            StripeEntry(
                k=len(chunk),
                p=p,
                block_size=chunk[0],
                data_ids=tuple(fake_id(path, start + j) for j in range(len(chunk))),
                data_lengths=chunk,
                parity_ids=tuple(fake_id(path, start, "parity", j) for j in range(p)),
            )
        )
    return FileEntry(path=path, size=size, mode=0o644, blake3=fake_id(path), stripes=tuple(stripes))


def make_manifest(
    files=(("model.safetensors", 10),),
    *,
    is_dir=None,
    shard=4,
    k=2,
    p=1,
    name="run1/step-500",
    version=VersionId(1, NODES[0]),
    tolerance=1,
    created=1700000000.5,
) -> Manifest:
    entries = tuple(make_file(path, size, shard, k, p) for path, size in files)
    placement = []
    for entry in entries:
        for stripe in entry.stripes:
            placement.append(tuple(NODES[i % len(NODES)] for i in range(2 * stripe.k + stripe.p)))
    return Manifest(
        name=name,
        version=version,
        policy=Policy(stripe_width=k, parity=p, shard_size=MIN_SHARD_SIZE),
        files=entries,
        placement=tuple(placement),
        tolerance=tolerance,
        created=created,
        is_dir=(len(files) != 1 or "/" in files[0][0]) if is_dir is None else is_dir,
    )


def document(manifest: Manifest) -> dict:
    return msgpack.unpackb(manifest.encode(), raw=False)


def pack(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


segment = st.text("abcXYZ._-é", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


@st.composite
def manifests(draw) -> Manifest:
    paths = draw(st.lists(st.lists(segment, min_size=1, max_size=3).map("/".join), min_size=1, max_size=4,
                          unique_by=str.casefold))
    paths = [p for p in paths if not any(q.casefold().startswith(p.casefold() + "/") for q in paths)]
    assume(paths)
    sizes = draw(st.lists(st.integers(0, 40), min_size=len(paths), max_size=len(paths)))
    files = tuple(zip(paths, sizes))
    is_dir = len(files) != 1 or "/" in paths[0] or draw(st.booleans())
    return make_manifest(
        files,
        is_dir=is_dir,
        shard=draw(st.integers(1, 9)),
        k=draw(st.integers(1, 4)),
        p=draw(st.integers(0, 3)),
        name=draw(st.lists(st.text("ab1.-_+", min_size=1, max_size=5).filter(lambda s: s not in (".", "..")),
                           min_size=1, max_size=3).map("/".join).filter(lambda s: not s.startswith("-"))),
        version=VersionId(draw(st.integers(1, 2**63 - 1)), draw(st.sampled_from(NODES))),
        tolerance=draw(st.integers(0, 5)),
        created=draw(st.floats(allow_nan=False, allow_infinity=False)),
    )


# ----------------------------------------------------------------- round trip, canonical form


@given(manifests())
@FUZZ
def test_encode_decode_round_trips(manifest):
    data = manifest.encode()
    again = Manifest.decode(data)
    assert again == manifest
    assert again.encode() == data
    assert again.id == manifest.id == blake3.blake3(data).digest()


def test_same_manifest_built_twice_has_the_same_id():
    a, b = make_manifest(), make_manifest()
    assert a is not b
    assert a.encode() == b.encode()
    assert a.id == b.id
    assert make_manifest(tolerance=2).id != a.id


def test_encoding_starts_with_the_format_version_and_sorted_keys():
    doc = document(make_manifest())
    assert doc["format"] == FORMAT_VERSION
    assert list(doc) == sorted(doc)
    assert list(doc["files"][0]) == sorted(doc["files"][0])


@given(manifests(), st.randoms(use_true_random=False))
@FUZZ
def test_decoding_is_independent_of_field_order(manifest, rnd):
    def shuffled(obj):
        if isinstance(obj, dict):
            items = list(obj.items())
            rnd.shuffle(items)
            return {key: shuffled(value) for key, value in items}
        if isinstance(obj, list):
            return [shuffled(x) for x in obj]
        return obj

    reordered = pack(shuffled(document(manifest)))
    again = Manifest.decode(reordered)
    assert again == manifest
    assert again.id == manifest.id


def test_lists_and_tuples_encode_the_same():
    manifest = make_manifest()
    as_lists = dataclasses.replace(manifest, placement=[list(h) for h in manifest.placement])
    assert as_lists.encode() == manifest.encode()


def test_helpers_count_stripes_sizes_and_pieces():
    # sizes 10 and 3 with 4-byte shards, k=2: [4,4][2] and [3] -> 3 stripes
    manifest = make_manifest((("a.bin", 10), ("b.bin", 3), ("empty", 0)), k=2, p=1)
    assert manifest.total_size() == 13
    assert manifest.stripe_count() == 3
    walked = list(manifest.iter_stripes())
    assert [(f, g) for f, g, _ in walked] == [(0, 0), (0, 1), (1, 2)]
    assert walked[1][2].data_lengths == (2,)
    every = [pid for _, _, s in walked for pid in s.piece_ids]
    assert manifest.piece_ids() == frozenset(every)
    assert len(every) == (2 + 1) + (1 + 1) + (1 + 1)
    first = walked[0][2]
    assert first.piece_ids == first.data_ids + first.parity_ids


def test_catalog_entry_for_manifest_summarises_it():
    manifest = make_manifest((("a.bin", 10), ("b.bin", 3)), tolerance=2)
    entry = CatalogEntry.for_manifest(manifest)
    assert (entry.name, entry.version, entry.manifest_id) == (manifest.name, manifest.version, manifest.id)
    assert (entry.size, entry.files, entry.tolerance, entry.created) == (13, 2, 2, manifest.created)
    assert entry.spec == f"run1/step-500@1.{NODES[0]}"


# ----------------------------------------------------------------- versions of the format


def test_newer_format_is_refused_with_upgrade_advice():
    doc = document(make_manifest())
    doc["format"] = FORMAT_VERSION + 1
    doc["something_new"] = [1, 2, 3]
    with pytest.raises(FormatError) as info:
        Manifest.decode(pack(doc))
    assert str(info.value) == (
        f"manifest format {FORMAT_VERSION + 1} is newer than this peerstore understands ({FORMAT_VERSION}); "
        "upgrade peerstore"
    )


@pytest.mark.parametrize("value", [0, -1, "1", None, 1.0, True])
def test_missing_or_bad_format_version_is_refused(value):
    doc = document(make_manifest())
    doc["format"] = value
    with pytest.raises(FormatError, match="format"):
        Manifest.decode(pack(doc))
    del doc["format"]
    with pytest.raises(FormatError, match="format"):
        Manifest.decode(pack(doc))


# ----------------------------------------------------------------- strict checks, table-driven


def _set(path, value):
    """A mutation that sets doc[path...] = value."""

    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


STRIPE = ("files", 0, "stripes", 0)
BAD_DOCUMENTS = [
    ("unknown top-level field", _set(("extra",), 1), "unknown"),
    ("missing field", _delete(("tolerance",)), "missing"),
    ("bad name", _set(("name",), "../etc"), "'..'"),
    ("name too long", _set(("name",), "x" * 300), "longer than"),
    ("version not a pair", _set(("version",), [1]), "exactly 2"),
    ("version counter zero", _set(("version", 0), 0), "counter"),
    ("version node not hex", _set(("version", 1), "NOT-HEX-NODE-ID!"), "node id"),
    ("policy with 3 replicas", _set(("policy", "replicas"), 3), "replicas"),
    ("policy field missing", _delete(("policy", "parity")), "missing"),
    ("bool where int belongs", _set(("tolerance",), True), "integer"),
    ("negative tolerance", _set(("tolerance",), -1), "tolerance"),
    ("created is NaN", _set(("created",), float("nan")), "finite"),
    ("created is an int", _set(("created",), 5), "float"),
    ("is_dir not bool", _set(("is_dir",), 1), "boolean"),
    ("absolute path", _set(("files", 0, "path"), "/etc/passwd"), "absolute"),
    ("dotdot path", _set(("files", 0, "path"), "../x"), "'..'"),
    ("single file with a directory path", _set(("files", 0, "path"), "a/b"), "single-file"),
    ("mode with file-type bits", _set(("files", 0, "mode"), 0o100644), "mode"),
    ("short file hash", _set(("files", 0, "blake3"), b"\0" * 31), "32 bytes"),
    ("file hash as str", _set(("files", 0, "blake3"), "0" * 32), "32 bytes"),
    ("size too big for shards", _set(("files", 0, "size"), 11), "add up"),
    ("size too small for shards", _set(("files", 0, "size"), 9), "add up"),
    ("k disagrees with ids", _set(STRIPE + ("k",), 1), "data ids"),
    ("p disagrees with ids", _set(STRIPE + ("p",), 0), "parity ids"),
    ("k wider than policy", _set(("policy", "stripe_width"), 1), "stripe_width"),
    ("block size not first length", _set(STRIPE + ("block_size",), 5), "block_size"),
    ("zero-length shard", _set(STRIPE + ("data_lengths", 1), 0), "data_lengths"),
    ("uneven middle shard", _set(STRIPE + ("data_lengths", 1), 3), "add up|last data shard"),
    ("short piece id", _set(STRIPE + ("data_ids", 0), b"x" * 8), "32 bytes"),
    ("piece id as str", _set(STRIPE + ("parity_ids", 0), "x" * 32), "32 bytes"),
    ("placement hint missing", _set(("placement",), []), "placement"),
    ("placement hint too short", _set(("placement", 0), [NODES[0]] * 4), "2k\\+p"),
    ("placement with a bad node id", _set(("placement", 0, 0), "nope"), "node id"),
    ("stripes for an empty file", _set(("files", 0, "size"), 0), "add up"),
]


@pytest.mark.parametrize(("what", "mutate", "message"), BAD_DOCUMENTS, ids=[b[0] for b in BAD_DOCUMENTS])
def test_inconsistent_manifests_are_refused(what, mutate, message):
    doc = document(make_manifest((("model.safetensors", 10),), shard=4, k=2, p=1))
    Manifest.decode(pack(doc))  # the unmutated document is fine
    mutate(doc)
    with pytest.raises(FormatError, match=message):
        Manifest.decode(pack(doc))


def test_two_files_colliding_on_case_insensitive_file_systems_are_refused():
    doc = document(make_manifest((("dir/Model.bin", 4), ("dir/other.bin", 4))))
    doc["files"][1]["path"] = "dir/model.bin"
    with pytest.raises(FormatError, match="case-insensitive"):
        Manifest.decode(pack(doc))


def test_encode_refuses_to_write_what_decode_would_refuse():
    bad = dataclasses.replace(make_manifest(), name="../escape")
    with pytest.raises(FormatError, match="refusing to write an invalid manifest"):
        bad.encode()
    with pytest.raises(FormatError):
        _ = bad.id
    unencodable = dataclasses.replace(make_manifest(), created=object())
    with pytest.raises(FormatError):
        unencodable.encode()


def test_empty_files_and_empty_directories_are_valid():
    empty_file = make_manifest((("empty.bin", 0),))
    assert empty_file.stripe_count() == 0
    assert Manifest.decode(empty_file.encode()) == empty_file
    empty_dir = make_manifest((), is_dir=True)
    assert Manifest.decode(empty_dir.encode()).files == ()


def test_single_file_manifest_needs_exactly_one_file():
    doc = document(make_manifest((("a", 4), ("b", 4))))
    doc["is_dir"] = False
    with pytest.raises(FormatError, match="single-file"):
        Manifest.decode(pack(doc))


# ----------------------------------------------------------------- hostile bytes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x80",  # empty map
        b"\x81\xa6format\x01",
        b"\x91\x01",
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 G items
        b"\xdf\xff\xff\xff\xff",  # map claiming 4 G pairs
        b"\xc6\xff\xff\xff\xff",  # bin claiming 4 GB
        b"\xdb\xff\xff\xff\xff",  # str claiming 4 GB
        b"\xc9\xff\xff\xff\xff\x01",  # ext claiming 4 GB
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
        b"\x82\xa6format\x01\xa5files\xdd\xff\xff\xff\xff",  # a 4 G files array inside a map
        b"\x91" * 100_000 + b"\x01",  # nested deeper than any stack
        b"\x81\x91\x01\x01",  # array as a map key
        b"\x81\xa1\xff\x01",  # invalid UTF-8 key
        pack(make_manifest().encode())[:-1],
        make_manifest().encode() + b"\x00",  # trailing bytes
        make_manifest().encode()[:-3],  # truncated
        "not bytes",
        None,
    ],
)
def test_hostile_inputs_raise_format_error_only(data):
    with pytest.raises(FormatError):
        Manifest.decode(data)


def test_oversized_input_is_refused_before_parsing():
    class Huge(bytes):
        def __len__(self):
            return MAX_MANIFEST_BYTES + 1

    with pytest.raises(FormatError, match="limit"):
        Manifest.decode(Huge(b"\x80"))


def test_nested_huge_array_claims_stay_bounded():
    # 50 nested arrays each claiming a million items, then a million nils: 1 MB of input.
    claim = 1_000_000
    data = (b"\xdd" + struct.pack(">I", claim)) * 50 + b"\xc0" * claim
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            Manifest.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def _decode_or_format_error(data):
    try:
        manifest = Manifest.decode(data)
    except FormatError:
        return None
    assert Manifest.decode(manifest.encode()) == manifest  # anything accepted is self-consistent
    return manifest


@given(st.binary(max_size=300))
@FUZZ
def test_random_bytes_only_raise_format_error(data):
    _decode_or_format_error(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@given(msgpack_values)
@FUZZ
def test_random_msgpack_only_raises_format_error(value):
    _decode_or_format_error(pack(value))


@given(manifests(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 2))
@FUZZ
def test_mutated_encodings_only_raise_format_error(manifest, edits, how):
    data = bytearray(manifest.encode())
    for position, byte in edits:
        position %= len(data)
        if how == 0:
            data[position] = byte
        elif how == 1:
            data.insert(position, byte)
        else:
            del data[position:]
            if not data:
                break
    _decode_or_format_error(bytes(data))


def _paths_into(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths_into(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths_into(value, prefix + (i,))


@given(manifests(), st.randoms(use_true_random=False), msgpack_values)
@FUZZ
def test_structurally_mutated_documents_only_raise_format_error(manifest, rnd, value):
    doc = document(manifest)
    path = rnd.choice([p for p in _paths_into(doc) if p])
    _set(path, value)(doc)
    _decode_or_format_error(pack(doc))


def test_large_manifest_round_trips():
    # 50 files of 256 stripes each: 12,800 stripes.
    manifest = make_manifest(tuple((f"shard-{i:03}.safetensors", 4 * 2 * 256) for i in range(50)), shard=4, k=2,
                             p=2)
    data = manifest.encode()
    assert len(data) < MAX_MANIFEST_BYTES
    assert Manifest.decode(data).stripe_count() == 50 * 256
