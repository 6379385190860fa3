"""Faults in JVM shuffles through netspark (spark.netspark.jvm=true), on a 2-executor
cluster: Spark's FetchFailedException recovery gives the right answer."""

import shutil

import pytest

from netspark.buffer_manager import Arena
from tests.spark.conftest import spark_context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def jar():
    from netspark.jvm.build import BuildError, build

    if shutil.which("javac") is None:
        pytest.skip("no javac: the JVM shuffle manager cannot be built here")
    try:
        build()
    except BuildError as err:
        pytest.fail(str(err))


def test_a_flipped_byte_in_a_jvm_map_output_is_recomputed():
    """The reducer's crc32c check fails, it throws FetchFailedException, Spark reruns the
    map stage and the second answer equals the first (and plain Python's)."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    with spark_context(**{"netspark.enabled": "true", "netspark.jvm": "true",
                          "sql.adaptive.enabled": "false",
                          "sql.shuffle.partitions": "4"}) as sc:
        spark = SparkSession(sc)
        grouped = spark.range(0, 50_000, numPartitions=4).groupBy(
            (F.col("id") % 100).alias("key")).agg(F.sum("id").alias("total"))
        first = sorted(tuple(r) for r in grouped.collect())  # map outputs kept for the next
        assert first == sorted((k, sum(range(k, 50_000, 100))) for k in range(100))
        flipped = 0
        for server in sc._netspark.coordinator.servers:
            arena = Arena.attach(server["arena_path"])
            owner = int(server["arena_path"].split("/")[2])
            for block in range(arena.max_blocks):
                if arena.owner_of(block) == owner:
                    arena.block_view(block)[100] ^= 0xFF
                    flipped += 1
            arena.close()
        assert flipped > 0
        again = sorted(tuple(r) for r in grouped.collect())
        assert again == first
