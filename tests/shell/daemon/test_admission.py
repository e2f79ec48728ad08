"""Pending handshakes are capped in total and per address, dropping the flood's own oldest;
the wrong-key warning is rate-limited; the open-file limit is raised at start."""

from __future__ import annotations

import resource

import pytest

from peerstore.shell.daemon.admission import HandshakeGate, LogLimiter, raise_open_file_limit


class Scope:
    """Stands in for a trio.CancelScope: records whether the gate cancelled it."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_an_address_at_its_cap_drops_its_own_oldest_handshake():
    gate = HandshakeGate(max_total=100, max_per_address=3)
    flood = [Scope() for _ in range(5)]
    tickets = [gate.admit("10.0.0.9", scope) for scope in flood]
    assert [s.cancelled for s in flood] == [True, True, False, False, False]
    assert gate.pending_from("10.0.0.9") == 3 and gate.pending == 3 and gate.dropped == 2
    for ticket in tickets:
        gate.done(ticket)  # dropped ones included: harmless
    assert gate.pending == 0


def test_when_the_total_is_full_the_busiest_address_makes_room():
    gate = HandshakeGate(max_total=6, max_per_address=4)
    flood = [Scope() for _ in range(4)] + [Scope() for _ in range(2)]
    for scope in flood[:4]:
        gate.admit("10.0.0.9", scope)
    for scope in flood[4:]:
        gate.admit("10.0.0.8", scope)
    peer = Scope()
    ticket = gate.admit("10.0.0.1", peer)  # a real peer arrives with the gate full
    assert flood[0].cancelled and not peer.cancelled
    assert gate.pending == 6
    for _ in range(20):  # the flood goes on: it keeps dropping its own
        gate.admit("10.0.0.9", Scope())
    assert not peer.cancelled and gate.pending_from("10.0.0.1") == 1
    gate.done(ticket)
    assert gate.pending_from("10.0.0.1") == 0


def test_the_warning_limiter_lets_one_through_per_interval_and_counts_the_rest():
    limiter = LogLimiter(interval=30.0)
    assert limiter.allow(0.0) == 0
    assert [limiter.allow(t) for t in (1.0, 2.0, 29.0)] == [None, None, None]
    assert limiter.allow(31.0) == 3
    assert limiter.allow(32.0) is None


def test_the_soft_open_file_limit_is_raised_towards_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard open-file limit here is only {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        old, new = raise_open_file_limit(wanted=1024)
        assert old == 256 and new == 1024
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1024, hard)
        assert raise_open_file_limit(wanted=512) == (1024, 1024)  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
