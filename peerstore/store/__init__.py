"""The local store: content-addressed pieces, manifests and the catalog, written durably."""

from peerstore.store.meta import MetaStore
from peerstore.store.pieces import PieceStore, PieceWriter

__all__ = ["MetaStore", "PieceStore", "PieceWriter"]
