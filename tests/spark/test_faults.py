"""Faults on a real 2-executor cluster: the job is right, or fails clearly; never hangs,
never answers wrong, and leaves nothing behind."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.spark.conftest import (
    flip_a_byte_in_every_committed_block,
    spark_context,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def processes(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if int(pid) != os.getpid()]


def command_line(pid: int) -> str | None:
    """What `pid` runs, or None once it has ended (pgrep found it a moment ago)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return f"{pid}: " + cmdline.read().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return None


KEYS = 120  # each reduce task sleeps per key: a reduce stage of ~15 s to strike in


def slow_groupby(sc, records=60_000, partitions=8):
    data = sc.parallelize(range(records), partitions).map(lambda i: (i % KEYS, i))

    def slowly(values):
        time.sleep(0.25)
        return sum(values)

    return data.groupByKey(partitions).mapValues(slowly)


def expected_sums(records=60_000):
    sums = {}
    for i in range(records):
        sums[i % KEYS] = sums.get(i % KEYS, 0) + i
    return sorted(sums.items())


def run_in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for_reduce_stage(sc, timeout=120):
    """Waits until a stage that reads a shuffle (the second) is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stage in sc.statusTracker().getActiveStageIds():
            info = sc.statusTracker().getStageInfo(stage)
            if info is not None and stage >= 1 and info.numActiveTasks > 0:
                return
        time.sleep(0.1)
    raise AssertionError("the reduce stage never started")


def test_an_executor_killed_during_the_reduce_stage(tmp_path):
    with spark_context(**{"netspark.enabled": "true"}) as sc:
        thread, box = run_in_thread(lambda: sorted(slow_groupby(sc).collect()))
        wait_for_reduce_stage(sc)
        victims = processes(f"CoarseGrainedExecutorBackend.*{sc.applicationId}")
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)
        thread.join(timeout=600)
        assert not thread.is_alive(), "the job hung"
        assert "error" not in box, box.get("error")
        assert box["result"] == expected_sums()


def test_a_netspark_server_killed_mid_shuffle_is_recomputed(tmp_path):
    with spark_context(**{"netspark.enabled": "true", "netspark.network.maxRetries": "1",
                          "netspark.network.retryWait": "100ms"}) as sc:
        thread, box = run_in_thread(lambda: sorted(slow_groupby(sc).collect()))
        wait_for_reduce_stage(sc)
        servers = processes(f"netspark.server --app-id {sc.applicationId}")
        assert len(servers) == 2
        os.kill(servers[0], signal.SIGKILL)
        thread.join(timeout=600)
        assert not thread.is_alive(), "the job hung"
        # Its executor lived on with the handles: Spark was told to replace it and
        # recomputed its map outputs (netspark.spark.coordinator).
        assert "error" not in box, box.get("error")
        assert box["result"] == expected_sums()
        assert len(sc._netspark.coordinator.lost) == 1


def committed_shuffle_with_every_block_flipped(sc):
    shuffled = sc.parallelize(range(20_000), 4).map(lambda i: (i % 100, i)).partitionBy(4)
    assert shuffled.count() == 20_000  # map outputs committed, kept for the next job
    assert flip_a_byte_in_every_committed_block(sc) > 0
    return shuffled


def test_a_flipped_byte_in_a_committed_block_is_caught_by_the_python_reader():
    with spark_context(**{"netspark.enabled": "true", "netspark.jvm": "false"}) as sc:
        shuffled = committed_shuffle_with_every_block_flipped(sc)
        with pytest.raises(Exception, match="crc32c"):
            shuffled.collect()


def test_a_flipped_byte_under_the_jvm_shuffle_makes_spark_rerun_the_maps():
    """With the JVM part on, the Python reader's crc32c error names the map output it could
    not read, netspark's JVM shuffle (which made the reducer's handles from the map
    statuses) turns it into Spark's fetch failure, so Spark recomputes the map stage and
    the answer is right."""
    with spark_context(**{"netspark.enabled": "true"}) as sc:
        shuffled = committed_shuffle_with_every_block_flipped(sc)
        sc.setJobGroup("after-the-flip", "collect")
        assert sorted(shuffled.collect()) == sorted((i % 100, i) for i in range(20_000))
        tracker = sc.statusTracker()
        [job] = tracker.getJobIdsForGroup("after-the-flip")
        stages = [tracker.getStageInfo(stage) for stage in tracker.getJobInfo(job).stageIds]
        assert max(stage.currentAttemptId for stage in stages if stage) >= 1  # a rerun


def test_a_pool_smaller_than_the_shuffle_spills():
    settings = {"netspark.enabled": "true", "netspark.buffer.poolSize": "64m",
                "netspark.buffer.initialSize": "32m", "netspark.buffer.acquireTimeout": "120s"}
    with spark_context(**settings) as sc:
        data = sc.parallelize(range(8), 8).flatMap(
            lambda s: ((i % 1000, os.urandom(200)) for i in range(s, 800_000, 8)))
        counts = data.groupByKey(8).mapValues(len).collect()  # ~190 MiB through 2x64 MiB
        assert sorted(counts) == [(k, 800) for k in range(1000)]
        summary = next(iter(sc._netspark.summaries().values()))
        assert summary["map_bytes"] > 2 * (64 << 20)


DRIVER = """
import os, sys, time
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
from pyspark import SparkConf, SparkContext
conf = (SparkConf().setMaster("local-cluster[2,1,1024]").set("spark.ui.enabled", "false")
        .set("spark.netspark.enabled", "true").set("spark.rpc.askTimeout", "30s")
        .set("spark.rpc.lookupTimeout", "30s"))
