"""mDNS discovery: advertise this node and find the other members of its cluster on the LAN.

mDNS only seeds membership: a node found here is a candidate the gossip layer contacts;
liveness is gossip's business. The TXT record carries a cluster id derived from the cluster
key (never the key), so nodes of another cluster on the same LAN are ignored.

Threads: zeroconf runs its own asyncio loop on a thread, and a ServiceBrowser calls its
handler on yet another. Nothing here shares state with trio: the browser thread resolves each
change into a ``Discovered`` and hands it over with ``trio.from_thread.run_sync`` onto a
memory channel; blocking zeroconf calls (open, register, close) run in trio worker threads.

Failure to use multicast never stops a node: ``open_zeroconf`` logs a warning saying what
to do and the advertiser, ``discover`` and ``Mdns`` then do nothing (static ``seeds:`` still
work). A daemon with ``mdns: false`` simply never constructs them.

``python -m peerstore.shell.daemon.mdns --selftest ...`` advertises a fake node and prints what it
discovers as JSON lines; the network-namespace tests drive it.

One module, though long: the advertiser, the browser and the self-test share one record
format and one thread hand-off, which must change together.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import ifaddr  # zeroconf's own dependency for listing interfaces
import trio
from zeroconf import (
    Error as ZeroconfError,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

log = logging.getLogger("peerstore.mdns")

SERVICE_TYPE = "_peerstore._tcp.local."
ADVERT_VERSION = "1"
CLUSTER_ID_CONTEXT = "peerstore 2026 mdns cluster id"
CLUSTER_ID_BYTES = 8  # 16 hex characters

MAX_TXT_KEYS = 16
MAX_TXT_KEY_BYTES = 16
MAX_TXT_VALUE_BYTES = 64
MAX_ADDRESSES = 16
MAX_NODE_NAME_CHARS = 40  # the instance name "<name>-<node id>" must fit one 63-byte DNS label
MAX_TRACKED_SERVICES = 1024  # adverts one browser remembers, so a flood cannot grow memory
RESOLVE_TIMEOUT_MS = 2000
# RFC 6762 10.2: a cache flushes a replaced record only if it is over a second old, and
# then one second later. The advertiser announces a new address twice, REANNOUNCE_SECONDS
# apart, so every peer's copy of the old address is gone ADDRESS_SETTLE_SECONDS after the
# first announcement.
REANNOUNCE_SECONDS = 1.1
ADDRESS_SETTLE_SECONDS = 3.0
DEFAULT_EVENT_BUFFER = 256

_HEX16 = re.compile(r"[0-9a-f]{16}")
_PORT = re.compile(r"[0-9]{1,5}")
_NOT_IN_LABEL = re.compile(r"[^A-Za-z0-9-]+")

Interfaces = Any  # zeroconf's InterfacesType: InterfaceChoice or a list of addresses


def cluster_id(cluster_key: bytes) -> str:
    """The cluster's public name on the LAN: 16 hex characters derived from (never equal to) the key."""
    if not isinstance(cluster_key, (bytes, bytearray)) or not cluster_key:
        raise ValueError("cluster_key must be non-empty bytes (the decoded cluster key from the config)")
    return blake3.blake3(bytes(cluster_key), derive_key_context=CLUSTER_ID_CONTEXT).hexdigest(
        length=CLUSTER_ID_BYTES
    )


@dataclass(frozen=True)
class Discovered:
    """A node of our cluster seen on the LAN, or (``removed``) one that said goodbye.

    ``addresses`` are IPv4 addresses, most recently announced first; ``port`` is its TCP
    listen port and ``gossip_port`` its UDP gossip port.
    """

    node_id: str
    cluster: str
    addresses: tuple[str, ...]
    port: int
    gossip_port: int
    removed: bool = False


# ---------------------------------------------------------------------------------------
# Reading adverts


class _Ignored(Exception):
    """Why an advert is not one of ours (logged at debug level, never raised to callers)."""


def parse_advert(
    name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str],
    port: int | None,
    *,
    cluster: str,
    own_node_id: str | None = None,
) -> Discovered | None:
    """The ``Discovered`` a resolved advert describes, or None when it is to be ignored.

    Ignored: another cluster, our own node, an unknown advert version, a malformed or
    oversized TXT record, an instance name that does not end in its node id, no usable
    IPv4 address. Addresses beyond ``MAX_ADDRESSES`` are dropped.
    """
    try:
        return _read_advert(name, properties, addresses, port, cluster, own_node_id)
    except _Ignored as why:
        log.debug("ignoring mDNS advert %r: %s", name[:100], why)
        return None


