"""Which files form one checkpoint, and whether it is finished: pure functions of observations.

**Units.** Every path under a watch root belongs to at most one *checkpoint unit*, the thing
stored as one checkpoint (`unit_for`). Reading the path's segments from the root down:

1. The first segment that looks like a training step directory (``checkpoint-500``,
   ``checkpoint_500``, ``global_step500``, ``step-500``, ``step_500``, ``step500``,
   ``iter_0000500``) ends the unit: ``runs/llama/checkpoint-500/optimizer.pt`` belongs to
   ``llama/checkpoint-500`` (paths here are relative to the watch root ``runs/``).
2. Otherwise the unit is the entry directly inside a *run directory* (the second segment):
   ``latest/model.safetensors`` is a unit of one file, ``llama/final/config.json`` belongs to
   the directory unit ``llama/final``.
3. A regular file directly in the root is a unit of its own (``model.pt``); a directory
   directly in the root that is not a step directory is a run directory, not a unit.

A path is in no unit when its unit has a temporary name (see `is_temporary`; so
``tmp-checkpoint-500/`` is ignored until it is renamed), when the unit is a junk file
(``.DS_Store``...), or when it is a DeepSpeed ``latest``/``latest_universal`` pointer file
that would be a unit on its own (the tag directory it names is the checkpoint). Inside a
directory unit, junk files are not stored, files of a deeper unit belong to that unit, and a
temporary file means the unit is not finished.

**Finished.** `check` applies the structural rules of every format it recognises (all must
pass) and `detect` adds quiescence, required for every unit whatever its format:

- every ``*.safetensors`` file: 8-byte little-endian header length (at most 100 MB), a JSON
  header whose tensors' ``data_offsets`` tile ``[0, data_end)`` exactly, each tensor's byte
  length matching dtype and shape (known dtypes), and size == 8 + header length + data_end;
- every ``*.safetensors.index.json``: parses, and every shard in its ``weight_map`` is present;
- a ``checkpoint-N`` directory (Hugging Face Trainer): ``trainer_state.json`` parses and its
  ``global_step`` is N;
- a directory holding ``*.distcp`` files (PyTorch Distributed Checkpoint): ``.metadata`` is
  present beside them and not empty;
- DeepSpeed: a ``latest`` file beside tag directories names a tag present in the unit; a tag
  directory unit whose parent has a ``latest`` file is finished when ``latest`` names it or
  names a later step (``global_step600`` is later than ``global_step500``);
- every ``.pt``/``.pth``/``.bin``/``.ckpt`` file that starts like a zip archive (torch.save
  since PyTorch 1.6): an end-of-central-directory record ends the file and agrees with it
  (zip64 locator and record when present, the central directory's offset plus size is exactly
  where the end record starts, and its entries walk to its end when the tail holds them). Other such files (the legacy
  pickle format) get quiescence alone;
- no file is open for writing, and none was modified without a close-after-write since,
  where the platform can tell (``None`` in an observation means it cannot: on macOS, whose
  FSEvents has no close events, quiescence alone decides);
- quiescence: the unit's file list and every file's (size, mtime_ns, inode) unchanged for at
  least ``settle_seconds`` (the queue measures this across observations: ``quiet_for``).

One module, though long: units and the per-format rules answer one question (is this
checkpoint finished?) and share the path rules.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from fnmatch import fnmatchcase
from posixpath import dirname

from peerstore.model.names import MAX_FILES
from peerstore.watch.observe import (
    SAFETENSORS_MAX_HEADER,
    ZIP_TAIL,
    CheckpointObservation,
    FileObservation,
    FileStat,
    is_torch_archive_name,
    small_file_limit,
)

# -- verdicts


@dataclass(frozen=True)
class Finished:
    """The unit is complete and quiet: store it. ``kind`` names what was recognised."""

    kind: str


@dataclass(frozen=True)
class NotYet:
    """Not finished (or not provably so): look again later. ``reason`` is shown in status.

    ``wait``: when only quiescence is missing, the seconds until it could be met; else None.
    """

    reason: str
    wait: float | None = None


@dataclass(frozen=True)
class Ignore:
    """Never store this unit (until it changes): temporary, too big, not a checkpoint."""

    reason: str


Verdict = Finished | NotYet | Ignore

# -- names

_STEP_DIR = re.compile(r"checkpoint[-_]?\d+|global_step\d+|step[-_]?\d+|iter_\d+")
_HF_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_TEMPORARY = (
    "*.tmp", ".tmp*", "*.partial", "tmp-checkpoint-*",
    "*~", ".*.sw[a-p]", ".#*", "#*#",  # emacs and vim
    ".peerstore-tmp-*",  # a `peerstore get` writing into a watched directory
)
# rsync writes into ".NAME.XXXXXX" (mkstemp's six random letters and digits) and renames.
_RSYNC_TEMP = re.compile(r"\..+\.[A-Za-z0-9]{6}")
_JUNK = (".DS_Store", "._*", "Thumbs.db", "desktop.ini")
POINTER_NAMES = ("latest", "latest_universal")  # DeepSpeed's tag pointers
_DEEPSPEED_STATE = ("*model_states.pt", "*optim_states.pt")
_TRAILING_NUMBER = re.compile(r"(.*?)(\d+)")
MAX_TAG_LEN = 255


def is_temporary(segment: str) -> bool:
    """True for a file or directory name that a writer renames away when done.

    ``*.tmp``, ``.tmp*``, ``*.partial``, ``tmp-checkpoint-*``, editor files (``*~``,
    ``.*.swp``, ``.#*``, ``#*#``), rsync's ``.NAME.XXXXXX`` and ``.peerstore-tmp-*``.
    (The rsync rule also matches a real file like ``.config.backup``; such a unit waits.)
    """
    return any(fnmatchcase(segment, p) for p in _TEMPORARY) or _RSYNC_TEMP.fullmatch(segment) is not None


def is_junk(segment: str) -> bool:
    """True for desktop clutter never stored: .DS_Store, ._* (AppleDouble), Thumbs.db, desktop.ini."""
    return any(fnmatchcase(segment, p) for p in _JUNK)


def split_path(path: str) -> tuple[str, ...]:
    """The segments of a path relative to a watch root; ValueError for anything else."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise ValueError(f"expected a relative POSIX path under the watch root, got {path!r}")
    segments = tuple(path.split("/"))
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"path {path!r} has an empty, '.' or '..' segment; pass it normalised")
    return segments


