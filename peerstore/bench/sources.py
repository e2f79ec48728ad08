"""The checkpoints the benchmark stores, generated once and cached by shape, size and seed.

A cached source is reused only if its completion stamp matches, so a run interrupted
while generating never leaves a short file that a later run would mistake for a source.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blake3

from peerstore.testing.make_checkpoint import resolve_shape, write_checkpoint_dir, write_safetensors

# Largest first: the biggest architecture that still fits the requested size.
SHAPE_PREFERENCE = ("llama-1b", "llama-0.5b", "llama-135m", "tiny")


def shape_for(size: int | None) -> str:
    """The largest Llama-family shape whose scaled tensor data fits in about ``size`` bytes
    (``None``: Llama-3.2-1B as published)."""
    if size is None:
        return SHAPE_PREFERENCE[0]
    for shape in SHAPE_PREFERENCE:
        try:
            resolve_shape(shape, size)
        except ValueError:
            continue
        return shape
    raise ValueError(f"{size} bytes is too small for any checkpoint shape; use at least 1MiB")


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cached(path: Path, recipe: dict) -> bool:
    stamp = _stamp(path)
    try:
        saved = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return saved.get("recipe") == recipe and path.exists() and _tree_bytes(path) == saved.get("bytes")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def safetensors_source(cache: Path, size: int | None, seed: int) -> Path:
    """A Llama-shaped ``.safetensors`` of about ``size`` bytes under ``cache``; ``None``
    means the unscaled Llama-3.2-1B shape (2.47 GB)."""
    shape = shape_for(size)
    path = cache / f"{shape}-{'native' if size is None else size}-seed{seed}.safetensors"
    recipe = {"kind": "safetensors", "shape": shape, "size": size, "seed": seed}
    if not _cached(path, recipe):
        cache.mkdir(parents=True, exist_ok=True)
        _stamp(path).unlink(missing_ok=True)
        _remove(path)
        written = write_safetensors(path, shape, seed=seed, size=size)
        _stamp(path).write_text(json.dumps({"recipe": recipe, "bytes": written}))
    return path


def checkpoint_dir_source(cache: Path, total: int, seed: int) -> Path:
    """A Trainer-style ``checkpoint-500/`` of about ``total`` bytes (model + 2x optimizer)."""
    model = max(total // 3, 1)
    shape = shape_for(model)
    parent = cache / f"dir-{shape}-{total}-seed{seed}"
    path = parent / "checkpoint-500"
    recipe = {"kind": "checkpoint_dir", "shape": shape, "model": model, "seed": seed}
    if not _cached(parent, recipe):
        cache.mkdir(parents=True, exist_ok=True)
        _stamp(parent).unlink(missing_ok=True)
        _remove(parent)
        write_checkpoint_dir(parent, step=500, shape=shape, seed=seed, size=model)
        _stamp(parent).write_text(json.dumps({"recipe": recipe, "bytes": _tree_bytes(parent)}))
    return path


def source_bytes(path: Path) -> int:
    """Checkpoint bytes in a file or directory source."""
    return _tree_bytes(path)


def same_bytes(a: Path, b: Path) -> bool:
    """True if two files, or two directory trees, hold identical files."""
    if a.is_dir() != b.is_dir():
        return False
    if a.is_dir():
        names_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        names_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        return names_a == names_b and all(same_bytes(a / n, b / n) for n in names_a)
    if a.stat().st_size != b.stat().st_size:
        return False
    return _digest(a) == _digest(b)


def _digest(path: Path) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(str(path))
    return hasher.digest()
