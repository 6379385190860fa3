"""Connections that outlive a task: kept per process, checked before reuse, and the
one-round-trip FETCH_READ_REQ over TCP."""

import logging
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from netspark.server.worker import read_partition
from netspark.transport.auth import client_handshake
from netspark.transport.fetch import FetchFailed, FetchRequest
from netspark.transport.peers import still_open
from netspark.transport.protocol import (
    Advertise,
    Data,
    ErrorCode,
    ErrorMsg,
    FetchReadReq,
    FetchReq,
    MapAttempt,
    recv_exact_into,
    recv_message,
    send_message,
)
from tests.server.conftest import (
    APP,
    SECRET,
    link_to,
    link_to_name,
    running_server,
    write_map,
)
from tests.server.test_server import PARTS, expected_partition, records_of


def peers_connected(server) -> int:
    """How many network connections the server has open (its workers' are local)."""
    return sum(1 for conn in list(server._connections) if conn.family != socket.AF_UNIX)


def sized(server, shuffle: int, reduce_id: int, maps: list[int], size: int) -> FetchRequest:
    return FetchRequest(server.address, shuffle, reduce_id,
                        tuple(MapAttempt(m, 0) for m in maps), size)


def test_tasks_of_one_process_share_one_connection_per_peer():
    with running_server() as a, running_server() as b:
        with link_to(b) as writer:
            for m in range(3):
                write_map(writer, 5, m, PARTS, records_of(m))
        with link_to(a, localShortCircuit="false") as reader:
            for reduce_id in range(PARTS):  # one fetcher per task, as in a reused worker
                fetcher = reader.fetcher()
                got = list(read_partition(fetcher, [sized(b, 5, reduce_id, [0, 1], 1),
                                                    sized(b, 5, reduce_id, [2], 0)]))
                assert got == expected_partition([0, 1, 2], reduce_id)
                fetcher.close()
            assert peers_connected(b) == 1
            assert b.peers_accepted == 1  # connected and authenticated once for all tasks
        time.sleep(0.2)
        assert peers_connected(b) == 0  # the process's BYE closed it


def test_an_idle_connection_outlives_the_network_timeout():
    with running_server(**{"network.timeout": "1s"}) as b:
        with link_to(b) as writer:
            write_map(writer, 6, 0, PARTS, records_of(0))
        with link_to(b, localShortCircuit="false", **{"network.timeout": "1s"}) as reader:
            for _ in range(2):
                fetcher = reader.fetcher()
                assert list(read_partition(fetcher, [sized(b, 6, 1, [0], 0)])) == \
                    expected_partition([0], 1)
                fetcher.close()
                time.sleep(1.5)  # longer than the server's timeout: still served
            assert peers_connected(b) == 1


def test_a_connection_its_server_closed_is_not_reused(caplog: pytest.LogCaptureFixture):
    with running_server() as b:
        with link_to(b) as writer:
            write_map(writer, 7, 0, PARTS, records_of(0))
        with link_to(b, localShortCircuit="false") as reader:
            fetcher = reader.fetcher()
            list(read_partition(fetcher, [sized(b, 7, 0, [0], 0)]))
            fetcher.close()
            [idle] = reader.peers._idle[b.address]
            assert still_open(idle.sock)
            b.stop()  # its connections are shut down, the port closed
            time.sleep(0.1)
            assert not still_open(idle.sock)
            caplog.set_level(logging.WARNING)
            with pytest.raises(FetchFailed) as failed:
                list(read_partition(reader.fetcher(), [sized(b, 7, 0, [0], 0)]))
            assert failed.value.unreachable == b.address  # refused: not a protocol error
            assert "Connection refused" in str(failed.value)
            assert not reader.peers._idle[b.address]


def test_still_open_sees_unasked_bytes_as_broken():
    left, right = socket.socketpair()
    with left, right:
        assert still_open(left)
        right.sendall(b"x")
        time.sleep(0.05)
        assert not still_open(left)


