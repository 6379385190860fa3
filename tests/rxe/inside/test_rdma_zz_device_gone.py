"""The RDMA device going away under a reader (run last: it takes rxe0's link down).

Unregistering an rxe device (`rdma link delete`) waits for every process to
close it (rxe cannot disassociate user contexts), so the device "goes away"
here the way a NIC does when its link drops: dummy0 goes down, rxe0's port goes
DOWN, in-flight READs fail with retries exceeded and new queue pairs cannot
reach RTR.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from netspark.server.worker import read_partition
from netspark.transport.fetch import FetchFailed
from tests.rxe.inside.rdma_util import rdma_conf, sh
from tests.server.conftest import link_to, request, running_server, write_map

pytestmark = pytest.mark.rxe_guest
PORT_STATE = Path("/sys/class/infiniband/rxe0/ports/1/state")


def records(count: int) -> list:
    return [(k, "x" * (k % 50)) for k in range(count)]


def wait_port(active: bool, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while ("ACTIVE" in PORT_STATE.read_text()) != active:
        assert time.monotonic() < deadline, PORT_STATE.read_text()
        time.sleep(0.1)


def test_the_device_going_away_falls_back_to_tcp(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netspark")
    auto = rdma_conf(transport="auto", **{"network.timeout": "20s"})
    with running_server(**auto) as a, running_server(**auto) as b:
        with link_to(b, **auto) as link:
            for m in range(2):
                write_map(link, 9, m, 1, records(5000))
        want = sorted(records(5000) * 2)
        with link_to(a, **auto) as reader:
            fetcher = reader.fetcher()
            assert sorted(read_partition(fetcher, [request(b.address, 9, 0, 0, 1)])) == want
            assert fetcher.route_of(b.address) == "rdma"
            sh("ip", "link", "set", "dummy0", "down")
            try:
                wait_port(active=False)
                got = sorted(read_partition(fetcher, [request(b.address, 9, 0, 0, 1)]))
                assert got == want  # over TCP now
                assert fetcher.route_of(b.address) == "tcp"
                got = sorted(read_partition(fetcher, [request(b.address, 9, 0, 0, 1)]))
                assert got == want
                fallbacks = [r for r in caplog.records if "falling back to TCP" in r.getMessage()]
                assert len(fallbacks) == 1, "logged once per peer"
                fetcher.close()
                fresh = reader.fetcher()  # a new reader does not even try the dead port
                assert sorted(read_partition(fresh, [request(b.address, 9, 0, 0, 1)])) == want
                assert fresh.route_of(b.address) == "tcp"
                fresh.close()
                strict = rdma_conf(**{"network.timeout": "20s"})
                with link_to(a, **strict) as link, \
                        pytest.raises(FetchFailed, match="transport=rdma"):
                    list(read_partition(link.fetcher(), [request(b.address, 9, 0, 0)]))
            finally:
                sh("ip", "link", "set", "dummy0", "up")
        wait_port(active=True)
