"""What a node tells the others about itself beyond its address, and the Prometheus HTTP
service-discovery list made from it.

Every node gossips a small meta map with its "alive" announcements: its name (config
``node_name``, else the host name) and its metrics port, plus the metrics host when it
binds one specific non-loopback address. Older nodes gossip no meta: they are simply
not listed. The list (served on ``/discovery`` by metrics_http.py) has one target per
member that has not left, dead ones included so that Prometheus shows them down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peerstore.core.membership import INCARNATION_BITS_PER_BOOT
from peerstore.gossip import MemberState
from peerstore.gossip.state import Member

META_NAME = "nm"
META_METRICS_PORT = "mp"
META_METRICS_HOST = "mh"
MAX_NAME = 64  # gossip meta is at most 256 bytes encoded (gossip/messages.py)
MAX_HOST = 64
WILDCARDS = {"", "0.0.0.0", "::", "*"}
LOOPBACK = {"localhost", "::1"}
STATE_LABEL = "__meta_peerstore_member_state"  # for relabelling; not a series label (it changes)
_STATE_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2}


def advertised_meta(name: str, metrics_host: str, metrics_port: int) -> dict[str, Any]:
    """The meta map this node gossips about itself."""
    meta: dict[str, Any] = {META_NAME: name[:MAX_NAME]}
    if metrics_port:
        meta[META_METRICS_PORT] = int(metrics_port)
        host = metrics_host.strip("[]")
        # A wildcard is reached at the node's gossip address. A loopback address is
        # reachable only from that machine: another machine would scrape itself.
        if host not in WILDCARDS and host not in LOOPBACK and not host.startswith("127.") and len(host) <= MAX_HOST:
            meta[META_METRICS_HOST] = host
    return meta


def member_name(member: Member) -> str | None:
    name = member.meta.get(META_NAME)
    return name if isinstance(name, str) and name else None


def boot_and_sequence(incarnation: int) -> tuple[int, int]:
    """An incarnation as (boot count, refutations in that boot): core/membership.py
    starts each boot at ``boot << 32``."""
    return incarnation >> INCARNATION_BITS_PER_BOOT, incarnation & ((1 << INCARNATION_BITS_PER_BOOT) - 1)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sd_targets(members: Iterable[Member]) -> list[dict[str, Any]]:
    """Prometheus http_sd groups: one per member that has not left and says its metrics port."""
    best: dict[str, tuple[int, dict[str, Any]]] = {}
    for member in members:
        port = member.meta.get(META_METRICS_PORT)
        if member.state is MemberState.LEFT or type(port) is not int or not 0 < port < 65536:
            continue
        host = member.meta.get(META_METRICS_HOST)
        if not isinstance(host, str) or not host:
            host = member.addr[0]
        target = _host_port(host, port)
        labels = {"node_id": member.node_id, STATE_LABEL: member.state.value}
        if (name := member_name(member)) is not None:
            labels["node_name"] = name
        rank = _STATE_RANK.get(member.state, 3)
        # Two members at one address (a wiped node back under a new id): list the live one.
        if target not in best or rank < best[target][0]:
            best[target] = (rank, {"targets": [target], "labels": labels})
    return [group for _, (_, group) in sorted(best.items())]
