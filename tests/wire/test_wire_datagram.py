"""Gossip datagrams: seal/open, forgery, size limits, and the replay filter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstore.errors import AuthError, CodecError
from peerstore.wire import MAX_DATAGRAM, ReplayError, ReplayFilter, open_datagram, seal_datagram
from peerstore.wire.datagram import MAX_BODY, OVERHEAD, REPLAY_WINDOW

KEY = bytes(range(32))
NODE = "0123456789abcdef"
ME = "fedcba9876543210"  # the recipient every datagram here is sealed for


@pytest.mark.parametrize(
    "node_id, epoch, seq, body",
    [(NODE, 0, 0, b""), (NODE, 7, 12345, b"gossip"), ("f" * 16, 2**64 - 1, 2**64 - 1, b"\x00" * MAX_BODY)],
)
def test_seal_then_open_round_trips(node_id, epoch, seq, body):
    data = seal_datagram(KEY, node_id, epoch, seq, body, to=ME)
    assert len(data) == OVERHEAD + len(body) <= MAX_DATAGRAM
    assert open_datagram(KEY, data, ReplayFilter(), me=ME) == (node_id, epoch, seq, body)


def test_oversized_body_is_refused_when_sealing():
    with pytest.raises(CodecError, match="does not fit"):
        seal_datagram(KEY, NODE, 1, 1, b"x" * (MAX_BODY + 1), to=ME)


@pytest.mark.parametrize(
    "node_id, epoch, seq, match",
    [("XYZ", 1, 1, "node id"), (NODE, -1, 1, "boot_epoch"), (NODE, 1, 2**64, "seq"), (NODE, 1, True, "seq")],
)
def test_seal_rejects_bad_tags(node_id, epoch, seq, match):
    with pytest.raises(ValueError, match=match):
        seal_datagram(KEY, node_id, epoch, seq, b"", to=ME)


def test_every_flipped_byte_is_refused_and_leaves_the_window_alone():
    data = seal_datagram(KEY, NODE, 3, 10, b"membership update", to=ME)
    replay = ReplayFilter()
    for position in range(len(data)):
        forged = data[:position] + bytes([data[position] ^ 0x04]) + data[position + 1 :]
        with pytest.raises(CodecError) as caught:
            open_datagram(KEY, forged, replay, me=ME)
        assert not isinstance(caught.value, ReplayError)
    assert len(replay) == 0, "a forged datagram must not reach the replay filter"
    assert open_datagram(KEY, data, replay, me=ME)[2] == 10


def test_wrong_key_is_an_auth_error():
    data = seal_datagram(bytes(32), NODE, 1, 1, b"hi", to=ME)
    with pytest.raises(AuthError, match="MAC"):
        open_datagram(KEY, data, ReplayFilter(), me=ME)


@pytest.mark.parametrize("length", [0, 1, OVERHEAD - 1])
def test_truncated_datagrams_are_codec_errors(length):
    data = seal_datagram(KEY, NODE, 1, 1, b"", to=ME)
    with pytest.raises(CodecError, match="truncated"):
        open_datagram(KEY, data[:length], ReplayFilter(), me=ME)


def test_oversized_datagram_is_refused_before_the_mac():
    with pytest.raises(CodecError, match="over the 1400-byte limit"):
        open_datagram(KEY, b"pg" + bytes(MAX_DATAGRAM), ReplayFilter(), me=ME)


def test_foreign_format_version_says_so():
    data = bytearray(seal_datagram(KEY, NODE, 1, 1, b"", to=ME))
    data[2] = 1  # format 1: before the MAC named the recipient
    with pytest.raises(CodecError, match="format version 1"):
        open_datagram(KEY, bytes(data), ReplayFilter(), me=ME)


def test_replayed_datagram_is_a_replay_error():
    replay = ReplayFilter()
    data = seal_datagram(KEY, NODE, 1, 5, b"x", to=ME)
    open_datagram(KEY, data, replay, me=ME)
    with pytest.raises(ReplayError, match="duplicate"):
        open_datagram(KEY, data, replay, me=ME)


def test_boot_epochs_old_refused_new_resets():
    replay = ReplayFilter()
    assert replay.accept(NODE, 5, 1000)
    assert not replay.accept(NODE, 4, 2000)  # an older boot: a recording from before a restart
    assert replay.accept(NODE, 6, 0)  # restarted: sequence numbers begin again
    assert replay.accept(NODE, 6, 1)
    assert not replay.accept(NODE, 5, 1001)
    data = seal_datagram(KEY, NODE, 5, 2000, b"", to=ME)
    with pytest.raises(ReplayError, match="older than"):
        open_datagram(KEY, data, replay, me=ME)


@pytest.mark.parametrize(
    "seen, probe, accepted",
    [
        ([10], 10, False),  # duplicate of the newest
        ([10], 11, True),  # next in order
        ([10], 9, True),  # late but inside the window
        ([10, 9], 9, False),  # late duplicate
        ([REPLAY_WINDOW + 10], 11, True),  # exactly window - 1 behind
        ([REPLAY_WINDOW + 10], 10, False),  # exactly window behind: too old
        ([0, 5000], 5000 - REPLAY_WINDOW, False),  # a jump slides the whole window
        ([0, 5000], 5001 - REPLAY_WINDOW, True),
        ([0, 5000, 4999], 4999, False),
        ([0, 1, 2, REPLAY_WINDOW + 1], 2, False),  # window - 1 behind and already seen
        ([0, 1, 2, REPLAY_WINDOW + 1], 1, False),  # slid out of the window
        ([0, 1, 2, REPLAY_WINDOW + 1], 3, True),  # inside the window, never seen
    ],
)
def test_sliding_window(seen, probe, accepted):
    replay = ReplayFilter()
    for seq in seen:
        assert replay.accept(NODE, 1, seq)
    assert replay.accept(NODE, 1, probe) is accepted


def test_senders_are_tracked_independently_and_bounded():
    replay = ReplayFilter(max_nodes=3)
    nodes = [f"{i:016x}" for i in range(4)]
    for node in nodes[:3]:
        assert replay.accept(node, 1, 1)
    assert not replay.accept(nodes[1], 1, 1)  # node 1 is now the most recently heard
    assert replay.accept(nodes[3], 1, 1)  # evicts node 0, the least recently heard
    assert len(replay) == 3
    assert replay.accept(nodes[0], 1, 1), "an evicted sender starts over"
    assert not replay.accept(nodes[1], 1, 1), "node 1 was not evicted"


class ReferenceFilter:
    """The replay rule spelled out with sets, to check the bitmap arithmetic against."""

    def __init__(self, window):
        self.window, self.nodes = window, {}

    def accept(self, node, epoch, seq):
        state = self.nodes.get(node)
        if state is None or epoch > state[0]:
            self.nodes[node] = (epoch, {seq})
            return True
        current, seen = state
        if epoch < current or seq in seen or max(seen) - seq >= self.window:
            return False
        seen.add(seq)
        return True


@settings(max_examples=150, deadline=None)
@given(
    window=st.sampled_from([1, 8, 64, REPLAY_WINDOW]),
    ops=st.lists(
        st.tuples(st.sampled_from(["a" * 16, "b" * 16]), st.integers(0, 3), st.integers(0, 3000)), max_size=200
    ),
)
def test_replay_filter_matches_the_reference_rule(window, ops):
    real, reference = ReplayFilter(window=window), ReferenceFilter(window)
    for node, epoch, seq in ops:
        assert real.accept(node, epoch, seq) == reference.accept(node, epoch, seq), (node, epoch, seq)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=MAX_DATAGRAM + 10))
def test_random_datagrams_only_raise_codec_errors(data):
    replay = ReplayFilter()
    with pytest.raises(CodecError):
        open_datagram(KEY, data, replay, me=ME)
    assert len(replay) == 0
