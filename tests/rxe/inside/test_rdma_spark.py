"""PySpark on a local 2-executor cluster inside the VM, its shuffle read over RDMA.

Under TCG every JVM is slow to start, so the data is small: the point is that an
unchanged groupByKey gets the right answer while every reduce task READs its
map outputs from the other executors' servers over rxe0.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.rxe.inside.rdma_util import DEVICE
from tests.rxe.inside.spark_start import spark_started

pytestmark = pytest.mark.rxe_guest

RECORDS = [(i % 97, (i, "v" * (i % 7))) for i in range(4000)]


def grouped_by_spark(sc) -> list:
    data = sc.parallelize(RECORDS, 4)
    return sorted((k, sorted(vs)) for k, vs in data.groupByKey(4).collect())


def grouped_by_python() -> list:
    """What Spark's own groupByKey returns (the host's suites compare the two on every
    operation); one JVM start here instead of two, each minutes under TCG."""
    groups = defaultdict(list)
    for key, value in RECORDS:
        groups[key].append(value)
    return sorted((k, sorted(vs)) for k, vs in groups.items())


@pytest.mark.timeout(1500)  # two starts past their deadline, a third, the job
def test_pyspark_group_by_key_reads_over_rdma(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The guest has no hostname ("(none)"), which Spark would resolve at start.
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("SPARK_LOCAL_HOSTNAME", "localhost")
    # On a bare qemu64 CPU the JVM crashed (SIGSEGV) loading classes from its shared
    # archive; the VM now has the x86-64-v2 flags, and this costs only start-up time.
    monkeypatch.setenv("JAVA_TOOL_OPTIONS",
                       "-Xshare:off -XX:+UseSerialGC -XX:ErrorFile=/tmp/hs_err_pid%p.log")
    rdma = {"netspark.enabled": "true", "netspark.transport": "rdma",
            "netspark.localShortCircuit": "false", "netspark.rdma.device": DEVICE,
            "netspark.buffer.initialSize": "32m", "netspark.buffer.poolSize": "256m",
            "executor.memory": "512m"}
    with spark_started(**rdma) as sc:
        assert grouped_by_spark(sc) == grouped_by_python()
        routes: dict[str, int] = {}
        for summary in sc._netspark.summaries().values():
            for route, n in summary["routes"].items():
                routes[route] = routes.get(route, 0) + n
    assert set(routes) == {"rdma"}, routes