sc = SparkContext(conf=conf)
print("APP", sc.applicationId, flush=True)
sc.parallelize(range(10000), 4).map(lambda i: (i % 10, i)).groupByKey().count()
print("SHUFFLED", flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("the user's program failed")
if sys.argv[1] == "hang":
    time.sleep(600)
sc.stop()
"""


@pytest.mark.parametrize("ending", ["normal", "raise", "sigkill"])
def test_nothing_is_left_behind(ending):
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER),
                               "hang" if ending == "sigkill" else ending],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              cwd=ROOT)
    app = driver.stdout.readline().split()[-1]
    assert driver.stdout.readline().strip() == "SHUFFLED"
    assert len(processes(f"netspark.server --app-id {app}")) == 2
    if ending == "sigkill":
        driver.kill()
    driver.wait(timeout=120)

    def ours() -> list[int]:
        return processes(f"netspark.server --app-id {app}") + processes("netspark.spark.daemon")

    assert wait_until_gone(ours, 60) == [], "netspark processes survived the application"
    assert list(Path(tempfile.gettempdir()).glob(f"netspark-{app}-*")) == []  # their sockets
    # Spark's standalone Worker relaunches executors while an abruptly ended driver
    # shuts down (20 or so per run here); one launched last can wait for the dying
    # driver several times spark.rpc.askTimeout, and look it up three times with
    # spark.rpc.lookupTimeout, before it exits (CI once saw one outlive 180 s with the
    # default 120 s askTimeout; later one did with the default 120 s lookupTimeout),
    # hence the driver's 30 s for both (executors get spark.rpc.* at launch). Spark's,
    # but it too must end.
    assert wait_until_gone(lambda: processes(app), 180) == [], \
        "processes of the application survived it"


def wait_until_gone(find, seconds: float) -> list[str]:
    """The command lines of what `find` still finds running after up to `seconds`.

    A process that ends between pgrep and the read of its command line has ended (CI once
    failed on such a one, listed as gone)."""
    deadline = time.monotonic() + seconds
    while True:
        running = [line for pid in find() if (line := command_line(pid)) is not None]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.5)
