"""Frames after the handshake: round trips, payload paths, MACs, bounds, truncation, fuzz."""

from __future__ import annotations

import functools
import random
import tracemalloc

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerstore.errors import AuthError, CodecError
from peerstore.wire import (
    MAX_FRAME_PREFIX,
    MAX_HEADER,
    MAX_PAYLOAD,
    Connection,
    ConnectionClosed,
    HandshakeComplete,
    Message,
    PayloadChunk,
    PayloadEnd,
)
from peerstore.wire.frames import MAC_SIZE, decode_header, encode_header

KEY = bytes(range(32))


def connected_pair(seed: int = 0):
    """A client and a server that completed the handshake."""
    rng = random.Random(seed)
    client = Connection(role="client", cluster_key=KEY, node_id="c1c1c1c1c1c1c1c1", nonce=rng.randbytes(32))
    server = Connection(role="server", cluster_key=KEY, node_id="5e5e5e5e5e5e5e5e", nonce=rng.randbytes(32))
    server.receive_data(client.initial_bytes())
    assert server.next_event() is None
    client.receive_data(server.data_to_send())
    assert client.next_event() is None
    server.receive_data(client.data_to_send())
    assert isinstance(server.next_event(), HandshakeComplete)
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), HandshakeComplete)
    return client, server


def frame(conn, header, payload=b""):
    """Header frame plus raw payload, as the shell would write them."""
    digest = blake3.blake3(payload).digest() if payload else None
    return conn.send_message(header, len(payload), digest) + payload


def until_quiet(step, quiet, limit=100_000):
    """Yield ``step()`` until ``quiet(value)``; fail after ``limit`` values, so a codec that
    never goes quiet fails the test instead of looping forever and eating memory."""
    for _ in range(limit):
        value = step()
        if quiet(value):
            return
        yield value
    raise AssertionError(f"still producing after {limit} values; the last was {value!r}")


def events(conn):
    return until_quiet(conn.next_event, lambda event: event is None)


def buffered_views(conn):
    return until_quiet(conn.take_buffered_payload, lambda view: not len(view))


def take_random(conn, rng):
    return conn.take_buffered_payload(rng.randint(1, 4096))


def collect(conn):
    """Drain events; payload chunks are joined per message -> list of (header, payload|None)."""
    out, parts = [], None
    for event in events(conn):
        if isinstance(event, Message):
            out.append([event.header, None if not event.payload_len else b"", event.payload_hash])
            parts = []
        elif isinstance(event, PayloadChunk):
            assert isinstance(event.data, memoryview)
            parts.append(bytes(event.data))
        elif isinstance(event, PayloadEnd):
            out[-1][1] = b"".join(parts)
        else:
            out.append(event)
    return out


MESSAGES = [
    ({"t": "ping"}, b""),
    ({"t": "put_piece", "stripe": 3, "names": ["a", "b"], "meta": {"k": b"\x00\xff"}}, b"x" * 5000),
    ({"t": "ack", "ok": True, "why": None, "ratio": 0.5}, b""),
    ({"t": "blob"}, bytes(range(256)) * 7),
]


def test_frames_round_trip_in_both_directions():
    client, server = connected_pair()
    for sender, receiver in ((client, server), (server, client)):
        stream = b"".join(frame(sender, header, payload) for header, payload in MESSAGES)
        receiver.receive_data(stream)
        got = collect(receiver)
        assert [(h, p) for h, p, _ in got] == [(h, p or None) for h, p in MESSAGES]
        for (_, payload, digest) in got:
            assert digest == (blake3.blake3(payload).digest() if payload else None)
        assert receiver.buffered_bytes == 0


