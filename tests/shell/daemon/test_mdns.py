import contextlib
import logging
import os
import re

import pytest
import trio
from zeroconf import ServiceStateChange

from peerstore.shell.daemon import mdns
from peerstore.shell.daemon.mdns import (
    SERVICE_TYPE,
    Discovered,
    Mdns,
    MdnsAdvertiser,
    cluster_id,
    discover,
    parse_advert,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
CLUSTER_A = cluster_id(KEY_A)
CLUSTER_B = cluster_id(KEY_B)
PEER = "00000000000000aa"
ME = "00000000000000ff"


def name_of(node_id: str, label: str = "pi") -> str:
    return f"{label}-{node_id}.{SERVICE_TYPE}"


# ---------------------------------------------------------------------------------------
# cluster id


def test_cluster_id_is_16_hex_and_stable():
    assert re.fullmatch(r"[0-9a-f]{16}", CLUSTER_A)
    assert cluster_id(KEY_A) == CLUSTER_A
    assert cluster_id(bytearray(KEY_A)) == CLUSTER_A


def test_cluster_id_is_pinned():
    # Nodes of different peerstore versions must agree on it: changing the derivation
    # would split every mixed-version cluster on the LAN, so the value is fixed here.
    assert cluster_id(b"\x00" * 32) == "5ebf758b1ace9302"


@pytest.mark.parametrize("seed", range(8))
def test_cluster_id_differs_per_key_and_never_reveals_it(seed):
    key = os.urandom(32)
    other = bytearray(key)
    other[seed] ^= 1
    cid = cluster_id(key)
    assert cid != cluster_id(bytes(other))
    assert cid != key.hex() and cid not in key.hex() and key.hex()[:16] != cid
    assert cid.encode() not in key and key not in cid.encode()


@pytest.mark.parametrize("bad", [b"", "a string key", None])
def test_cluster_id_rejects_non_keys(bad):
    with pytest.raises(ValueError, match="cluster_key"):
        cluster_id(bad)


# ---------------------------------------------------------------------------------------
# reading adverts


def txt(**overrides):
    base = {b"id": PEER.encode(), b"c": CLUSTER_A.encode(), b"v": b"1", b"g": b"7421"}
    for key, value in overrides.items():
        if value is ...:
            base.pop(key.encode(), None)
        else:
            base[key.encode()] = value
    return base


GOOD = Discovered(PEER, CLUSTER_A, ("10.0.0.5",), 7420, 7421)

ADVERTS = [
    # (case, name, properties, addresses, port, expected)
    ("good", name_of(PEER), txt(), ["10.0.0.5"], 7420, GOOD),
    ("name case is ignored", name_of(PEER).upper().replace("_PEERSTORE._TCP.LOCAL.", SERVICE_TYPE),
     txt(), ["10.0.0.5"], 7420, GOOD),
    ("extra keys are fine", name_of(PEER), {**txt(), b"x": b"future"}, ["10.0.0.5"], 7420, GOOD),
    ("duplicate and bad addresses dropped", name_of(PEER), txt(),
     ["10.0.0.5", "nonsense", "10.0.0.5", "0.0.0.0", "224.0.0.251", "fe80::1"], 7420, GOOD),
    ("other cluster", name_of(PEER), txt(c=CLUSTER_B.encode()), ["10.0.0.5"], 7420, None),
    ("our own node", name_of(ME), txt(id=ME.encode()), ["10.0.0.5"], 7420, None),
    ("missing id", name_of(PEER), txt(id=...), ["10.0.0.5"], 7420, None),
    ("missing cluster", name_of(PEER), txt(c=...), ["10.0.0.5"], 7420, None),
    ("missing version", name_of(PEER), txt(v=...), ["10.0.0.5"], 7420, None),
    ("missing gossip port", name_of(PEER), txt(g=...), ["10.0.0.5"], 7420, None),
    ("valueless id", name_of(PEER), txt(id=None), ["10.0.0.5"], 7420, None),
    ("unknown version", name_of(PEER), txt(v=b"2"), ["10.0.0.5"], 7420, None),
    ("uppercase node id", name_of(PEER.upper()), txt(id=PEER.upper().encode()), ["10.0.0.5"], 7420, None),
    ("short node id", name_of("abc"), txt(id=b"abc"), ["10.0.0.5"], 7420, None),
    ("non-ascii cluster", name_of(PEER), txt(c="é".encode() * 8), ["10.0.0.5"], 7420, None),
    ("cluster not hex", name_of(PEER), txt(c=b"zzzzzzzzzzzzzzzz"), ["10.0.0.5"], 7420, None),
    ("gossip port zero", name_of(PEER), txt(g=b"0"), ["10.0.0.5"], 7420, None),
    ("gossip port too big", name_of(PEER), txt(g=b"65536"), ["10.0.0.5"], 7420, None),
    ("gossip port not a number", name_of(PEER), txt(g=b"-1"), ["10.0.0.5"], 7420, None),
    ("service port missing", name_of(PEER), txt(), ["10.0.0.5"], None, None),
    ("service port zero", name_of(PEER), txt(), ["10.0.0.5"], 0, None),
    ("name of another node", name_of("00000000000000bb"), txt(), ["10.0.0.5"], 7420, None),
    ("no addresses", name_of(PEER), txt(), [], 7420, None),
    ("only IPv6", name_of(PEER), txt(), ["fe80::1"], 7420, None),
    ("oversized value", name_of(PEER), txt(x=b"x" * 65), ["10.0.0.5"], 7420, None),
    ("oversized key", name_of(PEER), {**txt(), b"k" * 17: b"1"}, ["10.0.0.5"], 7420, None),
    ("too many keys", name_of(PEER), {**txt(), **{f"k{i}".encode(): b"1" for i in range(13)}},
     ["10.0.0.5"], 7420, None),
]


@pytest.mark.parametrize("case,name,properties,addresses,port,expected", ADVERTS, ids=[a[0] for a in ADVERTS])
def test_parse_advert(case, name, properties, addresses, port, expected):
    got = parse_advert(name, properties, addresses, port, cluster=CLUSTER_A, own_node_id=ME)
    assert got == expected


def test_parse_advert_keeps_at_most_16_addresses_in_order():
    addresses = [f"10.0.1.{i}" for i in range(1, 40)]
    got = parse_advert(name_of(PEER), txt(), addresses, 7420, cluster=CLUSTER_A)
    assert got is not None and got.addresses == tuple(addresses[: mdns.MAX_ADDRESSES])


# ---------------------------------------------------------------------------------------
# advertiser arguments


@pytest.mark.parametrize("overrides,message", [
    ({"node_id": "XYZ"}, "node_id"),
    ({"node_id": PEER.upper()}, "node_id"),
    ({"port": 0}, "port"),
    ({"gossip_port": 70000}, "gossip_port"),
    ({"addresses": ["not-an-ip"]}, "not an IPv4"),
    ({"addresses": ["fe80::1"]}, "not an IPv4"),
    ({"addresses": "10.0.0.1"}, "not one string"),
    ({"addresses": [f"10.0.0.{i}" for i in range(1, 20)]}, "at most"),
    ({"cluster_key": b""}, "cluster_key"),
])
def test_advertiser_rejects_bad_arguments(overrides, message):
    args = dict(cluster_key=KEY_A, node_id=PEER, node_name="pi", port=7420, gossip_port=7421)
    with pytest.raises(ValueError, match=message):
        MdnsAdvertiser(**{**args, **overrides})
    with pytest.raises(ValueError, match=message):
        Mdns(**{**args, **overrides})


@pytest.mark.parametrize("node_name,label", [
    ("pi4", "pi4"),
    ("pi 4.local", "pi-4-local"),
    ("--weird__name--", "weird-name"),
    ("", "node"),
    ("ümlaut", "mlaut"),
    ("x" * 100, "x" * mdns.MAX_NODE_NAME_CHARS),
])
def test_instance_name_is_one_safe_dns_label(node_name, label):
    adv = MdnsAdvertiser(cluster_key=KEY_A, node_id=PEER, node_name=node_name, port=1, gossip_port=2)
    assert adv.instance_name == f"{label}-{PEER}.{SERVICE_TYPE}"
    assert len(adv.instance_name.split(".")[0].encode()) <= 63


# ---------------------------------------------------------------------------------------
# the browser handler, with a stand-in for zeroconf (no network)


class FakeInfo:
    def __init__(self, properties, addresses, port=7420):
        self.properties, self._addresses, self.port = properties, addresses, port

    def parsed_addresses(self, version=None):
        return list(self._addresses)


class FakeZeroconf:
    """Answers get_service_info from a dict the test edits (name -> FakeInfo or None)."""

    def __init__(self):
        self.answers = {}

    def get_service_info(self, type_, name, timeout=0):
        assert type_ == SERVICE_TYPE and timeout > 0
        return self.answers.get(name)


def test_browse_handler_hands_changes_to_trio(monkeypatch):
    monkeypatch.setattr(mdns, "ADDRESS_SETTLE_SECONDS", 0.0)
    zc = FakeZeroconf()
    peer, foreign = name_of(PEER), name_of("00000000000000bb")
    added, updated, removed = ServiceStateChange.Added, ServiceStateChange.Updated, ServiceStateChange.Removed
    steps = [
        # (what zeroconf answers for `peer` now, event name, state change, expected delivery)
        (FakeInfo(txt(), ["10.0.0.5"]), peer, added, GOOD),
        (FakeInfo(txt(), ["10.0.0.5"]), peer, updated, None),  # nothing new: not repeated
        (None, peer, updated, None),  # no answer in time: not a removal
        (FakeInfo(txt(), ["10.0.0.6"]), peer, updated, Discovered(PEER, CLUSTER_A, ("10.0.0.6",), 7420, 7421)),
        (FakeInfo(txt(), ["10.0.0.6"]), foreign, added, None),  # name does not match its id
        (FakeInfo(txt(c=CLUSTER_B.encode()), ["10.0.0.6"]), peer, updated,
         Discovered(PEER, CLUSTER_A, ("10.0.0.6",), 7420, 7421, removed=True)),  # now foreign: gone
        (FakeInfo(txt(), ["10.0.0.5"]), peer, added, GOOD),
        (None, peer, removed, Discovered(PEER, CLUSTER_A, ("10.0.0.5",), 7420, 7421, removed=True)),
        (None, peer, removed, None),  # already gone
        (None, foreign, removed, None),  # never reported
    ]

    async def main():
        send, receive = trio.open_memory_channel(len(steps))
        handler = mdns._BrowseHandler(CLUSTER_A, ME, trio.lowlevel.current_trio_token(), send)
        for info, name, change, expected in steps:
            zc.answers = {name: info}
            await trio.to_thread.run_sync(handler, zc, SERVICE_TYPE, name, change)
            got = receive.receive_nowait() if expected is not None else None
            assert got == expected, (name, change)
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()

    trio.run(main)


def test_browse_handler_reports_a_new_address_at_once_then_without_the_flushed_one(monkeypatch):
    monkeypatch.setattr(mdns, "ADDRESS_SETTLE_SECONDS", 0.0)
    answers = iter([
        FakeInfo(txt(), ["10.0.0.5"]),  # first seen
        FakeInfo(txt(), ["10.0.0.6", "10.0.0.5"]),  # readvertised; the old address still cached
        FakeInfo(txt(), ["10.0.0.6"]),  # after the settle time, the old one has been flushed
    ])
    zc = FakeZeroconf()
    zc.get_service_info = lambda type_, name, timeout: next(answers)

    async def main():
        send, receive = trio.open_memory_channel(8)
        handler = mdns._BrowseHandler(CLUSTER_A, ME, trio.lowlevel.current_trio_token(), send)
        for change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            await trio.to_thread.run_sync(handler, zc, SERVICE_TYPE, name_of(PEER), change)
        send.close()
        return [d.addresses async for d in receive]

    assert trio.run(main) == [("10.0.0.5",), ("10.0.0.6", "10.0.0.5"), ("10.0.0.6",)]


def test_browse_handler_drops_with_a_warning_when_nobody_reads(caplog):
    zc = FakeZeroconf()
    zc.answers = {name_of(PEER): FakeInfo(txt(), ["10.0.0.5"])}

    async def main():
        send, receive = trio.open_memory_channel(0)
        handler = mdns._BrowseHandler(CLUSTER_A, ME, trio.lowlevel.current_trio_token(), send)
        await trio.to_thread.run_sync(handler, zc, SERVICE_TYPE, name_of(PEER), ServiceStateChange.Added)
        await receive.aclose()  # a closed reader is not an error either
        await trio.to_thread.run_sync(handler, zc, SERVICE_TYPE, name_of(PEER), ServiceStateChange.Removed)

    with caplog.at_level(logging.WARNING, logger="peerstore.mdns"):
        trio.run(main)
    assert [r.getMessage() for r in caplog.records] == [
        f"mDNS: dropped news of node {PEER}: discoveries are not being read"
    ]


# ---------------------------------------------------------------------------------------
# no multicast: warn, never crash


def test_without_multicast_everything_is_a_quiet_no_op(monkeypatch, caplog):
    def no_multicast(**kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mdns, "Zeroconf", no_multicast)
    args = dict(cluster_key=KEY_A, node_id=PEER, node_name="pi", port=7420, gossip_port=7421)

    async def main():
        async with MdnsAdvertiser(**args, addresses=["10.0.0.5"]) as adv:
            assert not adv.active and adv.addresses == ()
            assert await adv.update_addresses(["10.0.0.6"]) == ()
        async with Mdns(**args, addresses=["10.0.0.5"]) as m:
            assert not m.active and m.addresses == ()
            assert await m.update_addresses() == ()
        assert [d async for d in m.events()] == []  # iteration ends with the context
        send, receive = trio.open_memory_channel(1)
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: discover(KEY_A, send, own_node_id=PEER,
                                                             task_status=task_status))
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="peerstore.mdns"):
        trio.run(main)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings and all("mDNS is off" in w and "seeds" in w for w in warnings)


