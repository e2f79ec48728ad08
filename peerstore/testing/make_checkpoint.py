"""Write realistic, incompressible, never-repeating training checkpoints for tests and demos.

A ``.safetensors`` file has a real header (Llama-style tensor names and BF16 shapes) and
tensor bytes drawn from BLAKE3's extendable output keyed by the seed (and, in a checkpoint
directory, the step and file name), so no two 4 KiB blocks are equal and nothing dedups;
only the JSON headers of two files of one architecture match, as in real checkpoints.
The same seed always gives the same bytes.
``--dir`` writes a Hugging Face Trainer-style ``checkpoint-<step>/`` directory.

    python -m peerstore.testing.make_checkpoint --shape llama-135m model.safetensors
    python -m peerstore.testing.make_checkpoint --shape llama-1b --size 200MiB --dir --step 500 out/
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import blake3

from peerstore.shell.config import parse_size

CHUNK = 8 * 1024 * 1024
BF16 = 2  # bytes per element
MIN_VOCAB = 256
MAX_BYTES = 1 << 44  # 16 TiB: a bound on --size, far above any real checkpoint


@dataclass(frozen=True)
class Shape:
    """A Llama-family architecture, sized like a published model."""

    architecture: str
    model_type: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied_embeddings: bool
    qkv_bias: bool = False
    rope_theta: float = 10000.0
    max_positions: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_tensors(self, i: int) -> list[tuple[str, list[int]]]:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        p = f"model.layers.{i}."
        out = [(p + "input_layernorm.weight", [h])]
        out += [(p + "mlp.down_proj.weight", [h, self.intermediate]),
                (p + "mlp.gate_proj.weight", [self.intermediate, h]),
                (p + "mlp.up_proj.weight", [self.intermediate, h])]
        out += [(p + "post_attention_layernorm.weight", [h])]
        for name, rows in (("k_proj", kv), ("o_proj", h), ("q_proj", q), ("v_proj", kv)):
            cols = q if name == "o_proj" else h
            if self.qkv_bias and name != "o_proj":
                out.append((p + f"self_attn.{name}.bias", [rows]))
            out.append((p + f"self_attn.{name}.weight", [rows, cols]))
        return out

    def tensors(self) -> list[tuple[str, list[int]]]:
        """(name, shape) in file order."""
        out = [("model.embed_tokens.weight", [self.vocab, self.hidden])]
        for i in range(self.layers):
            out += self.layer_tensors(i)
        out.append(("model.norm.weight", [self.hidden]))
        if not self.tied_embeddings:
            out.append(("lm_head.weight", [self.vocab, self.hidden]))
        return out

    def layer_bytes(self) -> int:
        return sum(_numel(s) for _, s in self.layer_tensors(0)) * BF16

    def vocab_row_bytes(self) -> int:
        return self.hidden * BF16 * (1 if self.tied_embeddings else 2)

    def data_bytes(self) -> int:
        return self.vocab * self.vocab_row_bytes() + self.layers * self.layer_bytes() + self.hidden * BF16

    def scaled_to(self, size: int) -> Shape:
        """Same family, with the layer count (then the vocabulary) chosen so the tensor
        data is about ``size`` bytes. Raises ValueError if not even one layer fits."""
        fixed = self.hidden * BF16
        layers = (size - fixed - self.vocab * self.vocab_row_bytes()) // self.layer_bytes()
        layers = max(1, layers)
        vocab = (size - fixed - layers * self.layer_bytes()) // self.vocab_row_bytes()
        if vocab < MIN_VOCAB:
            smallest = fixed + self.layer_bytes() + MIN_VOCAB * self.vocab_row_bytes()
            raise ValueError(f"{size} bytes is too small for this shape (at least {smallest}); "
                             "use --shape tiny for small files")
        return replace(self, layers=layers, vocab=vocab)

    def hf_config(self) -> dict:
        """A config.json like the Hugging Face one for this architecture."""
        return {
            "architectures": [self.architecture],
            "attention_bias": self.qkv_bias,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": self.max_positions,
            "model_type": self.model_type,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-05,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tied_embeddings,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.44.2",
            "use_cache": False,
            "vocab_size": self.vocab,
        }


SHAPES: dict[str, Shape] = {
    # SmolLM-135M
    "llama-135m": Shape("LlamaForCausalLM", "llama", hidden=576, layers=30, intermediate=1536,
                        vocab=49152, heads=9, kv_heads=3, tied_embeddings=True),
    # Qwen2.5-0.5B
    "llama-0.5b": Shape("Qwen2ForCausalLM", "qwen2", hidden=896, layers=24, intermediate=4864,
                        vocab=151936, heads=14, kv_heads=2, tied_embeddings=True, qkv_bias=True,
                        rope_theta=1000000.0, max_positions=32768),
    # Llama-3.2-1B: about 2.47 GB in bf16
    "llama-1b": Shape("LlamaForCausalLM", "llama", hidden=2048, layers=16, intermediate=8192,
                      vocab=128256, heads=32, kv_heads=8, tied_embeddings=True,
                      rope_theta=500000.0, max_positions=131072),
    # a few MB, for unit tests
    "tiny": Shape("LlamaForCausalLM", "llama", hidden=128, layers=4, intermediate=512,
                  vocab=4096, heads=4, kv_heads=2, tied_embeddings=False),
}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _stream(seed: int, label: str) -> blake3.blake3:
    """A hasher whose XOF output is this (seed, label)'s byte stream."""
    return blake3.blake3(f"peerstore make_checkpoint v1\0seed={seed}\0{label}".encode())