def _owner(segments: tuple[str, ...], is_dir: bool) -> tuple[str, ...] | None:
    """Rules 1-3 of the module docstring, before temporary and junk names are considered."""
    for i, segment in enumerate(segments):
        if _STEP_DIR.fullmatch(segment):
            return segments[: i + 1]
    if len(segments) >= 2:
        return segments[:2]
    return None if is_dir else segments


def unit_for(path: str, is_dir: bool = False) -> str | None:
    """The unit (a path relative to the watch root) that ``path`` belongs to, or None.

    ``path`` is relative to the watch root; ``is_dir`` says whether it is a directory (it
    matters only for entries directly in the root). Give the shell's every created, modified,
    deleted or moved path (both ends of a move) to the queue, which calls this.
    """
    segments = split_path(path)
    owner = _owner(segments, is_dir)
    if owner is None or any(is_temporary(s) for s in owner) or is_junk(owner[-1]):
        return None
    if owner == segments and not is_dir and segments[-1] in POINTER_NAMES:
        return None
    return "/".join(owner)


def context_files(unit: str) -> tuple[str, ...]:
    """Files outside ``unit`` the detector reads if they exist (never stored): the DeepSpeed
    ``latest`` pointer beside it. Paths relative to the watch root."""
    parent = dirname(unit)
    pointer = f"{parent}/latest" if parent else "latest"
    return () if pointer == unit else (pointer,)


def members(obs: CheckpointObservation) -> tuple[tuple[FileObservation, ...], tuple[str, ...]]:
    """(the files stored as the unit, sorted by path; the temporary files found inside it).

    Drops junk files and files that belong to a deeper unit. ValueError for a file that is
    not under the unit at all (a shell bug).
    """
    unit = split_path(obs.unit)
    stored: list[FileObservation] = []
    temporary: list[str] = []
    for f in obs.files:
        segments = split_path(f.path)
        if segments[: len(unit)] != unit or (not obs.is_dir and segments != unit):
            raise ValueError(f"file {f.path!r} is not part of unit {obs.unit!r}")
        if is_junk(segments[-1]) or _owner(segments, False) != unit:
            continue
        if any(is_temporary(s) for s in segments[len(unit):]):
            temporary.append(f.path)
        else:
            stored.append(f)
    stored.sort(key=lambda f: f.path)
    return tuple(stored), tuple(sorted(temporary))


def fingerprint(obs: CheckpointObservation) -> tuple[FileStat, ...]:
    """What must stay unchanged for the unit to be quiet, and what a stored version is
    compared with: (path, size, mtime_ns, inode) of every stored file, sorted."""
    return tuple(f.stat for f in members(obs)[0])


# -- single-file formats

