"""Finished-checkpoint detection: units from paths, and each format's verdict, table-driven."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import pytest

from peerstore.watch.detect import (
    Finished,
    Ignore,
    NotYet,
    check,
    check_safetensors,
    check_torch_zip,
    context_files,
    detect,
    fingerprint,
    is_temporary,
    members,
    unit_for,
)
from peerstore.watch.observe import (
    HEAD_PROBE,
    ZIP_TAIL,
    CheckpointObservation,
    FileObservation,
    head_wanted,
    tail_wanted,
)
from tests.watch.builders import (
    big_safetensors,
    observe_dir,
    observe_file,
    observe_single,
    patch_eocd,
    safetensors_bytes,
    to_zip64,
    torch_zip_bytes,
)

# -- units

UNITS = [
    ("llama/checkpoint-500/model.safetensors", False, "llama/checkpoint-500"),
    ("llama/checkpoint-500", True, "llama/checkpoint-500"),
    ("llama/checkpoint-500/global_step500/mp_rank_00_model_states.pt", False, "llama/checkpoint-500"),
    ("checkpoint-500/trainer_state.json", False, "checkpoint-500"),
    ("checkpoint-500", True, "checkpoint-500"),
    ("team/llama/exp1/step-100/a/b.bin", False, "team/llama/exp1/step-100"),
    ("llama/iter_0000500/mp_rank_00/model_optim_rng.pt", False, "llama/iter_0000500"),
    ("gpt/global_step500/mp_rank_00_model_states.pt", False, "gpt/global_step500"),
    ("latest/model.safetensors", False, "latest/model.safetensors"),
    ("llama/final/config.json", False, "llama/final"),
    ("llama/final/sub/dir/x.bin", False, "llama/final"),
    ("llama/model_step100.pt", False, "llama/model_step100.pt"),
    ("model.pt", False, "model.pt"),
    ("llama/checkpoint-500/x.tmp", False, "llama/checkpoint-500"),  # a change inside the unit
    ("llama/dcp/.metadata", False, "llama/dcp"),
    # not units
    ("llama", True, None),  # a run directory
    ("gpt/latest", False, None),  # DeepSpeed's pointer
    ("latest", False, None),
    ("llama/tmp-checkpoint-500/model.safetensors", False, None),
    ("llama/tmp-checkpoint-500", True, None),
    ("tmp-checkpoint-5", True, None),
    ("llama/model.safetensors.partial", False, None),
    ("llama/model.pt.tmp", False, None),
    ("llama/.tmpk2j3/x", False, None),
    ("llama/.model.pt.a1B2c3", False, None),  # rsync
    ("llama/model.pt~", False, None),
    ("llama/.model.pt.swp", False, None),
    ("llama/.#model.pt", False, None),
    ("llama/#model.pt#", False, None),
    ("llama/.peerstore-tmp-x1", False, None),
    (".DS_Store", False, None),
    ("llama/.DS_Store", False, None),
    ("llama/._model.pt", False, None),
]


@pytest.mark.parametrize(("path", "is_dir", "unit"), UNITS)
def test_unit_for(path, is_dir, unit):
    assert unit_for(path, is_dir) == unit


@pytest.mark.parametrize("path", ["", "/abs/x", "a//b", "a/./b", "../x", "a/..", "a/"])
def test_unit_for_refuses_paths_that_are_not_normalised_relative(path):
    with pytest.raises(ValueError, match="path"):
        unit_for(path)


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        ("x.tmp", True), (".tmp123", True), ("model.safetensors.partial", True), ("tmp-checkpoint-9", True),
        ("notes~", True), (".a.swp", True), (".a.swo", True), (".#a", True), ("#a#", True),
        (".model.safetensors.Xy12Z9", True), (".peerstore-tmp-abc", True),
        ("model.safetensors", False), (".metadata", False), ("checkpoint-9", False), ("tmp", False),
        (".gitattributes", False), ("latest", False), ("model.tmpl", False), (".a.b.toolong7", False),
    ],
)
def test_is_temporary(name, temporary):
    assert is_temporary(name) is temporary


def test_context_is_the_deepspeed_pointer_beside_the_unit():
    assert context_files("gpt/global_step500") == ("gpt/latest",)
    assert context_files("global_step500") == ("latest",)
    assert context_files("llama/latest") == ()


def test_members_leave_out_junk_and_deeper_units_and_report_temporaries():
    obs = observe_dir(
        "llama/final",
        {"config.json": b"{}", ".DS_Store": b"x", "checkpoint-5/model.pt": b"x", "w.bin.tmp": b"", "a/b.bin": b"1"},
    )
    stored, temporary = members(obs)
    assert [f.path for f in stored] == ["llama/final/a/b.bin", "llama/final/config.json"]
    assert temporary == ("llama/final/w.bin.tmp",)
    assert [s.path for s in fingerprint(obs)] == ["llama/final/a/b.bin", "llama/final/config.json"]


def test_members_refuse_a_file_outside_the_unit():
    obs = CheckpointObservation("/w", "llama/a", True, (observe_file("llama/b/x", b"1"),), 0.0)
    with pytest.raises(ValueError, match="not part of unit"):
        members(obs)


# -- safetensors

GOOD = safetensors_bytes()


def _presized() -> bytes:
    """The header is written and the file sized, but the tensor data is still zeros."""
    full = safetensors_bytes()
    header_end = len(full) - 24
    return full[:header_end] + bytes(24)


SAFETENSORS = [
    ("valid", GOOD, None),
    ("with __metadata__", safetensors_bytes(metadata={"format": "pt"}), None),
    ("no tensors", safetensors_bytes([]), None),
    ("zero-length tensor", safetensors_bytes([("a", "F32", [0], 0, 0), ("b", "U8", [3], 0, 3)]), None),
    ("unknown dtype skips the length check", safetensors_bytes([("a", "Q7", [5], 0, 3)]), None),
    ("sub-byte dtype", safetensors_bytes([("a", "F4", [4], 0, 2)]), None),
    ("pre-sized, data still zeros: structure passes", _presized(), None),
    ("all zeros (pre-sized, nothing written)", bytes(len(GOOD)), "not valid JSON"),
    ("shorter than 8 bytes", GOOD[:5], "shorter than the 8-byte"),
    ("truncated in the header", GOOD[:20], "runs past the end"),
    ("truncated in the data", GOOD[:-1], "still being written"),
    ("truncated right after the header", GOOD[:-24], "still being written"),
    ("trailing bytes", GOOD + b"\0", "after the last tensor"),
    ("gap", safetensors_bytes([("a", "F32", [2], 0, 8), ("b", "F32", [2], 12, 20)]), "gap"),
    ("overlap", safetensors_bytes([("a", "F32", [4], 0, 16), ("b", "F32", [2], 8, 16)]), "overlaps"),
    ("does not start at 0", safetensors_bytes([("a", "F32", [2], 4, 12)], data=bytes(12)), "gap"),
    ("dtype and shape disagree with offsets", safetensors_bytes([("a", "F32", [3], 0, 8)]), "needs 12 bytes"),
    ("descending offsets", safetensors_bytes([("a", "U8", [0], 8, 4)], data=bytes(8)), "ascending"),
    ("absurd header length", safetensors_bytes(header_len=2**40), "over the 100000000-byte limit"),
    ("header not JSON", safetensors_bytes(raw_header=b"{not json}      "), "not valid JSON"),
    ("header not an object", safetensors_bytes(raw_header=b"[1,2,3] "), "not a JSON object"),
    ("header not UTF-8", safetensors_bytes(raw_header=b'{"\xff":1}      '), "not valid JSON"),
    ("deeply nested header", safetensors_bytes(raw_header=b"{" + b'"a":[' * 100_000), "not valid JSON"),
    ("bad metadata", safetensors_bytes(metadata={"n": 1}), "__metadata__"),
    ("entry not an object", safetensors_bytes(raw_header=b'{"a":3} '), "entry is not an object"),
    ("shape not a list", safetensors_bytes(raw_header=b'{"a":{"dtype":"U8","shape":4,"data_offsets":[0,0]}}'), "shape"),
    ("offsets not a pair", safetensors_bytes(raw_header=b'{"a":{"dtype":"U8","shape":[],"data_offsets":[0]}}'), "data_offsets"),
]


@pytest.mark.parametrize(("case", "data", "problem"), SAFETENSORS, ids=[c[0] for c in SAFETENSORS])
def test_safetensors_structure(case, data, problem):
    found = check_safetensors(observe_file("m.safetensors", data))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_header_larger_than_one_read_is_read_in_a_second_round():
    data = big_safetensors(2000)
    (n,) = struct.unpack("<Q", data[:8])
    assert n + 8 > HEAD_PROBE
    assert head_wanted("m.safetensors", len(data)) == HEAD_PROBE
    assert head_wanted("m.safetensors", len(data), data[:HEAD_PROBE]) == 8 + n
    assert check_safetensors(observe_file("m.safetensors", data)) is None
    short = FileObservation("m.safetensors", len(data), 1, 1, data[:HEAD_PROBE])
    assert "observed" in check_safetensors(short)


def test_presized_safetensors_passes_structure_but_still_needs_quiescence():
    obs = observe_single("latest/model.safetensors", _presized())
    assert check(obs) == Finished("safetensors")
    waiting = detect(obs, quiet_for=1.0, settle_seconds=5.0)
    assert isinstance(waiting, NotYet) and waiting.wait == pytest.approx(4.0)
    assert detect(obs, quiet_for=5.0, settle_seconds=5.0) == Finished("safetensors")


# -- torch zip archives

ZIP = torch_zip_bytes(3)


def _zip_with_prefix() -> bytes:
    """Bytes before the archive, whose offsets are relative to its own start (zipfile reads it)."""
    return b"PK\x03\x04" + bytes(96) + ZIP


def _cut_after_nested_zip() -> bytes:
    """An archive whose last entry is a stored zip, truncated right after that entry's bytes:
    the inner archive's end record is then the last thing in the file."""
    outer = torch_zip_bytes(2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data/0", b"x" * 100)
        z.writestr("archive/inner.zip", outer)
    data = buf.getvalue()
    return data[: data.find(outer) + len(outer)]


ZIPS = [
    ("valid", ZIP, None),
    ("with a comment", torch_zip_bytes(3, comment=b"hello PK\x05\x06 world"), None),
    ("zip64", to_zip64(ZIP), None),
    ("central directory before the observed tail", torch_zip_bytes(1500, name_len=60), None),
    ("empty archive", torch_zip_bytes(0), None),
    ("legacy pickle format", pickle.dumps({"w": list(range(100))}), None),
    ("bytes before the archive (never written by torch)", _zip_with_prefix(), "does not end at its end record"),
    ("truncated right after a nested zip", _cut_after_nested_zip(), "does not end at its end record"),
    ("bytes after the end record", ZIP + bytes(10), "no end-of-central-directory"),
    ("empty file", b"", "empty file"),
    ("truncated by one byte", ZIP[:-1], "no end-of-central-directory"),
    ("truncated before the end record", ZIP[:-22], "no end-of-central-directory"),
    ("truncated in half", ZIP[: len(ZIP) // 2], "no end-of-central-directory"),
    ("only the local header", ZIP[:30], "no end-of-central-directory"),
    ("zip64 truncated", to_zip64(ZIP)[:-1], "no end-of-central-directory"),
    ("central directory offset past its end", patch_eocd(ZIP, cd_offset=len(ZIP)), "does not end at"),
    ("central directory larger than the file", patch_eocd(ZIP, cd_size=len(ZIP) + 1), "does not end at"),
    ("more entries than written", patch_eocd(ZIP, entries=4, entries_here=4), "central directory entry is malformed"),
    ("fewer entries than written", patch_eocd(ZIP, entries=2, entries_here=2), "do not end where"),
    ("entry count disagrees between fields", patch_eocd(ZIP, entries_here=2), "split across disks"),
    ("multi-disk", patch_eocd(ZIP, disk=1), "split across disks"),
    ("zip64 marker without locator", patch_eocd(ZIP, cd_offset=0xFFFFFFFF), "no zip64 locator"),
]


@pytest.mark.parametrize(("case", "data", "problem"), ZIPS, ids=[c[0] for c in ZIPS])
def test_torch_zip_structure(case, data, problem):
    found = check_torch_zip(observe_file("model.pt", data))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_the_test_archives_are_what_zipfile_thinks():
    assert zipfile.ZipFile(io.BytesIO(to_zip64(ZIP))).testzip() is None
    assert zipfile.ZipFile(io.BytesIO(torch_zip_bytes(1500, name_len=60))).testzip() is None
    assert len(torch_zip_bytes(1500, name_len=60)) > 2 * ZIP_TAIL


def test_zip64_locator_must_point_at_its_record():
    data = bytearray(to_zip64(ZIP))
    locator = data.rfind(b"PK\x06\x07")
    struct.pack_into("<Q", data, locator + 8, 3)  # record offset: somewhere in the data
    assert "zip64" in check_torch_zip(observe_file("model.pt", bytes(data)))


@pytest.mark.parametrize("ext", [".pt", ".pth", ".bin", ".ckpt"])
def test_every_torch_extension_reads_head_and_tail(ext):
    assert head_wanted("m" + ext, 10**9) == 4 and tail_wanted("m" + ext, 10**9) == ZIP_TAIL
    assert "no end-of-central-directory" in check(observe_single("m" + ext, ZIP[:-3])).reason


# -- whole units


def _state(step: int) -> bytes:
    return json.dumps({"global_step": step, "log_history": []}).encode()


HF = {"model.safetensors": GOOD, "config.json": b"{}", "optimizer.pt": ZIP, "trainer_state.json": _state(500)}
DS_TAG = {"mp_rank_00_model_states.pt": ZIP, "zero_pp_rank_0_mp_rank_00_optim_states.pt": ZIP}
INDEX = json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                   "b": "model-00002-of-00002.safetensors"}}).encode()
SHARDED = {"model.safetensors.index.json": INDEX, "model-00001-of-00002.safetensors": GOOD,
           "model-00002-of-00002.safetensors": GOOD, "config.json": b"{}"}