def _write_stream(f, stream: blake3.blake3, length: int) -> None:
    """Write ``length`` bytes of the stream in CHUNK pieces (bounded memory)."""
    offset = 0
    while offset < length:
        n = min(CHUNK, length - offset)
        f.write(stream.digest(length=n, seek=offset))
        offset += n


def safetensors_header(shape: Shape) -> bytes:
    """The length prefix and JSON header (space-padded to 8 bytes) for ``shape`` in BF16."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shape.tensors():
        end = offset + _numel(dims) * BF16
        header[name] = {"dtype": "BF16", "shape": dims, "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def resolve_shape(shape: str, size: int | None = None) -> Shape:
    """The named shape, scaled to about ``size`` bytes when given."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if size is not None and not 0 < size <= MAX_BYTES:
        raise ValueError(f"size must be from 1 to {MAX_BYTES} bytes, got {size}")
    return SHAPES[shape] if size is None else SHAPES[shape].scaled_to(size)


def _write_safetensors(path: Path, arch: Shape, seed: int, label: str) -> int:
    header = safetensors_header(arch)
    with open(path, "wb") as f:
        f.write(header)
        _write_stream(f, _stream(seed, label), arch.data_bytes())
    return len(header) + arch.data_bytes()


def write_safetensors(path: str | Path, shape: str, seed: int = 0, size: int | None = None) -> int:
    """Write a Llama-shaped BF16 ``.safetensors`` file; returns the bytes written.

    ``size`` scales the layer count and vocabulary so the file is about that big.
    """
    return _write_safetensors(Path(path), resolve_shape(shape, size), seed, "model.safetensors")


def _write_blob(path: Path, length: int, seed: int, label: str) -> int:
    with open(path, "wb") as f:
        _write_stream(f, _stream(seed, label), length)
    return length


def trainer_state(step: int, seed: int, max_log_entries: int = 200) -> dict:
    """A trainer_state.json like transformers.Trainer writes, with a falling loss curve."""
    rng = random.Random(f"trainer_state:{seed}:{step}")
    logging_steps = max(10, -(-step // max_log_entries))
    steps_per_epoch = 1000
    history = []
    for s in range(logging_steps, step + 1, logging_steps):
        history.append({
            "epoch": round(s / steps_per_epoch, 4),
            "grad_norm": round(rng.uniform(0.2, 1.5), 6),
            "learning_rate": 5e-05 * (1 - s / (step + steps_per_epoch)),
            "loss": round(2.0 + 8.0 / (1 + s / 100) + rng.uniform(-0.05, 0.05), 4),
            "step": s,
        })
    return {
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": round(step / steps_per_epoch, 4),
        "eval_steps": 500,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": logging_steps,
        "max_steps": max(step, 3 * steps_per_epoch),
        "num_input_tokens_seen": step * 8 * 2048,
        "num_train_epochs": 3,
        "save_steps": 500,
        "stateful_callbacks": {"TrainerControl": {"args": {
            "should_epoch_stop": False, "should_evaluate": False, "should_log": False,
            "should_save": True, "should_training_stop": False}, "attributes": {}}},
        "total_flos": float(step) * 1.7e15,
        "train_batch_size": 8,
        "trial_name": None,
        "trial_params": None,
    }


def write_checkpoint_dir(root: str | Path, step: int = 500, shape: str = "tiny", seed: int = 0,
                         size: int | None = None) -> Path:
    """Write ``<root>/checkpoint-<step>/`` as transformers.Trainer lays it out; returns it.

    ``size`` scales model.safetensors; optimizer.pt is twice the model's size. Every file
    gets its own byte stream from (seed, step, file name), so nothing repeats across files
    or steps.
    """
    if step < 0:
        raise ValueError(f"step must be 0 or more, got {step}")
    arch = resolve_shape(shape, size)
    out = Path(root) / f"checkpoint-{step}"
    out.mkdir(parents=True, exist_ok=True)
    label = f"step={step}\0"
    model_bytes = _write_safetensors(out / "model.safetensors", arch, seed, label + "model.safetensors")
    _write_blob(out / "optimizer.pt", 2 * model_bytes, seed, label + "optimizer.pt")
    _write_blob(out / "rng_state.pth", 14_244, seed, label + "rng_state.pth")
    _write_blob(out / "scheduler.pt", 1_064, seed, label + "scheduler.pt")
    (out / "config.json").write_text(json.dumps(arch.hf_config(), indent=2, sort_keys=True) + "\n")
    (out / "trainer_state.json").write_text(json.dumps(trainer_state(step, seed), indent=2) + "\n")
    return out


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m peerstore.testing.make_checkpoint",
        description="Write a realistic, deterministic, non-repeating test checkpoint.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--size", type=_size_arg, help="about this many bytes of model, like 200MiB")
    parser.add_argument("--dir", action="store_true",
                        help="write OUT/checkpoint-STEP/ with model, optimizer and trainer state")
    parser.add_argument("--step", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("out", metavar="OUT", help="the .safetensors file, or with --dir its parent")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.dir:
            path = write_checkpoint_dir(args.out, args.step, args.shape, args.seed, args.size)
            total = sum(p.stat().st_size for p in path.iterdir())
        else:
            path = Path(args.out)
            total = write_safetensors(path, args.shape, args.seed, args.size)
    except (ValueError, OSError) as exc:
        print(f"make_checkpoint: {exc}", file=sys.stderr)
        return 2
    elapsed = max(time.monotonic() - started, 1e-9)
    print(f"{path}: {total} bytes in {elapsed:.2f} s ({total / elapsed / 1e6:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
