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