def _without(files: dict, *names: str) -> dict:
    return {k: v for k, v in files.items() if k not in names}


DIRS = [
    # (case, unit, files, context, expected verdict type, text in kind or reason)
    ("hf trainer", "llama/checkpoint-500", HF, None, Finished, "hf-trainer"),
    ("hf without trainer_state", "llama/checkpoint-500", _without(HF, "trainer_state.json"), None, NotYet,
     "trainer_state.json not written"),
    ("hf trainer_state half written", "llama/checkpoint-500", {**HF, "trainer_state.json": _state(500)[:10]}, None,
     NotYet, "not valid JSON"),
    ("hf wrong global_step", "llama/checkpoint-500", {**HF, "trainer_state.json": _state(400)}, None, NotYet,
     "global_step 400, not 500"),
    ("hf global_step missing", "llama/checkpoint-500", {**HF, "trainer_state.json": b"{}"}, None, NotYet,
     "no integer global_step"),
    ("hf with a shard still written", "llama/checkpoint-500", {**HF, "model.safetensors": GOOD[:-4]}, None, NotYet,
     "model.safetensors: "),
    ("hf with an unfinished optimizer", "llama/checkpoint-500", {**HF, "optimizer.pt": ZIP[:-30]}, None, NotYet,
     "optimizer.pt: no end-of-central-directory"),
    ("hf with a temporary file", "llama/checkpoint-500", {**HF, "model.safetensors.tmp": b""}, None, NotYet,
     "temporary file model.safetensors.tmp"),
    ("sharded", "llama/final", SHARDED, None, Finished, "sharded-safetensors"),
    ("sharded, a shard missing", "llama/final", _without(SHARDED, "model-00002-of-00002.safetensors"), None, NotYet,
     "model-00002-of-00002.safetensors' not written yet"),
    ("sharded, a shard truncated", "llama/final", {**SHARDED, "model-00001-of-00002.safetensors": GOOD[:30]}, None,
     NotYet, "model-00001-of-00002.safetensors: "),
    ("sharded, index escapes", "llama/final",
     {**SHARDED, "model.safetensors.index.json": b'{"weight_map":{"a":"../x.safetensors"}}'}, None, NotYet,
     "not a path inside"),
    ("sharded, index without weight_map", "llama/final", {**SHARDED, "model.safetensors.index.json": b"{}"}, None,
     NotYet, "no weight_map"),
    ("dcp", "llama/dcp-5", {"__0_0.distcp": b"x" * 10, "__1_0.distcp": b"y", ".metadata": b"meta"}, None, Finished,
     "dcp"),
    ("dcp without .metadata", "llama/dcp-5", {"__0_0.distcp": b"x", "__1_0.distcp": b"y"}, None, NotYet,
     ".metadata not written yet"),
    ("dcp while .metadata.tmp exists", "llama/dcp-5", {"__0_0.distcp": b"x", ".metadata.tmp": b"m"}, None, NotYet,
     "temporary file .metadata.tmp"),
    ("dcp with empty .metadata", "llama/dcp-5", {"__0_0.distcp": b"x", ".metadata": b""}, None, NotYet,
     ".metadata not written yet"),
    ("hf + deepspeed", "llama/checkpoint-500",
     {**HF, "latest": b"global_step500", **{f"global_step500/{k}": v for k, v in DS_TAG.items()}}, None, Finished,
     "deepspeed"),
    ("hf + deepspeed, latest names a missing tag", "llama/checkpoint-500",
     {**HF, "latest": b"global_step600", **{f"global_step500/{k}": v for k, v in DS_TAG.items()}}, None, NotYet,
     "names 'global_step600', which has no files yet"),
    ("hf + deepspeed, latest empty", "llama/checkpoint-500",
     {**HF, "latest": b"", **{f"global_step500/{k}": v for k, v in DS_TAG.items()}}, None, NotYet, "is empty"),
    ("deepspeed tag named by latest", "gpt/global_step500", DS_TAG, {"gpt/latest": b"global_step500\n"}, Finished,
     "deepspeed"),
    ("deepspeed tag older than latest", "gpt/global_step500", DS_TAG, {"gpt/latest": b"global_step600"}, Finished,
     "deepspeed"),
    ("deepspeed tag newer than latest", "gpt/global_step500", DS_TAG, {"gpt/latest": b"global_step400"}, NotYet,
     "names 'global_step400', not this tag"),
    ("deepspeed tag, latest a different series", "gpt/global_step500", DS_TAG, {"gpt/latest": b"final"}, NotYet,
     "not this tag"),
    ("deepspeed tag without latest: quiescence alone", "gpt/global_step500", DS_TAG, None, Finished, "torch-zip"),
    ("a latest file beside a plain unit is not a pointer", "llama/final", {"a.bin": b"x"}, {"llama/latest": b"zzz"},
     Finished, "files"),
    ("only junk", "llama/final", {".DS_Store": b"x"}, None, NotYet, "no files yet"),
    ("empty directory", "llama/final", {}, None, NotYet, "no files yet"),
    ("plain files", "llama/final", {"notes.txt": b"hi", "w.npy": b"\x93NUMPY"}, None, Finished, "files"),
    ("temporary unit", "llama/tmp-checkpoint-5", {"a": b"x"}, None, Ignore, "temporary"),
]


