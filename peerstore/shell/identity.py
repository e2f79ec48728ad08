"""A node's stable identity, kept in its data directory.

``node.id`` names the node for life: other nodes file its pieces under it, so it is
never silently replaced. ``boot.epoch`` goes up by one, durably, on every start, so a
datagram from an earlier run (same node id, lower epoch) can be told apart and refused.
``FORMAT`` records the data-directory layout version.

Files are created in the order FORMAT, boot.epoch, node.id, so after any crash a
``node.id`` without a ``boot.epoch`` means damage rather than an interrupted first start.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from peerstore.shell.durable import fsync_dir, write_file_atomic
from peerstore.errors import FormatError, StoreError

DATA_FORMAT_VERSION = 1
FORMAT_FILE = "FORMAT"
NODE_ID_FILE = "node.id"
BOOT_EPOCH_FILE = "boot.epoch"
_FORMAT_RE = re.compile(r"peerstore-data (\d{1,9})")
_NODE_ID_RE = re.compile(r"[0-9a-f]{16}")
_EPOCH_RE = re.compile(r"\d{1,18}")
_MAX_SMALL_FILE = 256
_WHAT_TO_DO = ("Restore it from a backup of this data directory; if this node's pieces are "
               "expendable, move the data directory aside and start the node with an empty one.")


@dataclass(frozen=True)
class NodeIdentity:
    """``node_id``: 16 lowercase hex characters. ``boot_epoch``: this start's number, from 1."""

    node_id: str
    boot_epoch: int


def load_or_create_identity(data_dir: str | Path) -> NodeIdentity:
    """Read (or on first start create) the node's identity and durably raise its boot epoch.

    Raises FormatError, naming the file, when the directory holds another format version
    or a damaged identity (it never makes a new identity over an old one), StoreError when
    the directory cannot be created and DiskFullError when the epoch cannot be written.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise FormatError(f"data_dir {data_dir} is a file, not a directory; fix data_dir in the config")
    if not data_dir.is_dir():
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data_dir {data_dir}: {exc.strerror or exc}") from None
        fsync_dir(data_dir.parent)
    _check_or_create_format(data_dir)

    id_path, epoch_path = data_dir / NODE_ID_FILE, data_dir / BOOT_EPOCH_FILE
    node_id = _read_small(id_path)
    epoch = _read_small(epoch_path)

    if node_id is None:
        if epoch is not None and _parse_epoch(epoch_path, epoch) > 0:
            raise FormatError(f"{id_path} is missing, but {epoch_path} shows this data directory "
                              "has been used; a new identity would orphan the node's pieces. "
                              + _WHAT_TO_DO)
        if epoch is None:
            write_file_atomic(epoch_path, b"0\n")
            epoch = "0"
        node_id = secrets.token_hex(8)
        write_file_atomic(id_path, f"{node_id}\n".encode())
    elif not _NODE_ID_RE.fullmatch(node_id.strip()):
        raise FormatError(f"{id_path} is corrupt: expected 16 lowercase hex characters, "
                          f"got {node_id[:40]!r}. " + _WHAT_TO_DO)
    elif epoch is None:
        raise FormatError(f"{epoch_path} is missing although {id_path} exists. If you are sure "
                          f"no other copy of this node is running, write a number larger than any "
                          f"epoch it used (for example 1000000) into {epoch_path} and start again.")

    boot_epoch = _parse_epoch(epoch_path, epoch) + 1
    write_file_atomic(epoch_path, f"{boot_epoch}\n".encode())
    return NodeIdentity(node_id=node_id.strip(), boot_epoch=boot_epoch)


def _check_or_create_format(data_dir: Path) -> None:
    path = data_dir / FORMAT_FILE
    text = _read_small(path)
    if text is None:
        if (data_dir / NODE_ID_FILE).exists():
            raise FormatError(f"{path} is missing, but {data_dir} holds a node identity; "
                              f"write 'peerstore-data {DATA_FORMAT_VERSION}' into it if this data "
                              "directory was made by this peerstore version.")
        write_file_atomic(path, f"peerstore-data {DATA_FORMAT_VERSION}\n".encode())
        return
    match = _FORMAT_RE.fullmatch(text.strip())
    if match is None:
        raise FormatError(f"{path} is not a peerstore FORMAT file (got {text[:40]!r}); "
                          "is data_dir pointing at the right directory?")
    version = int(match.group(1))
    if version != DATA_FORMAT_VERSION:
        raise FormatError(f"{path} says data format version {version}, but this peerstore reads "
                          f"version {DATA_FORMAT_VERSION}; run a peerstore release that reads "
                          f"version {version}, or point data_dir at another directory.")


def _read_small(path: Path) -> str | None:
    """The text of a small metadata file, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_SMALL_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror or exc}. Check its permissions "
                          "(the node must run as the user that owns its data directory).") from None
    if len(raw) > _MAX_SMALL_FILE:
        raise FormatError(f"{path} is corrupt: larger than {_MAX_SMALL_FILE} bytes. " + _WHAT_TO_DO)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{path} is corrupt: not ASCII text. " + _WHAT_TO_DO) from None


def _parse_epoch(path: Path, text: str) -> int:
    if not _EPOCH_RE.fullmatch(text.strip()):
        raise FormatError(f"{path} is corrupt: expected a whole number, got {text[:40]!r}. If no "
                          "other copy of this node is running, write a number larger than any epoch "
                          f"it used (for example 1000000) into {path} and start again.")
    return int(text.strip())
