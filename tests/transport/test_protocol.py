"""Wire protocol and handshake tests over real socketpairs and loopback TCP."""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspark.transport.auth import AuthError, client_handshake, server_handshake
from netspark.transport.protocol import (
    HEADER,
    MAGIC,
    MAX_CONTROL_PAYLOAD,
    MAX_ENTRIES,
    MESSAGE_CLASSES,
    VERSION,
    Ack,
    Advertise,
    Auth,
    AuthOk,
    Bye,
    Challenge,
    ConnectionClosed,
    Data,
    ErrorCode,
    ErrorMsg,
    Extent,
    ExtentRef,
    FetchReadReq,
    FetchReq,
    Hello,
    MapAttempt,
    MsgType,
    ProtocolError,
    RdmaEndpoint,
    ReadReq,
    decode_frame,
    decode_message,
    parse_header,
    recv_exact_into,
    recv_message,
    send_message,
)

SECRET = b"s" * 32
EP = RdmaEndpoint(qpn=0x123456, psn=0xABCDEF, gid=bytes(range(16)), mtu=4096, lid=7)
EP_RECORD = struct.pack("<II16sHH", 1, 2, bytes(16), 1024, 0)
SAMPLES = [
    Hello("app-20240101-0001", b"n" * 32),
    Hello("ünïcode-app", b"\x00" * 32, want_rdma=True, rdma=EP),
    Challenge(b"a" * 32, b"b" * 32),
    Auth(b"c" * 32),
    AuthOk(),
    AuthOk(EP),
    FetchReq(2**64 - 1, 3, 4, (MapAttempt(0, 0), MapAttempt(2**32 - 1, 5))),
    FetchReadReq(7, 3, 4, (MapAttempt(1, 0),)),
    Advertise(1),
    Advertise(1, (Extent(1, 2, 3, 4, 0xDEADBEEF, 2**64 - 1, 99), Extent(5, 6, 7, 8, 9))),
    ReadReq(7, 8, (ExtentRef(1, 2, 3, 4),)),
    Data(1, 2, 2**32 - 1),
    Ack(1, (0, 1, 2**32 - 1)),
    ErrorMsg(5, ErrorCode.NOT_COMMITTED, "map 3 attempt 1 is not committed"),
    ErrorMsg(0, ErrorCode.INTERNAL),
    Bye(),
]


def frame(msg_type: int, payload: bytes, *, magic=MAGIC, version=VERSION, flags=0, length=None):
    n = len(payload) if length is None else length
    return HEADER.pack(magic, version, msg_type, flags, n) + payload


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


@contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected (client, server) pair over loopback TCP."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    with client, server:
        yield client, server


def in_thread(fn: Callable[[], Any]) -> Future:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def outcome(future: Future) -> Any:
    """The thread's result, or the exception it raised."""
    exc = future.exception(timeout=5)
    return exc if exc is not None else future.result()


# ----------------------------------------------------------------- round trips


def test_every_message_type_has_a_sample() -> None:
    assert {type(m).TYPE for m in SAMPLES} == set(MsgType)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg, pair) -> None:
    encoded = msg.encode()
    msg_type, length = parse_header(encoded)
    assert msg_type == type(msg).TYPE and length == len(encoded) - HEADER.size
    assert decode_message(encoded) == msg
    assert decode_frame(msg_type, memoryview(encoded)[HEADER.size :]) == msg
    send_message(pair[0], msg)
    assert recv_message(pair[1]) == msg


def test_wire_field_order_matches_dataclass_fields() -> None:
    for cls in MESSAGE_CLASSES.values():
        assert [n for n, _ in cls.WIRE] == [f.name for f in dataclasses.fields(cls)]


def test_known_encodings() -> None:
    assert Bye().encode() == b"NSPK\x02\x0b\x00\x00\x00\x00\x00\x00"
    assert Data(1, 2, 3).encode()[HEADER.size :] == struct.pack("<QII", 1, 2, 3)
    assert Ack(9, (4,)).encode()[HEADER.size :] == struct.pack("<QII", 9, 1, 4)


