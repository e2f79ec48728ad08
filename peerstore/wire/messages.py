"""Node-to-node request and reply messages of the data path.

Each message is a frozen dataclass. On the wire a message becomes a msgpack header map
``{"t": TYPE, field: value, ...}``; its ``blob`` field (manifest and catalog bytes), if
any, travels as the frame payload instead. Piece bytes never appear in a message: they
travel as a frame payload the shell moves between socket and disk.

``from_header`` checks every field's type and bound, so a peer (authenticated, but
possibly buggy or running another version) cannot hand the core a malformed message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from peerstore.errors import CodecError

PIECE_ID_LEN = 32
MAX_BLOB = 64 * 1024 * 1024
MAX_ERROR_LEN = 500


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    req: int

    def to_header(self) -> dict[str, Any]:
        """The msgpack header for this message (without the blob). Fields at their
        default are left out: shorter, and a node that predates a field still reads the
        messages that do not use it."""
        header: dict[str, Any] = {"t": self.TYPE}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "blob" and not (field.default is not dataclasses.MISSING and value == field.default):
                header[field.name] = value
        return header

    @property
    def payload_blob(self) -> bytes | None:
        return getattr(self, "blob", None)


# Put path ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorePiece(Message):
    """Please store this piece durably; its bytes follow as the payload. ``background``:
    sent by repair or rebalance (the receiver's own repair need not yield to it).

    Forwarded replication (core/forwarding.py): ``forward_to`` asks the receiver to pass
    the piece on to that node too, which acknowledges it straight to the sender as the
    reply to ``forward_req`` (the receiver only ever reports a forward it could not
    make). ``ack_to``/``ack_req`` ask the receiver of such a forwarded copy to send that
    acknowledgement (a PieceStored) besides its reply."""

    TYPE = "store_piece"
    piece_id: bytes
    size: int
    background: bool = False
    forward_to: str = ""
    forward_req: int = 0
    ack_to: str = ""
    ack_req: int = 0


@dataclass(frozen=True)
class PieceStored(Message):
    """Reply to StorePiece: ok means the piece is durable (fsynced and renamed)."""

    TYPE = "piece_stored"
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class StoreManifest(Message):
    """Please store this manifest durably (not yet visible in the catalog)."""

    TYPE = "store_manifest"
    manifest_id: bytes
    blob: bytes = b""


@dataclass(frozen=True)
class ManifestStored(Message):
    TYPE = "manifest_stored"
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class CatalogUpdate(Message):
    """Merge this catalog state (encoded Catalog) and persist it before acknowledging."""

    TYPE = "catalog_update"
    blob: bytes = b""


@dataclass(frozen=True)
class CatalogAck(Message):
    TYPE = "catalog_ack"
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class SyncCatalog(Message):
    """Anti-entropy: merge my whole catalog, and answer with yours (CatalogState)."""

    TYPE = "sync_catalog"
    blob: bytes = b""


@dataclass(frozen=True)
class CatalogState(Message):
    TYPE = "catalog_state"
    blob: bytes = b""


# Get path ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchPiece(Message):
    """Send me this piece. ``background``: asked by repair or rebalance, not for a get."""

    TYPE = "fetch_piece"
    piece_id: bytes
    background: bool = False


@dataclass(frozen=True)
class PieceData(Message):
    """Reply to FetchPiece; when found, the piece bytes follow as the payload."""

    TYPE = "piece_data"
    piece_id: bytes
    found: bool


@dataclass(frozen=True)
class FetchManifest(Message):
    TYPE = "fetch_manifest"
    manifest_id: bytes


@dataclass(frozen=True)
class ManifestData(Message):
    TYPE = "manifest_data"
    found: bool
    blob: bytes = b""


@dataclass(frozen=True)
class QueryPieces(Message):
    """Which of these pieces do you hold? (inventory check for status and tolerance)"""

    TYPE = "query_pieces"
    piece_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class PiecesHeld(Message):
    TYPE = "pieces_held"
    held: bytes  # bitmap, one bit per queried piece, in order


@dataclass(frozen=True)
class RenewLease(Message):
    """A running put renews its leases on these pieces for ``seconds`` (garbage
    collection leaves them alone meanwhile); answered by PiecesHeld: which are held."""

    TYPE = "renew_lease"
    piece_ids: tuple[bytes, ...]
    seconds: int


@dataclass(frozen=True)
class DropPieces(Message):
    """Rebalance: your copies of these pieces are surplus (the sender, the pieces' owner,
    has verified enough other copies); delete those not leased to a running put nor being
    stored. Answered by PiecesDropped. At most MAX_QUERY_IDS ids. ``dry_run``: delete
    nothing, answer which copies would be dropped now (asked before a move copies a piece)."""

    TYPE = "drop_pieces"
    piece_ids: tuple[bytes, ...]
    dry_run: bool = False


@dataclass(frozen=True)
class PiecesDropped(Message):
    """Reply to DropPieces: one bit per piece in order, set when this node dropped its copy."""

    TYPE = "pieces_dropped"
    dropped: bytes


# Integrity: verify re-reads, and each node's report about itself ------------------------

MAX_VERIFY_IDS = 16  # pieces one VerifyPieces re-reads: 64 MiB at the default shard size


@dataclass(frozen=True)
class VerifyPieces(Message):
    """Re-read these pieces from your disk and check each against its id; quarantine a
    copy that does not match and have it repaired (as scrub does). Answered by
    PiecesVerified. At most MAX_VERIFY_IDS ids."""

    TYPE = "verify_pieces"
    MAX_IDS: ClassVar[int] = MAX_VERIFY_IDS
    piece_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class PiecesVerified(Message):
    """Reply to VerifyPieces, one bit per piece in order: ``held`` (there was a copy to
    read), ``ok`` (it matched its id). ``busy``: too many re-reads queued, nothing checked."""

    TYPE = "pieces_verified"
    held: bytes
    ok: bytes
    busy: bool = False


@dataclass(frozen=True)
class ReportNode(Message):
    """For status: send your report about yourself (NodeReport)."""

    TYPE = "report_node"


@dataclass(frozen=True)
class NodeReport(Message):
    """A node's report about itself: a small msgpack map (peerstore.core.node_report)."""

    TYPE = "node_report"
    blob: bytes = b""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        StorePiece, PieceStored, StoreManifest, ManifestStored, CatalogUpdate, CatalogAck,
        SyncCatalog, CatalogState,
        FetchPiece, PieceData, FetchManifest, ManifestData, QueryPieces, PiecesHeld,
        RenewLease, VerifyPieces, PiecesVerified, ReportNode, NodeReport, DropPieces, PiecesDropped,
    )
}

