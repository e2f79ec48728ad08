"""Manifests (one immutable document per checkpoint version) and the catalog CRDT.

Both are canonical msgpack carrying a format version. Encoding is deterministic, so a
manifest's id is the BLAKE3 of its encoding; decoding is strict and bounded, because the
bytes come from other nodes: anything wrong raises FormatError and nothing else. Pure
data and functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

import blake3
import msgpack

from peerstore.errors import FormatError, InvalidNameError, PeerstoreError
from peerstore.model.names import (
    MAX_COUNTER,
    MAX_FILES,
    MAX_NAME_LEN,
    MAX_PATH_LEN,
    MAX_SEGMENT_LEN,
    VersionId,
    is_node_id,
    parse_spec,
    parse_version_selector,
    validate_name,
    validate_paths,
)
from peerstore.model.policy import MAX_PARITY, MAX_STRIPE_WIDTH, Policy

__all__ = [
    "FORMAT_VERSION",
    "MAX_NAME_LEN",
    "MAX_PATH_LEN",
    "MAX_SEGMENT_LEN",
    "MAX_FILES",
    "MAX_MANIFEST_BYTES",
    "MAX_CATALOG_BYTES",
    "MAX_CATALOG_ENTRIES",
    "VersionId",
    "validate_name",
    "parse_spec",
    "validate_paths",
    "StripeEntry",
    "FileEntry",
    "Manifest",
    "CatalogEntry",
    "CatalogNotFound",
    "CatalogConflict",
    "Catalog",
    "encode_counters",
    "seal",
    "unseal",
    "decode_counters",
]

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_CATALOG_BYTES = 64 * 1024 * 1024
MAX_CATALOG_ENTRIES = 1_000_000  # entries, and separately tombstones
MAX_FILE_SIZE = 2**63 - 1
MAX_TOLERANCE = 65_535  # sanity bound: tolerance never exceeds the cluster size (an empty checkpoint's is n-1)
ID_LEN = 32  # BLAKE3 digest: piece ids, whole-file hashes, manifest ids
MAX_CODE_WIDTH = 256  # zfec: data + parity pieces per stripe

# No decoded string is longer than a path and no bytes longer than an id; arrays are the
# only thing that grows, and msgpack preallocates them, so their claimed length is capped.
_MAX_STR_BYTES = MAX_PATH_LEN
_MAX_ARRAY_LEN = 1_000_000
_MAX_MAP_LEN = 32


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class StripeEntry:
    """One stripe: k data shards (each kept as two replicas) and p parity chunks."""

    k: int
    p: int
    block_size: int
    data_ids: tuple[bytes, ...]
    data_lengths: tuple[int, ...]
    parity_ids: tuple[bytes, ...]

    @property
    def piece_ids(self) -> tuple[bytes, ...]:
        """Data ids then parity ids, in position order."""
        return tuple(self.data_ids) + tuple(self.parity_ids)


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint; ``mode`` holds permission bits only."""

    path: str
    size: int
    mode: int
    blake3: bytes
    stripes: tuple[StripeEntry, ...]