def test_stream_of_frames_with_raw_data(pair) -> None:
    a, b = pair
    raw = bytes(range(256)) * 10
    send_message(a, Data(3, 0, len(raw)))
    a.sendall(raw)
    send_message(a, Bye())
    hdr = recv_message(b)
    assert hdr == Data(3, 0, len(raw))
    block = bytearray(4096)
    recv_exact_into(b, memoryview(block)[: hdr.length])
    assert block[: len(raw)] == raw
    assert recv_message(b) == Bye()


def test_large_advertise_over_socket(pair) -> None:
    n = (MAX_CONTROL_PAYLOAD - 12) // 32
    msg = Advertise(1, tuple(Extent(i, i, 0, 4096, i, 0, 0) for i in range(n)))
    sender = in_thread(lambda: send_message(pair[0], msg))
    assert recv_message(pair[1]) == msg
    assert outcome(sender) is None


# ------------------------------------------------------ hypothesis: properties

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
b32 = st.binary(min_size=32, max_size=32)
endpoints = st.builds(
    RdmaEndpoint,
    st.integers(0, 2**24 - 1),
    st.integers(0, 2**24 - 1),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([256, 512, 1024, 2048, 4096]),
    st.integers(0, 2**16 - 1),
)
app_ids = st.text(min_size=1, max_size=16)
messages = st.one_of(
    st.builds(Hello, app_ids, b32, st.just(True), st.none() | endpoints),
    st.builds(Hello, app_ids, b32, st.just(False), st.none()),
    st.builds(Challenge, b32, b32),
    st.builds(Auth, b32),
    st.builds(AuthOk, st.none() | endpoints),
    st.builds(FetchReq, u64, u32, u32, st.lists(st.tuples(u32, u32), min_size=1, max_size=5)),
    st.builds(FetchReadReq, u64, u32, u32,
              st.lists(st.tuples(u32, u32), min_size=1, max_size=5)),
    st.builds(Advertise, u64, st.lists(st.builds(Extent, u32, u32, u32, u32, u32, u64, u32))),
    st.builds(ReadReq, u64, u32, st.lists(st.builds(ExtentRef, u32, u32, u32, u32), min_size=1)),
    st.builds(Data, u64, u32, u32),
    st.builds(Ack, u64, st.lists(u32, min_size=1)),
    st.builds(ErrorMsg, u64, st.sampled_from(ErrorCode), st.text(max_size=50)),
    st.just(Bye()),
)
fast = settings(
    max_examples=150,
    deadline=None,
    database=None,  # keep no example database in the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


def decodes_or_protocol_error(fn: Callable[[], Any]) -> None:
    with suppress(ProtocolError):  # any other exception fails the test
        fn()


@fast
@given(messages)
def test_property_round_trip(msg) -> None:
    assert decode_message(msg.encode()) == msg


@fast
@given(st.integers(-5, 300), st.binary(max_size=120))
def test_fuzz_decode_frame_arbitrary_bytes(msg_type, payload) -> None:
    decodes_or_protocol_error(lambda: decode_frame(msg_type, payload))


@fast
@given(st.binary(max_size=120))
def test_fuzz_decode_message_arbitrary_bytes(data) -> None:
    decodes_or_protocol_error(lambda: decode_message(data))


@fast
@given(messages, st.data())
def test_fuzz_mutated_valid_payloads(msg, data) -> None:
    payload = bytearray(msg.encode()[HEADER.size :])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if action == "flip" and payload:
            i = data.draw(st.integers(0, len(payload) - 1))
            payload[i] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del payload[data.draw(st.integers(0, len(payload))) :]
        else:
            payload += data.draw(st.binary(min_size=1, max_size=8))
    msg_type = data.draw(st.sampled_from([type(msg).TYPE, *MsgType]))
    decodes_or_protocol_error(lambda: decode_frame(msg_type, bytes(payload)))


# ------------------------------------------------------------- bad frames


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (frame(11, b"", magic=b"HTTP"), "bad magic"),
        (frame(11, b"", version=1), "unsupported protocol version 1"),
        (frame(11, b"", flags=1), "flags must be 0"),
        (frame(0, b""), "unknown message type 0"),
        (frame(200, b""), "unknown message type 200"),
        (frame(11, b"", length=MAX_CONTROL_PAYLOAD + 1), "exceeds the limit"),
        (frame(2, b"x" * 63), "truncated CHALLENGE payload"),
        (frame(2, b"x" * 65), "1 unexpected trailing bytes"),
        (frame(11, b"x"), "BYE payload has 1 unexpected trailing bytes"),
        (frame(8, b"x" * 15, length=20), "truncated DATA frame"),
        (frame(8, b"x" * 15), "truncated DATA payload"),
        (frame(11, b"") + b"x", "oversized BYE frame"),
        (b"NSPK\x02", "truncated frame header"),
    ],
)
def test_bad_frames_are_rejected(raw, reason) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        decode_message(raw)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def _fetch_payload(count: int, entries: int) -> bytes:
    return struct.pack("<QIII", 1, 2, 3, count) + b"\x00" * 8 * entries


