"""What goes into the node core and what comes out of it.

Inputs are client commands, received messages, completions of effects the core asked for,
and membership changes. Effects are instructions to the shell (the trio daemon or the
simulator): send this message, store this piece, read this stripe, deliver this output.

The core never holds checkpoint bytes. Payloads are named by *handles*: opaque values the
shell hands the core (a received piece, a loaded piece, an encoded stripe's slot) and gets
back in effects. The core only compares handles for identity and passes them around.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from peerstore.model.catalog import CatalogEntry
from peerstore.model.manifest import Manifest
from peerstore.wire.messages import Message

Handle = Hashable  # opaque payload reference owned by the shell
ClientRef = Hashable  # opaque reference to a waiting client (CLI connection, test)


# Client commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One file of a checkpoint to store: its path inside the checkpoint, size and mode."""

    path: str
    size: int
    mode: int = 0o644


@dataclass(frozen=True)
class PutCommand:
    client: ClientRef
    name: str
    files: tuple[FileSpec, ...]
    is_dir: bool = False
    created: float = 0.0  # wall clock, informational only


@dataclass(frozen=True)
class GetCommand:
    client: ClientRef
    spec: str  # NAME or NAME@V


@dataclass(frozen=True)
class ListCommand:
    client: ClientRef
    name: str | None = None  # None: every name


@dataclass(frozen=True)
class RemoveCommand:
    client: ClientRef
    spec: str


@dataclass(frozen=True)
class StatusCommand:
    client: ClientRef


@dataclass(frozen=True)
class VerifyCommand:
    """Check checkpoints end to end: ``spec`` (NAME or NAME@V), or every live one (None)."""

    client: ClientRef
    spec: str | None = None


@dataclass(frozen=True)
class CancelCommand:
    """The client went away: abort its operation if it has not committed."""

    client: ClientRef


# Other inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageReceived:
    peer: str
    message: Message
    payload: Handle | None = None  # the piece bytes that came with it, held by the shell


@dataclass(frozen=True)
class PeerUnreachable:
    """Sending request ``req`` to ``peer`` failed (connection refused, reset, handshake)."""

    peer: str
    req: int


@dataclass(frozen=True)
class BytesMoved:
    """Bytes moved to or from each of ``peers`` since the shell's previous report. Shells
    report every ``core.messenger.PROGRESS_INTERVAL`` seconds while bytes move: a
    request times out on its peer's silence, not on time spent in our own send queue."""

    peers: frozenset[str]


@dataclass(frozen=True)
class Started:
    """The node (re)started: catch up with its peers."""


@dataclass(frozen=True)
class CatalogDiffers:
    """Gossip says ``peer``'s catalog is not ours: push-pull with it."""

    peer: str


@dataclass(frozen=True)
class MembersChanged:
    alive: frozenset[str]  # node ids currently believed alive, including this node


@dataclass(frozen=True)
class StripeEncoded:
    """Completion of EncodeStripe: the shell holds the stripe's k data shards and p parity
    chunks; ``handles[i]`` names position i's bytes."""

    op: int
    stripe: int
    data_ids: tuple[bytes, ...]
    data_lengths: tuple[int, ...]
    parity_ids: tuple[bytes, ...]
    handles: tuple[Handle, ...]
    error: str = ""  # non-empty: the source could not be read


@dataclass(frozen=True)
class FileRead:
    """Completion of FinishFileRead: the whole-file BLAKE3 of what was read."""

    op: int
    file_index: int
    blake3: bytes
    error: str = ""


@dataclass(frozen=True)
class PieceStoredLocally:
    """Completion of StorePieceLocal: durable (fsynced, renamed, dir fsynced) when ok."""

    tag: Any
    piece_id: bytes
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class PieceLoaded:
    """Completion of LoadPiece: handle is None when this node does not have the piece."""

    tag: Any
    piece_id: bytes
    handle: Handle | None


@dataclass(frozen=True)
class HeldPieceVerified:
    """Completion of VerifyHeldPiece: ok when the stored copy still hashes to its id.
    A copy that does not was moved aside by the shell and is no longer held. ``missing``:
    there was no copy to read (removed meanwhile), which is not corruption; ``size``: the
    bytes read (scrub paces by them)."""

    tag: Any
    piece_id: bytes
    ok: bool
    size: int = 0
    missing: bool = False


@dataclass(frozen=True)
class CountersPersisted:
    tag: Any
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class PieceVerified:
    tag: Any
    ok: bool


