"""The protocol between the ``peerstore`` CLI and the node it talks to.

It runs over the same authenticated wire as node-to-node traffic (handshake on the
cluster key, MACed frames, raw payloads). The CLI uses a random 16-hex node id starting
with ``c`` for the handshake. Every header has a ``"t"`` type; these helpers build and
check them so both sides agree. Conversation shapes:

put   C: put {name, files:[{path,size,mode,mtime_ns?,inode?}], is_dir, local_root?}
      C: data {file, offset} + payload           (only when local_root is absent:
         the file bytes, in file order then offset order, chunks <= DATA_CHUNK)
      N: progress {done, total}*                 (bytes durably stored so far)
      N: put_done {name, version, tolerance, size, pieces, manifest_id} + body {blake3:[32 bytes per file]}
         | failed {reason, unknown, local_refused?}
get   C: get {spec, fds?}                      (fds: true only on the node's Unix socket)
      N: manifest {} + payload (manifest bytes; the CLI verifies them against entry)
      N: entry {name, version, manifest_id, fds?}  (fds: descriptors per frame the node takes)
      when the entry offers fds (see "Descriptors" below):
        C: fds {files:[index...], last} with one descriptor per index | fds {files:[], last, stream}
        N: fds_ok {count} after each fds frame | fds_ok {stream, reason?}: it streams instead
        N: progress {done, total}*    (done: bytes written so far, a prefix of the stripe order)
      N: stripe {file, offset} + payload (that stripe's data bytes, in order)*  (with fds: only
         after a write the node could not make, from where it got to; the CLI writes them)
      N: get_done {name, version, size, degraded, fallbacks, written?} | failed {reason}
ls    C: ls {name?}          N: listing {} + body {entries:[entry dicts]}
status C: status {}          N: status {} + body {node_id, members:[...], checkpoints:[...],
                                                    nodes:[{id, report}]}
rm    C: rm {spec}           N: removed {versions:[...]} | failed {reason}
verify C: verify {spec?}     N: progress {done, total}*  (bytes re-read by the holders so far)
                             N: verified {} + body {ok, checked, checkpoints:[...], ...} | failed {reason}

A *body* is a msgpack map sent as the frame payload and merged into the header by the
receiver: replies that grow with the catalog would not fit the 64 KiB header limit.

``local_root`` lets a CLI on the same machine as its node name a directory (or file)
the node reads itself, instead of streaming the bytes through the socket. The node honours
it only on its Unix client socket (``<data_dir>/run/client.sock``) and only for a peer the
kernel says runs as the node's own user; anywhere else (TCP from any address, another
user) it answers ``failed {reason, local_refused: true}`` before starting the put, and the
CLI sends the same put again, streamed. The node opens each file itself without following
symlinks inside ``local_root``, never blocks on a FIFO, and reads only regular files of the
requested size. With ``local_root``, a file's
``mtime_ns`` and ``inode`` (as the client saw them) let the node refuse a file that changed
since: it compares them when it opens the file and again after reading it, and fails the
put with a reason containing ``errors.CHANGED_DURING_PUT`` (older clients omit them; the
node then compares only its own stats before and after reading).

Descriptors (a get on the Unix socket, Linux and macOS): the CLI asks with ``fds: true``;
a node that will write the files itself (the peer runs as its own user) says so in the
entry (``fds``: how many descriptors one frame may carry). The CLI then creates every
output file itself (a temp name beside the target) and sends ``fds`` frames, each with its
descriptors attached (SCM_RIGHTS; ``files`` lists, in increasing order, the file index of
each; every non-empty file once), waiting for ``fds_ok`` after each; ``last`` marks the
final one. ``stream: true`` instead (too many files, say) makes it an ordinary streamed get,
as does a node that answers ``fds_ok {stream: true}`` (it could not take them). The node
checks each descriptor is a regular file open for writing (not append-only), writes only
the ranges the manifest defines, and reports ``progress``; the CLI reads back what was
written, checks every file's size and whole-file BLAKE3, and installs as for a streamed
get. A write the node cannot make (its own file size limit, say) is not an error: it
streams that stripe and the rest, and the CLI writes them into the same files.
``get_done.written`` is the number of files the node wrote (absent if it streamed).
"""

from __future__ import annotations

from typing import Any

import msgpack

from peerstore.errors import CodecError
from peerstore.model.codec import unpack
from peerstore.model.names import MAX_FILES

DATA_CHUNK = 4 * 1024 * 1024
MAX_TEXT = 4096

REQUESTS = {"put", "data", "get", "ls", "status", "rm", "verify"}


def _text(header: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = header.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise CodecError(f"{header.get('t')}.{key}: expected a string of at most {MAX_TEXT} characters")
    return value


def _int(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if type(value) is not int or value < 0:
        raise CodecError(f"{header.get('t')}.{key}: expected a non-negative integer")
    return value


def parse_put(header: dict[str, Any]) -> tuple[str, list[tuple[str, int, int]], bool, str | None]:
    """(name, [(path, size, mode)], is_dir, local_root) from a put request."""
    name = _text(header, "name")
    files = header.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise CodecError(f"put.files: expected a list of at most {MAX_FILES} files")
    out = []
    for item in files:
        if not isinstance(item, dict):
            raise CodecError("put.files: every file must be a map")
        out.append((_text(item, "path"), _int(item, "size"), _int(item, "mode") & 0o7777))
    is_dir = header.get("is_dir", False)
    if type(is_dir) is not bool:
        raise CodecError("put.is_dir: expected a boolean")
    return name, out, is_dir, _text(header, "local_root", optional=True)  # type: ignore[return-value]


def parse_put_stats(header: dict[str, Any]) -> list[tuple[int, int] | None]:
    """Per file of a (parsed) put request, the (mtime_ns, inode) the client saw, or None."""
    out: list[tuple[int, int] | None] = []
    for item in header.get("files") or ():
        mtime, inode = item.get("mtime_ns"), item.get("inode")
        if mtime is None and inode is None:
            out.append(None)
            continue
        if type(mtime) is not int or type(inode) is not int or inode < 0 or abs(mtime) >= 2**63:
            raise CodecError("put.files: mtime_ns and inode must be integers, given together")
        out.append((mtime, inode))
    return out


def put_request(name: str, files: list[tuple[str, int, int]], is_dir: bool, local_root: str | None,
                stats: list[tuple[int, int]] | None = None) -> dict:
    """A put request; ``stats`` (mtime_ns, inode) per file go along with ``local_root``."""
    header: dict[str, Any] = {
        "t": "put", "name": name, "is_dir": is_dir,
        "files": [{"path": p, "size": s, "mode": m} for p, s, m in files],
    }
    if stats is not None:
        if len(stats) != len(files):
            raise ValueError("put_request: one (mtime_ns, inode) per file")
        for item, (mtime, inode) in zip(header["files"], stats):
            item["mtime_ns"], item["inode"] = mtime, inode
    if local_root is not None:
        header["local_root"] = local_root
    return header


def parse_position(header: dict[str, Any]) -> tuple[int, int]:
    """(file index, offset) of a data or stripe frame."""
    return _int(header, "file"), _int(header, "offset")


def parse_spec(header: dict[str, Any]) -> str:
    return _text(header, "spec")  # type: ignore[return-value]


MAX_FD_FILES = 512  # descriptors one get may pass in all


def get_request(spec: str, fds: bool = False) -> dict:
    """A get request; ``fds``: the CLI can pass descriptors for the node to write into."""
    return {"t": "get", "spec": spec, **({"fds": True} if fds else {})}


def wants_fds(header: dict[str, Any]) -> bool:
    return header.get("fds") is True


def parse_fds(header: dict[str, Any], max_files: int) -> tuple[list[int], bool, bool]:
    """(file indices, last, stream) of an ``fds`` frame; at most ``max_files`` indices,
    strictly increasing."""
    files, last, stream = header.get("files"), header.get("last"), header.get("stream", False)
    if header.get("t") != "fds" or not isinstance(files, list) or len(files) > max_files:
        raise CodecError(f"expected an fds frame listing at most {max_files} files")
    if any(type(i) is not int or i < 0 for i in files) or any(a >= b for a, b in zip(files, files[1:])):
        raise CodecError("fds.files: expected strictly increasing file indices")
    if type(last) is not bool or type(stream) is not bool:
        raise CodecError("fds.last and fds.stream: expected booleans")
    return files, last, stream


MAX_BODY = 64 * 1024 * 1024


def encode_body(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def decode_body(data: bytes) -> dict[str, Any]:
    """A reply body: a msgpack map with string keys, bounded; CodecError otherwise."""
    if len(data) > MAX_BODY:
        raise CodecError(f"reply body larger than {MAX_BODY} bytes")
    body = unpack(data, "reply body", max_bytes=MAX_BODY, max_str=MAX_BODY, max_bin=MAX_BODY,
                  max_array=1_000_000, max_map=1_000_000, use_list=True, error=CodecError)
    if not isinstance(body, dict) or "t" in body:
        raise CodecError("a reply body must be a map without a 't' key")
    return body


def failed(reason: str, unknown: bool = False) -> dict:
    return {"t": "failed", "reason": reason[:MAX_TEXT], "unknown": unknown}


def local_refused(reason: str) -> dict:
    """A put's ``local_root`` refused before anything started: stream the files instead."""
    return {**failed(reason), "local_refused": True}


def is_local_refused(header: dict[str, Any]) -> bool:
    return header.get("t") == "failed" and header.get("local_refused") is True


def entry_dict(entry: Any) -> dict:
    """A CatalogEntry as plain data for listings."""
    return {
        "name": entry.name, "version": entry.version.counter, "version_id": str(entry.version),
        "manifest_id": entry.manifest_id.hex(), "size": entry.size, "files": entry.files,
        "tolerance": entry.tolerance, "created": entry.created,
    }
