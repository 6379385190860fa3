"""Faults on one host of a real three-host cluster, in the middle of a shuffle: the
job gives the right answer (Spark recomputing map outputs that were lost with their
host's server), or fails with a clear error in bounded time; it never hangs, never
answers wrong, and leaves nothing behind on any host."""

import os
import signal
import threading
import time

import pytest

from tests.multihost.conftest import cluster_context
from tests.spark.conftest import require_jvm_jar
from tests.spark.test_faults import (
    KEYS,
    expected_sums,
    run_in_thread,
    slow_groupby,
    wait_for_reduce_stage,
)

pytestmark = pytest.mark.timeout(900)

# Short timeouts, so that a silent host is found out in seconds, not minutes.
FAULT_SETTINGS = {
    "netspark.enabled": "true",
    "netspark.network.timeout": "20s", "netspark.network.connectTimeout": "3s",
    "netspark.network.maxRetries": "1", "netspark.network.retryWait": "200ms",
    "network.timeout": "20s", "network.timeoutInterval": "5s",
    "executor.heartbeatInterval": "3s",
    "shuffle.io.maxRetries": "1", "shuffle.io.retryWait": "1s",
}


def host_processes(cluster, host, pattern: str) -> list[int]:
    found = []
    for pid in cluster.pids(host):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if pattern.encode() in cmdline.read().replace(b"\0", b" "):
                    found.append(pid)
        except OSError:
            pass
    return found


def assert_nothing_left(cluster, app_id: str, seconds: float = 180) -> None:
    """No process of the application (executors, daemons, servers) on any host."""
    deadline = time.monotonic() + seconds
    while True:
        left = {h.name: host_processes(cluster, h, app_id) + host_processes(
            cluster, h, "netspark.spark.daemon") for h in cluster.hosts}
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after the application: {left}")
        time.sleep(0.5)


def slow_rdd_groupby(sc) -> list[tuple[int, int]]:
    return sorted(slow_groupby(sc, partitions=12).collect())


def slow_dataframe_groupby(sc) -> list[tuple[int, int]]:
    """The same sums from a DataFrame: its shuffle runs in the JVM (with jvm=true), and
    its reduce tasks sleep per key in a pandas UDF."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    def slowly(group):
        import pandas as pd

        time.sleep(0.25)
        return pd.DataFrame({"key": [group.key.iloc[0]], "total": [group.value.sum()]})

    spark = SparkSession(sc)
    spark.conf.set("spark.sql.shuffle.partitions", "12")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    data = spark.range(0, 60_000, numPartitions=6).select(
        (F.col("id") % KEYS).alias("key"), F.col("id").alias("value"))
    grouped = data.groupBy("key").applyInPandas(slowly, "key long, total long")
    return sorted(tuple(row) for row in grouped.collect())


JOBS = {"rdd": (slow_rdd_groupby, {}),
        "dataframe": (slow_dataframe_groupby, {"netspark.jvm": "true"})}


@pytest.fixture(params=sorted(JOBS))
def job(request):
    """A slow groupBy of either kind, with the settings that route its shuffle."""
    if request.param == "dataframe":
        require_jvm_jar()
    return JOBS[request.param]


def strike_mid_reduce(cluster, strike, settings=None, *, job=JOBS["rdd"], wait=600):
    """Runs a slow groupBy, calls strike(sc) once reduce tasks run; returns what the
    job gave (result or error) and how long it took after the strike."""
    run, routing = job
    with cluster_context(cluster, **{**FAULT_SETTINGS, **routing, **(settings or {})}) as sc:
        app = sc.applicationId
        thread, box = run_in_thread(lambda: run(sc))
        wait_for_reduce_stage(sc)
        strike(sc)
        struck = time.monotonic()
        thread.join(timeout=wait)
        assert not thread.is_alive(), "the job hung"
        box["after_strike_s"] = time.monotonic() - struck
        box["lost"] = sc._netspark.coordinator.lost
    assert_nothing_left(cluster, app)
    return box


def test_an_executor_killed_mid_reduce(cluster, job):
    victim = cluster.hosts[1]

    def strike(sc):
        (pid,) = host_processes(cluster, victim, "CoarseGrainedExecutorBackend")
        os.kill(pid, signal.SIGKILL)

    box = strike_mid_reduce(cluster, strike, job=job)
    assert "error" not in box, box.get("error")
    assert box["result"] == expected_sums()


def test_a_server_killed_mid_reduce_is_recomputed(cluster, job):
    """Its executor lives on with the handles; Spark must still recompute the data."""
    victim = cluster.hosts[2]

    def strike(sc):
        (pid,) = host_processes(cluster, victim, f"netspark.server --app-id {sc.applicationId}")
        (executor,) = [s["executor"] for s in sc._netspark.coordinator.servers
                       if s["host"] == victim.address]
        box_executor.append(executor)
        os.kill(pid, signal.SIGKILL)

    box_executor = []
    box = strike_mid_reduce(cluster, strike, job=job)
    assert "error" not in box, box.get("error")
    assert box["result"] == expected_sums()
    assert box["lost"] == box_executor  # Spark was told, and recomputed what it held


def test_a_link_cut_mid_reduce_then_restored(cluster):
    victim = cluster.hosts[0]

    def strike(sc):
        cluster.cut_link(victim)
        threading.Timer(25, cluster.restore_link, args=(victim,)).start()

    try:
        box = strike_mid_reduce(cluster, strike)
    finally:
        cluster.restore_link(victim)
    print(f"link cut: {'error' if 'error' in box else 'right answer'} "
          f"{box['after_strike_s']:.0f} s after the cut; executors lost: {box['lost']}")
    if "error" in box:  # allowed, if it says what happened, and came in bounded time
        assert "netspark" in str(box["error"]) or "fetch" in str(box["error"]).lower()
    else:
        assert box["result"] == expected_sums()
    assert box["after_strike_s"] < 480


def test_a_host_whose_server_cannot_start(cluster):
    """Its one allowed port is taken on that host: the job is right or clearly fails."""
    victim = cluster.hosts[1]
    port = 47311
    squatter = cluster_listener(cluster, victim, port)
    try:
        with cluster_context(cluster, **{**FAULT_SETTINGS, "netspark.port": str(port)}) as sc:
            app = sc.applicationId
            try:
                result = sorted(sc.parallelize(range(30_000), 6).map(lambda i: (i % 50, i))
                                .reduceByKey(lambda a, b: a + b).collect())
            except Exception as err:
                assert "did not start" in str(err) and "spark.netspark.port" in str(err), err
            else:
                assert result == sorted(
                    {k: sum(range(k, 30_000, 50)) for k in range(50)}.items())
            servers = sc._netspark.coordinator.servers
            assert victim.address not in {s["host"] for s in servers}
        assert_nothing_left(cluster, app)
    finally:
        squatter.kill()
        squatter.wait()


def cluster_listener(cluster, host, port: int):
    """A process in `host`'s namespace holding `port` (so no server can take it)."""
    import subprocess
    import sys

    code = (f"import socket,time; s=socket.create_server(('0.0.0.0', {port})); "
            "print('up', flush=True); time.sleep(900)")
    proc = subprocess.Popen(["ip", "netns", "exec", host.name, sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc
