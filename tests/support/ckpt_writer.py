"""A separate process that writes checkpoints the way trainers do: in chunks, with pauses.

    python -m tests.support.ckpt_writer SCENARIO DIR [--seed N] [--size BYTES] [--chunk BYTES]
                                        [--pause SECONDS] [--hold SECONDS] [--gap SECONDS]
                                        [--step N] [--name NAME] [--no-stage]

Scenarios (paths relative to DIR):

- ``safetensors``: NAME (default ``model.safetensors``) written front to back in chunks
  (with ``--gap``: closed half-way, left alone for that long, reopened and finished);
- ``presize``: the same file first pre-sized (``ftruncate`` to its final size), then filled;
- ``hf``: ``tmp-checkpoint-N/`` with model.safetensors, optimizer.pt (a torch zip), config.json
  and ``trainer_state.json`` last, then renamed to ``checkpoint-N/`` (``--no-stage``: written
  in ``checkpoint-N/`` directly; ``--gap``: a pause before trainer_state.json);
- ``dcp``: ``NAME/`` (default ``step_300``) with two ``.distcp`` shards, then (after ``--gap``)
  ``.metadata`` written under a temporary name and renamed in last;
- ``torchzip``: NAME (default ``model.pt``), a zip laid out like torch.save's, in chunks
  (``--gap`` as for safetensors);
- ``hold``: NAME (default ``data.raw``), half written, then the write handle is held open for
  ``--hold`` seconds with no writes, then the rest; prints ``holding`` and ``released``.

Every file's bytes depend only on (seed, path inside DIR): ``expected_bytes`` gives them to
the test. The writer prints ``done`` when everything is in place, and exits.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import time
import zipfile
from pathlib import Path

import blake3


def data(seed: int, label: str, length: int) -> bytes:
    """Incompressible bytes for one file."""
    return blake3.blake3(f"{seed}/{label}".encode()).digest(length)


def safetensors(seed: int, label: str, size: int) -> bytes:
    """A valid safetensors file of about ``size`` bytes (U8 tensors of 64 KiB and a remainder)."""
    tensors, offset, i = {}, 0, 0
    body = max(size - 4096, 1)
    while offset < body:
        n = min(65536, body - offset)
        tensors[f"layer.{i}.weight"] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
        i += 1
    header = json.dumps({"__metadata__": {"format": "pt"}, **tensors}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data(seed, label, offset)


def torch_zip(seed: int, label: str, size: int) -> bytes:
    buf = io.BytesIO()
    def entry(name: str) -> zipfile.ZipInfo:
        return zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))  # the same bytes every time

    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(entry("archive/data.pkl"), data(seed, label + "/pkl", 200))
        part = max(size // 4, 1)
        for i in range(4):
            z.writestr(entry(f"archive/data/{i}"), data(seed, f"{label}/{i}", part))
    return buf.getvalue()


def expected_bytes(scenario: str, seed: int, size: int, step: int = 500, name: str | None = None) -> dict[str, bytes]:
    """{path inside DIR: bytes} of what the scenario leaves behind when done."""
    if scenario in ("safetensors", "presize"):
        name = name or "model.safetensors"
        return {name: safetensors(seed, name, size)}
    if scenario == "torchzip":
        name = name or "model.pt"
        return {name: torch_zip(seed, name, size)}
    if scenario == "hold":
        name = name or "data.raw"
        return {name: data(seed, name, size)}
    if scenario == "hf":
        d = f"checkpoint-{step}"
        return {
            f"{d}/model.safetensors": safetensors(seed, "model", size),
            f"{d}/optimizer.pt": torch_zip(seed, "optimizer", size // 2),
            f"{d}/config.json": json.dumps({"model_type": "llama", "seed": seed}).encode(),
            f"{d}/trainer_state.json": json.dumps({"global_step": step, "seed": seed}).encode(),
        }
    if scenario == "dcp":
        d = name or "step_300"
        return {
            f"{d}/__0_0.distcp": data(seed, "rank0", size // 2),
            f"{d}/__1_0.distcp": data(seed, "rank1", size // 2),
            f"{d}/.metadata": data(seed, "metadata", 2048),
        }
    raise ValueError(f"unknown scenario {scenario!r}")


def write_chunks(path: Path, content: bytes, chunk: int, pause: float, *, presize: bool = False,
                 gap: float = 0.0) -> None:
    """``content`` in chunks with a pause after each; ``gap``: close the file half-way and
    leave it alone that long before reopening it to finish."""
    half = len(content) // 2 if gap else len(content)
    with open(path, "wb") as f:
        if presize:
            f.truncate(len(content))
            f.flush()
            time.sleep(pause)
        for at in range(0, half, chunk):
            f.seek(at)
            f.write(content[at: min(at + chunk, half)])
            f.flush()
            time.sleep(pause)
    if not gap:
        return
    say("gap")
    time.sleep(gap)
    with open(path, "r+b") as f:
        for at in range(half, len(content), chunk):
            f.seek(at)
            f.write(content[at: at + chunk])
            f.flush()
            time.sleep(pause)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ckpt_writer")
    parser.add_argument("scenario")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--chunk", type=int, default=256 * 1024)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--gap", type=float, default=0.0)
    parser.add_argument("--no-stage", action="store_true")
    parser.add_argument("--step", type=int, default=500)
    parser.add_argument("--name")
    a = parser.parse_args(argv)
    files = expected_bytes(a.scenario, a.seed, a.size, a.step, a.name)
    a.dir.mkdir(parents=True, exist_ok=True)
    if a.scenario in ("safetensors", "presize", "torchzip"):
        (path, content), = files.items()
        write_chunks(a.dir / path, content, a.chunk, a.pause, presize=a.scenario == "presize", gap=a.gap)
    elif a.scenario == "hold":
        (path, content), = files.items()
        half = len(content) // 2
        with open(a.dir / path, "wb") as f:
            f.write(content[:half])
            f.flush()
            say("holding")
            time.sleep(a.hold)
            f.write(content[half:])
            f.flush()
            time.sleep(a.pause)
            say("released")
    elif a.scenario == "hf":
        final = a.dir / f"checkpoint-{a.step}"
        staging = final if a.no_stage else a.dir / f"tmp-checkpoint-{a.step}"
        staging.mkdir()
        last = f"checkpoint-{a.step}/trainer_state.json"
        for path, content in files.items():  # dict order: trainer_state.json last
            if path != last:
                write_chunks(staging / Path(path).name, content, a.chunk, a.pause)
        if a.gap:
            say("gap")
            time.sleep(a.gap)
        write_chunks(staging / "trainer_state.json", files[last], a.chunk, a.pause)
        if staging != final:
            os.rename(staging, final)
    elif a.scenario == "dcp":
        d = a.dir / (a.name or "step_300")
        d.mkdir(parents=True)
        for path, content in files.items():
            name = Path(path).name
            if name == ".metadata":
                if a.gap:
                    say("gap")
                    time.sleep(a.gap)
                write_chunks(d / ".metadata.tmp", content, a.chunk, a.pause)
                os.rename(d / ".metadata.tmp", d / ".metadata")
            else:
                write_chunks(d / name, content, a.chunk, a.pause)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