@pytest.mark.parametrize(
    ("msg_type", "payload", "reason"),
    [
        (MsgType.FETCH_REQ, _fetch_payload(3, 2), "truncated FETCH_REQ payload"),
        (MsgType.FETCH_REQ, _fetch_payload(1, 2), "8 unexpected trailing bytes"),
        (MsgType.FETCH_REQ, _fetch_payload(0, 0), "count 0 out of range"),
        (MsgType.FETCH_REQ, _fetch_payload(MAX_ENTRIES + 1, 0), "out of range"),
        (MsgType.ADVERTISE, struct.pack("<QI", 1, 2**32 - 1), "out of range"),
        (MsgType.ACK, struct.pack("<QI", 1, 0), "count 0 out of range"),
        (MsgType.HELLO, b"\x03\x00\xff\xfe\xfd" + bytes(34), "not valid utf-8"),
        (MsgType.HELLO, b"\x41\x00" + b"a" * 65 + bytes(34), "the limit is 64"),
        (MsgType.HELLO, b"\x00\x00" + bytes(34), "app_id is 0 bytes"),
        (MsgType.HELLO, b"\x01\x00a" + bytes(32) + b"\x02\x00", "want_rdma must be 0 or 1"),
        (MsgType.HELLO, b"\x01\x00a" + bytes(33) + b"\x01" + EP_RECORD, "want_rdma is False"),
        (MsgType.AUTH_OK, b"\x07", "presence flag must be 0 or 1"),
        (MsgType.AUTH_OK, b"\x01" + bytes(28), "mtu must be one of"),
        (MsgType.AUTH_OK, b"\x01" + b"\xff" * 4 + bytes(24), "qpn must be an unsigned 24-bit"),
        (MsgType.ERROR, struct.pack("<QHH", 1, 99, 0), "unknown code 99"),
        (MsgType.ERROR, struct.pack("<QHH", 1, 1, 1025) + b"x" * 1025, "the limit is 1024"),
    ],
)
def test_bad_payloads_are_rejected(msg_type, payload, reason) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_frame(msg_type, payload)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Hello("a" * 65, b"n" * 32),
        lambda: Hello("", b"n" * 32),
        lambda: Hello("app", b"n" * 31),
        lambda: Hello("app", b"n" * 32, want_rdma=1),
        lambda: Hello("app", b"n" * 32, rdma=EP),
        lambda: RdmaEndpoint(1, 1, b"g" * 16, 1500),
        lambda: RdmaEndpoint(1 << 24, 1, b"g" * 16, 1024),
        lambda: RdmaEndpoint(1, 1, b"g" * 15, 1024),
        lambda: FetchReq(-1, 0, 0, [(1, 1)]),
        lambda: FetchReq(1, 0, 0, []),
        lambda: FetchReq(1, 0, 0, [(1, 1)] * (MAX_ENTRIES + 1)),
        lambda: FetchReq(1, 0, 0, [(1, 2**32)]).encode(),
        lambda: Advertise(1, [Extent(1, 2, 3, 4, 5, 2**64, 0)]).encode(),
        lambda: ReadReq(1, 2, [(1, 2, 3)]).encode(),
        lambda: Ack(1, [-1]).encode(),
        lambda: Ack(1, 5),
        lambda: Data(True, 0, 0),
        lambda: ErrorMsg(1, 42),
        lambda: ErrorMsg(1, ErrorCode.BUSY, "x" * 1025),
    ],
)
def test_invalid_fields_are_refused_when_building(make) -> None:
    with pytest.raises(ProtocolError):
        make()