@pytest.mark.parametrize(("case", "unit", "files", "context", "verdict", "text"), DIRS, ids=[c[0] for c in DIRS])
def test_directory_units(case, unit, files, context, verdict, text):
    result = check(observe_dir(unit, files, context))
    assert isinstance(result, verdict), result
    shown = result.kind if isinstance(result, Finished) else result.reason
    assert text in shown


SINGLES = [
    ("safetensors", "latest/model.safetensors", GOOD, Finished, "safetensors"),
    ("safetensors truncated", "latest/model.safetensors", GOOD[:-3], NotYet, "model.safetensors: "),
    ("torch zip", "llama/model.pt", ZIP, Finished, "torch-zip"),
    ("torch zip truncated", "llama/model.pt", ZIP[:-1], NotYet, "no end-of-central-directory"),
    ("legacy torch", "llama/model.bin", pickle.dumps([1, 2]), Finished, "files"),
    ("other", "llama/weights.npz", b"anything", Finished, "files"),
    ("empty other file", "llama/notes", b"", Finished, "files"),
]


@pytest.mark.parametrize(("case", "unit", "data", "verdict", "text"), SINGLES, ids=[c[0] for c in SINGLES])
def test_single_file_units(case, unit, data, verdict, text):
    result = check(observe_single(unit, data))
    assert isinstance(result, verdict), result
    assert text in (result.kind if isinstance(result, Finished) else result.reason)


