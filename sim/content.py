"""Modelled payloads: a piece's bytes are named by what they hash to, not carried.

A ``Content`` says "``size`` bytes whose BLAKE3 is ``true_id``". A corrupt piece is a
Content whose true id differs from the id it is stored under, so every hash check in the
shell behaves exactly as with real bytes, while a 2.5 GB checkpoint costs a few objects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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

    def next_step(self, rng: random.Random, changed: float = 0.25) -> "FileModel":
        """This file one training step later: frozen layers keep their bytes (so a put of
        it stores pieces already held), about ``changed`` of the shards are new."""
        shards = [Content(model_id("step", c.true_id, rng.random()), c.size) if rng.random() < changed else c
                  for c in self.shards]
        return FileModel(self.path, self.size, shards, self.mode)

    def with_zeros(self, rng: random.Random, fraction: float) -> "FileModel":
        """About ``fraction`` of the full shards replaced by all-zero ones, whose bytes
        (and pieces) every file and checkpoint share."""
        full = self.shards[0].size if self.shards else 0
        shards = [Content(model_id("zero", c.size), c.size) if c.size == full and rng.random() < fraction else c
                  for c in self.shards]
        return FileModel(self.path, self.size, shards, self.mode)

    @property
    def blake3(self) -> bytes:
        return model_id("file", tuple(c.true_id for c in self.shards))


class TrainingRun:
    """Checkpoints as a training run writes them, so that dedup paths run: each new one
    is a fresh checkpoint, the next step of an earlier one (most shards unchanged: frozen
    layers), or the very same bytes again (a copy stored under another name). Some shards
    of fresh ones are all-zero, shared by every file."""

    def __init__(self, rng: random.Random, fresh: Callable[[], list[FileModel]],
                 step: float = 0.45, again: float = 0.15, zeros: float = 0.1):
        self.rng = rng
        self.fresh = fresh
        self.step, self.again, self.zeros = step, again, zeros
        self.history: list[list[FileModel]] = []

    def next(self) -> list[FileModel]:
        rng, roll = self.rng, self.rng.random()
        if self.history and roll < self.again:
            files = list(rng.choice(self.history))
        elif self.history and roll < self.again + self.step:
            files = [f.next_step(rng, rng.uniform(0.1, 0.4)) for f in rng.choice(self.history)]
        else:
            files = [f.with_zeros(rng, self.zeros) for f in self.fresh()]
        self.history.append(files)
        return files


def parity_content(data_ids: Iterable[bytes], j: int, size: int) -> Content:
    """Parity chunk ``j`` of a stripe is a function of the stripe's data pieces."""
    return Content(model_id("parity", tuple(data_ids), j), size)


def rotten(content: Content) -> Content:
    """The same bytes with a bit flipped: same size, different hash."""
    return Content(model_id("rot", content.true_id), content.size)