def receive_all(conn, stream, splits, external, rng):
    """Feed stream split at the given points; read payloads by chunks or by the external path."""
    messages, current = [], None
    cuts = sorted(set(splits)) + [len(stream)]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(stream[start:cut])
        start = cut
    pending = [p for p in pieces if p]
    # Bounded: at most a few events per received byte; a codec that never ends fails here.
    for _ in range(4 * len(stream) + 100):
        event = conn.next_event()
        if event is None:
            if not pending:
                return messages
            conn.receive_data(pending.pop(0))
            continue
        if isinstance(event, Message):
            current = bytearray()
            messages.append((event.header, current, event.payload_len))
            if event.payload_len and external:
                # drain what is buffered, then "read the socket" straight into our buffer
                take = functools.partial(take_random, conn, rng)
                for view in until_quiet(take, lambda view: not len(view)):
                    current += view
                while conn.payload_remaining:
                    data = pending.pop(0)
                    n = min(len(data), conn.payload_remaining)
                    current += data[:n]  # recv_into(our_buffer) in a real shell
                    conn.payload_received_externally(n)
                    if data[n:]:
                        pending.insert(0, data[n:])
        elif isinstance(event, PayloadChunk):
            current += event.data
        elif isinstance(event, PayloadEnd):
            assert len(current) == messages[-1][2]
    raise AssertionError(f"the receiver never went quiet on {len(stream)} bytes ({len(messages)} messages)")


@pytest.mark.parametrize("external", [False, True])
def test_frames_fed_byte_by_byte(external):
    client, server = connected_pair()
    stream = b"".join(frame(client, header, payload) for header, payload in MESSAGES)
    got = receive_all(server, stream, range(len(stream)), external, random.Random(1))
    assert [(h, bytes(p)) for h, p, _ in got] == MESSAGES


def test_a_trickled_maximum_header_costs_bounded_memory():
    client, server = connected_pair()
    header = {"t": "big", "pad": "x" * (MAX_HEADER - 100)}
    data = client.send_message(header)
    for i in range(len(data) - 1):
        server.receive_data(data[i : i + 1])
        assert server.next_event() is None
    assert server.buffered_bytes == len(data) - 1
    assert len(server._buffer._views) <= 2 + server.buffered_bytes // 1024
    server.receive_data(data[-1:])
    assert server.next_event() == Message(header)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    splits=st.lists(st.integers(0, 30000), max_size=20),
    external=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_frames_survive_any_split_with_either_payload_path(sizes, splits, external, seed):
    rng = random.Random(seed)
    client, server = connected_pair(seed)
    sent = [({"t": "m", "i": i}, rng.randbytes(size)) for i, size in enumerate(sizes)]
    stream = b"".join(frame(client, h, p) for h, p in sent)
    got = receive_all(server, stream, [s % (len(stream) + 1) for s in splits], external, rng)
    assert [(h, bytes(p)) for h, p, _ in got] == sent
    assert server.buffered_bytes == 0 and server.payload_remaining == 0


def test_external_payload_path_reads_the_rest_from_the_socket():
    client, server = connected_pair()
    payload = bytes(range(256)) * 400
    head = client.send_message({"t": "piece"}, len(payload), blake3.blake3(payload).digest())
    after = client.send_message({"t": "after"})
    server.receive_data(head + payload[:1000])  # one recv: the header and the payload's start
    message = server.next_event()
    assert message.payload_len == len(payload)
    buffer, filled = bytearray(len(payload)), 0
    for view in buffered_views(server):
        buffer[filled : filled + len(view)] = view
        filled += len(view)
    assert filled == 1000 and server.payload_remaining == len(payload) - 1000
    buffer[filled:] = payload[filled:]  # the shell's recv_into(buffer[filled:]) from the socket
    server.payload_received_externally(len(payload) - filled)
    server.receive_data(after)
    assert isinstance(server.next_event(), PayloadEnd)
    assert server.next_event() == Message({"t": "after"})
    assert bytes(buffer) == payload and server.buffered_bytes == 0


def test_external_path_misuse_is_refused_without_breaking_framing():
    client, server = connected_pair()
    server.receive_data(frame(client, {"t": "piece"}, b"p" * 100)[:-50])
    server.next_event()
    with pytest.raises(RuntimeError, match="still buffered"):
        server.payload_received_externally(10)
    for _ in buffered_views(server):
        pass
    with pytest.raises(RuntimeError, match="only 50 remain"):
        server.payload_received_externally(51)
    server.payload_received_externally(50)
    assert isinstance(server.next_event(), PayloadEnd)
    with pytest.raises(RuntimeError, match="outside a payload"):
        server.take_buffered_payload()


def test_payload_chunks_are_views_of_received_bytes_not_copies():
    client, server = connected_pair()
    payload = b"z" * 100_000
    server.receive_data(client.send_message({"t": "p"}, len(payload), blake3.blake3(payload).digest()))
    server.next_event()
    server.receive_data(payload)
    chunk = server.next_event()
    assert chunk.data.obj is payload


