"""Who is at the other end of a Unix-domain socket, and where a node's client socket lives.

A node reads files named by a client (a put's ``local_root``) only for a client of its own
user on this machine. TCP cannot tell who that is, so the node also listens on a Unix
socket in a 0700 directory of its data directory, and asks the kernel for the peer's uid:
``SO_PEERCRED`` on Linux, ``LOCAL_PEERCRED`` (a ``struct xucred``) on macOS and FreeBSD.
On any other platform the uid is unknown and local paths are refused (the CLI streams).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RUN_DIR = "run"
SOCKET_NAME = "client.sock"
# sun_path holds 108 bytes on Linux, 104 on macOS and the BSDs, the terminating NUL included.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

_SOL_LOCAL = 0  # macOS/FreeBSD <sys/un.h>
_LOCAL_PEERCRED = 1
_XUCRED_VERSION = 0
_XUCRED_SIZE = 76  # u_int version, uid_t uid, short ngroups (+2 padding), gid_t groups[16]


def client_socket_path(data_dir: Path) -> Path:
    """Where the node with ``data_dir`` listens for clients of its own user."""
    return Path(os.path.abspath(data_dir)) / RUN_DIR / SOCKET_NAME


def peer_uid(sock: Any) -> int | None:
    """The effective uid of the process at the other end of the connected Unix socket
    ``sock`` (a stdlib or trio socket), or None when this platform cannot tell."""
    try:
        if sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED"):
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
            _pid, uid, _gid = struct.unpack("iII", raw)
            return uid
        if sys.platform == "darwin" or sys.platform.startswith("freebsd"):
            raw = sock.getsockopt(_SOL_LOCAL, getattr(socket, "LOCAL_PEERCRED", _LOCAL_PEERCRED), _XUCRED_SIZE)
            if len(raw) < 8:
                return None
            version, uid = struct.unpack_from("=II", raw)
            return uid if version == _XUCRED_VERSION else None
    except OSError:
        return None
    return None


def same_user(sock: Any) -> bool:
    """True only when the peer of ``sock`` is known to run as this process's user."""
    uid = peer_uid(sock)
    return uid is not None and uid == os.geteuid()


@contextmanager
def socket_address(path: Path) -> Iterator[str | None]:
    """An address ``bind``/``connect`` accept for ``path``: the path itself when it fits in
    ``sun_path``; on Linux, when it is too long, the same file reached through
    ``/proc/self/fd`` and a descriptor of its directory; else None (too long here)."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= MAX_SOCKET_PATH:
        yield text
        return
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self/fd"):
        yield None
        return
    fd = os.open(os.path.dirname(text), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{fd}/{os.path.basename(text)}"
        yield short if len(os.fsencode(short)) <= MAX_SOCKET_PATH else None
    finally:
        os.close(fd)
