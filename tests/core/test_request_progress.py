"""Issue 14, section 1: a request times out on its peer's silence, not on our own send
queue, and bytes in flight per peer follow the measured link rate (core/messenger.py)."""

from __future__ import annotations

import random

import pytest

from peerstore.core import events as ev
from peerstore.core.messenger import PROGRESS_INTERVAL, Messenger
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import MiB, Policy
from peerstore.wire import messages as msg

ME, PEER, OTHER = "a" * 16, "b" * 16, "c" * 16
TIMEOUT = 10.0


def messenger() -> Messenger:
    settings = CoreSettings(policy=Policy(shard_size=4 * MiB), request_timeout=TIMEOUT)
    return Messenger(ME, settings, random.Random(1), frozenset({ME, PEER, OTHER}))


def ask(m: Messenger, now: float, peer: str = PEER, size: int = 4 * MiB, **kw) -> tuple[int, list]:
    failures: list = []
    req = m.request(now, peer, lambda r: msg.QueryPieces(r, piece_ids=()), lambda t, reply, p: None,
                    lambda t, why: failures.append((t, why)), inflight_bytes=size, **kw)
    return req, failures


def run_until(m: Messenger, start: float, end: float, moving: set[str]) -> None:
    """Tick every PROGRESS_INTERVAL, reporting bytes moving to ``moving``, as a shell does."""
    t = start
    while t < end:
        t = round(t + PROGRESS_INTERVAL, 6)
        if moving:
            m.bytes_moved(t, frozenset(moving))
        m.expire(t)


def test_a_request_queued_behind_a_deep_queue_waits_while_bytes_flow_then_times_out_on_silence():
    m = messenger()
    _, failures = ask(m, 0.0)
    run_until(m, 0.0, 60.0, {PEER})  # a minute behind our queue, bytes moving all along
    assert failures == []
    run_until(m, 60.0, 60.0 + TIMEOUT - PROGRESS_INTERVAL, set())
    assert failures == []
    run_until(m, 60.0 + TIMEOUT - PROGRESS_INTERVAL, 60.0 + TIMEOUT + 1, set())
    assert failures == [(60.0 + TIMEOUT, "timeout")]  # silent for exactly request_timeout
    detail = m.failure_detail(PEER, "timeout")
    assert f"node {PEER} went silent" in detail and f"{TIMEOUT:.1f} s" in detail
    assert "4.0 MiB of requests outstanding" in detail and "waited 70.0 s" in detail


def test_a_silent_peer_times_out_within_the_bound_while_other_peers_move_bytes():
    m = messenger()
    _, failures = ask(m, 0.0)
    _, others = ask(m, 0.0, peer=OTHER)
    run_until(m, 0.0, 30.0, {OTHER})
    assert failures == [(TIMEOUT, "timeout")] and others == []
    assert m.inflight.get(PEER, 0) == 0  # its bytes no longer count against its window


def test_a_request_with_its_own_timeout_keeps_a_fixed_deadline():
    m = messenger()
    _, failures = ask(m, 0.0, timeout=2.0)
    run_until(m, 0.0, 5.0, {PEER})
    assert failures == [(2.0, "timeout")]
    assert m.failure_detail(PEER, "timeout").startswith(f"node {PEER} did not answer within 2.0 s")


def test_the_deadline_never_comes_before_request_timeout_after_the_request():
    m = messenger()
    m.bytes_moved(0.0, frozenset({PEER}))
    _, failures = ask(m, 9.0)  # the last bytes moved long before it was made
    assert m.request_deadline() == 9.0 + TIMEOUT
    run_until(m, 9.0, 9.0 + TIMEOUT - PROGRESS_INTERVAL, set())
    assert failures == []


def answer(m: Messenger, now: float, req: int) -> None:
    pending = m._pending.pop(req)
    m._release_inflight(now, pending)


@pytest.mark.parametrize("rate, window", [
    (3e6, 8 * MiB),  # 100 Mbit shared by 4 peers: 2 s of it is under two shards: the floor
    (6e6, 12e6),  # 2 s of 6 MB/s
    (200e6, 32 * MiB),  # loopback: capped at max_inflight_bytes_per_peer
])
def test_the_window_follows_the_rate_the_peer_acknowledges(rate, window):
    m = messenger()
    assert m.window(PEER) == 8 * MiB  # nothing measured yet: two shards
    now = 0.0
    reqs = [ask(m, now)[0] for _ in range(2)]
    for _ in range(20):  # keep two pieces in flight, acknowledged at ``rate``
        now += 4 * MiB / rate
        answer(m, now, reqs.pop(0))
        reqs.append(ask(m, now)[0])
    assert m.window(PEER) == pytest.approx(window, rel=0.02)
    assert m.can_send(PEER, 4 * MiB) == (m.inflight[PEER] + 4 * MiB <= m.window(PEER))


def test_idle_time_does_not_lower_the_measured_rate():
    m = messenger()
    req, _ = ask(m, 0.0)
    answer(m, 0.5, req)  # 8 MB/s
    req, _ = ask(m, 100.0)  # the link sat idle for a while
    answer(m, 100.5, req)
    assert m.rates[PEER].rate == pytest.approx(4 * MiB / 0.5)


def test_a_progress_report_is_an_input_of_the_node_core():
    from peerstore.core.node import NodeCore

    core = NodeCore(ME, CoreSettings(), random.Random(1), alive=frozenset({ME, PEER}))
    assert core.handle(3.0, ev.BytesMoved(frozenset({PEER}))) == []
    assert core.progress_at[PEER] == 3.0



def test_a_peer_that_keeps_moving_bytes_but_never_answers_still_times_out():
    """Other traffic extends a request, but only up to MAX_PATIENCE request timeouts: a
    peer that chats on and never answers this one cannot hold it (and its put) forever."""
    from peerstore.core.messenger import MAX_PATIENCE

    m = messenger()
    _, failures = ask(m, 0.0)
    limit = MAX_PATIENCE * TIMEOUT
    run_until(m, 0.0, limit - PROGRESS_INTERVAL, {PEER})
    assert failures == []
    run_until(m, limit - PROGRESS_INTERVAL, limit + 1, {PEER})
    assert failures == [(limit, "timeout")]
    assert "kept moving" in m.failure_detail(PEER, "timeout")