REPLY_TYPES = frozenset(
    {PieceStored, ManifestStored, CatalogAck, CatalogState, PieceData, ManifestData, PiecesHeld,
     PiecesVerified, NodeReport, PiecesDropped}
)
MAX_QUERY_IDS = 1024  # 34 bytes each in msgpack: well inside the 64 KiB header limit


def _check(cls: type[Message], name: str, value: Any) -> Any:
    """Validate one field by its declared type; raise CodecError naming it."""
    annotation = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    where = f"{cls.TYPE}.{name}"
    if annotation == "int":
        if type(value) is not int or not 0 <= value < 2**63:
            raise CodecError(f"{where}: expected a non-negative integer")
    elif annotation == "bool":
        if type(value) is not bool:
            raise CodecError(f"{where}: expected a boolean")
    elif annotation == "str":
        if not isinstance(value, str) or len(value) > MAX_ERROR_LEN:
            raise CodecError(f"{where}: expected a string of at most {MAX_ERROR_LEN} characters")
    elif annotation == "bytes":
        if not isinstance(value, bytes):
            raise CodecError(f"{where}: expected bytes")
        if name in ("piece_id", "manifest_id") and len(value) != PIECE_ID_LEN:
            raise CodecError(f"{where}: expected {PIECE_ID_LEN} bytes")
        if len(value) > MAX_BLOB:
            raise CodecError(f"{where}: larger than {MAX_BLOB} bytes")
    elif annotation == "tuple[bytes, ...]":
        limit = getattr(cls, "MAX_IDS", MAX_QUERY_IDS)
        if not isinstance(value, (list, tuple)) or len(value) > limit:
            raise CodecError(f"{where}: expected at most {limit} piece ids")
        if any(not isinstance(v, bytes) or len(v) != PIECE_ID_LEN for v in value):
            raise CodecError(f"{where}: every piece id must be {PIECE_ID_LEN} bytes")
        value = tuple(value)
    else:  # pragma: no cover - a new field type without a validator is a programming error
        raise AssertionError(f"no validator for {where}: {annotation}")
    return value


def from_header(header: dict[str, Any], blob: bytes | None = None) -> Message:
    """Build a message from a received header (and payload blob); CodecError if malformed."""
    if not isinstance(header, dict):
        raise CodecError("message header is not a map")
    cls = MESSAGE_TYPES.get(header.get("t"))  # type: ignore[arg-type]
    if cls is None:
        raise CodecError(f"unknown message type {header.get('t')!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    extra = set(header) - set(names) - {"t"}
    if extra:
        raise CodecError(f"{cls.TYPE}: unexpected fields {sorted(extra)}")
    values = {}
    for name in names:
        if name == "blob":
            values[name] = _check(cls, name, blob if blob is not None else b"")
            continue
        if name not in header:
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            if field.default is dataclasses.MISSING:
                raise CodecError(f"{cls.TYPE}: missing field {name!r}")
            continue
        values[name] = _check(cls, name, header[name])
    return cls(**values)
