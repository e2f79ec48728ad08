"""The one strict msgpack codec: canonical encoding, bounded decoding, typed field checks.

Every byte string peerstore decodes may come from another node or a rotten disk, so
decoding is bounded (no declared length can make msgpack allocate more than the caller
allows), refuses extension types, and raises the caller's error class and nothing else.
Local state files are additionally sealed with a BLAKE3 checksum. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import blake3
import msgpack

from peerstore.errors import FormatError
from peerstore.model.names import MAX_PATH_LEN

FORMAT_VERSION = 1
ID_LEN = 32  # BLAKE3 digest: piece ids, whole-file hashes, manifest ids
MAX_ARRAY_LEN = 1_000_000

_MSGPACK_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException)


def pack(doc: object, error: type[Exception] = FormatError) -> bytes:
    """msgpack with every map's keys sorted, so equal documents give equal bytes."""
    try:
        return msgpack.packb(_sorted_maps(doc), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise error(f"cannot encode: {err}") from None


def _sorted_maps(obj: object) -> object:
    if isinstance(obj, dict):
        return {key: _sorted_maps(obj[key]) for key in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_sorted_maps(x) for x in obj]
    return obj


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack(
    data: object,
    what: str,
    *,
    max_bytes: int,
    max_str: int,
    max_bin: int,
    max_array: int,
    max_map: int,
    use_list: bool = False,
    error: type[Exception] = FormatError,
) -> object:
    """Decode ``data`` strictly: string map keys, no extension types, every container and
    string bounded (an array never longer than the input could hold). Raises ``error``
    naming ``what`` on anything wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{what} must be bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise error(f"{what} is {size} bytes; the limit is {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=use_list,
            strict_map_key=True,
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_array_len=min(max_array, size),
            max_map_len=min(max_map, size),
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except _MSGPACK_ERRORS as err:
        raise error(f"{what} is not valid msgpack: {err or type(err).__name__}") from None


class Fields:
    """A decoded msgpack map with exactly the expected keys, read with type checks."""

    def __init__(self, raw: object, where: str, keys: tuple[str, ...], versioned: bool = True):
        if not isinstance(raw, dict):
            raise FormatError(f"{where} must be a map, got {type(raw).__name__}")
        if versioned:
            check_format(raw, where)
        missing = [k for k in keys if k not in raw]
        unknown = [k for k in raw if k not in keys]
        if missing or unknown:
            raise FormatError(f"{where}: missing fields {missing}, unknown fields {unknown!r:.200}")
        self.raw: Mapping[str, object] = raw
        self.where = where

    def get(self, key: str) -> object:
        return self.raw[key]

    def integer(self, key: str, low: int, high: int) -> int:
        return integer(self.raw[key], f"{self.where} {key}", low, high)

    def string(self, key: str, max_bytes: int) -> str:
        return text(self.raw[key], f"{self.where} {key}", max_bytes)

    def blob(self, key: str, length: int) -> bytes:
        return digest(self.raw[key], f"{self.where} {key}", length)

    def real(self, key: str) -> float:
        return real(self.raw[key], f"{self.where} {key}")

    def flag(self, key: str) -> bool:
        value = self.raw[key]
        if not isinstance(value, bool):
            raise FormatError(f"{self.where} {key} must be a boolean, got {type(value).__name__}")
        return value

    def array(self, key: str, max_len: int = MAX_ARRAY_LEN) -> tuple:
        return array(self.raw[key], f"{self.where} {key}", max_len)


def check_format(raw: dict, where: str) -> None:
    """FormatError unless ``raw["format"]`` is a version this code can read."""
    version = raw.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{where} has no valid format version (got {version!r:.40})")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{where} format {version} is newer than this peerstore understands ({FORMAT_VERSION}); upgrade peerstore"
        )


def integer(value: object, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{where} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise FormatError(f"{where} must be {low} to {high}, got {value}")
    return value


def real(value: object, where: str) -> float:
    if not isinstance(value, float):
        raise FormatError(f"{where} must be a float, got {type(value).__name__}")
    return value


def text(value: object, where: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where} must be a string, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise FormatError(f"{where} is longer than {max_bytes} characters")
    return value


def digest(value: object, where: str, length: int = ID_LEN) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise FormatError(f"{where} must be {length} bytes, got {got}")
    return value


def array(value: object, where: str, max_len: int = MAX_ARRAY_LEN, exact: bool = False) -> tuple:
    if not isinstance(value, tuple):
        raise FormatError(f"{where} must be an array, got {type(value).__name__}")
    if (len(value) != max_len) if exact else (len(value) > max_len):
        raise FormatError(f"{where} must have {'exactly' if exact else 'at most'} {max_len} items, got {len(value)}")
    return value


SEAL_MAGIC = b"peerstore-sealed-1\n"


def seal(blob: bytes) -> bytes:
    """``blob`` with a BLAKE3 checksum in front, for local state files (catalog,
    counters): rot in them is found when they are read back, not served."""
    return SEAL_MAGIC + blake3.blake3(blob).digest() + blob


def unseal(data: bytes, what: str) -> bytes:
    """The blob ``seal`` wrapped; FormatError if the checksum does not match. Files
    written before sealing (no magic) are returned as they are, for their decoder to check."""
    if not data.startswith(SEAL_MAGIC):
        return data
    checksum, blob = data[len(SEAL_MAGIC): len(SEAL_MAGIC) + ID_LEN], data[len(SEAL_MAGIC) + ID_LEN:]
    if blake3.blake3(blob).digest() != checksum:
        raise FormatError(f"{what} does not match its checksum (the file has rotted or was cut short)")
    return blob


# No decoded string in a stored document is longer than a path and no bytes longer than an
# id; arrays are the only thing that grows, and msgpack preallocates them, so their claimed
# length is capped by the input's size.
def unpack_document(data: object, what: str, max_bytes: int) -> object:
    """Decode a manifest, catalog or counters document (FormatError on anything wrong)."""
    return unpack(data, what, max_bytes=max_bytes, max_str=MAX_PATH_LEN, max_bin=ID_LEN,
                  max_array=MAX_ARRAY_LEN, max_map=32)