def _read_advert(
    name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str],
    port: int | None,
    cluster: str,
    own_node_id: str | None,
) -> Discovered:
    if len(properties) > MAX_TXT_KEYS:
        raise _Ignored(f"{len(properties)} TXT keys, more than {MAX_TXT_KEYS}")
    for key, value in properties.items():
        if not isinstance(key, bytes) or len(key) > MAX_TXT_KEY_BYTES:
            raise _Ignored("a TXT key is not bytes or is too long")
        if value is not None and (not isinstance(value, bytes) or len(value) > MAX_TXT_VALUE_BYTES):
            raise _Ignored(f"TXT value for {key!r} is not bytes or is longer than {MAX_TXT_VALUE_BYTES}")
    version = _ascii(properties.get(b"v"))
    if version != ADVERT_VERSION:
        raise _Ignored(f"advert version {version!r}; this node reads version {ADVERT_VERSION}")
    their_cluster = _ascii(properties.get(b"c"))
    if their_cluster is None or not _HEX16.fullmatch(their_cluster):
        raise _Ignored("missing or malformed cluster id")
    if their_cluster != cluster:
        raise _Ignored("another cluster")
    node_id = _ascii(properties.get(b"id"))
    if node_id is None or not _HEX16.fullmatch(node_id):
        raise _Ignored("missing or malformed node id")
    if node_id == own_node_id:
        raise _Ignored("our own advert")
    if not name.lower().endswith(f"-{node_id}.{SERVICE_TYPE}"):
        raise _Ignored("instance name does not end in the advert's node id")
    gossip_port = _port(_ascii(properties.get(b"g")))
    if gossip_port is None:
        raise _Ignored("missing or malformed gossip port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise _Ignored(f"bad service port {port!r}")
    usable = _usable_ipv4(addresses)
    if not usable:
        raise _Ignored("no usable IPv4 address")
    return Discovered(node_id, their_cluster, usable, port, gossip_port)


def _ascii(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _port(text: str | None) -> int | None:
    if text is None or not _PORT.fullmatch(text):
        return None
    number = int(text)
    return number if 0 < number < 65536 else None


def _usable_ipv4(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            continue
        if address.is_unspecified or address.is_multicast or str(address) in seen:
            continue
        seen.append(str(address))
        if len(seen) == MAX_ADDRESSES:
            break
    return tuple(seen)


# ---------------------------------------------------------------------------------------
# Zeroconf plumbing (blocking: call from worker threads)


def host_ipv4_addresses() -> tuple[str, ...]:
    """This host's non-loopback IPv4 addresses (link-local last), at most ``MAX_ADDRESSES``."""
    found: set[ipaddress.IPv4Address] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4:
                address = ipaddress.IPv4Address(ip.ip)
                if not address.is_loopback and not address.is_unspecified:
                    found.add(address)
    ordered = sorted(found, key=lambda a: (a.is_link_local, a))
    return tuple(str(a) for a in ordered[:MAX_ADDRESSES])


def open_zeroconf(interfaces: Interfaces = InterfaceChoice.All) -> Zeroconf | None:
    """A running IPv4 Zeroconf on ``interfaces``, or None (with a warning) when that fails."""
    try:
        return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError, ZeroconfError) as exc:
        log.warning(
            "mDNS is off: zeroconf could not open multicast sockets on %s (%s). Nodes will "
            "find each other only through `seeds:` in the config. Check that a network "
            "interface is up and allows multicast, or set `mdns: false` to silence this.",
            _describe(interfaces), exc,
        )
        return None


def _describe(interfaces: Interfaces) -> str:
    return "all interfaces" if interfaces is InterfaceChoice.All else repr(interfaces)


def _close_zeroconf(zc: Zeroconf) -> None:
    try:
        zc.close()
    except Exception:  # closing is best effort; a failure must not mask why we are closing
        log.debug("closing zeroconf failed", exc_info=True)


def _check_addresses(addresses: Iterable[str] | None) -> tuple[str, ...] | None:
    if addresses is None:
        return None
    if isinstance(addresses, str):
        raise ValueError("addresses must be a list of IPv4 addresses, not one string")
    checked: list[str] = []
    for text in addresses:
        try:
            checked.append(str(ipaddress.IPv4Address(text)))
        except ValueError:
            raise ValueError(f"advertise address {text!r} is not an IPv4 address") from None
    if len(checked) > MAX_ADDRESSES:
        raise ValueError(f"{len(checked)} advertise addresses; at most {MAX_ADDRESSES} are supported")
    return tuple(dict.fromkeys(checked))


def _instance_label(node_name: str, node_id: str) -> str:
    clean = _NOT_IN_LABEL.sub("-", node_name).strip("-")[:MAX_NODE_NAME_CHARS].strip("-")
    return f"{clean or 'node'}-{node_id}"


# ---------------------------------------------------------------------------------------
# Advertising


class MdnsAdvertiser:
    """Advertises this node as ``<node_name>-<node_id>._peerstore._tcp.local.``.

    Use as ``async with MdnsAdvertiser(...) as adv:`` from trio. TXT: ``id`` node id,
    ``c`` cluster id, ``v`` advert version, ``g`` gossip UDP port; the service port is the
    TCP listen port. ``addresses`` None means every non-loopback IPv4 address of the host
    (re-read by ``update_addresses()``); an explicit list may include loopback.
    ``interfaces`` None means "the given addresses, or all interfaces". With ``zeroconf``
    the advertiser borrows that instance and leaves closing it to its owner.
    """

    def __init__(
        self,
        *,
        cluster_key: bytes,
        node_id: str,
        node_name: str,
        port: int,
        gossip_port: int,
        addresses: Iterable[str] | None = None,
        interfaces: Interfaces | None = None,
        zeroconf: Zeroconf | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not _HEX16.fullmatch(node_id):
            raise ValueError(f"node_id {node_id!r} is not 16 lowercase hex characters")
        for what, number in (("port", port), ("gossip_port", gossip_port)):
            if not isinstance(number, int) or not 0 < number < 65536:
                raise ValueError(f"{what} {number!r} is not a port number (1-65535)")
        self._cluster = cluster_id(cluster_key)
        self._node_id = node_id
        self._instance = f"{_instance_label(node_name, node_id)}.{SERVICE_TYPE}"
        self._server = f"peerstore-{node_id}.local."
        self._port = port
        self._gossip_port = gossip_port
        self._given = _check_addresses(addresses)
        self._interfaces = interfaces
        self._zc = zeroconf
        self._owns_zc = zeroconf is None
        self._info: ServiceInfo | None = None
        self._warned_no_address = False
        self._lock = trio.Lock()  # one blocking zeroconf operation at a time

    @property
    def active(self) -> bool:
        """Whether the node is currently advertised."""
        return self._info is not None

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses currently advertised (empty when not advertising)."""
        return tuple(self._info.parsed_addresses()) if self._info is not None else ()

    @property
    def instance_name(self) -> str:
        return self._instance

    async def __aenter__(self) -> MdnsAdvertiser:
        async with self._lock:
            await trio.to_thread.run_sync(self._advertise, self._given)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                await trio.to_thread.run_sync(self._withdraw)

    async def update_addresses(self, addresses: Iterable[str] | None = None) -> tuple[str, ...]:
        """Re-advertise when this node's addresses changed (a DHCP renewal); returns them.

        None keeps the explicitly given addresses, or re-reads the host's when none were
        given. Cheap when nothing changed, so the daemon may call it periodically; takes
        about 1.5 s when something did. Also starts advertising if that failed before.
        """
        given = _check_addresses(addresses) if addresses is not None else self._given
        async with self._lock:
            await trio.to_thread.run_sync(self._advertise, given)
        return self.addresses

    # -- blocking parts, run in worker threads under self._lock --------------------------

    def _advertise(self, given: tuple[str, ...] | None) -> None:
        self._given = given
        wanted = given if given is not None else host_ipv4_addresses()
        if not wanted:
            (log.debug if self._warned_no_address else log.warning)(
                "mDNS: this host has no non-loopback IPv4 address yet; not advertising until "
                "an address appears (set advertise_host in the config to choose one)"
            )
            self._warned_no_address = True
            return
        self._warned_no_address = False
        if self._info is not None and set(self.addresses) == set(wanted):
            return
        interfaces = self._interfaces if self._interfaces is not None else (
            list(given) if given is not None else InterfaceChoice.All
        )
        fresh = self._zc is None
        if fresh:
            if not self._owns_zc:
                return
            self._zc = open_zeroconf(interfaces)
            if self._zc is None:
                return
        assert self._zc is not None
        info = ServiceInfo(
            SERVICE_TYPE,
            self._instance,
            port=self._port,
            properties={"id": self._node_id, "c": self._cluster, "v": ADVERT_VERSION,
                        "g": str(self._gossip_port)},
            server=self._server,
            parsed_addresses=list(wanted),
        )
        try:
            if self._info is None:
                if not fresh:
                    self._rescan(interfaces)
                self._zc.register_service(info)
                log.info("mDNS: advertising %s on %s", self._instance, ", ".join(wanted))
            else:
                # Update before the rescan, which re-announces whatever is registered on
                # sockets for new addresses: the new records, not the old. Announce again
                # once peers' copies of the old address are over a second old, so their
                # caches flush them (see REANNOUNCE_SECONDS).
                self._zc.update_service(info)
                self._rescan(interfaces)
                time.sleep(REANNOUNCE_SECONDS)
                self._zc.update_service(info)
                log.info("mDNS: now advertising %s on %s", self._instance, ", ".join(wanted))
            self._info = info
        except NonUniqueNameException:
            log.error(
                "mDNS: another machine already advertises %s, i.e. the same node id %s. Was a "
                "data directory copied between machines? Give each node its own data_dir. "
                "This node is not advertised.", self._instance, self._node_id,
            )
        except (ZeroconfError, OSError, RuntimeError) as exc:
            log.warning("mDNS: could not advertise %s (%s); peers must use `seeds:`", self._instance, exc)

    def _rescan(self, interfaces: Interfaces) -> None:
        # zeroconf binds a socket per interface address when it starts; after an address
        # change those must be rebuilt or sends fail. zeroconf >= 0.150 can do it live (and
        # does nothing when the interface set is unchanged).
        assert self._zc is not None
        update_interfaces = getattr(self._zc, "update_interfaces", None)
        if update_interfaces is None:
            log.warning("mDNS: this zeroconf cannot rescan interfaces; upgrade to zeroconf >= 0.150")
            return
        update_interfaces(interfaces)

    def _withdraw(self) -> None:
        if self._zc is None:
            return
        if self._info is not None:
            try:
                self._zc.unregister_service(self._info)
            except (ZeroconfError, OSError, RuntimeError) as exc:
                log.debug("mDNS: goodbye for %s not sent: %s", self._instance, exc)
            self._info = None
        if self._owns_zc:
            _close_zeroconf(self._zc)
            self._zc = None


# ---------------------------------------------------------------------------------------
# Browsing


_NO_ANSWER = object()


class _BrowseHandler:
    """Called on zeroconf's ServiceBrowser thread only; its bookkeeping never leaves it."""

    def __init__(self, cluster: str, own_node_id: str | None, token: trio.lowlevel.TrioToken,
                 send_channel: trio.MemorySendChannel[Discovered]) -> None:
        self._cluster = cluster
        self._own_node_id = own_node_id
        self._token = token
        self._send_channel = send_channel
        self._reported: dict[str, Discovered] = {}

    def __call__(self, zeroconf: Zeroconf, service_type: str, name: str,
                 state_change: ServiceStateChange) -> None:
        try:
            self._on_change(zeroconf, service_type, name, state_change)
        except Exception:  # an escaping error would kill the browser thread for good
            log.exception("mDNS: failed to handle %s of %r", state_change, name[:100])

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            gone = self._reported.pop(key, None)
            if gone is not None:
                self._hand_over(dataclasses.replace(gone, removed=True))
            return
        found = self._resolve(zeroconf, service_type, name)
        known = self._reported.get(key)
        if isinstance(found, Discovered) and known is not None and set(found.addresses) != set(known.addresses):
            # The new address comes first, but a replaced one lingers in the cache until
            # the advertiser's flush takes effect, and nothing reports that expiry. Report
            # now, then look again once any flush must have happened.
            self._reported[key] = found
            self._hand_over(found)
            time.sleep(ADDRESS_SETTLE_SECONDS)
            found = self._resolve(zeroconf, service_type, name)
        if found is _NO_ANSWER:
            return  # zeroconf reports the service again when its records arrive
        if found is None:
            gone = self._reported.pop(key, None)  # it changed into something we ignore
            if gone is not None:
                self._hand_over(dataclasses.replace(gone, removed=True))
            return
        if self._reported.get(key) == found:
            return
        if key not in self._reported and len(self._reported) >= MAX_TRACKED_SERVICES:
            log.warning("mDNS: ignoring %r: already tracking %d nodes", name[:100], MAX_TRACKED_SERVICES)
            return
        assert isinstance(found, Discovered)
        self._reported[key] = found
        self._hand_over(found)

    def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> Discovered | object | None:
        """The advert's Discovered, None when it is to be ignored, _NO_ANSWER on timeout."""
        info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
        if info is None:
            return _NO_ANSWER
        return parse_advert(name, info.properties or {}, info.parsed_addresses(IPVersion.V4Only),
                            info.port, cluster=self._cluster, own_node_id=self._own_node_id)

    def _hand_over(self, item: Discovered) -> None:
        try:
            trio.from_thread.run_sync(_send_or_drop, self._send_channel, item, trio_token=self._token)
        except trio.RunFinishedError:
            pass


def _send_or_drop(send_channel: trio.MemorySendChannel[Discovered], item: Discovered) -> None:
    """Runs in the trio thread: never blocks, so the browser thread never waits on a reader."""
    try:
        send_channel.send_nowait(item)
    except trio.WouldBlock:
        log.warning("mDNS: dropped news of node %s: discoveries are not being read", item.node_id)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class _Browsing:
    """A ServiceBrowser feeding a memory channel; start and stop block (worker threads)."""

    def __init__(self, cluster_key: bytes, send_channel: trio.MemorySendChannel[Discovered],
                 own_node_id: str | None, interfaces: Interfaces, zeroconf: Zeroconf | None,
                 token: trio.lowlevel.TrioToken) -> None:
        self._handler = _BrowseHandler(cluster_id(cluster_key), own_node_id, token, send_channel)
        self._interfaces = interfaces
        self._zc = zeroconf
        self._owns_zc = zeroconf is None
        self._browser: ServiceBrowser | None = None

    def start(self) -> bool:
        if self._zc is None:
            self._zc = open_zeroconf(self._interfaces)
            if self._zc is None:
                return False
        try:
            self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._handler])
        except (ZeroconfError, OSError, RuntimeError) as exc:
            log.warning("mDNS: cannot browse for peers (%s); peers must use `seeds:`", exc)
            self.stop()
            return False
        return True

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.cancel()  # joins the browser thread: bounded by resolve + settle times
            self._browser = None
        if self._owns_zc and self._zc is not None:
            _close_zeroconf(self._zc)
            self._zc = None


async def discover(
    cluster_key: bytes,
    send_channel: trio.MemorySendChannel[Discovered],
    *,
    own_node_id: str | None,
    interfaces: Interfaces = InterfaceChoice.All,
    zeroconf: Zeroconf | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send every node of our cluster that appears, changes or leaves to ``send_channel``.

    Runs until cancelled. Other clusters, our own node and malformed adverts are ignored.
    If zeroconf cannot start it logs a warning and idles. The caller owns (and closes)
    ``send_channel``; when it is full, events are dropped with a warning.
    """
    browsing = _Browsing(cluster_key, send_channel, own_node_id, interfaces, zeroconf,
                         trio.lowlevel.current_trio_token())
    await trio.to_thread.run_sync(browsing.start)
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(browsing.stop)


# ---------------------------------------------------------------------------------------
# Both, for the daemon


class Mdns:
    """Advertise this node and discover its peers over one zeroconf instance.

    ``async with Mdns(...) as m: async for d in m.events(): ...``. Never raises for a
    network without multicast: it warns and ``events()`` stays silent (``active`` is False).
    """

    def __init__(
        self,
        *,
        cluster_key: bytes,
        node_id: str,
        node_name: str,
        port: int,
        gossip_port: int,
        addresses: Iterable[str] | None = None,
        interfaces: Interfaces | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> None:
        self._advert_args = dict(cluster_key=cluster_key, node_id=node_id, node_name=node_name,
                                 port=port, gossip_port=gossip_port, addresses=addresses)
        MdnsAdvertiser(**self._advert_args)  # validate arguments now, not on first use
        self._cluster_key = bytes(cluster_key)
        self._node_id = node_id
        given = _check_addresses(addresses)
        self._interfaces = interfaces if interfaces is not None else (
            list(given) if given is not None else InterfaceChoice.All
        )
        self._send, self._receive = trio.open_memory_channel[Discovered](buffer)
        self._zc: Zeroconf | None = None
        self._advertiser: MdnsAdvertiser | None = None
        self._browsing: _Browsing | None = None
        self._lock = trio.Lock()

    @property
    def active(self) -> bool:
        """Whether zeroconf is running (browsing, and advertising once an address exists)."""
        return self._zc is not None

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses this node is advertised on (empty when not advertising)."""
        return self._advertiser.addresses if self._advertiser is not None else ()

    def events(self) -> trio.MemoryReceiveChannel[Discovered]:
        """Discoveries as they happen; the iteration ends when the Mdns context exits."""
        return self._receive

    async def __aenter__(self) -> Mdns:
        async with self._lock:
            await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._stop()
            await self._send.aclose()

    async def update_addresses(self, addresses: Iterable[str] | None = None) -> tuple[str, ...]:
        """Re-advertise after an address change; see ``MdnsAdvertiser.update_addresses``."""
        async with self._lock:
            if self._zc is None:
                await self._start()
            if self._advertiser is None:
                return ()
            return await self._advertiser.update_addresses(addresses)

    async def _start(self) -> None:
        self._zc = await trio.to_thread.run_sync(open_zeroconf, self._interfaces)
        if self._zc is None:
            return
        self._browsing = _Browsing(self._cluster_key, self._send, self._node_id, self._interfaces,
                                   self._zc, trio.lowlevel.current_trio_token())
        self._advertiser = MdnsAdvertiser(**self._advert_args, zeroconf=self._zc)
        try:
            await trio.to_thread.run_sync(self._browsing.start)
            await self._advertiser.__aenter__()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop()
            raise

    async def _stop(self) -> None:
        if self._advertiser is not None:
            await self._advertiser.__aexit__(None, None, None)
            self._advertiser = None
        if self._browsing is not None:
            await trio.to_thread.run_sync(self._browsing.stop)
            self._browsing = None
        if self._zc is not None:
            await trio.to_thread.run_sync(_close_zeroconf, self._zc)
            self._zc = None


# ---------------------------------------------------------------------------------------
# Self-test mode for the namespace tests


MAX_SELFTEST_SECONDS = 600.0


async def _selftest(args: Any) -> None:
    import json
    import signal
    import sys

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, "t": round(trio.current_time() - started, 3), **fields}),
              flush=True)

    started = trio.current_time()
    mdns = Mdns(cluster_key=bytes.fromhex(args.cluster_key), node_id=args.node_id,
                node_name=args.name, port=args.port, gossip_port=args.gossip_port,
                addresses=args.address or None)
    with trio.move_on_after(min(args.duration, MAX_SELFTEST_SECONDS)):
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async with mdns, trio.open_nursery() as nursery:
                emit("ready", node_id=args.node_id, active=mdns.active, addresses=list(mdns.addresses))

                async def readdress_on_signal() -> None:
                    async for _ in signals:
                        emit("readdressed", addresses=list(await mdns.update_addresses()))

                nursery.start_soon(readdress_on_signal)
                async for found in mdns.events():
                    emit("peer", **dataclasses.asdict(found))
    emit("done")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    """``--selftest``: advertise a fake node, print discoveries as JSON lines, exit after
    ``--duration`` seconds; SIGUSR1 re-reads the host's addresses and re-advertises."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m peerstore.shell.daemon.mdns", description=main.__doc__)
    parser.add_argument("--selftest", action="store_true", required=True)
    parser.add_argument("--cluster-key", required=True, help="cluster key as hex")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--name", default="selftest")
    parser.add_argument("--port", type=int, default=7420)
    parser.add_argument("--gossip-port", type=int, default=7420)
    parser.add_argument("--address", action="append", help="advertise this IPv4 (repeatable)")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    trio.run(_selftest, args)


if __name__ == "__main__":
    main()