def test_error_make_truncates_on_a_utf8_boundary() -> None:
    msg = ErrorMsg.make(1, ErrorCode.INTERNAL, "é" * 600)
    assert msg.message == "é" * 512
    assert decode_message(msg.encode()) == msg


def test_send_refuses_a_payload_the_peer_would_reject(pair) -> None:
    msg = Advertise(1, [Extent(1, 1, 1, 1, 1)] * 40_000)
    with pytest.raises(ProtocolError, match="split it"):
        send_message(pair[0], msg)


# --------------------------------------------------------- socket behaviour


def test_clean_eof_is_connection_closed(pair) -> None:
    pair[0].close()
    with pytest.raises(ConnectionClosed):
        recv_message(pair[1])


def test_eof_inside_header_is_truncated(pair) -> None:
    pair[0].sendall(Bye().encode()[:5])
    pair[0].close()
    with pytest.raises(ProtocolError, match="truncated frame header"):
        recv_message(pair[1])


def test_eof_inside_payload_is_truncated(pair) -> None:
    pair[0].sendall(Challenge(b"a" * 32, b"b" * 32).encode()[:40])
    pair[0].close()
    with pytest.raises(ProtocolError, match="truncated CHALLENGE payload.*28 of 64"):
        recv_message(pair[1])


def test_oversized_header_is_refused_before_reading_the_payload(pair) -> None:
    pair[0].sendall(frame(MsgType.ADVERTISE, b"", length=2**32 - 1))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        recv_message(pair[1])
    pair[0].sendall(Auth(b"c" * 32).encode())
    with pytest.raises(ProtocolError, match="exceeds the limit of 16"):
        recv_message(pair[1], max_payload=16)


def test_recv_exact_into_and_truncation(pair) -> None:
    a, b = pair
    a.sendall(b"0123456789")
    buf = bytearray(4)
    recv_exact_into(b, buf)
    assert buf == b"0123"
    a.close()
    with pytest.raises(ProtocolError, match="truncated stream.*6 of 8"):
        recv_exact_into(b, bytearray(8))


def test_frames_arriving_byte_by_byte(pair) -> None:
    msg = Advertise(2, [Extent(1, 2, 3, 4, 5)])
    data = msg.encode()

    def dribble() -> None:
        for i in range(len(data)):
            pair[0].sendall(data[i : i + 1])

    sender = in_thread(dribble)
    assert recv_message(pair[1]) == msg
    assert outcome(sender) is None


# ---------------------------------------------------------------- handshake


def run_handshake(server_kw: dict, client_kw: dict) -> tuple[Any, Any]:
    with tcp_pair() as (c, s):
        server = in_thread(lambda: server_handshake(s, **server_kw))
        try:
            client_result = client_handshake(c, **client_kw)
        except Exception as exc:  # returned for the assertions
            client_result = exc
        return outcome(server), client_result


def test_handshake_succeeds_over_loopback_tcp() -> None:
    server, client = run_handshake({"secret": SECRET}, {"secret": SECRET, "app_id": "app-1"})
    assert isinstance(server, Hello) and server.app_id == "app-1" and not server.want_rdma
    assert client == AuthOk(None)


def test_handshake_exchanges_rdma_endpoints() -> None:
    server_ep = dataclasses.replace(EP, qpn=99)
    seen: list[Hello] = []

    def rdma_for(hello: Hello) -> RdmaEndpoint:
        seen.append(hello)
        return server_ep

    server, client = run_handshake(
        {"secret": SECRET, "expected_app_id": "app-2", "rdma_for": rdma_for},
        {"secret": SECRET, "app_id": "app-2", "rdma": EP},
    )
    assert server.rdma == EP and seen == [server]
    assert client.rdma == server_ep


