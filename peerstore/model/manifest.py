"""Manifests: one immutable document per checkpoint version.

Canonical msgpack carrying a format version. Encoding is deterministic, so a manifest's id
is the BLAKE3 of its encoding; decoding is strict and bounded, because the bytes come from
other nodes: anything wrong raises FormatError and nothing else. Pure data, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import blake3

from peerstore.ec.layout import MAX_CODE_WIDTH
from peerstore.errors import FormatError, InvalidNameError
from peerstore.model.codec import FORMAT_VERSION, ID_LEN, Fields, array, digest, integer, pack, unpack_document
from peerstore.model.names import MAX_COUNTER, MAX_FILES, MAX_NAME_LEN, MAX_PATH_LEN, VersionId, is_node_id, validate_name, validate_paths
from peerstore.model.policy import MAX_PARITY, MAX_STRIPE_WIDTH, Policy

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_FILE_SIZE = 2**63 - 1
MAX_TOLERANCE = 65_535  # sanity bound: tolerance never exceeds the cluster size (an empty checkpoint's is n-1)



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
        packed = pack(_manifest_document(self))
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
        doc = unpack_document(data, "manifest", MAX_MANIFEST_BYTES)
        top = Fields(doc, "manifest", _MANIFEST_KEYS)
        try:
            manifest = cls(
                name=top.string("name", MAX_NAME_LEN),
                version=decode_version(top.get("version"), "manifest version"),
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

    def stripe_offsets(self) -> Iterator[tuple[int, int, StripeEntry]]:
        """(file index, byte offset in that file, stripe) over all files in placement order:
        where each stripe's data lands when the checkpoint is written back."""
        for file_index, entry in enumerate(self.files):
            offset = 0
            for stripe in entry.stripes:
                yield file_index, offset, stripe
                offset += sum(stripe.data_lengths)

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
    fields = Fields(raw, "manifest policy", _POLICY_KEYS, versioned=False)
    policy = Policy(**{key: fields.integer(key, 0, MAX_FILE_SIZE) for key in _POLICY_KEYS})
    problems = policy.problems()
    if problems:
        raise FormatError("manifest policy: " + "; ".join(f"{key}: {problem}" for key, problem in problems))
    return policy


def _file(raw: object, index: int) -> FileEntry:
    where = f"manifest files[{index}]"
    fields = Fields(raw, where, _FILE_KEYS, versioned=False)
    return FileEntry(
        path=fields.string("path", MAX_PATH_LEN),
        size=fields.integer("size", 0, MAX_FILE_SIZE),
        mode=fields.integer("mode", 0, 0o7777),
        blake3=fields.blob("blake3", ID_LEN),
        stripes=tuple(_stripe(s, f"{where}.stripes[{i}]") for i, s in enumerate(fields.array("stripes"))),
    )


def _stripe(raw: object, where: str) -> StripeEntry:
    fields = Fields(raw, where, _STRIPE_KEYS, versioned=False)
    return StripeEntry(
        k=fields.integer("k", 1, MAX_STRIPE_WIDTH),
        p=fields.integer("p", 0, MAX_PARITY),
        block_size=fields.integer("block_size", 1, MAX_FILE_SIZE),
        data_ids=tuple(digest(x, f"{where}.data_ids") for x in fields.array("data_ids", MAX_STRIPE_WIDTH)),
        data_lengths=tuple(
            integer(x, f"{where}.data_lengths", 1, MAX_FILE_SIZE)
            for x in fields.array("data_lengths", MAX_STRIPE_WIDTH)
        ),
        parity_ids=tuple(digest(x, f"{where}.parity_ids") for x in fields.array("parity_ids", MAX_PARITY)),
    )


def _node_list(raw: object, where: str) -> tuple[str, ...]:
    nodes = array(raw, where, MAX_CODE_WIDTH)
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


def decode_version(raw: object, where: str) -> VersionId:
    counter, node = array(raw, where, 2, exact=True)
    try:
        return VersionId(integer(counter, f"{where} counter", 1, MAX_COUNTER), node)
    except InvalidNameError as err:
        raise FormatError(f"{where}: {err}") from None
