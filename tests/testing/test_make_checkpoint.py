import json
import struct
import subprocess
import sys

import blake3
import pytest

from peerstore.testing.make_checkpoint import (
    SHAPES,
    main,
    resolve_shape,
    write_checkpoint_dir,
    write_safetensors,
)

BLOCK = 4096


def read_safetensors(path):
    """(header dict, data start offset) after checking the container layout."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0, "header must be padded to 8-byte alignment"
    text = raw[8:8 + n]
    assert text == text.rstrip(b" ") + b" " * (len(text) - len(text.rstrip(b" ")))
    header = json.loads(text)
    assert header.pop("__metadata__") == {"format": "pt"}
    spans = sorted(t["data_offsets"] for t in header.values())
    assert spans[0][0] == 0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start, "tensor data must be contiguous"
    assert spans[-1][1] == len(raw) - 8 - n, "tensors must cover the data exactly"
    for name, t in header.items():
        assert t["dtype"] == "BF16"
        numel = 1
        for d in t["shape"]:
            numel *= d
        assert t["data_offsets"][1] - t["data_offsets"][0] == 2 * numel, name
    return header, 8 + n


def all_blocks_distinct(*paths, skip_header=False):
    """No two 4 KiB blocks equal within or across the files. Headers of one architecture are
    identical, as in real checkpoints; skip_header leaves them out of a cross-file check."""
    seen = set()
    total = 0
    for path in paths:
        data = path.read_bytes()
        if skip_header:
            data = data[read_safetensors(path)[1]:]
        for off in range(0, len(data) - BLOCK + 1, BLOCK):  # every aligned block...
            seen.add(blake3.blake3(data[off:off + BLOCK]).digest())
            total += 1
        for off in range(BLOCK // 2, len(data) - BLOCK + 1, BLOCK * 64):  # ...and some unaligned
            seen.add(blake3.blake3(data[off:off + BLOCK]).digest())
            total += 1
    return len(seen) == total


def test_tiny_file_is_valid_llama_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    n = write_safetensors(path, "tiny", seed=1)
    assert n == path.stat().st_size and 1 << 20 < n < 16 << 20
    header, _ = read_safetensors(path)
    tiny = SHAPES["tiny"]
    assert header["model.embed_tokens.weight"]["shape"] == [tiny.vocab, tiny.hidden]
    assert header["lm_head.weight"]["shape"] == [tiny.vocab, tiny.hidden]
    assert header["model.norm.weight"]["shape"] == [tiny.hidden]
    last = tiny.layers - 1
    for suffix in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                   "post_attention_layernorm"):
        assert f"model.layers.{last}.{suffix}.weight" in header
    assert f"model.layers.{tiny.layers}.mlp.up_proj.weight" not in header
    kv = tiny.kv_heads * tiny.hidden // tiny.heads
    assert header["model.layers.0.self_attn.k_proj.weight"]["shape"] == [kv, tiny.hidden]


def test_bytes_never_repeat(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, "tiny", seed=3)
    assert all_blocks_distinct(path)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    write_safetensors(a, "tiny", seed=7)
    write_safetensors(b, "tiny", seed=7)
    write_safetensors(c, "tiny", seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert all_blocks_distinct(a, c, skip_header=True)


@pytest.mark.parametrize("shape,size", [("llama-135m", 12 << 20), ("llama-0.5b", 40 << 20),
                                        ("tiny", 2 << 20), ("llama-1b", 130 << 20)])
def test_size_scales_the_shape_family(tmp_path, shape, size):
    scaled = resolve_shape(shape, size)
    full = SHAPES[shape]
    assert (scaled.hidden, scaled.intermediate, scaled.heads) == (full.hidden, full.intermediate, full.heads)
    assert abs(scaled.data_bytes() - size) <= scaled.vocab_row_bytes()
    if size <= 40 << 20:  # write the small ones for real
        path = tmp_path / "m.safetensors"
        n = write_safetensors(path, shape, size=size)
        header, start = read_safetensors(path)
        assert n == path.stat().st_size == start + scaled.data_bytes()
        assert ("lm_head.weight" in header) == (not full.tied_embeddings)
        if full.qkv_bias:
            assert header["model.layers.0.self_attn.q_proj.bias"]["shape"] == [full.hidden]


def test_full_shapes_match_the_published_models():
    # Llama-3.2-1B in bf16 is about 2.47 GB; shapes are computed, not written, here.
    assert 2.46e9 < SHAPES["llama-1b"].data_bytes() < 2.48e9
    assert 0.26e9 < SHAPES["llama-135m"].data_bytes() < 0.28e9  # SmolLM-135M
    assert 0.98e9 < SHAPES["llama-0.5b"].data_bytes() < 1.0e9  # Qwen2.5-0.5B


def test_size_can_grow_past_the_published_model():
    big = resolve_shape("llama-1b", 5 << 30)
    assert big.layers > SHAPES["llama-1b"].layers


@pytest.mark.parametrize("shape,size", [("llama-1b", 10 << 20), ("tiny", 0), ("nope", None)])
def test_impossible_requests_are_refused(shape, size):
    with pytest.raises(ValueError):
        resolve_shape(shape, size)


def test_checkpoint_dir_layout(tmp_path):
    out = write_checkpoint_dir(tmp_path, step=1200, shape="tiny", seed=5, size=1 << 20)
    assert out == tmp_path / "checkpoint-1200"
    names = {p.name for p in out.iterdir()}
    assert names == {"model.safetensors", "optimizer.pt", "trainer_state.json", "config.json",
                     "rng_state.pth", "scheduler.pt"}
    model = out / "model.safetensors"
    read_safetensors(model)
    assert (out / "optimizer.pt").stat().st_size == 2 * model.stat().st_size
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1200
    steps = [e["step"] for e in state["log_history"]]
    assert steps == sorted(steps) and steps[-1] <= 1200 and 0 < len(steps) <= 200
    config = json.loads((out / "config.json").read_text())
    header, _ = read_safetensors(model)
    assert config["vocab_size"] == header["model.embed_tokens.weight"]["shape"][0]
    assert config["num_hidden_layers"] == len({k.split(".")[2] for k in header if k.startswith("model.layers.")})
    blobs = [out / n for n in ("model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt")]
    assert all_blocks_distinct(*blobs)


def test_consecutive_steps_share_no_blocks(tmp_path):
    a = write_checkpoint_dir(tmp_path, step=500, shape="tiny", seed=0, size=1 << 20)
    b = write_checkpoint_dir(tmp_path, step=1000, shape="tiny", seed=0, size=1 << 20)
    assert all_blocks_distinct(a / "model.safetensors", b / "model.safetensors", skip_header=True)


def test_huge_step_keeps_trainer_state_bounded(tmp_path):
    out = write_checkpoint_dir(tmp_path, step=10_000_000, shape="tiny", size=1 << 20)
    assert len(json.loads((out / "trainer_state.json").read_text())["log_history"]) <= 200


def test_cli_writes_a_file_and_a_dir(tmp_path, capsys):
    assert main(["--shape", "tiny", "--size", "1MiB", "--seed", "2", str(tmp_path / "m.safetensors")]) == 0
    assert main(["--dir", "--step", "7", "--size", "1MiB", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoint-7" / "optimizer.pt").exists()
    assert "bytes in" in capsys.readouterr().out
    assert main(["--shape", "llama-1b", "--size", "1MiB", str(tmp_path / "x")]) == 2
    assert "too small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--size", "lots", str(tmp_path / "x")])


def test_runs_as_a_module(tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.run([sys.executable, "-m", "peerstore.testing.make_checkpoint", "--size", "1MiB",
                           str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    read_safetensors(out)
