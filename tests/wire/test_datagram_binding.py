"""A datagram opens only at the node it was sealed for, and a forged tag cannot push a
sender's replay window to the maximum (which would silence it for good)."""

from __future__ import annotations

import pytest

from peerstore.errors import AuthError
from peerstore.wire import ReplayError, ReplayFilter, open_datagram, seal_datagram
from peerstore.wire.datagram import MAX_EPOCH_JUMP, MAX_SEQ_JUMP

KEY = bytes(range(32))
SENDER, A, B = "0123456789abcdef", "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
U64_MAX = 2**64 - 1


def test_a_datagram_sealed_for_one_node_does_not_open_at_another():
    data = seal_datagram(KEY, SENDER, 1, 7, b"suspect x", to=A)
    at_b = ReplayFilter()
    with pytest.raises(AuthError, match="sealed for another node"):
        open_datagram(KEY, data, at_b, me=B)
    assert len(at_b) == 0, "a datagram for someone else must not move the replay window"
    assert open_datagram(KEY, data, ReplayFilter(), me=A) == (SENDER, 1, 7, b"suspect x")


def test_the_recipient_is_required_and_checked():
    with pytest.raises(TypeError):
        seal_datagram(KEY, SENDER, 1, 1, b"")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="recipient"):
        seal_datagram(KEY, SENDER, 1, 1, b"", to="")


def test_a_forged_epoch_at_the_maximum_is_refused_and_the_sender_still_heard():
    replay = ReplayFilter()
    assert replay.check_and_record(SENDER, 3, 10) is None
    verdict = replay.check_and_record(SENDER, U64_MAX, 0)
    assert verdict is not None and "implausible" in verdict
    assert replay.check_and_record(SENDER, 3, 11) is None, "the real sender must still be heard"
    data = seal_datagram(KEY, SENDER, U64_MAX, 1, b"", to=A)
    with pytest.raises(ReplayError, match="implausible"):
        open_datagram(KEY, data, replay, me=A)


def test_a_forged_sequence_at_the_maximum_is_refused():
    replay = ReplayFilter()
    assert replay.accept(SENDER, 3, 10)
    assert not replay.accept(SENDER, 3, U64_MAX)
    assert not replay.accept(SENDER, 4, U64_MAX), "a new boot starts its sequence low"
    assert replay.accept(SENDER, 3, 12)


def test_real_jumps_within_the_bounds_are_accepted():
    replay = ReplayFilter()
    assert replay.accept(SENDER, 3, 10)
    assert replay.accept(SENDER, 3, 10 + MAX_SEQ_JUMP)  # it sent that many to others meanwhile
    assert replay.accept(SENDER, 3 + MAX_EPOCH_JUMP, MAX_SEQ_JUMP)  # that many restarts unseen
    assert not replay.accept(SENDER, 4 + 2 * MAX_EPOCH_JUMP, 0)


def test_forging_the_maximum_takes_more_datagrams_than_anyone_can_send():
    """The bound per datagram is what makes "silenced forever" impractical: reaching the
    top of the epoch range from a real one takes 2**48 accepted forgeries."""
    assert (2**64) // MAX_EPOCH_JUMP >= 2**48