@dataclass(frozen=True)
class Manifest:
    """Everything needed to restore one checkpoint version, plus where its pieces were
    placed at commit. ``placement`` is a hint: per stripe (over all files in order) 2k+p
    node ids laid out as data0 replica A, data0 replica B, data1 A, data1 B, ...,
    parity0, parity1, ... Where pieces live now is each node's own inventory."""

    name: str
    version: VersionId
    policy: Policy
    files: tuple[FileEntry, ...]
    placement: tuple[tuple[str, ...], ...]
    tolerance: int
    created: float  # wall-clock seconds, informational only
    is_dir: bool

    def encode(self) -> bytes:
        """Canonical msgpack: the same manifest always gives the same bytes.

        Raises FormatError rather than emit a manifest that decode() would refuse.
        """
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        packed = _pack(_manifest_document(self))
        try:
            Manifest.decode(packed)
        except FormatError as err:
            raise FormatError(f"refusing to write an invalid manifest: {err}") from None
        return packed

    @cached_property
    def id(self) -> bytes:
        """BLAKE3 of the canonical encoding. To check received bytes against an expected
        id, compare ``Manifest.decode(data).id`` (it does not depend on key order)."""
        return blake3.blake3(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and fully check a manifest; FormatError on anything wrong."""
        doc = _unpack(data, "manifest", MAX_MANIFEST_BYTES)
        top = _Fields(doc, "manifest", _MANIFEST_KEYS)
        try:
            manifest = cls(
                name=top.string("name", MAX_NAME_LEN),
                version=_version(top.get("version"), "manifest version"),
                policy=_policy(top.get("policy")),
                files=tuple(_file(f, i) for i, f in enumerate(top.array("files", MAX_FILES))),
                placement=tuple(
                    _node_list(hint, f"placement[{i}]") for i, hint in enumerate(top.array("placement"))
                ),
                tolerance=top.integer("tolerance", 0, MAX_TOLERANCE),
                created=top.real("created"),
                is_dir=top.flag("is_dir"),
            )
            _check_manifest(manifest)
        except InvalidNameError as err:
            raise FormatError(f"manifest: {err}") from None
        return manifest

    def total_size(self) -> int:
        """Bytes in all files."""
        return sum(f.size for f in self.files)

    def stripe_count(self) -> int:
        """Stripes over all files."""
        return sum(len(f.stripes) for f in self.files)

    def iter_stripes(self) -> Iterator[tuple[int, int, StripeEntry]]:
        """(file index, global stripe index, stripe) over all files in order; the global
        index is the stripe's position in ``placement``."""
        index = 0
        for file_index, entry in enumerate(self.files):
            for stripe in entry.stripes:
                yield file_index, index, stripe
                index += 1

    def piece_ids(self) -> frozenset[bytes]:
        """Every distinct piece id the checkpoint needs."""
        return frozenset(pid for _, _, stripe in self.iter_stripes() for pid in stripe.piece_ids)


_MANIFEST_KEYS = ("format", "name", "version", "policy", "files", "placement", "tolerance", "created", "is_dir")
_FILE_KEYS = ("path", "size", "mode", "blake3", "stripes")
_STRIPE_KEYS = ("k", "p", "block_size", "data_ids", "data_lengths", "parity_ids")
_POLICY_KEYS = tuple(f.name for f in dataclasses.fields(Policy))


def _manifest_document(m: Manifest) -> dict:
    return {
        "format": FORMAT_VERSION,
        "name": m.name,
        "version": [m.version.counter, m.version.node],
        "policy": {key: getattr(m.policy, key) for key in _POLICY_KEYS},
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "mode": f.mode,
                "blake3": f.blake3,
                "stripes": [
                    {
                        "k": s.k,
                        "p": s.p,
                        "block_size": s.block_size,
                        "data_ids": list(s.data_ids),
                        "data_lengths": list(s.data_lengths),
                        "parity_ids": list(s.parity_ids),
                    }
                    for s in f.stripes
                ],
            }
            for f in m.files
        ],
        "placement": [list(hint) for hint in m.placement],
        "tolerance": m.tolerance,
        "created": float(m.created) if isinstance(m.created, int | float) else m.created,
        "is_dir": m.is_dir,
    }


def _policy(raw: object) -> Policy:
    fields = _Fields(raw, "manifest policy", _POLICY_KEYS, versioned=False)
    policy = Policy(**{key: fields.integer(key, 0, MAX_FILE_SIZE) for key in _POLICY_KEYS})
    problems = policy.problems()
    if problems:
        raise FormatError("manifest policy: " + "; ".join(f"{key}: {problem}" for key, problem in problems))
    return policy


def _file(raw: object, index: int) -> FileEntry:
    where = f"manifest files[{index}]"
    fields = _Fields(raw, where, _FILE_KEYS, versioned=False)
    return FileEntry(
        path=fields.string("path", _MAX_STR_BYTES),
        size=fields.integer("size", 0, MAX_FILE_SIZE),
        mode=fields.integer("mode", 0, 0o7777),
        blake3=fields.blob("blake3", ID_LEN),
        stripes=tuple(_stripe(s, f"{where}.stripes[{i}]") for i, s in enumerate(fields.array("stripes"))),
    )


