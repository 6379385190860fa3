"""One real Spark standalone cluster of three namespace hosts, shared by the whole
multi-host suite (`make test-multihost`); each test makes its own SparkContext."""

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

pytest.importorskip("pyspark")

from cluster.netns import NetnsCluster, unavailable  # noqa: E402

HOSTS = 3


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/multihost/" in str(item.fspath):
            item.add_marker(pytest.mark.multihost)


@pytest.fixture(scope="session")
def cluster():
    why = unavailable()
    if why:
        pytest.skip(f"no namespace cluster: {why}")
    with NetnsCluster(HOSTS) as running:
        yield running
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert running.tag not in left + links, f"the cluster left namespaces or links:\n{left}"
    assert not running.workdir.exists()


@contextmanager
def cluster_context(cluster: NetnsCluster, **settings: str):
    """A SparkContext on `cluster`; `settings` are spark.* keys without `spark.`."""
    from pyspark import SparkConf, SparkContext

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    SparkContext._ensure_initialized()  # a neutral JVM: settings must not leak between tests
    conf = (SparkConf().setAppName("netspark-multihost").set("spark.ui.enabled", "false")
            .set("spark.default.parallelism", "6").set("spark.python.worker.reuse", "true"))
    for key, value in cluster.spark_settings().items():
        conf.set(key, value)
    for key, value in settings.items():
        conf.set(f"spark.{key}", value)
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        wait_for_executors(sc, len(cluster.hosts))
        yield sc
    finally:
        sc.stop()


def wait_for_executors(sc, count: int, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < count:  # minus the driver
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} executors registered in {timeout:.0f} s")
        time.sleep(0.1)
