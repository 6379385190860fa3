"""PySpark on a local 2-executor cluster inside the VM, its shuffle read over RDMA.

Under TCG every JVM is slow to start, so the data is small: the point is that an
unchanged groupByKey gets Spark's own answer while every reduce task READs its
map outputs from the other executors' servers over rxe0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from tests.rxe.inside.rdma_util import DEVICE
from tests.spark.conftest import spark_context

pytestmark = pytest.mark.rxe_guest


@contextmanager
def jvm_started(**settings: str) -> Iterator:
    """`spark_context`, launched once more if the driver's JVM dies before answering.
    Under TCG the JVM has crashed now and then (SIGSEGV in its own JIT-compiled
    zip-reading code, before any netspark code runs); a second launch has not."""
    from pyspark.errors import PySparkRuntimeError

    for attempt in range(2):
        with ExitStack() as stack:
            try:
                sc = stack.enter_context(spark_context(**settings))
            except PySparkRuntimeError as err:
                if attempt or "JAVA_GATEWAY_EXITED" not in str(err):
                    raise
                print(f"the JVM died at start ({err}); launching it again", file=sys.stderr)
                continue
            yield sc
            return


def group(sc) -> list:
    data = sc.parallelize(range(4000), 4).map(lambda i: (i % 97, (i, "v" * (i % 7))))
    return sorted((k, sorted(vs)) for k, vs in data.groupByKey(4).collect())


@pytest.mark.timeout(900)
def test_pyspark_group_by_key_over_rdma_equals_spark_s_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The guest has no hostname ("(none)"), which Spark would resolve at start.
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("SPARK_LOCAL_HOSTNAME", "localhost")
    # On a bare qemu64 CPU the JVM crashed (SIGSEGV) loading classes from its shared
    # archive; the VM now has the x86-64-v2 flags, and this costs only start-up time.
    monkeypatch.setenv("JAVA_TOOL_OPTIONS",
                       "-Xshare:off -XX:+UseSerialGC -XX:ErrorFile=/tmp/hs_err_pid%p.log")
    with jvm_started() as sc:
        expected = group(sc)
    rdma = {"netspark.enabled": "true", "netspark.transport": "rdma",
            "netspark.localShortCircuit": "false", "netspark.rdma.device": DEVICE,
            "netspark.buffer.initialSize": "32m", "netspark.buffer.poolSize": "256m",
            "executor.memory": "512m"}
    with jvm_started(**rdma) as sc:
        assert group(sc) == expected
        routes: dict[str, int] = {}
        for summary in sc._netspark.summaries().values():
            for route, n in summary["routes"].items():
                routes[route] = routes.get(route, 0) + n
    assert set(routes) == {"rdma"}, routes
