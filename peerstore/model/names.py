"""What counts as a checkpoint name, a version id and a path inside a manifest.

Names come from users (`peerstore put run1/step-500`), paths come from manifests that
other nodes send us; both end up in catalogs and on file systems, so both are checked
here before anything else touches them. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from peerstore.errors import InvalidNameError

MAX_NAME_LEN = 200
MAX_PATH_LEN = 1024  # UTF-8 bytes; macOS's PATH_MAX
MAX_SEGMENT_LEN = 255  # UTF-8 bytes; the usual file-name limit
MAX_FILES = 100_000
MAX_COUNTER = 2**63 - 1  # fits msgpack's int64 everywhere
NODE_ID_LEN = 16

_NAME_SEGMENT = re.compile(r"[A-Za-z0-9._+-]+")
_NODE_ID = re.compile(r"[0-9a-f]{16}")
_VERSION_ID = re.compile(r"([1-9][0-9]{0,18})\.([0-9a-f]{16})")
_VERSION_SELECTOR = re.compile(r"([1-9][0-9]{0,18})(?:\.([0-9a-f]{1,16}))?")


def is_node_id(value: object) -> bool:
    """True for a node id: exactly 16 lowercase hex characters."""
    return isinstance(value, str) and _NODE_ID.fullmatch(value) is not None


@dataclass(frozen=True, order=True)
class VersionId:
    """One version of a checkpoint: (Lamport counter, coordinator node id).

    Ordered by counter, then node id, so every node agrees which version is the latest
    even when two coordinators stored the same name at once.
    """

    counter: int
    node: str

    def __post_init__(self) -> None:
        if not isinstance(self.counter, int) or isinstance(self.counter, bool):
            raise InvalidNameError(f"version counter must be an integer, got {self.counter!r}")
        if not 1 <= self.counter <= MAX_COUNTER:
            raise InvalidNameError(f"version counter must be 1 to {MAX_COUNTER}, got {self.counter}")
        if not is_node_id(self.node):
            raise InvalidNameError(f"node id must be {NODE_ID_LEN} lowercase hex characters, got {self.node!r}")

    def __str__(self) -> str:
        return f"{self.counter}.{self.node}"

    @classmethod
    def parse(cls, text: str) -> VersionId:
        """Inverse of str(): "3.ab12cd34ef567890" -> VersionId(3, "ab12cd34ef567890")."""
        match = _VERSION_ID.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidNameError(
                f"bad version id {text!r}: expected COUNTER.NODE, e.g. 3.ab12cd34ef567890 "
                f"(counter >= 1, node id {NODE_ID_LEN} lowercase hex characters)"
            )
        return cls(int(match.group(1)), match.group(2))


def parse_version_selector(text: str) -> tuple[int, str]:
    """The V of NAME@V: "3" -> (3, ""), "3.ab12" -> (3, "ab12") — a counter and a
    (possibly empty) node id prefix. Hex is accepted in either case."""
    match = _VERSION_SELECTOR.fullmatch(text.lower()) if isinstance(text, str) else None
    if match is None:
        raise InvalidNameError(
            f"bad version {text!r}: expected a counter (NAME@3) or counter.node id prefix "
            f"(NAME@3.ab12), as shown by `peerstore ls`"
        )
    return int(match.group(1)), match.group(2) or ""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid checkpoint name, else raise InvalidNameError.

    A name is "/"-separated segments of [A-Za-z0-9._+-], none "." or "..", at most
    MAX_NAME_LEN characters in all, e.g. "run1/step-500".
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"checkpoint name must be a string, got {type(name).__name__}")
    shown = _shorten(name)
    if not name:
        raise InvalidNameError("checkpoint name is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidNameError(f"checkpoint name {shown} is {len(name)} characters long; the limit is {MAX_NAME_LEN}")
    if "@" in name:
        raise InvalidNameError(f"checkpoint name {shown} contains '@', which separates a version (NAME@V)")
    if name.startswith("/"):
        raise InvalidNameError(f"checkpoint name {shown} starts with '/'; names are relative, e.g. run1/step-500")
    if name.endswith("/"):
        raise InvalidNameError(f"checkpoint name {shown} ends with '/'")
    if name.startswith("-"):
        raise InvalidNameError(f"checkpoint name {shown} starts with '-', which would read as a command-line option")
    for segment in name.split("/"):
        if not segment:
            raise InvalidNameError(f"checkpoint name {shown} contains '//' (an empty segment)")
        if segment in (".", ".."):
            raise InvalidNameError(f"checkpoint name {shown} contains a {segment!r} segment")
        if _NAME_SEGMENT.fullmatch(segment) is None:
            bad = next(ch for ch in segment if _NAME_SEGMENT.fullmatch(ch) is None)
            raise InvalidNameError(
                f"checkpoint name {shown} contains {bad!r}; use only letters, digits and . _ + - (and / between parts)"
            )
    return name


def name_key(name: str) -> str:
    """``name`` folded for comparison: two names with one key name the same directory on a
    case-insensitive file system (macOS, Windows), so a second one is refused
    (``Catalog.case_clash``). Names are ASCII, so lowercasing is case folding."""
    return name.lower()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"NAME" -> (NAME, None); "NAME@V" -> (NAME, V), both validated (V lowercased)."""
    if not isinstance(spec, str):
        raise InvalidNameError(f"checkpoint spec must be a string, got {type(spec).__name__}")
    name, at, version = spec.partition("@")
    validate_name(name)
    if not at:
        return name, None
    if not version:
        raise InvalidNameError(f"{_shorten(spec)} has nothing after '@'; expected NAME@VERSION, e.g. {name}@3")
    parse_version_selector(version)
    return name, version.lower()


