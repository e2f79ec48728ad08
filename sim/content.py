"""Modelled payloads: a piece's bytes are named by what they hash to, not carried.

A ``Content`` says "``size`` bytes whose BLAKE3 is ``true_id``". A corrupt piece is a
Content whose true id differs from the id it is stored under, so every hash check in the
shell behaves exactly as with real bytes, while a 2.5 GB checkpoint costs a few objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import blake3


@dataclass(frozen=True)
class Content:
    """Modelled bytes: ``true_id`` is the BLAKE3 those bytes really have."""

    true_id: bytes
    size: int


def model_id(*parts: Any) -> bytes:
    return blake3.blake3(repr(parts).encode()).digest()


@dataclass
class FileModel:
    """A file to put, as a list of data-shard contents (``shard_size`` each, last shorter)."""

    path: str
    size: int
    shards: list[Content]
    mode: int = 0o644

    @classmethod
    def generate(cls, path: str, size: int, shard_size: int, seed: Any = 0, mode: int = 0o644) -> "FileModel":
        shards, offset = [], 0
        while offset < size:
            length = min(shard_size, size - offset)
            shards.append(Content(model_id("shard", seed, path, offset), length))
            offset += length
        return cls(path, size, shards, mode)

    @classmethod
    def repeating(cls, path: str, size: int, shard_size: int, mode: int = 0o644) -> "FileModel":
        """Every full shard has the same bytes (like an all-zero tensor region)."""
        shards, offset = [], 0
        while offset < size:
            length = min(shard_size, size - offset)
            shards.append(Content(model_id("zero", length), length))
            offset += length
        return cls(path, size, shards, mode)

    @property
    def blake3(self) -> bytes:
        return model_id("file", tuple(c.true_id for c in self.shards))


def parity_content(data_ids: Iterable[bytes], j: int, size: int) -> Content:
    """Parity chunk ``j`` of a stripe is a function of the stripe's data pieces."""
    return Content(model_id("parity", tuple(data_ids), j), size)


def rotten(content: Content) -> Content:
    """The same bytes with a bit flipped: same size, different hash."""
    return Content(model_id("rot", content.true_id), content.size)
