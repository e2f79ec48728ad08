"""Passing file descriptors with a frame over a Unix-domain client connection (SCM_RIGHTS).

A get on the node's Unix socket lets the CLI create its output files and hand their
descriptors to the node, which writes the verified stripes straight into them. The
descriptors travel as ancillary data of one authenticated frame (the frame's bytes are
the ordinary length + header + MAC, so the MAC covers which file each descriptor is);
the sender then waits for an answer before it sends anything else, so the receiver may
read with ``recvmsg`` until that frame is complete without taking bytes of a later one.
Linux and macOS (and the BSDs); elsewhere :func:`supported` is False and gets stream.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import stat
import sys
from typing import Any

import trio

from peerstore.wire.frames import ConnectionClosed, Message

MAX_FDS_PER_FRAME = 64  # Linux allows 253 per message (SCM_MAX_FD); stay well below
RECEIVE_BYTES = 128 * 1024  # a frame without payload: length + header (<= 64 KiB) + MAC
FD_TIMEOUT = 20.0  # the CLI sends the descriptors as soon as it has created the files


class FdPassError(Exception):
    """The peer broke the descriptor exchange (what it sent is refused)."""


class FdsDropped(FdPassError):
    """The kernel dropped descriptors on their way to us (our limit): stream instead."""


def supported() -> bool:
    """Can this platform pass descriptors over a Unix socket?"""
    return (hasattr(socket, "AF_UNIX") and hasattr(socket, "SCM_RIGHTS") and hasattr(socket, "CMSG_SPACE")
            and (sys.platform.startswith("linux") or sys.platform == "darwin" or "bsd" in sys.platform))


def is_unix(wire: Any) -> bool:
    """Is ``wire`` (a WireStream) on a Unix-domain socket?"""
    try:
        return wire.stream.socket.family == socket.AF_UNIX
    except (AttributeError, OSError):
        return False


async def send_with_fds(wire: Any, header: dict[str, Any], fds: list[int]) -> None:
    """Send ``header`` as one frame (no payload) with ``fds`` attached. OSError (or the
    wire's ``lost``) when the socket refuses; the caller then has nothing half sent only
    if it closes the connection."""
    if len(fds) > MAX_FDS_PER_FRAME:
        raise ValueError(f"at most {MAX_FDS_PER_FRAME} descriptors per frame")
    async with wire.send_lock:
        data = wire.conn.send_message(header, 0, None)
        sock = wire.stream.socket
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        with trio.fail_after(FD_TIMEOUT):
            sent = await sock.sendmsg([data], ancillary)
            if sent < len(data):  # the descriptors went with the first byte
                await wire.stream.send_all(data[sent:])
    wire.bytes_out += len(data)
    wire.poll_progress()  # counts as activity for the wire's idle bound


async def receive_with_fds(wire: Any, max_fds: int) -> tuple[dict[str, Any], list[int]]:
    """The next frame (it must have no payload) and the descriptors that came with it (the
    caller owns and closes them). Reads with ``recvmsg``, never past that frame as long as
    the peer waits for our answer. FdPassError when more than ``max_fds`` came or the
    kernel dropped some (``MSG_CTRUNC``: our descriptor limit); the wire's ``lost`` at EOF."""
    fds: list[int] = []
    truncated = False
    sock = wire.stream.socket
    space = socket.CMSG_SPACE(max(1, max_fds) * array.array("i").itemsize)
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    try:
        with trio.fail_after(FD_TIMEOUT):
            while True:
                event = wire.conn.next_event()
                if isinstance(event, Message):
                    if event.payload_len:
                        raise FdPassError("a descriptor frame must not carry a payload")
                    break
                if isinstance(event, ConnectionClosed):
                    raise wire.lost("the client closed the connection before sending its files")
                if event is not None:
                    raise FdPassError(f"unexpected {type(event).__name__} while waiting for descriptors")
                data, ancillary, msg_flags, _ = await sock.recvmsg(RECEIVE_BYTES, space, flags)
                for level, kind, blob in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(blob) - len(blob) % array.array("i").itemsize
                        fds.extend(array.array("i", blob[:usable]))
                truncated = truncated or bool(msg_flags & getattr(socket, "MSG_CTRUNC", 0))
                wire.bytes_in += len(data)
                wire.conn.receive_data(data)  # b"" is EOF
        wire.poll_progress()
        if truncated:
            raise FdsDropped("the kernel dropped passed descriptors (too many open files here?)")
        if len(fds) > max_fds:
            raise FdPassError(f"more than {max_fds} descriptors in one frame")
    except BaseException:
        close_all(fds)
        raise
    return event.header, fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def check_writable_file(fd: int) -> str | None:
    """None when ``fd`` is a regular file open for writing at chosen offsets (not
    append-only); otherwise what is wrong with it."""
    try:
        st = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as err:
        return f"cannot inspect it: {err.strerror or err}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if mode & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
        return "not open for writing"
    if mode & os.O_APPEND:
        return "open for appending (writes would ignore their offsets)"
    return None
