"""RDMA between two hosts: a server on one, a reader on the other.

Until these, both ends of every RDMA test shared rxe0, which hides addressing and GID
mistakes (any GID of the one device reaches the other end). Here the server runs on
hostA and advertises its address (10.214.0.1, rxeA on vethA), the reader runs on hostB
(10.214.0.2, rxeB on vethB), with rxe0 (on the root's dummy0) still present as a third
device that neither may pick: each side must open the device and GID of its own
address, and the bytes must cross the veth wire. Each host is a network namespace of
its own in the VM's second boot, whose kernel allows it (tests/rxe/inside/hosts.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from netspark.buffer_manager import Arena, BlockPool
from netspark.server.server import ShuffleServer
from netspark.server.worker import read_partition
from netspark.transport.fetch import Fetcher, FetchFailed
from tests.rxe.inside import hosts
from tests.rxe.inside.hosts import Host
from tests.server.conftest import APP, SECRET, conf, link_to, request, write_map

pytestmark = pytest.mark.rxe_guest
PARTS = 3
MAPS = (0, 1, 2)
RDMA = {"transport": "rdma", "localShortCircuit": "false"}
AUTO = {"transport": "auto", "localShortCircuit": "false"}
RXE0_SENT = Path("/sys/class/infiniband/rxe0/ports/1/hw_counters/sent_pkts")


@pytest.fixture(scope="module", autouse=True)
def two_hosts() -> tuple[Host, Host]:
    return hosts.bring_up()


def records_of(map_id: int, count: int = 4000) -> list:
    return [(k, (map_id, k, "w" * (k % 11))) for k in range(map_id, map_id + count)]


def expected(reduce_id: int) -> list:
    return [r for m in MAPS for r in records_of(m) if r[0] % PARTS == reduce_id]


@contextlib.contextmanager
def server_on(host: Host, shuffle: int, **settings: str) -> Iterator[tuple[ShuffleServer, int]]:
    """A server listening on and advertising `host`'s address, holding MAPS of
    `shuffle`; yields it and the bytes committed."""
    with host.inside():  # its threads stay there: it serves from `host`
        server = ShuffleServer(conf(**settings), secret=SECRET, app_id=APP,
                               host=host.address).start()
    try:
        committed = 0
        with host.inside(), link_to(server, **settings) as link:
            for m in MAPS:
                committed += sum(write_map(link, shuffle, m, PARTS, records_of(m)).values())
        yield server, committed
    finally:
        server.stop()


@contextlib.contextmanager
def fetcher_on(host: Host, **settings: str) -> Iterator[Fetcher]:
    """A reader on `host`, whose own server would advertise its address."""
    with host.inside(), Arena.create(conf(**settings)) as arena:
        fetcher = Fetcher(BlockPool(arena), conf(**settings), secret=SECRET, app_id=APP,
                          local_address=host.address)
        try:
            yield fetcher
        finally:
            fetcher.close()


def read_all(fetcher: Fetcher, server: ShuffleServer, shuffle: int) -> dict[int, list]:
    return {r: list(read_partition(fetcher, [request(server.address, shuffle, r, *MAPS)]))
            for r in range(PARTS)}


def device_of(dev) -> tuple[str, bytes, int]:
    return dev.name, dev.gid, dev.gid_index


@pytest.mark.parametrize("serving, reading", [(hosts.A, hosts.B), (hosts.B, hosts.A)],
                         ids=["A-serves-B", "B-serves-A"])
def test_a_fetch_between_two_devices_uses_each_sides_own_device_and_gid(
        serving: Host, reading: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netspark")
    with server_on(serving, 21, **RDMA) as (server, committed):
        assert server.address.host == serving.address
        assert device_of(server.rdma.device) == (serving.device, serving.gid,
                                                 serving.gid_index())
        wire, sent, rxe0 = serving.tx_bytes(), serving.sent_packets(), int(RXE0_SENT.read_text())
        with fetcher_on(reading, **RDMA) as fetcher:
            got = read_all(fetcher, server, 21)
            assert fetcher.route_of(server.address) == "rdma"
            assert device_of(fetcher.peers.rdma[0]) == (reading.device, reading.gid,
                                                   reading.gid_index())
        for reduce_id in range(PARTS):
            assert got[reduce_id] == expected(reduce_id)
        # The data went out of the serving device onto its veth, not through a loopback.
        assert serving.sent_packets() - sent >= committed // 4096
        assert serving.tx_bytes() - wire >= committed
        assert int(RXE0_SENT.read_text()) == rxe0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_reader_forced_onto_the_other_hosts_device_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """rdma.device names hostA's device on hostB: honoured (the user asked), with a
    warning that it does not carry hostB's address; the data stays right."""
    caplog.set_level(logging.INFO, "netspark")
    with server_on(hosts.A, 22, **RDMA) as (server, _), \
            fetcher_on(hosts.B, **RDMA, **{"rdma.device": hosts.A.device}) as fetcher:
        got = read_all(fetcher, server, 22)
        assert device_of(fetcher.peers.rdma[0]) == (hosts.A.device, hosts.A.gid,
                                               hosts.A.gid_index())
    assert all(got[r] == expected(r) for r in range(PARTS))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(hosts.B.address in w and hosts.A.device in w for w in warnings), warnings


@pytest.mark.parametrize("side", ["reader", "server"])
def test_a_gid_that_is_not_the_advertised_address_never_gives_wrong_data(
        side: str, caplog: pytest.LogCaptureFixture) -> None:
    """gidIndex forced to the device's IPv6 link-local GID (index 0, not the address's):
    a warning at open naming the setting; under transport=auto the reader ends up on
    TCP with the right records, under transport=rdma the fetch fails with the reason
    within the network timeout. Never wrong or partial data."""
    caplog.set_level(logging.INFO, "netspark")
    wrong = {"rdma.gidIndex": "0"}
    server_settings = {**AUTO, **(wrong if side == "server" else {})}
    reader_settings = {**AUTO, **(wrong if side == "reader" else {})}
    with server_on(hosts.A, 23, **server_settings) as (server, _):
        forced = server.rdma.device if side == "server" else None
        with fetcher_on(hosts.B, **reader_settings) as fetcher:
            got = read_all(fetcher, server, 23)
            route = fetcher.route_of(server.address)
            forced = forced or fetcher.peers.rdma[0]
        assert forced.gid_index == 0 and forced.gid != (hosts.A if side == "server"
                                                        else hosts.B).gid
        assert all(got[r] == expected(r) for r in range(PARTS))
        messages = [r.getMessage() for r in caplog.records]
        assert any("spark.netspark.rdma.gidIndex" in m and r.levelno == logging.WARNING
                   for m, r in zip(messages, caplog.records, strict=True)), messages
        print(f"gidIndex=0 on the {side}: route {route}")
        if route == "rdma":
            return  # the kernel routed it after all: the right data is what matters
        # Both ends say why: the server could not connect its queue pair to the reader's
        # (naming both GIDs), and the reader's route names its own device and GID.
        assert any(m.startswith("netspark: no RDMA for") and "serving it over TCP" in m
                   for m in messages), messages
        assert any("over tcp" in m and "could not connect a queue pair" in m
                   and hosts.B.device in m for m in messages), messages
        with fetcher_on(hosts.B, **{**reader_settings, "transport": "rdma"}) as strict, \
                pytest.raises(FetchFailed, match=hosts.A.address) as failed:
            read_all(strict, server, 23)
        print(f"transport=rdma: {failed.value}")
