"""Fanout (core/fanout.py): one request to many peers plus a local step, on the driver."""

from __future__ import annotations

from peerstore.core.fanout import Fanout
from peerstore.model.catalog import Catalog
from peerstore.wire import messages as msg
from tests.support.core_driver import CoreDriver


def run_fanout(driver: CoreDriver, optional: frozenset[str]) -> list[int]:
    node = driver.ids[0]
    core = driver.core(node)
    done: list[int] = []
    blob = Catalog().encode()
    Fanout(core, peers=driver.ids[1:], make=lambda req: msg.CatalogUpdate(req, blob=blob),
           accept=lambda reply: isinstance(reply, msg.CatalogAck) and reply.ok,
           local=lambda answer: answer(driver.now, True), on_done=lambda t, acks: done.append(acks),
           optional=optional).start(driver.now)
    driver._effects(node, core._drain())  # what the node's own loop does after an input
    driver.run()
    return done


def test_it_waits_for_every_peer_and_counts_the_local_step():
    driver = CoreDriver(4)
    assert run_fanout(driver, frozenset()) == [4]


def test_optional_peers_are_asked_but_not_waited_for_and_the_local_step_always_is():
    driver = CoreDriver(4)
    slow = driver.ids[3]
    driver.hold(lambda node, effect: node == slow, count=1000)  # it never answers
    done = run_fanout(driver, frozenset({slow, driver.ids[0]}))
    assert done == [3], "done without the optional peer, with the local ack and two peers"
    assert any(node == slow for node, _ in driver.held), "the optional peer was asked too"


def test_without_optional_a_silent_peer_holds_it_until_its_timeout():
    driver = CoreDriver(4)
    slow = driver.ids[3]
    driver.hold(lambda node, effect: node == slow, count=1000)
    done = run_fanout(driver, frozenset())
    assert done == []
    driver.advance(driver.settings.commit_timeout + 1)
    assert done == [3]
