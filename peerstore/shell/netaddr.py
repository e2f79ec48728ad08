"""This machine's address as other machines on the LAN see it."""

from __future__ import annotations

import logging

log = logging.getLogger("peerstore.shell.netaddr")


def detect_address(listen_host: str = "0.0.0.0") -> str:
    """The listen host if it is a specific address, else this machine's first
    non-loopback IPv4 address from its interfaces (127.0.0.1 if it has none). Reads
    the interface list only: no packet is sent and no route is looked up."""
    if listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    try:
        import ifaddr  # zeroconf's own dependency

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                    return ip.ip
    except Exception:  # pragma: no cover - interface enumeration is best effort
        log.warning("could not list network interfaces; using 127.0.0.1 (set advertise_host)")
    return "127.0.0.1"
