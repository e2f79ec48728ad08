"""``status`` answers within ``settings.status_timeout`` while a member is silent (frozen,
or unreachable but not yet declared dead), and names the members it could not ask
(issue 14 §2). The bound is a core timer: time moves only when the test says so."""

from __future__ import annotations

import os

from peerstore.core import events as ev
from peerstore.core.settings import CoreSettings
from peerstore.model.policy import Policy
from tests.support.core_driver import SHARD, CoreDriver

BOUND = 2.0
SETTINGS = CoreSettings(policy=Policy(shard_size=SHARD), status_timeout=BOUND, request_timeout=10.0)


def cluster_with_a_checkpoint() -> CoreDriver:
    d = CoreDriver(4, settings=SETTINGS)
    assert d.result(d.put(d.ids[0], "run/a", {"model.bin": os.urandom(3 * SHARD)})).ok
    return d


def freeze(d: CoreDriver, node_id: str) -> None:
    """Everything sent to ``node_id`` vanishes: no reply, no error (SIGSTOP)."""
    d.intercept(lambda n, e: isinstance(e, ev.Send) and e.peer == node_id, lambda n, e: True)


def test_status_with_every_member_answering_names_nobody():
    d = cluster_with_a_checkpoint()
    status = d.result(d.command(d.ids[1], lambda c: ev.StatusCommand(c))).final
    assert isinstance(status, ev.Status) and status.unanswered == ()
    assert all(report is not None for _, report in status.nodes)
    assert [row.tolerance for row in status.checkpoints] == [2]


def test_status_answers_after_the_bound_and_names_a_frozen_member():
    d = cluster_with_a_checkpoint()
    frozen = d.ids[3]
    freeze(d, frozen)
    client = d.command(d.ids[1], lambda c: ev.StatusCommand(c))
    d.run()
    d.advance(BOUND - 0.1)
    assert not d.clients[client].done, "status must wait for members within the bound"
    d.advance(0.2)  # one bound after it asked, never request_timeout (10 s)
    record = d.clients[client]
    assert record.done, "status still waits for the frozen member past status_timeout"
    status = record.final
    assert isinstance(status, ev.Status)
    assert status.unanswered == ((frozen, "timeout"),)
    assert frozen in status.alive  # gossip has not declared it dead: it is not left out silently
    assert dict(status.nodes)[frozen] is None
    assert all(report is not None for node, report in status.nodes if node != frozen)
    # Its pieces are not counted: the tolerance shown can only be lower, never higher.
    assert len(status.checkpoints) == 1 and 0 <= status.checkpoints[0].tolerance <= 2


def test_an_unreachable_member_is_named_at_once():
    d = cluster_with_a_checkpoint()
    gone = d.ids[2]
    d.crash(gone)  # nobody is told: requests to it fail as the connection does
    client = d.command(d.ids[0], lambda c: ev.StatusCommand(c))
    status = d.result(client).final  # no clock moved
    assert isinstance(status, ev.Status)
    assert status.unanswered == ((gone, "unreachable"),)


def test_the_bound_is_the_settings_value():
    d = CoreDriver(3, settings=CoreSettings(policy=Policy(shard_size=SHARD), status_timeout=0.5))
    freeze(d, d.ids[2])
    client = d.command(d.ids[0], lambda c: ev.StatusCommand(c))
    d.run()
    d.advance(0.6)
    assert d.clients[client].done and d.clients[client].final.unanswered == ((d.ids[2], "timeout"),)