def _stripe(raw: object, where: str) -> StripeEntry:
    fields = _Fields(raw, where, _STRIPE_KEYS, versioned=False)
    return StripeEntry(
        k=fields.integer("k", 1, MAX_STRIPE_WIDTH),
        p=fields.integer("p", 0, MAX_PARITY),
        block_size=fields.integer("block_size", 1, MAX_FILE_SIZE),
        data_ids=tuple(_id(x, f"{where}.data_ids") for x in fields.array("data_ids", MAX_STRIPE_WIDTH)),
        data_lengths=tuple(
            _int(x, f"{where}.data_lengths", 1, MAX_FILE_SIZE)
            for x in fields.array("data_lengths", MAX_STRIPE_WIDTH)
        ),
        parity_ids=tuple(_id(x, f"{where}.parity_ids") for x in fields.array("parity_ids", MAX_PARITY)),
    )


def _node_list(raw: object, where: str) -> tuple[str, ...]:
    nodes = _array(raw, where, MAX_CODE_WIDTH)
    for node in nodes:
        if not is_node_id(node):
            raise FormatError(f"manifest {where}: {node!r} is not a node id (16 lowercase hex characters)")
    return nodes


def _check_manifest(m: Manifest) -> None:
    """Cross-field checks; field types and ranges were checked while parsing."""
    validate_name(m.name)
    if not math.isfinite(m.created):
        raise FormatError(f"manifest created time must be finite, got {m.created!r}")
    validate_paths([f.path for f in m.files])
    if not m.is_dir and (len(m.files) != 1 or "/" in m.files[0].path):
        raise FormatError("a single-file manifest must hold exactly one file, named by its base name")
    for entry in m.files:
        _check_stripes(entry, m.policy)
    if len(m.placement) != m.stripe_count():
        raise FormatError(f"manifest placement has {len(m.placement)} hints for {m.stripe_count()} stripes")
    for _, index, stripe in m.iter_stripes():
        want = 2 * stripe.k + stripe.p
        if len(m.placement[index]) != want:
            raise FormatError(
                f"manifest placement[{index}] has {len(m.placement[index])} node ids; "
                f"a stripe with k={stripe.k}, p={stripe.p} needs 2k+p = {want}"
            )


def _check_stripes(entry: FileEntry, policy: Policy) -> None:
    """Shards are cut at one length per file: every shard but the file's last has exactly
    that length, the last may be shorter, and together they add up to the file."""
    where = f"manifest file {entry.path!r}"
    lengths: list[int] = []
    for i, s in enumerate(entry.stripes):
        if not (len(s.data_ids) == len(s.data_lengths) == s.k and len(s.parity_ids) == s.p):
            raise FormatError(
                f"{where} stripe {i}: k={s.k}, p={s.p} but {len(s.data_ids)} data ids, "
                f"{len(s.data_lengths)} data lengths and {len(s.parity_ids)} parity ids"
            )
        if s.k > policy.stripe_width:
            raise FormatError(
                f"{where} stripe {i}: k={s.k} is wider than the policy's stripe_width {policy.stripe_width}"
            )
        if s.block_size != s.data_lengths[0]:
            raise FormatError(f"{where} stripe {i}: block_size {s.block_size} is not its first shard's length")
        lengths.extend(s.data_lengths)
    if not lengths:
        if entry.size != 0:
            raise FormatError(f"{where} has {entry.size} bytes but no stripes")
        return
    shard = lengths[0]
    if shard > policy.shard_size:
        raise FormatError(f"{where}: shards of {shard} bytes exceed the policy's shard_size {policy.shard_size}")
    if any(length != shard for length in lengths[:-1]) or lengths[-1] > shard:
        raise FormatError(f"{where}: only the last data shard of a file may differ in length")
    if sum(lengths) != entry.size:
        raise FormatError(f"{where}: data shards add up to {sum(lengths)} bytes, the file has {entry.size}")


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True, order=True)
class CatalogEntry:
    """One stored version as the catalog lists it (enough for `ls` without the manifest)."""

    name: str
    version: VersionId
    manifest_id: bytes
    size: int
    files: int
    tolerance: int
    created: float

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> CatalogEntry:
        """The entry that announces ``manifest``."""
        return cls(
            name=manifest.name,
            version=manifest.version,
            manifest_id=manifest.id,
            size=manifest.total_size(),
            files=len(manifest.files),
            tolerance=manifest.tolerance,
            created=float(manifest.created),
        )

    @property
    def spec(self) -> str:
        """"NAME@COUNTER.NODE", which resolves to exactly this version."""
        return f"{self.name}@{self.version}"