# Bits per element of the safetensors dtypes; unknown (future) dtypes skip the length check.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_safetensors(f: FileObservation) -> str | None:
    """None if ``f`` is a complete safetensors file by its structure, else what is wrong.

    Needs ``f.head`` as ``observe.head_wanted`` asks (the length prefix and the header).
    """
    if f.size < 8:
        return f"{f.size} bytes, shorter than the 8-byte header length"
    if len(f.head) < 8:
        return "header length not observed"
    (header_len,) = struct.unpack("<Q", f.head[:8])
    if header_len > SAFETENSORS_MAX_HEADER:
        return f"header length {header_len} is over the {SAFETENSORS_MAX_HEADER}-byte limit (corrupt or not written yet)"
    if 8 + header_len > f.size:
        return f"the {header_len}-byte header runs past the end of the {f.size}-byte file (still being written?)"
    if len(f.head) < 8 + header_len:
        return f"only {len(f.head) - 8} of the header's {header_len} bytes observed"
    try:
        header = json.loads(f.head[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "header is not valid JSON (not written yet, or corrupt)"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                return "__metadata__ is not a map of strings to strings"
            continue
        problem = _tensor_problem(info)
        if problem:
            return f"tensor {key[:80]!r}: {problem}"
        begin, end = info["data_offsets"]
        spans.append((begin, end, key))
    spans.sort()
    data_end = 0
    for begin, end, key in spans:
        if begin > data_end:
            return f"gap in the data before tensor {key[:80]!r} (bytes {data_end} to {begin} belong to no tensor)"
        if begin < data_end:
            return f"tensor {key[:80]!r} overlaps the tensor before it (starts at {begin}, before {data_end})"
        data_end = end
    expected = 8 + header_len + data_end
    if f.size < expected:
        return f"{f.size} of {expected} bytes (still being written?)"
    if f.size > expected:
        return f"{f.size - expected} bytes after the last tensor's data"
    return None


def _tensor_problem(info: object) -> str | None:
    if not isinstance(info, dict):
        return "entry is not an object"
    offsets, dtype, shape = info.get("data_offsets"), info.get("dtype"), info.get("shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)):
        return "data_offsets is not [begin, end]"
    begin, end = offsets
    if not 0 <= begin <= end:
        return f"data_offsets [{begin}, {end}] is not an ascending range"
    if not isinstance(dtype, str):
        return "dtype is not a string"
    if not (isinstance(shape, list) and all(_is_int(x) and x >= 0 for x in shape)):
        return "shape is not a list of non-negative integers"
    bits = _DTYPE_BITS.get(dtype)
    if bits is not None:
        count = 1
        for dim in shape:
            count *= dim
        if count * bits != 8 * (end - begin):
            return f"{dtype} {shape} needs {count * bits / 8:g} bytes but data_offsets span {end - begin}"
    return None


def check_torch_zip(f: FileObservation) -> str | None:
    """None if ``f`` (a .pt/.pth/.bin/.ckpt) is a complete zip archive, or not a zip at all
    (the legacy pickle format: nothing to check), else what is wrong.

    Needs ``f.head`` (4 bytes) and ``f.tail`` as ``observe.head_wanted``/``tail_wanted`` ask.
    """
    if f.size == 0:
        return "empty file"
    if len(f.head) < min(f.size, 4) or len(f.tail) < min(f.size, ZIP_TAIL):
        return "head or tail not observed"
    if not f.head.startswith(b"PK\x03\x04"):
        return None
    tail, base = f.tail, f.size - len(f.tail)
    pos = tail.rfind(b"PK\x05\x06")
    while pos >= 0:  # the EOCD whose comment ends exactly at the end of the file
        if pos + 22 <= len(tail) and pos + 22 + struct.unpack_from("<H", tail, pos + 20)[0] == len(tail):
            break
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
    if pos < 0:
        return "no end-of-central-directory record at the end (still being written, or truncated)"
    disk, cd_disk, entries_here, entries, cd_size, cd_offset = struct.unpack_from("<HHHHII", tail, pos + 4)
    cd_end = base + pos  # the central directory ends where the (zip64) EOCD record starts
    locator = pos - 20
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        zip64_disk, record_at, disks = struct.unpack_from("<IQI", tail, locator + 4)
        rec = record_at - base
        if zip64_disk != 0 or disks != 1:
            return "zip archive split across disks"
        if rec < 0 or rec + 56 > locator:
            return "zip64 locator points outside the observed tail"
        if tail[rec : rec + 4] != b"PK\x06\x06":
            return "zip64 locator does not point at a zip64 end-of-central-directory record"
        rec_size, _, _, disk, cd_disk, entries_here, entries, cd_size, cd_offset = struct.unpack_from(
            "<QHHIIQQQQ", tail, rec + 4
        )
        if rec + 12 + rec_size != locator:
            return "zip64 end-of-central-directory record does not end at its locator"
        cd_end = record_at
    elif 0xFFFF in (entries_here, entries) or 0xFFFFFFFF in (cd_size, cd_offset):
        return "end-of-central-directory record needs zip64 but has no zip64 locator"
    if disk != 0 or cd_disk != 0 or entries_here != entries:
        return "zip archive split across disks"
    # Exactly, not "fits": torch archives have no bytes before them, and the end of a nested
    # zip (a stored entry) in a truncated archive would otherwise pass for the archive's end.
    cd_start = cd_end - cd_size
    if cd_start < 0 or cd_offset != cd_start:
        return f"central directory ({cd_size} bytes at {cd_offset}) does not end at its end record at {cd_end}"
    if cd_start >= base:
        return _walk_central_directory(tail, cd_start - base, cd_end - base, entries)
    return None  # the central directory starts before the observed tail: its end record agrees


def _walk_central_directory(tail: bytes, at: int, end: int, entries: int) -> str | None:
    if entries > (end - at) // 46:
        return f"central directory of {end - at} bytes cannot hold {entries} entries"
    for _ in range(entries):
        if tail[at : at + 4] != b"PK\x01\x02" or at + 46 > end:
            return "central directory entry is malformed"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", tail, at + 28)
        at += 46 + name_len + extra_len + comment_len
    if at != end:
        return "central directory entries do not end where its end record says"
    return None


def check_file(f: FileObservation) -> tuple[str | None, str | None]:
    """(format recognised or None, problem or None) for one file, by its name and bytes."""
    if f.path.endswith(".safetensors"):
        return "safetensors", check_safetensors(f)
    if is_torch_archive_name(f.path):
        problem = check_torch_zip(f)
        return ("torch-zip" if f.head.startswith(b"PK\x03\x04") else None), problem
    return None, None


def _writer_problem(f: FileObservation) -> str | None:
    if f.open_for_write:
        return "open for writing"
    if f.closed_after_write is False:
        return "written and not closed yet"
    return None


# -- whole units


def _relative(unit: str, path: str) -> str:
    """A path as shown in reasons: relative to the unit (the file name for a file unit)."""
    return path.rsplit("/", 1)[-1] if path == unit else path[len(unit) + 1 :]


def _read_json(f: FileObservation) -> tuple[object, str | None]:
    limit = small_file_limit(f.path)
    if limit is not None and f.size > limit:
        return None, f"{f.size} bytes, over the {limit}-byte limit the watcher parses"
    if not f.whole:
        return None, "not observed whole"
    try:
        return json.loads(f.head.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "is not valid JSON (not written yet?)"


def _pointer_tag(f: FileObservation) -> tuple[str | None, str | None]:
    """(the tag a DeepSpeed ``latest`` file names, problem)."""
    if f.size > MAX_TAG_LEN + 64 or not f.whole:
        return None, "is not a DeepSpeed tag pointer (too large) or was not observed whole"
    try:
        tag = f.head.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    if not tag:
        return None, "is empty (not written yet?)"
    if "/" in tag or any(ch.isspace() for ch in tag) or tag in (".", ".."):
        return None, f"names {tag[:80]!r}, which is not a tag directory name"
    return tag, None


def _later_or_same(named: str, tag: str) -> bool:
    """True when the tag ``named`` is ``tag`` or a later step of the same series."""
    if named == tag:
        return True
    a, b = _TRAILING_NUMBER.fullmatch(named), _TRAILING_NUMBER.fullmatch(tag)
    return bool(a and b and a.group(1) == b.group(1) and int(a.group(2)) > int(b.group(2)))


def _is_deepspeed_state(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatchcase(name, p) for p in _DEEPSPEED_STATE)


def check(obs: CheckpointObservation) -> Verdict:
    """Every rule but quiescence (see the module docstring). Finished means "structurally
    complete"; `detect` is what the queue uses."""
    unit_segments = split_path(obs.unit)
    if any(is_temporary(s) for s in unit_segments):
        return Ignore("temporary name; stored once renamed")
    if obs.truncated:
        return Ignore(f"more than {MAX_FILES} files; a checkpoint holds at most that many")
    stored, temporary = members(obs)
    if not stored:
        return NotYet("no files yet")
    if temporary:
        more = f" and {len(temporary) - 1} more" if len(temporary) > 1 else ""
        return NotYet(f"temporary file {_relative(obs.unit, temporary[0])}{more} still present")
    kinds: set[str] = set()
    for f in stored:
        problem = _writer_problem(f)
        kind, structure = check_file(f)
        problem = problem or structure
        if problem:
            return NotYet(f"{_relative(obs.unit, f.path)}: {problem}")
        if kind:
            kinds.add(kind)
    if obs.is_dir:
        problem = _directory_problem(obs, stored, kinds)
        if problem:
            return NotYet(problem)
    return Finished("+".join(sorted(kinds)) or "files")


def _directory_problem(obs: CheckpointObservation, stored: tuple[FileObservation, ...], kinds: set[str]) -> str | None:
    unit = obs.unit
    by_path = {f.path: f for f in stored}
    dirs_with_files = {dirname(p) for p in by_path}
    # every ancestor directory that holds files somewhere below
    holders = set()
    for d in dirs_with_files:
        while d and d not in holders:
            holders.add(d)
            d = dirname(d)

    hf = _HF_CHECKPOINT.fullmatch(unit.rsplit("/", 1)[-1])
    if hf:
        state = by_path.get(f"{unit}/trainer_state.json")
        if state is None:
            return "trainer_state.json not written yet (the Trainer writes it last)"
        value, problem = _read_json(state)
        if problem:
            return f"trainer_state.json {problem}"
        step = value.get("global_step") if isinstance(value, dict) else None
        if not _is_int(step):
            return "trainer_state.json has no integer global_step"
        if step != int(hf.group(1)):
            return f"trainer_state.json says global_step {step}, not {int(hf.group(1))}"
        kinds.add("hf-trainer")

    for path, f in by_path.items():
        name = path.rsplit("/", 1)[-1]
        here = dirname(path)
        if name.endswith(".safetensors.index.json"):
            problem = _index_problem(f, here, by_path)
            if problem:
                return f"{_relative(unit, path)}: {problem}"
            kinds.add("sharded-safetensors")
        elif name.endswith(".distcp"):
            metadata = by_path.get(f"{here}/.metadata")
            if metadata is None or metadata.size == 0:
                return f"{_relative(unit, here + '/.metadata')} not written yet (PyTorch DCP renames it in last)"
            kinds.add("dcp")
        elif name in POINTER_NAMES and any(
            _is_deepspeed_state(p) and p.startswith(here + "/") and dirname(p) != here for p in by_path
        ):  # a pointer beside tag directories (Trainer + DeepSpeed puts both in checkpoint-N)
            tag, problem = _pointer_tag(f)
            if problem:
                return f"{_relative(unit, path)} {problem}"
            if f"{here}/{tag}" not in holders:
                return f"{_relative(unit, path)} names {tag!r}, which has no files yet"
            kinds.add("deepspeed")

    pointer = next((c for c in obs.context if c.path in context_files(unit)), None)
    if pointer is not None and any(_is_deepspeed_state(p) and dirname(p) == unit for p in by_path):
        # the unit is a DeepSpeed tag directory and its parent has a `latest` pointer
        tag, problem = _pointer_tag(pointer)
        if problem:
            return f"DeepSpeed pointer {pointer.path} {problem}"
        mine = unit.rsplit("/", 1)[-1]
        if not _later_or_same(tag, mine):
            return f"DeepSpeed pointer {pointer.path} names {tag!r}, not this tag or a later one"
        kinds.add("deepspeed")
    return None


def _index_problem(f: FileObservation, here: str, by_path: dict[str, FileObservation]) -> str | None:
    value, problem = _read_json(f)
    if problem:
        return problem
    weight_map = value.get("weight_map") if isinstance(value, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return "has no weight_map of tensor names to shard files"
    for shard in sorted(set(weight_map.values())):
        try:
            split_path(shard)
        except ValueError:
            return f"names shard {shard[:80]!r}, which is not a path inside the checkpoint"
        if f"{here}/{shard}" not in by_path:
            return f"shard {shard[:80]!r} not written yet"
    return None


def detect(obs: CheckpointObservation, *, quiet_for: float, settle_seconds: float) -> Verdict:
    """`check`, then quiescence: ``quiet_for`` is how long (seconds) the unit's fingerprint
    has been unchanged, measured by the caller across observations."""
    verdict = check(obs)
    if isinstance(verdict, Finished) and quiet_for < settle_seconds:
        return NotYet(
            f"changed {max(quiet_for, 0.0):.1f} s ago; stored after {settle_seconds:g} s without change",
            wait=settle_seconds - quiet_for,
        )
    return verdict
