"""Faults in JVM shuffles through netspark (spark.netspark.jvm=true), on a 2-executor
cluster: Spark's FetchFailedException recovery gives the right answer."""


import pytest

from tests.spark.conftest import (
    flip_a_byte_in_every_committed_block,
    require_jvm_jar,
    spark_context,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def jar():
    require_jvm_jar()


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
        assert flip_a_byte_in_every_committed_block(sc) > 0
        again = sorted(tuple(r) for r in grouped.collect())
        assert again == first