def test_send_side_never_touches_the_payload():
    client, _ = connected_pair()
    tracemalloc.start()
    try:
        framed = client.send_message({"t": "piece"}, MAX_PAYLOAD, bytes(32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(framed) == 4 + len(encode_header({"t": "piece"}, MAX_PAYLOAD, bytes(32))) + MAC_SIZE
    assert peak < 64 * 1024


@pytest.mark.parametrize("target", ["length", "header", "mac"])
def test_any_tampered_byte_is_refused(target):
    client, _ = connected_pair()
    good = client.send_message({"t": "put", "x": 1})
    header_len = len(good) - 4 - MAC_SIZE
    positions = {"length": range(4), "header": range(4, 4 + header_len), "mac": range(4 + header_len, len(good))}
    for position in positions[target]:
        _, server = connected_pair()
        bad = good[:position] + bytes([good[position] ^ 0x10]) + good[position + 1 :]
        server.receive_data(bad)
        server.receive_data(b"")
        with pytest.raises(CodecError) as caught:
            server.next_event()
        if target != "length":
            assert isinstance(caught.value, AuthError)


def test_reordered_replayed_and_reflected_frames_fail_the_mac():
    client, server = connected_pair()
    first, second = client.send_message({"t": "a"}), client.send_message({"t": "b"})
    cases = {"reordered": second + first, "replayed": first + first}
    for name, stream in cases.items():
        _, fresh_server = connected_pair()
        fresh_server.receive_data(stream)
        events = []
        with pytest.raises(AuthError):
            for _ in range(5):  # a broken MAC check lets None repeat forever: fail, do not hang
                events.append(fresh_server.next_event())
        assert len(events) == (0 if name == "reordered" else 1)
    # a client frame sent back to the client: same session, wrong direction label
    client2, _ = connected_pair()
    client2.receive_data(client2.send_message({"t": "echo"}))
    with pytest.raises(AuthError):
        client2.next_event()
    # a frame from another session (different nonces) does not verify either
    other_client, _ = connected_pair(seed=99)
    server.receive_data(other_client.send_message({"t": "a"}))
    with pytest.raises(AuthError):
        server.next_event()


def test_oversized_header_length_is_refused_from_four_bytes():
    _, server = connected_pair()
    server.receive_data((MAX_HEADER + 1).to_bytes(4, "big"))
    with pytest.raises(CodecError, match="outside 1..65536"):
        server.next_event()
    assert server.buffered_bytes == 0


def sealed(conn, raw_header: bytes) -> bytes:
    """A correctly MACed frame around arbitrary header bytes (what a buggy peer could send)."""
    return len(raw_header).to_bytes(4, "big") + raw_header + conn._send_mac.next_mac(raw_header)


@pytest.mark.parametrize(
    "header, match",
    [
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb({"x": 1}), '"t"'),
        (msgpack.packb({"t": 5}), '"t"'),
        (msgpack.packb({"t": "a", b"k": 1}), "keys must be strings"),
        (b"\x82\xa1t\xa1a\x01\x02", "not valid msgpack"),  # int key: refused by strict_map_key
        (msgpack.packb({"t": "a", "n": MAX_PAYLOAD + 1, "h": bytes(32)}), '"n"'),
        (msgpack.packb({"t": "a", "n": -1}), '"n"'),
        (msgpack.packb({"t": "a", "n": True, "h": bytes(32)}), '"n"'),
        (msgpack.packb({"t": "a", "n": 5}), '"h"'),
        (msgpack.packb({"t": "a", "n": 5, "h": bytes(31)}), '"h"'),
        (msgpack.packb({"t": "a", "h": bytes(32)}), "without a payload"),
        (msgpack.packb({"t": "a", "x": msgpack.ExtType(5, b"e")}), "not valid msgpack"),
        (b"\x81\xa1t\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8
        (msgpack.packb({"t": "a"}) + b"\x00", "not valid msgpack"),  # trailing bytes
        (b"\x91" * 3000, "not valid msgpack"),  # nested too deep
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # array claiming 4 billion items
    ],
)
def test_authentic_but_invalid_headers_are_codec_errors(header, match):
    client, server = connected_pair()
    server.receive_data(sealed(client, header))
    with pytest.raises(CodecError, match=match) as caught:
        server.next_event()
    assert not isinstance(caught.value, AuthError)


def test_truncation_at_eof_is_a_codec_error_at_every_cut():
    client, _ = connected_pair()
    whole = frame(client, {"t": "p"}, b"q" * 64)
    for cut in range(len(whole)):
        _, server = connected_pair()
        if cut:
            server.receive_data(whole[:cut])
        server.receive_data(b"")
        if cut == 0:
            assert server.next_event() == ConnectionClosed()
            assert server.next_event() == ConnectionClosed()
            continue
        with pytest.raises(CodecError, match="closed the connection"):
            for _ in range(5):  # one whole message at most, then the error
                server.next_event()


def test_clean_eof_after_a_payload_ends_it_then_closes():
    client, server = connected_pair()
    server.receive_data(frame(client, {"t": "p"}, b"abc"))
    server.receive_data(b"")
    kinds = [type(server.next_event()) for _ in range(4)]
    assert kinds == [Message, PayloadChunk, PayloadEnd, ConnectionClosed]
    with pytest.raises(RuntimeError, match="after EOF"):
        server.receive_data(b"more")


@pytest.mark.parametrize(
    "header, payload_len, payload_hash, match",
    [
        ({"x": 1}, 0, None, '"t"'),
        ("not a dict", 0, None, '"t"'),
        ({"t": "a", "n": 3}, 0, None, "reserved"),
        ({"t": "a", "h": b""}, 0, None, "reserved"),
        ({"t": "a"}, 10, None, "hash"),
        ({"t": "a"}, 10, b"short", "hash"),
        ({"t": "a"}, 0, bytes(32), "without a payload"),
        ({"t": "a"}, MAX_PAYLOAD + 1, bytes(32), "payload_len"),
        ({"t": "a"}, -1, None, "payload_len"),
        ({"t": "a", "obj": object()}, 0, None, "encodable"),
        ({"t": "a", "big": b"x" * MAX_HEADER}, 0, None, "limit"),
        ({"t": "a", "m": {1: 2}}, 0, None, "not valid msgpack"),
    ],
)
def test_send_message_refuses_what_the_peer_would_refuse(header, payload_len, payload_hash, match):
    client, server = connected_pair()
    with pytest.raises(ValueError, match=match):
        client.send_message(header, payload_len, payload_hash)
    # nothing was consumed: the next frame still verifies
    server.receive_data(client.send_message({"t": "ok"}))
    assert server.next_event() == Message({"t": "ok"})


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=1, max_size=300))
def test_random_header_bytes_behind_a_valid_mac_only_raise_codec_errors(raw):
    client, server = connected_pair()
    server.receive_data(sealed(client, raw))
    try:
        event = server.next_event()
    except CodecError as err:
        assert not isinstance(err, AuthError)
        return
    assert isinstance(event, Message) and isinstance(event.header["t"], str)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(header=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("n", "h", "t")), msgpack_values, max_size=6))
def test_any_encodable_header_round_trips(header):
    header = {"t": "m", **header}
    decoded, n, h = decode_header(encode_header(header))
    assert (n, h) == (0, None)
    assert msgpack.packb(decoded) == msgpack.packb(header)  # NaN-safe equality


@settings(max_examples=100, deadline=None)
@given(
    stage=st.sampled_from(["frames", "payload"]),
    chunks=st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=8),
)
def test_random_bytes_after_the_handshake_only_raise_codec_errors_and_stay_bounded(stage, chunks):
    client, server = connected_pair()
    if stage == "payload":
        server.receive_data(client.send_message({"t": "p"}, 10_000, bytes(32)))
        assert isinstance(server.next_event(), Message)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            for _ in events(server):
                pass
            assert server.buffered_bytes < MAX_FRAME_PREFIX
    except CodecError:
        pass


def test_a_frame_error_kills_the_connection():
    client, server = connected_pair()
    server.receive_data(b"\x00\x00\x00\x05hello" + bytes(16))
    with pytest.raises(AuthError) as first:
        server.next_event()
    assert not server.established
    with pytest.raises(AuthError) as again:
        server.next_event()
    assert again.value is first.value
    with pytest.raises(AuthError):
        server.send_message({"t": "x"})