WRITERS = [
    # (open_for_write, closed_after_write, finished?)
    (None, None, True),  # macOS, or a file that was there before the watcher: quiescence alone
    (False, None, True),
    (None, True, True),
    (False, True, True),
    (True, None, False),
    (True, True, False),
    (None, False, False),  # Linux: modified, no IN_CLOSE_WRITE yet (a writer paused mid-file)
    (False, False, False),
]


@pytest.mark.parametrize(("open_for_write", "closed", "finished"), WRITERS)
def test_open_writers_block_where_the_platform_can_tell(open_for_write, closed, finished):
    obs = observe_dir("llama/final", {"a.bin": b"x"}, open_for_write=open_for_write, closed_after_write=closed)
    result = detect(obs, quiet_for=100.0, settle_seconds=5.0)
    assert isinstance(result, Finished) is finished
    if not finished:
        assert "a.bin: " in result.reason and ("open for writing" in result.reason or "not closed" in result.reason)


def test_too_many_files_is_ignored():
    obs = CheckpointObservation("/w", "llama/big", True, (observe_file("llama/big/a", b"1"),), 0.0, truncated=True)
    assert isinstance(check(obs), Ignore)


def test_quiescence_applies_to_every_format():
    for obs in (observe_dir("llama/checkpoint-500", HF), observe_single("m.pt", ZIP), observe_dir("x/y", {"a": b"1"})):
        assert isinstance(detect(obs, quiet_for=4.99, settle_seconds=5.0), NotYet)
        assert isinstance(detect(obs, quiet_for=5.0, settle_seconds=5.0), Finished)
