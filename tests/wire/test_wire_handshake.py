"""The TCP handshake: version negotiation, mutual cluster-key proof, replay and reflection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstore.errors import AuthError, CodecError
from peerstore.wire import Connection, HandshakeComplete
from peerstore.wire import handshake as hs

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CLIENT_ID, SERVER_ID = "c1c1c1c1c1c1c1c1", "5e5e5e5e5e5e5e5e"


def make(role, *, key=KEY, nonce=None, versions=(1, 1), node_id=None):
    node_id = node_id or (CLIENT_ID if role == "client" else SERVER_ID)
    nonce = nonce or (b"C" if role == "client" else b"S") * 32
    return Connection(role=role, cluster_key=key, node_id=node_id, nonce=nonce, versions=versions)


def drain(conn):
    """All events available now, or the error that killed the connection."""
    events = []
    for _ in range(1000):  # a handshake has a handful of events; never loop forever
        try:
            event = conn.next_event()
        except CodecError as err:
            return err
        if event is None:
            return events
        events.append(event)
    raise AssertionError(f"the connection never went quiet: {events[:5]}...")


def pump(client, server):
    """Shuttle bytes until both sides go quiet; per side, its events or its error."""
    outcome = {"client": [], "server": []}
    sides = {"client": (client, server, "server"), "server": (server, client, "client")}
    for _ in range(10):
        moved = False
        for sender, receiver, receiver_name in sides.values():
            data = sender.data_to_send()
            if data and not isinstance(outcome[receiver_name], Exception):
                moved = True
                receiver.receive_data(data)
                result = drain(receiver)
                if isinstance(result, Exception):
                    outcome[receiver_name] = result
                else:
                    outcome[receiver_name] += result
        if not moved:
            return outcome
    raise AssertionError("handshake did not settle in 10 rounds")


def message_types(stream: bytes) -> list[int]:
    """Split a handshake byte stream into its message type bytes."""
    kinds = []
    while stream:
        kind = stream[len(hs.MAGIC)]
        kinds.append(kind)
        stream = stream[hs.PREFIX_SIZE + hs._BODY_SIZE[kind] :]
    return kinds


def test_handshake_completes_and_each_side_learns_the_other():
    client, server = make("client"), make("server")
    outcome = pump(client, server)
    assert outcome["client"] == [HandshakeComplete(SERVER_ID, 1)]
    assert outcome["server"] == [HandshakeComplete(CLIENT_ID, 1)]
    for conn, peer in ((client, SERVER_ID), (server, CLIENT_ID)):
        assert conn.established and conn.peer_node_id == peer and conn.version == 1
    assert not hasattr(client, "session_key")


def test_nothing_is_established_before_the_handshake():
    client = make("client")
    assert not client.established and client.peer_node_id is None and client.version is None
    with pytest.raises(RuntimeError, match="handshake"):
        client.send_message({"t": "ping"})
    assert make("server").initial_bytes() == b""
    hello = client.initial_bytes()
    assert message_types(hello) == [hs.CLIENT_HELLO]
    assert client.data_to_send() == b"", "the hello must not be handed out twice"


def test_wrong_cluster_key_fails_on_both_sides_and_server_sends_no_proof():
    client, server = make("client", key=OTHER_KEY), make("server")
    sent_by_server = []
    original = server.data_to_send

    def recording():
        data = original()
        sent_by_server.append(data)
        return data

    server.data_to_send = recording
    outcome = pump(client, server)
    assert isinstance(outcome["server"], AuthError) and "cluster key" in str(outcome["server"])
    assert isinstance(outcome["client"], AuthError) and "cluster key" in str(outcome["client"])
    assert not client.established and not server.established
    assert message_types(b"".join(sent_by_server)) == [hs.SERVER_HELLO, hs.REJECT]


def test_server_hello_reveals_nothing_that_depends_on_the_key():
    hello = make("client").initial_bytes()
    replies = []
    for key in (KEY, OTHER_KEY):
        server = make("server", key=key)
        server.receive_data(hello)
        assert server.next_event() is None
        replies.append(server.data_to_send())
    assert replies[0] == replies[1]
    assert message_types(replies[0]) == [hs.SERVER_HELLO]


def handshake_transcript(client_nonce, server_nonce):
    """Run a handshake by hand; return the four messages as sent."""
    client, server = make("client", nonce=client_nonce), make("server", nonce=server_nonce)
    client_hello = client.initial_bytes()
    server.receive_data(client_hello)
    server.next_event()
    server_hello = server.data_to_send()
    client.receive_data(server_hello)
    client.next_event()
    client_proof = client.data_to_send()
    server.receive_data(client_proof)
    assert isinstance(server.next_event(), HandshakeComplete)
    server_proof = server.data_to_send()
    return client_hello, server_hello, client_proof, server_proof


def test_client_proof_replayed_into_a_new_connection_is_refused():
    _, _, old_proof, _ = handshake_transcript(b"A" * 32, b"B" * 32)
    client_hello = make("client", nonce=b"A" * 32).initial_bytes()  # same client hello replayed
    server = make("server", nonce=b"Z" * 32)  # but the server's nonce is fresh
    server.receive_data(client_hello + old_proof)
    with pytest.raises(AuthError):
        server.next_event()


def test_server_proof_replayed_into_a_new_connection_is_refused():
    _, old_hello, _, old_proof = handshake_transcript(b"A" * 32, b"B" * 32)
    client = make("client", nonce=b"Y" * 32)  # fresh client nonce, same server replayed
    client.initial_bytes()
    client.receive_data(old_hello + old_proof)
    with pytest.raises(AuthError):
        client.next_event()


@pytest.mark.parametrize(
    "victim, reflect",
    [
        ("client", lambda msgs: msgs[0]),  # the client's own hello, echoed back
        ("server", lambda msgs: msgs[1]),  # the server's own hello, sent to it as a client hello
    ],
)
def test_reflected_hello_is_refused(victim, reflect):
    messages = handshake_transcript(b"A" * 32, b"B" * 32)
    conn = make(victim, nonce=b"A" * 32 if victim == "client" else b"B" * 32)
    conn.initial_bytes()
    conn.receive_data(reflect(messages))
    with pytest.raises(CodecError, match="out of order"):
        conn.next_event()


def test_client_proof_reflected_as_a_server_proof_is_refused():
    client = make("client")
    server = make("server")
    server.receive_data(client.initial_bytes())
    server.next_event()
    client.receive_data(server.data_to_send())
    client.next_event()
    proof = client.data_to_send()
    as_server_proof = hs.MAGIC + bytes([hs.SERVER_PROOF]) + proof[hs.PREFIX_SIZE :]
    client.receive_data(as_server_proof)
    with pytest.raises(AuthError):
        client.next_event()


@pytest.mark.parametrize(
    "ours, theirs, expected",
    [
        ((1, 1), (1, 1), 1),
        ((1, 3), (2, 5), 3),
        ((2, 5), (1, 3), 3),
        ((1, 9), (4, 4), 4),
        ((3, 3), (1, 3), 3),
        ((1, 2), (3, 4), None),
        ((5, 6), (1, 4), None),
    ],
)
def test_version_negotiation_picks_the_highest_common_version(ours, theirs, expected):
    if expected is None:
        with pytest.raises(CodecError) as caught:
            hs.negotiate_version(ours, theirs)
        assert f"{ours[0]}-{ours[1]}" in str(caught.value) and f"{theirs[0]}-{theirs[1]}" in str(caught.value)
    else:
        assert hs.negotiate_version(ours, theirs) == expected


@pytest.mark.parametrize(
    "client_versions, server_versions, expected",
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((2, 7), (1, 2), 2), ((1, 2), (3, 4), None), ((4, 4), (1, 3), None)],
)
def test_connections_negotiate_versions_end_to_end(client_versions, server_versions, expected):
    client, server = make("client", versions=client_versions), make("server", versions=server_versions)
    outcome = pump(client, server)
    if expected is None:
        for side in ("client", "server"):
            err = outcome[side]
            assert isinstance(err, CodecError) and not isinstance(err, AuthError)
            for versions in (client_versions, server_versions):
                assert f"{versions[0]}-{versions[1]}" in str(err)
    else:
        assert client.version == server.version == expected


def test_version_downgrade_in_transit_breaks_the_proofs():
    client, server = make("client", versions=(1, 3)), make("server", versions=(1, 3))
    server.receive_data(client.initial_bytes())
    server.next_event()
    hello = bytearray(server.data_to_send())
    # rewrite the server's range to 1-2 and its choice to 2: consistent, so only the MACs can notice
    hello[hs.PREFIX_SIZE + 2 : hs.PREFIX_SIZE + 6] = (2).to_bytes(2, "big") + (2).to_bytes(2, "big")
    client.receive_data(bytes(hello))
    assert client.next_event() is None
    server.receive_data(client.data_to_send())
    with pytest.raises(AuthError):
        server.next_event()


@pytest.mark.parametrize("which", ["client hello", "server hello", "client proof", "server proof"])
def test_any_flipped_handshake_byte_prevents_the_handshake(which):
    index = ["client hello", "server hello", "client proof", "server proof"].index(which)
    original = handshake_transcript(b"A" * 32, b"B" * 32)
    for position in range(len(original[index])):
        client, server = make("client", nonce=b"A" * 32), make("server", nonce=b"B" * 32)
        receivers = [server, client, server, client]
        errors = []
        client.initial_bytes()
        for step, message in enumerate(original):
            if step == index:
                message = message[:position] + bytes([message[position] ^ 0x01]) + message[position + 1 :]
            receivers[step].receive_data(message)
            result = drain(receivers[step])
            if isinstance(result, Exception):
                errors.append(result)
                break
        assert errors, f"flipping byte {position} of the {which} went unnoticed"
        assert isinstance(errors[0], CodecError)
        assert not (client.established and server.established)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"HTTP/1.1 200 OK\r\n", "not speaking the peerstore protocol"),
        (hs.MAGIC + bytes([99]) + bytes(60), "unknown message type"),
        (hs.MAGIC + bytes([hs.CLIENT_HELLO]) + bytes([0, 1, 0, 1]) + bytes(32) + b"NOT-HEX-NODE-ID!", "node id"),
        (hs.MAGIC + bytes([hs.CLIENT_HELLO]) + bytes([0, 0, 0, 0]) + bytes(32) + b"0123456789abcdef", "version range"),
        (hs.MAGIC + bytes([hs.CLIENT_HELLO]) + bytes([0, 3, 0, 2]) + bytes(32) + b"0123456789abcdef", "version range"),
    ],
)
def test_malformed_client_hello_is_a_codec_error(data, match):
    server = make("server")
    server.receive_data(data)
    with pytest.raises(CodecError, match=match):
        server.next_event()


def test_eof_at_any_point_of_the_handshake_is_a_codec_error():
    client_hello = make("client").initial_bytes()
    for cut in range(len(client_hello)):
        server = make("server")
        if cut:
            server.receive_data(client_hello[:cut])
        server.receive_data(b"")
        with pytest.raises(CodecError, match="closed the connection"):
            server.next_event()


def test_a_dead_connection_keeps_raising_the_same_error():
    server = make("server")
    server.receive_data(b"garbage!")
    with pytest.raises(CodecError) as first:
        server.next_event()
    for call in (server.next_event, lambda: server.receive_data(b"x"), lambda: server.send_message({"t": "x"})):
        with pytest.raises(CodecError) as again:
            call()
        assert again.value is first.value
    assert server.data_to_send() == b""


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(role="peer"), "role"),
        (dict(cluster_key=b"short"), "cluster key"),
        (dict(node_id="ABCDEF0123456789"), "node id"),
        (dict(node_id="abc"), "node id"),
        (dict(nonce=b"x" * 31), "nonce"),
        (dict(versions=(0, 1)), "versions"),
        (dict(versions=(3, 2)), "versions"),
        (dict(versions=(1, 70000)), "versions"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = dict(role="client", cluster_key=KEY, node_id=CLIENT_ID, nonce=b"n" * 32) | kwargs
    with pytest.raises(ValueError, match=match):
        Connection(**args)


@settings(max_examples=150, deadline=None)
@given(stage=st.sampled_from(["server start", "client after hello", "server after hello"]), junk=st.binary(max_size=200))
def test_random_bytes_during_the_handshake_only_raise_codec_errors(stage, junk):
    client, server = make("client"), make("server")
    target = server
    hello = client.initial_bytes()
    if stage == "client after hello":
        target = client
    elif stage == "server after hello":
        server.receive_data(hello)
        server.next_event()
    target.receive_data(junk)
    try:
        while target.next_event() is not None:
            pass
    except CodecError:
        return
    assert target.buffered_bytes < hs.MAX_HANDSHAKE_MESSAGE
    assert not target.established
