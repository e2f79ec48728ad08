"""Prometheus HTTP service discovery: what a node gossips about its metrics endpoint, the
target list made from the members, and the /discovery endpoint that serves it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from peerstore.gossip import MemberState
from peerstore.gossip.messages import MAX_META_BYTES, encoded_size, parse_meta
from peerstore.gossip.state import Member
from peerstore.shell.daemon.discovery import (
    STATE_LABEL,
    advertised_meta,
    boot_and_sequence,
    sd_targets,
)
from peerstore.shell.daemon.metrics_http import serve_metrics


def member(node_id: str, state: MemberState, meta: dict, host: str = "10.0.0.5") -> Member:
    return Member(node_id, (host, 7000), 5 << 32, state, 0.0, None, meta)


def test_meta_names_the_node_and_its_metrics_port_and_fits_gossip():
    meta = advertised_meta("x" * 500, "0.0.0.0", 9420)
    assert meta == {"nm": "x" * 64, "mp": 9420}
    assert parse_meta(meta) == meta and encoded_size(meta) <= MAX_META_BYTES
    assert advertised_meta("pi-1", "192.168.1.7", 9420)["mh"] == "192.168.1.7"
    # Loopback: another machine would scrape itself, so the gossip address is used.
    assert "mh" not in advertised_meta("pi-1", "127.0.0.1", 9420)
    assert advertised_meta("pi-1", "127.0.0.1", 0) == {"nm": "pi-1"}  # metrics off


def test_targets_list_every_member_that_has_not_left_with_its_state():
    members = [
        member("a" * 16, MemberState.ALIVE, advertised_meta("mac", "0.0.0.0", 9420), host="10.0.0.1"),
        member("b" * 16, MemberState.SUSPECT, advertised_meta("pi-1", "10.0.0.9", 9421), host="10.0.0.2"),
        member("c" * 16, MemberState.DEAD, advertised_meta("pi-2", "0.0.0.0", 9420), host="fe80::2"),
        member("d" * 16, MemberState.LEFT, advertised_meta("pi-3", "0.0.0.0", 9420), host="10.0.0.4"),
        member("e" * 16, MemberState.ALIVE, {}, host="10.0.0.5"),  # an older node: no meta
    ]
    groups = sd_targets(members)
    assert groups == [
        {"targets": ["10.0.0.1:9420"], "labels": {"node_id": "a" * 16, "node_name": "mac", STATE_LABEL: "alive"}},
        {"targets": ["10.0.0.9:9421"], "labels": {"node_id": "b" * 16, "node_name": "pi-1", STATE_LABEL: "suspect"}},
        {"targets": ["[fe80::2]:9420"], "labels": {"node_id": "c" * 16, "node_name": "pi-2", STATE_LABEL: "dead"}},
    ]


def test_a_dead_member_at_the_address_of_a_live_one_is_not_listed_twice():
    meta = advertised_meta("pi", "0.0.0.0", 9420)
    groups = sd_targets([member("a" * 16, MemberState.DEAD, meta), member("b" * 16, MemberState.ALIVE, meta)])
    assert [g["labels"]["node_id"] for g in groups] == ["b" * 16]


def test_incarnation_reads_as_boot_count_and_sequence():
    assert boot_and_sequence((7 << 32) + 2) == (7, 2)
    assert boot_and_sequence(1 << 32) == (1, 0)


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, "", b""


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("peerstore_test_things", "Things", registry=reg).inc()
    return reg


def test_the_metrics_server_serves_the_target_list_and_still_the_metrics(registry):
    targets = [{"targets": ["127.0.0.1:9421"], "labels": {"node_id": "a" * 16}}]
    server = serve_metrics(registry, "127.0.0.1", 0, discovery=lambda: targets)
    try:
        port = server.server_address[1]
        status, kind, body = get(port, "/discovery")
        assert status == 200 and kind == "application/json" and json.loads(body) == targets
        targets = []  # the callable is asked on every request
        assert json.loads(get(port, "/discovery?x=1")[2]) == []
        assert b"peerstore_test_things_total 1.0" in get(port, "/metrics")[2]
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_target_list_discovery_is_not_found(registry):
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        assert get(server.server_address[1], "/discovery")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