class CatalogNotFound(PeerstoreError):
    """A checkpoint name or version is not (or no longer) in the catalog, or a version
    spec is ambiguous; ``choices`` lists what does exist nearby."""

    def __init__(self, message: str, choices: Iterable[str] = ()):
        self.choices = tuple(choices)
        super().__init__(message)


class CatalogConflict(CatalogNotFound):
    """One version id is claimed by two different checkpoints: corruption, reported and
    never resolved by picking one. ``entries`` are the claimants."""

    def __init__(self, spec: str, entries: Iterable[CatalogEntry]):
        self.entries = tuple(entries)
        first = self.entries[0]
        ids = ", ".join(e.manifest_id.hex()[:16] for e in self.entries)
        super().__init__(
            f"{spec}: version {first.version} of {first.name} is claimed by {len(self.entries)} different "
            f"checkpoints (manifests {ids}); this is catalog corruption, both are kept: see `peerstore status` "
            "and report it",
            (),
        )


_SHOWN_CHOICES = 8


class Catalog:
    """State-based CRDT of stored versions: a grow-only set of entries plus grow-only
    tombstones, both keyed by (name, VersionId). Merge is set union, so replicas that
    have seen the same updates are equal whatever the order. Removing a name tombstones
    only the versions this replica has seen, so a concurrent put elsewhere survives; a
    tombstone may arrive before its entry and still hides it.

    Two different entries under one (name, version) can only come from corruption (a
    version id is never reused: coordinators reserve counters durably). Merge never
    chooses between them: both are kept (set union is still a join), ``conflicts()``
    reports them, and resolving that version fails with :class:`CatalogConflict` rather
    than return either one silently.
    """

    def __init__(
        self,
        entries: Iterable[CatalogEntry] = (),
        tombstones: Iterable[tuple[str, VersionId]] = (),
    ):
        self._versions: dict[str, dict[VersionId, tuple[CatalogEntry, ...]]] = {}  # sorted; >1: conflict
        self._removed: dict[str, set[VersionId]] = {}
        self._digest: bytes | None = None
        for entry in entries:
            self.add(entry)
        for name, version in tombstones:
            self.tombstone(name, version)

    # state -------------------------------------------------------------------------

    @property
    def entries(self) -> frozenset[CatalogEntry]:
        """Every entry ever added, tombstoned or not."""
        return frozenset(e for versions in self._versions.values() for same in versions.values() for e in same)

    @property
    def tombstones(self) -> frozenset[tuple[str, VersionId]]:
        """Every (name, version) removed."""
        return frozenset((name, v) for name, versions in self._removed.items() for v in versions)

    def add(self, entry: CatalogEntry) -> bool:
        """Record a stored version; True if that changed the catalog."""
        versions = self._versions.setdefault(entry.name, {})
        current = versions.get(entry.version, ())
        if entry in current:
            return False
        versions[entry.version] = tuple(sorted((*current, entry)))
        self._digest = None
        return True

    def tombstone(self, name: str, version: VersionId) -> bool:
        """Hide (name, version) for good, whether or not its entry has arrived yet."""
        removed = self._removed.setdefault(name, set())
        if version in removed:
            return False
        removed.add(version)
        self._digest = None
        return True

    def merge(self, other: Catalog) -> bool:
        """Fold ``other`` into this catalog; True if anything changed."""
        changed = False
        for versions in other._versions.values():
            for same in versions.values():
                for entry in same:
                    changed |= self.add(entry)
        for name, removed in other._removed.items():
            for version in removed:
                changed |= self.tombstone(name, version)
        return changed

    def copy(self) -> Catalog:
        clone = Catalog()
        clone._versions = {name: dict(versions) for name, versions in self._versions.items()}
        clone._removed = {name: set(removed) for name, removed in self._removed.items()}
        clone._digest = self._digest
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        return self._versions == other._versions and self._removed == other._removed

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __len__(self) -> int:
        """Number of entries known, tombstoned ones included."""
        return sum(len(versions) for versions in self._versions.values())

    def __repr__(self) -> str:
        return f"<Catalog {len(self)} entries, {len(self.tombstones)} tombstones>"

    # queries -----------------------------------------------------------------------

    def is_live(self, name: str, version: VersionId) -> bool:
        """True if the version has arrived and is not tombstoned."""
        return version in self._versions.get(name, {}) and version not in self._removed.get(name, ())

    def live_versions(self, name: str) -> list[CatalogEntry]:
        """Live versions of ``name``, oldest first (ascending VersionId); a conflicting
        version lists every entry that claims it."""
        removed = self._removed.get(name, ())
        versions = self._versions.get(name, {})
        return [e for v in sorted(versions) if v not in removed for e in versions[v]]

    def latest(self, name: str) -> CatalogEntry | None:
        """The newest live version of ``name``, or None."""
        live = self.live_versions(name)
        return live[-1] if live else None

    def conflicts(self) -> list[tuple[CatalogEntry, ...]]:
        """Every (name, version) claimed by more than one entry, tombstoned or not:
        corruption to report, never to resolve by picking one."""
        return [same for name in sorted(self._versions) for _, same in sorted(self._versions[name].items())
                if len(same) > 1]

    def names(self) -> list[str]:
        """Names with at least one live version, sorted."""
        return sorted(name for name in self._versions if self.live_versions(name))

    def resolve(self, spec: str) -> CatalogEntry:
        """"NAME" -> latest live version; "NAME@3" -> the live version with counter 3;
        "NAME@3.ab12" -> counter 3 whose node id starts with ab12. CatalogNotFound when
        nothing or more than one version matches; InvalidNameError on a malformed spec."""
        name, selector = parse_spec(spec)
        live = self.live_versions(name)
        if selector is None:
            if not live:
                raise self._missing_name(name)
            return self._unique(spec, live[-1])
        counter, prefix = parse_version_selector(selector)

        def selected(v: VersionId) -> bool:
            return v.counter == counter and v.node.startswith(prefix)

        matches = [e for e in live if selected(e.version)]
        if len({e.version for e in matches}) == 1:
            return self._unique(spec, matches[0])
        if matches:
            choices = [e.spec for e in matches]
            raise CatalogNotFound(
                f"{spec} is ambiguous: {len(matches)} versions have counter {counter} (stored at the same time "
                f"through different nodes): {_listing(choices)}; name one in full",
                choices,
            )
        choices = [e.spec for e in live]
        if any(selected(v) for v in self._removed.get(name, ())):
            problem = f"{spec} was removed"
        elif not live:
            raise self._missing_name(name)
        else:
            problem = f"no version {selector} of {name}"
        if not choices:
            raise CatalogNotFound(f"{problem}, and {name} has no live versions", ())
        raise CatalogNotFound(f"{problem}; live versions: {_listing(choices)}", choices)

    def _unique(self, spec: str, entry: CatalogEntry) -> CatalogEntry:
        """``entry``, unless another entry claims its version for another manifest
        (CatalogConflict). Claims that differ only in listing details name the same bytes."""
        same = self._versions[entry.name][entry.version]
        if len({e.manifest_id for e in same}) > 1:
            raise CatalogConflict(spec, same)
        return entry

    def next_counter(self, name: str) -> int:
        """The counter for a new version of ``name``: one past every counter seen for it,
        live or tombstoned (a per-name Lamport clock)."""
        seen = [v.counter for v in self._versions.get(name, ())]
        seen.extend(v.counter for v in self._removed.get(name, ()))
        return max(seen, default=0) + 1

    def rm(self, spec_or_name: str) -> list[VersionId]:
        """Tombstone "NAME" (every live version this catalog has seen) or "NAME@V" (one);
        return the versions removed. CatalogNotFound when there is nothing to remove."""
        name, selector = parse_spec(spec_or_name)
        if selector is None:
            victims = sorted({e.version for e in self.live_versions(name)})
            if not victims:
                raise self._missing_name(name)
        else:
            victims = [self.resolve(spec_or_name).version]
        for version in victims:
            self.tombstone(name, version)
        return victims

    def _missing_name(self, name: str) -> CatalogNotFound:
        if self._versions.get(name) or self._removed.get(name):
            return CatalogNotFound(f"every version of {name} has been removed", ())
        names = self.names()
        first = name.split("/", 1)[0]
        nearby = difflib.get_close_matches(name, names, n=_SHOWN_CHOICES, cutoff=0.6)
        nearby += [n for n in names if n.split("/", 1)[0] == first and n not in nearby]
        nearby = nearby[:_SHOWN_CHOICES]
        if nearby:
            return CatalogNotFound(f"no checkpoint named {name}; did you mean: {', '.join(nearby)}", nearby)
        if names:
            return CatalogNotFound(f"no checkpoint named {name} ({len(names)} others exist; see `peerstore ls`)", ())
        return CatalogNotFound(f"no checkpoint named {name}: the catalog is empty", ())

    # encoding ----------------------------------------------------------------------

    def digest(self) -> bytes:
        """BLAKE3 of the canonical encoding: equal digests mean equal catalogs."""
        if self._digest is None:
            self._digest = blake3.blake3(self.encode()).digest()
        return self._digest

    def encode(self) -> bytes:
        """Canonical msgpack: equal catalogs give equal bytes."""
        return _pack(
            {
                "format": FORMAT_VERSION,
                "entries": [
                    [e.name, e.version.counter, e.version.node, e.manifest_id, e.size, e.files, e.tolerance,
                     float(e.created)]
                    for e in sorted(self.entries)
                ],
                "tombstones": [[name, v.counter, v.node] for name, v in sorted(self.tombstones)],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Catalog:
        """Parse and check a catalog; FormatError on anything wrong."""
        doc = _unpack(data, "catalog", MAX_CATALOG_BYTES)
        top = _Fields(doc, "catalog", ("format", "entries", "tombstones"))
        catalog = cls()
        try:
            for i, raw in enumerate(top.array("entries", MAX_CATALOG_ENTRIES)):
                catalog.add(_catalog_entry(raw, f"catalog entries[{i}]"))
            for i, raw in enumerate(top.array("tombstones", MAX_CATALOG_ENTRIES)):
                where = f"catalog tombstones[{i}]"
                name, counter, node = _array(raw, where, 3, exact=True)
                catalog.tombstone(validate_name(_str(name, where, MAX_NAME_LEN)), _version((counter, node), where))
        except InvalidNameError as err:
            raise FormatError(f"catalog: {err}") from None
        return catalog


SEAL_MAGIC = b"peerstore-sealed-1\n"


def seal(blob: bytes) -> bytes:
    """``blob`` with a BLAKE3 checksum in front, for local state files (catalog,
    counters): rot in them is found when they are read back, not served."""
    return SEAL_MAGIC + blake3.blake3(blob).digest() + blob


def unseal(data: bytes, what: str) -> bytes:
    """The blob ``seal`` wrapped; FormatError if the checksum does not match. Files
    written before sealing (no magic) are returned as they are, for their decoder to check."""
    if not data.startswith(SEAL_MAGIC):
        return data
    digest, blob = data[len(SEAL_MAGIC): len(SEAL_MAGIC) + ID_LEN], data[len(SEAL_MAGIC) + ID_LEN:]
    if blake3.blake3(blob).digest() != digest:
        raise FormatError(f"{what} does not match its checksum (the file has rotted or was cut short)")
    return blob


def encode_counters(counters: Mapping[str, int]) -> bytes:
    """The durable record of the version counters a node has reserved, per name."""
    return _pack({"format": FORMAT_VERSION, "counters": sorted([name, c] for name, c in counters.items())})


def decode_counters(data: bytes) -> dict[str, int]:
    """Parse encode_counters' bytes; FormatError on anything wrong."""
    top = _Fields(_unpack(data, "counters", MAX_CATALOG_BYTES), "counters", ("format", "counters"))
    counters: dict[str, int] = {}
    try:
        for i, raw in enumerate(top.array("counters", MAX_CATALOG_ENTRIES)):
            where = f"counters[{i}]"
            name, counter = _array(raw, where, 2, exact=True)
            counters[validate_name(_str(name, where, MAX_NAME_LEN))] = _int(counter, where, 1, MAX_COUNTER)
    except InvalidNameError as err:
        raise FormatError(f"counters: {err}") from None
    return counters


def _catalog_entry(raw: object, where: str) -> CatalogEntry:
    name, counter, node, manifest_id, size, files, tolerance, created = _array(raw, where, 8, exact=True)
    created = _float(created, f"{where} created")
    if not math.isfinite(created):
        raise FormatError(f"{where}: created time must be finite, got {created!r}")
    return CatalogEntry(
        name=validate_name(_str(name, f"{where} name", MAX_NAME_LEN)),
        version=_version((counter, node), where),
        manifest_id=_id(manifest_id, f"{where} manifest id"),
        size=_int(size, f"{where} size", 0, MAX_FILE_SIZE),
        files=_int(files, f"{where} files", 0, MAX_FILES),
        tolerance=_int(tolerance, f"{where} tolerance", 0, MAX_TOLERANCE),
        created=created,
    )


def _listing(specs: list[str]) -> str:
    shown = ", ".join(specs[-_SHOWN_CHOICES:])  # the newest are the likeliest wanted
    hidden = len(specs) - _SHOWN_CHOICES
    return f"{shown} (and {hidden} older)" if hidden > 0 else shown


# --------------------------------------------------------------------------- msgpack


def _pack(doc: object) -> bytes:
    """msgpack with every map's keys sorted, so equal documents give equal bytes."""
    try:
        return msgpack.packb(_sorted_maps(doc), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise FormatError(f"cannot encode: {err}") from None


def _sorted_maps(obj: object) -> object:
    if isinstance(obj, dict):
        return {key: _sorted_maps(obj[key]) for key in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_sorted_maps(x) for x in obj]
    return obj


def _unpack(data: object, what: str, max_bytes: int) -> object:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what} must be bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise FormatError(f"{what} is {size} bytes; the limit is {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=_MAX_STR_BYTES,
            max_bin_len=ID_LEN,
            max_array_len=min(_MAX_ARRAY_LEN, size),
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as err:
        raise FormatError(f"{what} is not valid msgpack: {err}") from None


class _Fields:
    """A decoded msgpack map with exactly the expected keys, read with type checks."""

    def __init__(self, raw: object, where: str, keys: tuple[str, ...], versioned: bool = True):
        if not isinstance(raw, dict):
            raise FormatError(f"{where} must be a map, got {type(raw).__name__}")
        if versioned:
            _check_format(raw, where)
        missing = [k for k in keys if k not in raw]
        unknown = [k for k in raw if k not in keys]
        if missing or unknown:
            raise FormatError(f"{where}: missing fields {missing}, unknown fields {unknown!r:.200}")
        self.raw: Mapping[str, object] = raw
        self.where = where

    def get(self, key: str) -> object:
        return self.raw[key]

    def integer(self, key: str, low: int, high: int) -> int:
        return _int(self.raw[key], f"{self.where} {key}", low, high)

    def string(self, key: str, max_bytes: int) -> str:
        return _str(self.raw[key], f"{self.where} {key}", max_bytes)

    def blob(self, key: str, length: int) -> bytes:
        return _id(self.raw[key], f"{self.where} {key}", length)

    def real(self, key: str) -> float:
        return _float(self.raw[key], f"{self.where} {key}")

    def flag(self, key: str) -> bool:
        value = self.raw[key]
        if not isinstance(value, bool):
            raise FormatError(f"{self.where} {key} must be a boolean, got {type(value).__name__}")
        return value

    def array(self, key: str, max_len: int = _MAX_ARRAY_LEN) -> tuple:
        return _array(self.raw[key], f"{self.where} {key}", max_len)


def _check_format(raw: dict, where: str) -> None:
    version = raw.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{where} has no valid format version (got {version!r:.40})")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{where} format {version} is newer than this peerstore understands ({FORMAT_VERSION}); upgrade peerstore"
        )


def _int(value: object, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{where} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise FormatError(f"{where} must be {low} to {high}, got {value}")
    return value


def _float(value: object, where: str) -> float:
    if not isinstance(value, float):
        raise FormatError(f"{where} must be a float, got {type(value).__name__}")
    return value


def _str(value: object, where: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where} must be a string, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise FormatError(f"{where} is longer than {max_bytes} characters")
    return value


def _id(value: object, where: str, length: int = ID_LEN) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise FormatError(f"{where} must be {length} bytes, got {got}")
    return value


def _array(value: object, where: str, max_len: int = _MAX_ARRAY_LEN, exact: bool = False) -> tuple:
    if not isinstance(value, tuple):
        raise FormatError(f"{where} must be an array, got {type(value).__name__}")
    if (len(value) != max_len) if exact else (len(value) > max_len):
        raise FormatError(f"{where} must have {'exactly' if exact else 'at most'} {max_len} items, got {len(value)}")
    return value


def _version(raw: object, where: str) -> VersionId:
    counter, node = _array(raw, where, 2, exact=True)
    try:
        return VersionId(_int(counter, f"{where} counter", 1, MAX_COUNTER), node)
    except InvalidNameError as err:
        raise FormatError(f"{where}: {err}") from None
