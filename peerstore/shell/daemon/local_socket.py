"""The node's Unix-domain client socket, ``<data_dir>/run/client.sock``.

It speaks the same client protocol as the TCP port (same handshake on the cluster key).
Only here may a put name a local path (``local_root``), and only when the kernel says the
peer runs as the node's own user (``peerstore.shell.peercred``). The directory is 0700 and
owned by the node's user, so other users cannot even connect; the uid check holds anyway.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from peerstore.shell.peercred import MAX_SOCKET_PATH, client_socket_path, socket_address

log = logging.getLogger("peerstore.node")

BACKLOG = 64


def _prepare_dir(run_dir: Path) -> str | None:
    """Create ``run_dir`` 0700, or check the existing one is ours; None or what is wrong."""
    try:
        os.mkdir(run_dir, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(run_dir)
    if not stat.S_ISDIR(st.st_mode):
        return f"{run_dir} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{run_dir} belongs to uid {st.st_uid}, not to this node's user (uid {os.geteuid()})"
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(run_dir, 0o700)
    return None


def _bind(path: Path) -> trio.socket.SocketType | None:
    """A listening socket at ``path`` (a stale one from a crash is replaced), or None."""
    sock = None
    try:
        problem = _prepare_dir(path.parent)
        if problem is None and os.path.lexists(path):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # ours: the data directory lock says no other node runs here
            else:
                problem = f"{path} exists and is not a socket; move it away"
        if problem is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with socket_address(path) as address:
                if address is None:
                    problem = (f"{path} is longer than the {MAX_SOCKET_PATH} bytes a socket path may have "
                               "here; use a shorter data_dir to let them read files directly")
                else:
                    sock.bind(address)
            if problem is None:
                os.chmod(path, 0o600)
                sock.listen(BACKLOG)
                return trio.socket.from_stdlib_socket(sock)
    except OSError as err:
        problem = f"{path}: {err.strerror or err}"
    if sock is not None:
        sock.close()
    log.warning("no local client socket (%s): local puts will stream their files over TCP", problem)
    return None


async def serve_local_clients(data_dir: Path, handler: Callable[[trio.SocketStream], Awaitable[None]], *,
                              task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on the client socket until cancelled; started with its path (None
    when there is none, which leaves local puts streaming over TCP). Removes it at exit."""
    path = client_socket_path(data_dir)
    sock = _bind(path)
    if sock is None:
        task_status.started(None)
        return
    try:
        task_status.started(path)
        await trio.serve_listeners(handler, [trio.SocketListener(sock)])
    finally:
        sock.close()
        try:
            os.unlink(path)
        except OSError:
            pass
