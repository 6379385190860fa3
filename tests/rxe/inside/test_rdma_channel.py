"""Queue pairs and control messages over SEND/RECV, on the VM's rxe device."""

from __future__ import annotations

import errno
import threading

import pytest

from netspark.transport.protocol import FetchReq, MapAttempt, decode_message
from netspark.transport.rdma import RdmaError
from netspark.transport.rdma.channel import RECV_RING, SIGNAL_EVERY, SLOT
from netspark.transport.rdma.device import ffi, lib
from tests.rxe.inside.rdma_util import channel_pair, device

pytestmark = pytest.mark.rxe_guest


def test_connection_set_up() -> None:
    dev = device()
    assert dev.name == "rxe0"
    assert dev.gid[:12] == bytes(10) + b"\xff\xff"  # RoCE v2, IPv4-mapped by default
    assert dev.limits.max_rd_atomic >= 1 and dev.limits.max_msg >= 1 << 20
    with channel_pair() as (a, b):
        ea, eb = a.qp.endpoint(), b.qp.endpoint()
        assert ea.qpn != eb.qpn and ea.gid == eb.gid
        for ch in (a, b):
            attr = ffi.new("struct ibv_qp_attr *")
            init = ffi.new("struct ibv_qp_init_attr *")
            assert lib.ibv_query_qp(ch.qp.qp, attr, lib.IBV_QP_STATE, init) == 0
            assert attr.qp_state == lib.IBV_QPS_RTS


def test_control_messages_inline_and_selectively_signaled() -> None:
    with channel_pair() as (a, b):
        assert a.qp.max_inline > 0, "rxe supports inline sends"
        small = [FetchReq(i, 1, 2, (MapAttempt(i, 0),)).encode() for i in range(1, 41)]
        assert all(len(f) <= a.qp.max_inline for f in small)
        big = FetchReq(99, 1, 2, tuple(MapAttempt(i, 0) for i in range(3 * SLOT // 8))).encode()
        assert len(big) > 2 * SLOT  # goes as 3+ fragments, not inline
        got = []
        for start in range(0, len(small), 20):  # within the credits b's ring grants
            for frame in small[start:start + 20]:
                a.send_frame(frame, 10)
            got += [b.recv_frame(10) for _ in range(20)]
        a.send_frame(big, 10)
        got.append(b.recv_frame(10))
        assert got == [*small, big]
        assert decode_message(got[-1]).request_id == 99
        b.send_frame(small[0], 10)  # a round trip: a has polled its completions
        a.recv_frame(10)
        posted = a.window.posted
        assert posted >= 44
        # Only every SIGNAL_EVERY-th send asked for a completion.
        assert a.send_completions <= posted // SIGNAL_EVERY
        assert a.window.outstanding < 2 * SIGNAL_EVERY


def test_credits_hold_back_a_flood() -> None:
    """The sender stops when the receiver's ring is full; never an RNR, never a loss."""
    with channel_pair() as (a, b):
        frame = FetchReq(1, 1, 1, (MapAttempt(0, 0),)).encode()
        for _ in range(RECV_RING - 1):  # one credit is kept back for credit updates
            a.send_frame(frame, 10)
        assert not a.credits.may_send()
        with pytest.raises(RdmaError) as info:
            a.send_frame(frame, 0.5)  # b reads nothing: no credits come back
        assert info.value.errno == errno.ETIMEDOUT
        assert "credits" in str(info.value)


def test_a_flood_of_control_messages_all_arrive_in_order() -> None:
    count = 3000
    with channel_pair() as (a, b):
        received: list[int] = []
        failure: list[BaseException] = []

        def drain() -> None:
            try:
                for _ in range(count):
                    received.append(decode_message(b.recv_frame(60)).request_id)
            except BaseException as err:
                failure.append(err)

        reader = threading.Thread(target=drain)
        reader.start()
        for i in range(1, count + 1):
            a.send_frame(FetchReq(i, 1, 1, (MapAttempt(0, 0),)).encode(), 60)
        reader.join(120)
        assert not failure, failure
        assert received == list(range(1, count + 1))
        # b never sent a request: every credit came back in credit-only messages.
        assert b.credit_updates >= count // RECV_RING  # each returns 16..31 credits
        assert b.window.posted == b.credit_updates
        assert a.credits.available <= RECV_RING