@dataclass(frozen=True)
class ManifestStoredLocally:
    tag: Any
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ManifestLoaded:
    tag: Any
    blob: bytes | None


@dataclass(frozen=True)
class CatalogPersisted:
    tag: Any
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class PiecesDeleted:
    """Completion of DeletePieces: ``piece_ids`` are gone from disk (or were already);
    any other id of the effect could not be deleted and is still held (``error`` says why)."""

    tag: Any
    piece_ids: tuple[bytes, ...]
    freed_bytes: int
    error: str = ""


@dataclass(frozen=True)
class PiecesRebuilt:
    """Completion of RebuildPieces: ``handles`` names the rebuilt bytes by position (empty,
    with ``error``, when the pieces given could not be decoded). Unverified: the core
    checks each against its id before storing it."""

    tag: Any
    handles: tuple[tuple[int, Handle], ...]
    error: str = ""


@dataclass(frozen=True)
class MembershipPersisted:
    tag: Any
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ManifestsDeleted:
    """Completion of DeleteManifests."""

    tag: Any
    error: str = ""


@dataclass(frozen=True)
class StripeDelivered:
    """Completion of DeliverStripe: the stripe's bytes reached the client."""

    op: int
    stripe: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class StoreHealthChanged:
    """The shell saw the local store turn read-only (a write failed with EROFS, what a
    dying disk or SD card is remounted as; ``writable`` False) or writable again. The core
    decides what follows (core/store_health.py)."""

    writable: bool
    reason: str = ""


@dataclass(frozen=True)
class StoreProbed:
    """Completion of ProbeStore: ``ok`` when a small file could be written durably and
    removed again; ``error`` says why not."""

    tag: Any
    ok: bool
    error: str = ""


# Effects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send a message to a peer; ``payload`` names bytes to send raw after it."""

    peer: str
    message: Message
    payload: Handle | None = None
    payload_piece: bytes | None = None  # or: send this piece from the local store


@dataclass(frozen=True)
class EncodeStripe:
    """Read ``stripe`` of file ``file_index`` of the put's source, hash the shards, compute
    parity, keep the bytes; answer with StripeEncoded. Reads of one file come in order."""

    op: int
    client: ClientRef
    stripe: int
    file_index: int
    offset: int
    shard_lengths: tuple[int, ...]
    parity: int


@dataclass(frozen=True)
class FinishFileRead:
    """All stripes of a file were requested; answer with FileRead (whole-file hash)."""

    op: int
    client: ClientRef
    file_index: int
    size: int


@dataclass(frozen=True)
class ReleaseHandles:
    handles: tuple[Handle, ...]


@dataclass(frozen=True)
class StorePieceLocal:
    """Write the piece named by ``handle`` to the local store durably."""

    tag: Any
    piece_id: bytes
    handle: Handle


@dataclass(frozen=True)
class LoadPiece:
    """Load a piece from the local store (unverified); answer with PieceLoaded."""

    tag: Any
    piece_id: bytes


@dataclass(frozen=True)
class VerifyHeldPiece:
    """Re-read a piece this node holds and hash it; answer with HeldPieceVerified. A copy
    that no longer matches its id is moved aside (quarantined), so it is no longer held."""

    tag: Any
    piece_id: bytes


@dataclass(frozen=True)
class PersistCounters:
    """Replace the node's durable record of version counters it reserved (an opaque
    blob, ``core/snapshots.py``) and fsync it; answer with CountersPersisted."""

    tag: Any
    blob: bytes


@dataclass(frozen=True)
class VerifyPiece:
    """Hash the bytes named by ``handle`` and compare with ``piece_id``."""

    tag: Any
    piece_id: bytes
    handle: Handle


@dataclass(frozen=True)
class StoreManifestLocal:
    tag: Any
    manifest_id: bytes
    blob: bytes


@dataclass(frozen=True)
class LoadManifest:
    tag: Any
    manifest_id: bytes


@dataclass(frozen=True)
class PersistCatalog:
    """Replace the durable catalog with ``blob``. The core never has two of these
    outstanding, so the shell writes each blob as it comes."""

    tag: Any
    blob: bytes


@dataclass(frozen=True)
class DeletePieces:
    """Delete these local piece files (garbage collection); answer with PiecesDeleted.
    The core has already dropped them from its inventory. No fsync is needed: a delete
    that a crash undoes only brings back an unreferenced piece, collected again."""

    tag: Any
    piece_ids: tuple[bytes, ...]
    reason: str = "gc"  # "gc": no live version references them (the simulator checks that)