def validate_paths(paths: Sequence[str]) -> None:
    """Raise InvalidNameError unless ``paths`` can all be restored safely side by side.

    Each path is relative POSIX with no empty, "." or ".." segments, no backslash and no
    control characters, within MAX_SEGMENT_LEN / MAX_PATH_LEN UTF-8 bytes. Together:
    at most MAX_FILES, no two equal after Unicode normalisation and case folding (they
    would overwrite each other on macOS or Windows), and no file that is also a parent
    directory of another file.
    """
    if len(paths) > MAX_FILES:
        raise InvalidNameError(f"{len(paths)} files in one checkpoint; the limit is {MAX_FILES}")
    folded_owner: dict[str, str] = {}
    for path in paths:
        _validate_path(path)
        folded = _fold(path)
        other = folded_owner.get(folded)
        if other is not None:
            if other == path:
                raise InvalidNameError(f"path {_shorten(path)} appears twice")
            raise InvalidNameError(
                f"paths {_shorten(other)} and {_shorten(path)} name the same file on a case-insensitive "
                "file system (macOS, Windows); rename one"
            )
        folded_owner[folded] = path
    for folded, path in folded_owner.items():
        cut = folded.rfind("/")
        while cut > 0:
            parent = folded_owner.get(folded[:cut])
            if parent is not None:
                raise InvalidNameError(
                    f"{_shorten(parent)} is a file but {_shorten(path)} needs it to be a directory"
                )
            cut = folded.rfind("/", 0, cut)


def _validate_path(path: str) -> None:
    if not isinstance(path, str):
        raise InvalidNameError(f"path must be a string, got {type(path).__name__}")
    shown = _shorten(path)
    if not path:
        raise InvalidNameError("empty path in checkpoint")
    if len(path) > MAX_PATH_LEN:  # cheap bound before the per-character scan
        raise InvalidNameError(f"path {shown} is {len(path)} characters long; the limit is {MAX_PATH_LEN} bytes")
    for ch in path:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs"):
            raise InvalidNameError(f"path {shown} contains control or invalid character {ch!r}")
    if "\\" in path:
        raise InvalidNameError(f"path {shown} contains a backslash; paths use '/' between parts")
    encoded = path.encode("utf-8")
    if len(encoded) > MAX_PATH_LEN:
        raise InvalidNameError(f"path {shown} is {len(encoded)} bytes long; the limit is {MAX_PATH_LEN}")
    if path.startswith("/"):
        raise InvalidNameError(f"path {shown} is absolute; paths in a checkpoint are relative")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty" if not segment else f"a {segment!r}"
            raise InvalidNameError(f"path {shown} has {what} segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_LEN:
            raise InvalidNameError(f"path {shown} has a segment longer than {MAX_SEGMENT_LEN} bytes")


def _fold(path: str) -> str:
    # Canonical caseless matching (Unicode 3.13 D145): "É", "é" and "e\u0301" all agree.
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


def _shorten(text: str, limit: int = 80) -> str:
    """repr() of text, cut so that a hostile 1 MB name does not flood an error message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
