"""The verify and node-report messages: round trips and their bounds (peerstore.wire.messages)."""

from __future__ import annotations

import pytest

from peerstore.errors import CodecError
from peerstore.wire import messages as msg

PID = bytes(range(32))


@pytest.mark.parametrize("message", [
    msg.VerifyPieces(7, piece_ids=(PID,) * msg.MAX_VERIFY_IDS),
    msg.PiecesVerified(7, held=b"\x03", ok=b"\x01"),
    msg.PiecesVerified(8, held=b"", ok=b"", busy=True),
    msg.ReportNode(9),
    msg.NodeReport(9, blob=b"\x80"),
])
def test_round_trip(message):
    assert msg.from_header(message.to_header(), message.payload_blob) == message


def test_a_verify_request_is_bounded_so_one_holder_never_rereads_too_much_at_once():
    header = msg.VerifyPieces(1, piece_ids=(PID,) * msg.MAX_VERIFY_IDS).to_header()
    header["piece_ids"] = [PID] * (msg.MAX_VERIFY_IDS + 1)
    with pytest.raises(CodecError, match=f"at most {msg.MAX_VERIFY_IDS} piece ids"):
        msg.from_header(header)
    query = msg.QueryPieces(1, piece_ids=(PID,) * msg.MAX_QUERY_IDS).to_header()  # others keep theirs
    assert len(msg.from_header(query).piece_ids) == msg.MAX_QUERY_IDS


def test_replies_are_replies():
    assert {msg.PiecesVerified, msg.NodeReport} <= msg.REPLY_TYPES
    assert not {msg.VerifyPieces, msg.ReportNode} & msg.REPLY_TYPES
