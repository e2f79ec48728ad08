"""The structured fields of the daemon's log lines (issue 15, "Logs"): the ``fields`` helper,
the line a finished operation leaves, membership and watcher event names."""

from __future__ import annotations

import io
import json
import logging

import pytest

from peerstore.core import events as ev
from peerstore.gossip.state import MemberState
from peerstore.shell import logs
from peerstore.shell.daemon import node
from peerstore.shell.daemon.gossip import _member_event_name
from peerstore.shell.watcher import _outcome_fields
from peerstore.watch.pending import Failed, ReadChanged, Stored


@pytest.fixture
def lines():
    """Every record logged during the test, as the JSON the daemon would write."""
    stream = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    logs.configure("debug", "json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logs._context.clear()


def test_fields_leaves_out_none_and_renames_what_a_record_already_has(lines):
    extra = logs.fields("put_done", "run1/x@3", None, size=5, name="clash", msg="clash", gone=None)
    assert extra == {"event": "put_done", "checkpoint": "run1/x@3", "size": 5, "name_": "clash", "msg_": "clash"}
    logging.getLogger("peerstore.test").info("hello", extra=extra)  # would raise KeyError unrenamed
    (line,) = lines()
    assert line["msg"] == "hello" and line["name_"] == "clash" and line["event"] == "put_done"


def test_a_finished_operation_logs_its_event_checkpoint_and_op(lines):
    node._log_outcome("put", 7, ev.PutDone("run1/x", "3", b"\x01" * 32, tolerance=1, size=10, pieces=8))
    node._log_outcome("get", 8, ev.GetDone("run1/x", "3", 10, degraded_stripes=1, fallbacks=0))
    node._log_outcome("rm", 9, ev.Removed(("3.ab12cd34ef567890",)))
    node._log_outcome("put", 10, ev.Failed("not enough live nodes", outcome_unknown=True))
    node._log_outcome("status", 11, ev.Status("ab12cd34ef567890", (), ()))  # not worth a line
    put, get, rm, failed = lines()
    assert (put["event"], put["checkpoint"], put["op"], put["level"]) == ("put_done", "run1/x@3", 7, "INFO")
    assert put["manifest_id"] == "01" * 32
    assert (get["event"], get["checkpoint"], get["degraded"]) == ("get_done", "run1/x@3", 1)
    assert (rm["event"], rm["versions"]) == ("rm_done", "3.ab12cd34ef567890")
    assert (failed["event"], failed["level"], failed["msg"]) == ("put_failed", "WARNING", "not enough live nodes")
    assert failed["outcome_unknown"] is True and failed["op"] == 10


@pytest.mark.parametrize("old, new, event", [
    (None, MemberState.ALIVE, "peer_joined"),
    (MemberState.SUSPECT, MemberState.ALIVE, "peer_alive"),
    (MemberState.DEAD, MemberState.ALIVE, "peer_alive"),
    (MemberState.ALIVE, MemberState.SUSPECT, "peer_suspect"),
    (MemberState.SUSPECT, MemberState.DEAD, "peer_dead"),
    (MemberState.ALIVE, MemberState.LEFT, "peer_left"),
])
def test_member_changes_have_event_names(old, new, event):
    assert _member_event_name(old, new) == event


def test_watcher_outcomes_have_event_names():
    assert _outcome_fields("runs/a", Stored("3", (), 0.0)) == {"event": "watch_stored", "checkpoint": "runs/a@3"}
    assert _outcome_fields("runs/a", Failed("too_few_nodes", "2 live")) == {
        "event": "watch_failed", "checkpoint": "runs/a", "kind": "too_few_nodes"}
    assert _outcome_fields("runs/a", ReadChanged("size"))["event"] == "watch_pending"