def authenticated(server) -> socket.socket:
    sock = socket.create_connection((server.address.host, server.address.port), timeout=5)
    client_handshake(sock, SECRET, APP, timeout=5)
    return sock


def test_fetch_read_req_answers_extents_and_data_in_one_go():
    with running_server() as b:
        with link_to(b) as writer:
            write_map(writer, 8, 0, PARTS, records_of(0))
            write_map(writer, 8, 1, PARTS, records_of(1))
        committed = [e for m in (0, 1) for e in b.registry.partition(8, m, 0, 2).extents]
        sock = authenticated(b)
        with sock:
            send_message(sock, FetchReadReq(3, 8, 2, (MapAttempt(0, 0), MapAttempt(1, 0))))
            advertise = recv_message(sock)
            assert isinstance(advertise, Advertise) and advertise.request_id == 3
            assert [(e.block_id, e.offset, e.length) for e in advertise.extents] == \
                [(e.block_id, e.offset, e.length) for e in committed]
            for index, ext in enumerate(advertise.extents):
                header = recv_message(sock)
                assert header == Data(3, index, ext.length)
                body = bytearray(ext.length)
                recv_exact_into(sock, body)
                assert bytes(body) == bytes(b.view(ext.block_id)[ext.offset:
                                                                   ext.offset + ext.length])
            # a map that was never committed: refused, and the connection still serves
            send_message(sock, FetchReadReq(4, 8, 2, (MapAttempt(9, 0),)))
            refusal = recv_message(sock)
            assert isinstance(refusal, ErrorMsg) and refusal.code == ErrorCode.NOT_COMMITTED
            send_message(sock, FetchReq(5, 8, 2, (MapAttempt(0, 0),)))
            assert isinstance(recv_message(sock), Advertise)


@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1 << 40] * 4])
def test_requests_to_one_peer_in_a_row_come_back_in_order(sizes, caplog):
    """Small requests ask for their data at once, the others in two steps; a request is
    sent ahead of the previous one's answer only where that cannot cross replies."""
    with running_server() as a, running_server() as b:
        with link_to(b) as writer:
            for m in range(4):
                write_map(writer, 9, m, PARTS, records_of(m))
        with link_to(a, localShortCircuit="false") as reader:
            fetcher = reader.fetcher()
            reqs = [sized(b, 9, 1, [m], size) for m, size in enumerate(sizes)]
            caplog.set_level(logging.WARNING)
            assert list(read_partition(fetcher, reqs)) == expected_partition(range(4), 1)
            assert not caplog.records  # no crossed replies, no retries
            fetcher.close()


def wait_until_stopped(pid: int) -> None:
    deadline = time.monotonic() + 5
    stat = Path(f"/proc/{pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


@pytest.mark.parametrize("reused", [True, False])
def test_a_silent_peer_fails_a_fetch_within_the_connect_timeout(server_process, reused):
    """A peer that stops answering (its host cut off) sends no FIN, and its kernel still
    accepts connections: an idle connection to it looks fine, a new one connects. So a
    reused connection's first reply, and a new one's handshake, are held to the connect
    timeout, not to network.timeout."""
    peer = server_process()
    with link_to_name(peer.local_name) as writer:
        write_map(writer, 10, 0, PARTS, records_of(0))
    settings = {"localShortCircuit": "false", "network.timeout": "30s",
                "network.connectTimeout": "1s", "network.maxRetries": "0"}
    with running_server() as a, link_to(a, **settings) as reader:
        if reused:
            fetcher = reader.fetcher()
            list(read_partition(fetcher, [sized(peer, 10, 0, [0], 0)]))
            fetcher.close()
            assert reader.peers._idle[peer.address]
        os.kill(peer.pid, signal.SIGSTOP)
        try:
            wait_until_stopped(peer.pid)
            start = time.monotonic()
            with pytest.raises(FetchFailed) as failed:
                list(read_partition(reader.fetcher(), [sized(peer, 10, 0, [0], 0)]))
            assert time.monotonic() - start < 5
            assert failed.value.unreachable == peer.address
        finally:
            os.kill(peer.pid, signal.SIGCONT)
