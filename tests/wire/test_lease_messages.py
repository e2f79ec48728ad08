"""RenewLease: a running put renews its pieces' leases; the schema bounds what a peer sends."""

from __future__ import annotations

import pytest

from peerstore.errors import CodecError
from peerstore.wire import messages as msg

PID = bytes(range(32))


def test_renew_lease_round_trips_and_is_a_request():
    m = msg.RenewLease(7, piece_ids=(PID, PID[::-1]), seconds=120)
    assert msg.from_header(m.to_header()) == m
    assert msg.RenewLease not in msg.REPLY_TYPES and msg.PiecesHeld in msg.REPLY_TYPES


@pytest.mark.parametrize(
    "change, says",
    [
        ({"piece_ids": [PID] * (msg.MAX_QUERY_IDS + 1)}, "at most"),
        ({"piece_ids": [PID[:31]]}, "32 bytes"),
        ({"seconds": -1}, "non-negative"),
        ({"seconds": 1.5}, "integer"),
        ({"extra": 1}, "unexpected"),
    ],
)
def test_a_malformed_renewal_is_refused(change, says):
    header = {**msg.RenewLease(1, piece_ids=(PID,), seconds=60).to_header(), **change}
    with pytest.raises(CodecError, match=says):
        msg.from_header(header)
