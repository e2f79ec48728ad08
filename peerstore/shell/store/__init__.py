"""The local store: content-addressed pieces, manifests and the catalog, written durably."""

from peerstore.shell.store.meta import MetaStore
from peerstore.shell.store.pieces import PieceStore, PieceWriter

__all__ = ["MetaStore", "PieceStore", "PieceWriter"]
