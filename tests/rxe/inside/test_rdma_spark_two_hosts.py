"""PySpark with one executor on each rxe host, its shuffle read over RDMA between them.

A standalone cluster (tests/rxe/inside/standalone.py): the master and the driver on
hostA (10.214.0.1), one Worker on hostA and one on hostB (10.214.0.2). It runs in the
main boot, whose 6.1 kernel keeps both hosts in the root namespace (the JVMs are not
stable on the newer kernel under TCG: tests/rxe/inside/hosts.py). No rdma.device or
gidIndex is set: each executor's server must open the device of the address Spark gave
its executor (rxeA, rxeB; never rxe0), and the map outputs each reads from the other
must cross the veth.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.rxe.inside import hosts
from tests.rxe.inside.spark_start import spark_started
from tests.rxe.inside.standalone import StandaloneCluster
from tests.rxe.inside.test_rdma_spark import grouped_by_python, grouped_by_spark

pytestmark = pytest.mark.rxe_guest
RXE0_SENT = Path("/sys/class/infiniband/rxe0/ports/1/hw_counters/sent_pkts")


@pytest.mark.timeout(2400)  # the cluster's three JVMs, up to three driver starts, the job
def test_pyspark_executors_on_two_hosts_read_each_other_over_rdma(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = hosts.bring_up()
    monkeypatch.setenv("SPARK_LOCAL_IP", a.address)  # the driver's host
    monkeypatch.setenv("SPARK_LOCAL_HOSTNAME", a.address)
    monkeypatch.setenv("JAVA_TOOL_OPTIONS",
                       "-Xshare:off -XX:+UseSerialGC -XX:ErrorFile=/tmp/hs_err_pid%p.log")
    cluster = StandaloneCluster(a, (a, b)).start(timeout=600)
    try:
        settings = {
            "master": cluster.url, "driver.host": a.address,
            "cores.max": "2", "executor.cores": "1", "executor.memory": "512m",
            "driver.memory": "512m",
            # Both executors registered before the job: else one may run every task.
            "scheduler.minRegisteredResourcesRatio": "1.0",
            "scheduler.maxRegisteredResourcesWaitingTime": "600s",
            "netspark.enabled": "true", "netspark.transport": "rdma",
            "netspark.localShortCircuit": "false",
            "netspark.buffer.initialSize": "32m", "netspark.buffer.poolSize": "256m",
        }
        wire = {h.device: h.tx_bytes() for h in (a, b)}
        rxe0 = int(RXE0_SENT.read_text())
        with a.inside(), spark_started(**settings) as sc:  # the driver on hostA
            assert grouped_by_spark(sc) == grouped_by_python()
            routes: dict[str, int] = {}
            fetched = 0
            for summary in sc._netspark.summaries().values():
                fetched += summary["fetched_bytes"]
                for route, n in summary["routes"].items():
                    routes[route] = routes.get(route, 0) + n
        assert set(routes) == {"rdma"}, routes
        # Reads of an executor's own outputs stay on its device (rxe's loopback); each
        # reads part of its input from the other, and that crosses the wire.
        crossed = {h.device: h.tx_bytes() - wire[h.device] for h in (a, b)}
        print(f"fetched {fetched} bytes; sent on the veths {crossed}", file=sys.stderr)
        assert all(crossed.values()) and sum(crossed.values()) >= fetched // 4, crossed
        for host in (a, b):
            log = cluster.executor_logs(host)
            assert f"server advertises {host.address}" in log, log[-3000:]
            opened = set(re.findall(r"RDMA device (\w+) port 1 GID index (\d+)", log))
            assert opened == {(host.device, str(host.gid_index()))}, log[-3000:]
        assert int(RXE0_SENT.read_text()) == rxe0
    except BaseException:
        print(cluster.logs())
        for host in (a, b):
            print(f"--- executor stderr on {host.device}\n{cluster.executor_logs(host)[-4000:]}")
        raise
    finally:
        cluster.stop()