def test_handshake_restores_the_socket_timeout() -> None:
    with tcp_pair() as (c, s):
        c.settimeout(None)
        s.settimeout(7.0)
        server = in_thread(lambda: server_handshake(s, SECRET, timeout=2))
        client_handshake(c, SECRET, "app", timeout=2)
        assert outcome(server).app_id == "app"
        assert c.gettimeout() is None and s.gettimeout() == 7.0


def test_wrong_secret_fails_on_both_sides() -> None:
    server, client = run_handshake({"secret": SECRET}, {"secret": b"x" * 32, "app_id": "app"})
    assert isinstance(server, AuthError) and "refused authentication" in str(server)
    assert isinstance(client, AuthError) and "could not prove" in str(client)


def test_unexpected_app_id_fails_on_both_sides() -> None:
    server, client = run_handshake(
        {"secret": SECRET, "expected_app_id": "app-a"}, {"secret": SECRET, "app_id": "app-b"}
    )
    assert isinstance(server, AuthError) and "'app-b'" in str(server)
    assert isinstance(client, AuthError) and "unexpected application id" in str(client)


def relay_and_record(client_side: socket.socket, server_side: socket.socket) -> list:
    """Forward the 4 handshake frames between two sockets, recording all of them."""
    seen = []
    for src, dst in [(client_side, server_side), (server_side, client_side)] * 2:
        msg = recv_message(src)
        seen.append(msg)
        send_message(dst, msg)
    return seen


def test_replayed_client_proof_fails_in_a_new_session() -> None:
    # Session 1: an eavesdropper relays a genuine handshake and records it.
    with tcp_pair() as (c, mitm_in), tcp_pair() as (mitm_out, s):
        server = in_thread(lambda: server_handshake(s, SECRET))
        relay = in_thread(lambda: relay_and_record(mitm_in, mitm_out))
        client_handshake(c, SECRET, "app")
        hello, challenge, auth, ok = outcome(relay)
        assert isinstance(outcome(server), Hello) and isinstance(ok, AuthOk)
    # Session 2: it replays the captured HELLO and AUTH without knowing the secret.
    with tcp_pair() as (attacker, s):
        server = in_thread(lambda: server_handshake(s, SECRET))
        send_message(attacker, hello)
        fresh = recv_message(attacker)
        assert isinstance(fresh, Challenge) and fresh.server_nonce != challenge.server_nonce
        send_message(attacker, auth)
        refusal = recv_message(attacker)
        assert isinstance(outcome(server), AuthError)
    assert isinstance(refusal, ErrorMsg) and refusal.code == ErrorCode.AUTH_FAILED


def test_reflected_server_proof_fails() -> None:
    with tcp_pair() as (attacker, s):
        server = in_thread(lambda: server_handshake(s, SECRET))
        send_message(attacker, Hello("app", b"r" * 32))
        challenge = recv_message(attacker)
        send_message(attacker, Auth(challenge.server_proof))
        refusal = recv_message(attacker)
        assert isinstance(outcome(server), AuthError)
    assert refusal.code == ErrorCode.AUTH_FAILED


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_short_secret_is_refused(secret, pair) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        client_handshake(pair[0], secret, "app")
    with pytest.raises(ValueError, match="at least 16"):
        server_handshake(pair[1], secret)


def test_silent_client_times_out(pair) -> None:
    with pytest.raises(TimeoutError):
        server_handshake(pair[1], SECRET, timeout=0.1)


def test_garbage_instead_of_hello(pair) -> None:
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="bad magic"):
        server_handshake(b, SECRET)
    refusal = recv_message(a)
    assert refusal.code == ErrorCode.MALFORMED


def test_wrong_message_instead_of_hello(pair) -> None:
    send_message(pair[0], Bye())
    with pytest.raises(ProtocolError, match="expected Hello"):
        server_handshake(pair[1], SECRET)
    assert recv_message(pair[0]).code == ErrorCode.MALFORMED