@dataclass(frozen=True)
class RebuildPieces:
    """Repair: re-create the pieces at positions ``want`` of a stripe from the verified
    pieces ``pieces`` ((position, handle), at least k): decode its data shards, re-encode
    its parity (``peerstore.ec.rebuild``); answer with PiecesRebuilt. The input handles
    stay the core's to release."""

    tag: Any
    k: int
    p: int
    shard_lengths: tuple[int, ...]
    pieces: tuple[tuple[int, Handle], ...]
    want: tuple[int, ...]
    piece_ids: tuple[bytes, ...] = ()  # the stripe's ids by position (for the simulator's model)


@dataclass(frozen=True)
class PersistMembership:
    """Replace the node's durable record of its last stable membership (a sealed blob,
    ``core/quorum.py``) and fsync it; answer with MembershipPersisted."""

    tag: Any
    blob: bytes


@dataclass(frozen=True)
class DeleteManifests:
    """Delete these local manifest files (of versions a tombstone hides); answer with
    ManifestsDeleted. Missing files are not an error."""

    tag: Any
    manifest_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class ProbeStore:
    """Is the local store writable again? Write a small file durably in its temp
    directory and remove it; answer with StoreProbed."""

    tag: Any


@dataclass(frozen=True)
class DeliverStripe:
    """Hand a stripe's data to the get's client, in order. ``pieces`` maps positions
    (0..k-1 data, k.. parity) to verified handles; when a data position is missing the
    shell rebuilds the stripe from any k of them (zfec)."""

    op: int
    client: ClientRef
    stripe: int
    file_index: int
    offset: int
    k: int
    p: int
    shard_lengths: tuple[int, ...]
    pieces: tuple[tuple[int, Handle], ...]
    piece_ids: tuple[bytes, ...] = ()  # the stripe's ids by position (for the shell's checks)

    @property
    def needs_decode(self) -> bool:
        return {pos for pos, _ in self.pieces} != set(range(self.k))


# Client replies (carried by the Reply effect) --------------------------------------------


@dataclass(frozen=True)
class PutDone:
    name: str
    version: str
    manifest_id: bytes
    tolerance: int
    size: int
    pieces: int


@dataclass(frozen=True)
class Progress:
    """Bytes of the checkpoint durably stored so far (not final)."""

    done: int
    total: int


@dataclass(frozen=True)
class GetStarted:
    """The manifest of the checkpoint being fetched: the client prepares its files."""

    manifest: Manifest
    entry: CatalogEntry


@dataclass(frozen=True)
class GetDone:
    name: str
    version: str
    size: int
    degraded_stripes: int  # stripes rebuilt from parity
    fallbacks: int  # pieces fetched from a second source


@dataclass(frozen=True)
class Listing:
    entries: tuple[CatalogEntry, ...]


@dataclass(frozen=True)
class Removed:
    versions: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointStatus:
    entry: CatalogEntry
    pieces: int
    tolerance: int  # now, over live holders (-1: not restorable now)
    best: int = -1  # the best tolerance the live nodes allow (core/repair.py)
    below_policy: bool = False  # a shard short of two copies, a parity chunk missing, or tolerance < best
    repair_bytes: int = 0  # what repair has to re-create to bring it back to its policy


@dataclass(frozen=True)
class Status:
    node_id: str
    alive: tuple[str, ...]
    checkpoints: tuple[CheckpointStatus, ...]
    conflicts: tuple[tuple[CatalogEntry, ...], ...] = ()  # versions claimed twice: corruption
    # Each live node's report about itself (core/node_report.py: "scrub", ...); None for a
    # node that did not answer.
    nodes: tuple[tuple[str, dict[str, Any] | None], ...] = ()
    # Repair (docs/self-healing.md): bytes still to re-create for every checkpoint, the
    # repair rate every node reports together, and the ETA from them (None: unknown).
    repair_bytes_left: int = 0
    repair_rate: float = 0.0
    repair_eta: float | None = None
    # Live members that did not answer within settings.status_timeout (node id, "timeout"
    # or "unreachable"): their reports are missing and their pieces are not counted.
    unanswered: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VerifyDone:
    """The end of a verify: plain data (core/verify.py ``verify_report``)."""

    report: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    reason: str
    outcome_unknown: bool = False


@dataclass(frozen=True)
class Reply:
    """Answer a client. ``final`` replies end its operation."""

    client: ClientRef
    body: Any
    final: bool = True


Effect = Any
Input = Any
