"""The client's connection to one node: connect, authenticate, and bound every wait.

A :class:`NodeWire` is the shared :class:`~peerstore.shell.wirestream.WireStream` with an idle
bound: a node that says nothing for ``timeout`` seconds -- neither taking our bytes nor
sending any -- is reported as silent, never waited on forever. Its failures are
:class:`~peerstore.errors.NodeUnreachable` errors that say what to check.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

import trio

from peerstore.errors import AuthError, ConnectionLost, NodeUnreachable
from peerstore.shell.peercred import socket_address
from peerstore.shell.wirestream import WireStream, why

DEFAULT_TIMEOUT = 60.0
MAX_CONNECT_TIMEOUT = 20.0  # connect + handshake; a live node answers in milliseconds
RECEIVE_SIZE = 1024 * 1024  # bytes per socket read: bounds what one read buffers
LAUNCH_HINT = "start one with ./launch.sh (or ./launch.sh --local 5)"


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine's loopback interface."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_this_machine(host: str) -> bool:
    """True when ``host`` is loopback or an address of one of this machine's interfaces
    (an IP literal this process can bind to; names are not resolved)."""
    if is_loopback(host):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
        return True
    except OSError:
        return False


def where_of(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


class NodeWire(WireStream):
    """A CLI's authenticated connection to a node; ``idle`` is the user's --timeout."""

    receive_size = RECEIVE_SIZE

    def lost(self, why: str) -> Exception:
        return ConnectionLost(why)

    def silent(self) -> Exception:
        return NodeUnreachable(
            f"{self.where} went silent: nothing moved for {self.idle:g} s (the node may be frozen or "
            "overloaded; check it with 'peerstore status', or raise --timeout if it is just slow)"
        )


def _leaves(err: BaseException) -> list[BaseException]:
    """The OS errors behind trio's "all attempts to connect failed" (or the error itself)."""
    cause = err.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return [leaf for sub in cause.exceptions for leaf in _leaves(sub)] or [err]
    if isinstance(cause, OSError):
        return _leaves(cause)
    return [err]


async def open_wire(host: str, port: int, cluster_key: bytes, timeout: float,
                    config_source: str | None = None) -> NodeWire:
    """TCP connect and handshake, both within min(timeout, MAX_CONNECT_TIMEOUT)."""
    where = where_of(host, port)
    limit = min(timeout, MAX_CONNECT_TIMEOUT)
    try:
        with trio.fail_after(limit):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise NodeUnreachable(f"no answer from {where} within {limit:g} s: is the address right, "
                              "and is the node up and not behind a firewall?") from None
    except OSError as err:
        causes = _leaves(err)
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            raise NodeUnreachable(f"no peerstore node at {where} — {LAUNCH_HINT}") from None
        raise NodeUnreachable(f"cannot reach a peerstore node at {where}: {why(causes[-1])}") from None
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = NodeWire(stream, role="client", cluster_key=cluster_key, node_id="c" + secrets.token_hex(8)[:15],
                    where=where, idle=timeout)
    try:
        await wire.handshake(limit)
    except trio.TooSlowError:
        await wire.aclose()
        raise NodeUnreachable(f"{where} accepted the connection but did not complete the handshake within "
                              f"{limit:g} s: is it a peerstore node, and is it overloaded?") from None
    except AuthError:
        await wire.aclose()
        raise AuthError(f"the node at {where} refused our cluster key: check cluster_key in "
                        f"{config_source or 'your config'} (it must match the nodes' key)") from None
    except BaseException:
        await wire.aclose()
        raise
    return wire


async def open_local_wire(path: Path, cluster_key: bytes, timeout: float) -> NodeWire | None:
    """The node's Unix client socket at ``path`` (``peercred.client_socket_path``),
    connected and authenticated; None when there is none to use (no such socket, not ours
    to open, a path too long here, no answer): the caller then goes over TCP."""
    limit = min(timeout, MAX_CONNECT_TIMEOUT)
    stream = None
    try:
        with trio.fail_after(limit):
            if not os.path.exists(path):
                return None
            with socket_address(path) as address:
                if address is None:
                    return None
                stream = await trio.open_unix_socket(address)
            wire = NodeWire(stream, role="client", cluster_key=cluster_key,
                            node_id="c" + secrets.token_hex(8)[:15], where=f"the local node ({path})", idle=timeout)
            await wire.handshake(limit)
            return wire
    except Exception:  # noqa: BLE001 - whatever went wrong, TCP is the way that always works
        if stream is not None:
            await stream.aclose()
        return None