def test_a_host_without_an_address_warns_once_and_opens_nothing(monkeypatch, caplog):
    def must_not_open(**kwargs):
        raise AssertionError("zeroconf opened without an address to advertise")

    monkeypatch.setattr(mdns, "Zeroconf", must_not_open)
    monkeypatch.setattr(mdns, "host_ipv4_addresses", lambda: ())

    async def main():
        async with MdnsAdvertiser(cluster_key=KEY_A, node_id=PEER, node_name="pi", port=7420,
                                  gossip_port=7421) as adv:
            for _ in range(3):
                assert await adv.update_addresses() == ()
            assert not adv.active

    with caplog.at_level(logging.WARNING, logger="peerstore.mdns"):
        trio.run(main)
    assert len(caplog.records) == 1 and "no non-loopback IPv4 address" in caplog.records[0].getMessage()


# ---------------------------------------------------------------------------------------
# real zeroconf on loopback, one process


def test_loopback_discovery_update_and_goodbye():
    if (probe := mdns.open_zeroconf(["127.0.0.1"])) is None:
        pytest.skip("zeroconf cannot open a multicast socket on 127.0.0.1 here; see tests/processes/test_mdns_netns.py")
    mdns._close_zeroconf(probe)
    key, foreign_key = os.urandom(32), os.urandom(32)
    ids = [os.urandom(8).hex() for _ in range(4)]  # two peers, ourselves, a foreign node
    lo = ["127.0.0.1"]

    def advertiser(node_id, cluster_key=key):
        return MdnsAdvertiser(cluster_key=cluster_key, node_id=node_id, node_name="lo", port=7420,
                              gossip_port=7421, addresses=lo, interfaces=lo)

    @contextlib.asynccontextmanager
    async def all_advertising(advertisers):
        # Registration probes for ~1.7 s; do them side by side.
        try:
            async with trio.open_nursery() as starting:
                for adv in advertisers:
                    starting.start_soon(adv.__aenter__)
            yield
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    for adv in advertisers:
                        stopping.start_soon(adv.__aexit__, None, None, None)

    async def latest_until(receive, seen, done, timeout):
        with trio.move_on_after(timeout):
            while not done(seen):
                found = await receive.receive()
                seen[found.node_id] = found
        return seen

    async def main():
        send, receive = trio.open_memory_channel(64)
        advertisers = [advertiser(ids[0]), advertiser(ids[1]), advertiser(ids[2]),
                       advertiser(ids[3], foreign_key)]
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: discover(key, send, own_node_id=ids[2],
                                                             interfaces=lo, task_status=task_status))
            async with all_advertising(advertisers):
                seen = await latest_until(receive, {}, lambda s: len(s) >= 2, 15)
                assert set(seen) == {ids[0], ids[1]}
                assert all(d.addresses == ("127.0.0.1",) and d.port == 7420 and d.gossip_port == 7421
                           and d.cluster == cluster_id(key) and not d.removed for d in seen.values())

                assert await advertisers[1].update_addresses(["127.0.0.9"]) == ("127.0.0.9",)
                assert await advertisers[1].update_addresses() == ("127.0.0.9",)  # keeps the given ones
                seen = await latest_until(receive, seen, lambda s: s[ids[1]].addresses == ("127.0.0.9",), 10)
                assert seen[ids[1]].addresses == ("127.0.0.9",)

                await advertisers[0].__aexit__(None, None, None)  # says goodbye
                seen = await latest_until(receive, seen, lambda s: s[ids[0]].removed, 10)
                assert seen[ids[0]].removed and not seen[ids[1]].removed
                assert set(seen) == {ids[0], ids[1]}  # never ourselves, never the foreign node
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_mdns_on_loopback_sees_its_peer():
    if (probe := mdns.open_zeroconf(["127.0.0.1"])) is None:
        pytest.skip("zeroconf cannot open a multicast socket on 127.0.0.1 here; see tests/processes/test_mdns_netns.py")
    mdns._close_zeroconf(probe)
    key = os.urandom(32)
    ids = [os.urandom(8).hex() for _ in range(2)]
    nodes = [Mdns(cluster_key=key, node_id=ids[i], node_name=f"node {i}", port=7500 + i, gossip_port=7600 + i,
                  addresses=["127.0.0.1"]) for i in range(2)]

    async def first_event(node, into, index):
        with trio.move_on_after(15):
            into[index] = await node.events().receive()

    async def main():
        found = {}
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.__aenter__)
        try:
            assert all(node.active and node.addresses == ("127.0.0.1",) for node in nodes)
            async with trio.open_nursery() as nursery:
                for i, node in enumerate(nodes):
                    nursery.start_soon(first_event, node, found, i)
        finally:
            with trio.CancelScope(shield=True):
                for node in nodes:
                    await node.__aexit__(None, None, None)
        return found

    found = trio.run(main)
    assert found == {
        0: Discovered(ids[1], cluster_id(key), ("127.0.0.1",), 7501, 7601),
        1: Discovered(ids[0], cluster_id(key), ("127.0.0.1",), 7500, 7600),
    }
