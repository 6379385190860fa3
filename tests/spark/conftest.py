import os
import sys
from contextlib import contextmanager

import pytest

pyspark = pytest.importorskip("pyspark")

CLUSTER = "local-cluster[2,1,1024]"


@contextmanager
def spark_context(**settings: str):
    """A SparkContext on a local 2-executor cluster; `settings` are spark.* keys without
    the `spark.` prefix (`netspark.enabled="true"`)."""
    from pyspark import SparkConf, SparkContext

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The first context of a process launches the JVM with its settings as system
    # properties, which every later SparkConf would inherit: launch it neutral.
    SparkContext._ensure_initialized()
    conf = (SparkConf().setMaster(CLUSTER).setAppName("netspark-tests")
            .set("spark.ui.enabled", "false").set("spark.default.parallelism", "4")
            .set("spark.python.worker.reuse", "true"))
    for key, value in settings.items():
        conf.set(f"spark.{key}", value)
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        yield sc
    finally:
        sc.stop()


def require_jvm_jar() -> None:
    """Builds netspark's JVM shuffle manager if it is out of date; skips without javac."""
    import shutil

    from netspark.jvm.build import BuildError, build

    if shutil.which("javac") is None:
        pytest.skip("no javac: the JVM shuffle manager cannot be built here")
    try:
        build()  # a no-op when the jar is newer than its sources
    except BuildError as err:
        pytest.fail(str(err))


def flip_a_byte_in_every_committed_block(sc) -> int:
    """Corrupts every block the executors' servers hold (byte 100); returns how many."""
    from netspark.buffer_manager import Arena

    flipped = 0
    for server in sc._netspark.coordinator.servers:
        arena = Arena.attach(server["arena_path"])
        owner = int(server["arena_path"].split("/")[2])
        for block in range(arena.max_blocks):
            if arena.owner_of(block) == owner:
                arena.block_view(block)[100] ^= 0xFF
                flipped += 1
        arena.close()
    return flipped
