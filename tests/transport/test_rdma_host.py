"""The RDMA transport's parts that need no device: bookkeeping, and clear refusals."""

from __future__ import annotations

import logging

import pytest

from netspark.server.server import ShuffleServer
from netspark.server.worker import read_partition
from netspark.transport.fetch import FetchFailed
from netspark.transport.rdma import RdmaUnavailable, require
from netspark.transport.rdma import device as rdma_device
from netspark.transport.rdma.channel import split_reads
from netspark.transport.rdma.errors import (
    WC_REM_ACCESS_ERR,
    WC_RETRY_EXC_ERR,
    WC_WR_FLUSH_ERR,
    Flushed,
    PeerUnreachable,
    RemoteAccessError,
    completion_error,
)
from netspark.transport.rdma.window import Credits, SendWindow, decode_imm, encode_imm
from tests.server.conftest import APP, SECRET, conf, link_to, request, running_server, write_map


def test_selective_signaling_every_nth_and_the_last() -> None:
    w = SendWindow(depth=8, signal_every=4)
    signals = [w.post()[1] for _ in range(3)] + [w.post()[1], w.post(last=True)[1]]
    assert signals == [False, False, False, True, True]
    assert w.outstanding == 5
    w.complete(4)
    assert w.outstanding == 1


def test_the_window_never_overflows_and_a_full_window_is_signaled() -> None:
    w = SendWindow(depth=4, signal_every=4)
    flags = [w.post()[1] for _ in range(4)]
    assert flags[-1] and w.room == 0
    with pytest.raises(RuntimeError, match="send queue full"):
        w.post()
    w.complete(4)
    assert w.room == 4


def test_reads_in_flight_are_capped_and_the_capping_read_is_signaled() -> None:
    w = SendWindow(depth=64, signal_every=16, read_cap=3)
    flags = [w.post(read=True)[1] for _ in range(3)]
    assert flags == [False, False, True] and w.read_room == 0
    w.complete(3)
    assert w.read_room == 3 and w.reads_outstanding == 0
    with pytest.raises(ValueError):
        w.complete(99)


def test_credits_keep_one_back_for_credit_updates() -> None:
    c = Credits(ring=4)
    returned = [c.spend() for _ in range(3)]
    assert returned == [0, 0, 0] and not c.may_send() and c.may_send_update()
    for _ in range(2):
        c.reposted()
    assert c.update_due()
    assert c.spend() == 2 and c.available == 0 and not c.may_send_update()
    c.received(4)
    assert c.may_send()
    with pytest.raises(ValueError, match="more credits than its ring"):
        c.received(1)


def test_immediate_data_round_trips() -> None:
    assert decode_imm(encode_imm(17, more=True)) == (17, True, False)
    assert decode_imm(encode_imm(0, credit_only=True)) == (0, False, True)
    with pytest.raises(ValueError):
        encode_imm(1 << 16)


def test_extents_split_at_the_maximum_message_size() -> None:
    ops = split_reads(1000, 7, 10, 5000, 9, max_msg=4)
    assert [(o.laddr, o.length, o.raddr) for o in ops] == [(1000, 4, 5000), (1004, 4, 5004),
                                                           (1008, 2, 5008)]
    assert {(o.lkey, o.rkey) for o in ops} == {(7, 9)}


def test_completion_errors_become_specific_exceptions() -> None:
    assert isinstance(completion_error("p", "READ", WC_REM_ACCESS_ERR), RemoteAccessError)
    assert isinstance(completion_error("p", "READ", WC_RETRY_EXC_ERR), PeerUnreachable)
    err = completion_error("peer:1", "READ", WC_WR_FLUSH_ERR)
    assert isinstance(err, Flushed) and isinstance(err, OSError)
    assert "peer:1" in str(err) and "flushed" in str(err)


def test_not_built_is_said_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rdma_device, "lib", None)
    with pytest.raises(RdmaUnavailable, match="built without RDMA support.*libibverbs-dev"):
        require()


def test_a_server_with_transport_rdma_and_no_device_fails_loudly() -> None:
    if rdma_device.lib is not None and _has_device():
        pytest.skip("this host has an RDMA device")
    with pytest.raises(RdmaUnavailable, match="transport=rdma: .*(no RDMA|built without)"):
        ShuffleServer(conf(transport="rdma"), secret=SECRET, app_id=APP)


def test_fetcher_routes_without_rdma(caplog: pytest.LogCaptureFixture) -> None:
    """auto: TCP, saying why (once); rdma: a FetchFailed that says why."""
    if rdma_device.lib is not None and _has_device():
        pytest.skip("this host has an RDMA device")
    caplog.set_level(logging.INFO, "netspark")
    with running_server() as a, running_server() as b:
        with link_to(b) as link:
            write_map(link, 1, 0, 1, [(k, k) for k in range(100)])
        with link_to(a, localShortCircuit="false") as reader:
            fetcher = reader.fetcher()
            for _ in range(2):
                got = list(read_partition(fetcher, [request(b.address, 1, 0, 0)]))
                assert got == [(k, k) for k in range(100)]
            routes = [r.getMessage() for r in caplog.records if "fetching from" in r.getMessage()]
            assert len(routes) == 1 and "over tcp" in routes[0] and "RDMA not possible" in routes[0]
            fetcher.close()
        with link_to(a, localShortCircuit="false", transport="rdma") as reader, \
                pytest.raises(FetchFailed, match="transport=rdma, but RDMA to .* not possible"):
            list(read_partition(reader.fetcher(), [request(b.address, 1, 0, 0)]))


def _has_device() -> bool:
    try:
        rdma_device.open_device()
    except RdmaUnavailable:
        return False
    return True
