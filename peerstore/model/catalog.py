"""The catalog: a CRDT of every stored version, replicated to every node.

Also the durable record of the version counters a node has reserved. Decoding is strict
and bounded, like the manifest's. Pure data, no I/O.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import blake3

from peerstore.errors import FormatError, InvalidNameError, PeerstoreError
from peerstore.model.codec import FORMAT_VERSION, Fields, array, digest, integer, pack, real, text, unpack_document
from peerstore.model.manifest import MAX_FILE_SIZE, MAX_TOLERANCE, Manifest, decode_version
from peerstore.model.names import (
    MAX_COUNTER, MAX_FILES, MAX_NAME_LEN, VersionId, name_key, parse_spec, parse_version_selector, validate_name,
)

MAX_CATALOG_BYTES = 64 * 1024 * 1024
MAX_CATALOG_ENTRIES = 1_000_000  # entries, and separately tombstones

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

    def is_tombstoned(self, name: str, version: VersionId) -> bool:
        """True if (name, version) was removed, whether or not its entry has arrived."""
        return version in self._removed.get(name, ())

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

    def case_clash(self, name: str) -> str | None:
        """A name with live versions that differs from ``name`` only by case, while
        ``name`` itself has none: a put of ``name`` would make a second directory that
        collides with it on macOS, so the coordinator refuses it. None when there is no
        such name, or when ``name`` already has live versions (two coordinators raced,
        and both names exist: puts to either go on; ``rm`` one of them to clear it).

        "Exists" means live in this replica: a name another node stored a moment ago and
        that has not reached this catalog yet is not seen (docs/architecture.md)."""
        if self.live_versions(name):
            return None
        key = name_key(name)
        clashing = sorted(other for other in self._versions if other != name and name_key(other) == key)
        return next((other for other in clashing if self.live_versions(other)), None)

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
        return pack(
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
        doc = unpack_document(data, "catalog", MAX_CATALOG_BYTES)
        top = Fields(doc, "catalog", ("format", "entries", "tombstones"))
        catalog = cls()
        try:
            for i, raw in enumerate(top.array("entries", MAX_CATALOG_ENTRIES)):
                catalog.add(_catalog_entry(raw, f"catalog entries[{i}]"))
            for i, raw in enumerate(top.array("tombstones", MAX_CATALOG_ENTRIES)):
                where = f"catalog tombstones[{i}]"
                name, counter, node = array(raw, where, 3, exact=True)
                catalog.tombstone(validate_name(text(name, where, MAX_NAME_LEN)), decode_version((counter, node), where))
        except InvalidNameError as err:
            raise FormatError(f"catalog: {err}") from None
        return catalog




def encode_counters(counters: Mapping[str, int]) -> bytes:
    """The durable record of the version counters a node has reserved, per name."""
    return pack({"format": FORMAT_VERSION, "counters": sorted([name, c] for name, c in counters.items())})


def decode_counters(data: bytes) -> dict[str, int]:
    """Parse encode_counters' bytes; FormatError on anything wrong."""
    top = Fields(unpack_document(data, "counters", MAX_CATALOG_BYTES), "counters", ("format", "counters"))
    counters: dict[str, int] = {}
    try:
        for i, raw in enumerate(top.array("counters", MAX_CATALOG_ENTRIES)):
            where = f"counters[{i}]"
            name, counter = array(raw, where, 2, exact=True)
            counters[validate_name(text(name, where, MAX_NAME_LEN))] = integer(counter, where, 1, MAX_COUNTER)
    except InvalidNameError as err:
        raise FormatError(f"counters: {err}") from None
    return counters


def _catalog_entry(raw: object, where: str) -> CatalogEntry:
    name, counter, node, manifest_id, size, files, tolerance, created = array(raw, where, 8, exact=True)
    created = real(created, f"{where} created")
    if not math.isfinite(created):
        raise FormatError(f"{where}: created time must be finite, got {created!r}")
    return CatalogEntry(
        name=validate_name(text(name, f"{where} name", MAX_NAME_LEN)),
        version=decode_version((counter, node), where),
        manifest_id=digest(manifest_id, f"{where} manifest id"),
        size=integer(size, f"{where} size", 0, MAX_FILE_SIZE),
        files=integer(files, f"{where} files", 0, MAX_FILES),
        tolerance=integer(tolerance, f"{where} tolerance", 0, MAX_TOLERANCE),
        created=created,
    )


def _listing(specs: list[str]) -> str:
    shown = ", ".join(specs[-_SHOWN_CHOICES:])  # the newest are the likeliest wanted
    hidden = len(specs) - _SHOWN_CHOICES
    return f"{shown} (and {hidden} older)" if hidden > 0 else shown


# --------------------------------------------------------------------------- msgpack
