"""PySpark's own RDD test suites with the flag on, against the three-host cluster
(their ReusedPySparkTestCase contexts through the master hook PySpark gives; the
contexts test_shuffle makes itself through PYSPARK_SUBMIT_ARGS)."""

import re

import pytest

from tests import pyspark_suites

pytestmark = pytest.mark.timeout(1500)

# These two expect equal keys in map order ((0, 5) from map 0 before (0, 8) from map
# 1): what local mode gives. Across hosts Spark's own shuffle gives either order (the
# reducer's local map output tends to come first): measured 3 of 6 runs each way with
# the flag off, on this cluster. No shuffle promises an order of equal keys.
ORDER_OF_TIES = ("RDDTests::test_repartitionAndSortWithinPartitions_asc",
                 "RDDTests::test_repartitionAndSortWithinPartitions_desc")


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    return pyspark_suites.unpack(tmp_path_factory.mktemp("pyspark-suites"))


@pytest.mark.parametrize("suite", pyspark_suites.SUITES)
def test_pyspark_suite_passes_across_hosts(suites, suite, cluster):
    settings = {**cluster.spark_settings(), "spark.netspark.enabled": "true"}
    master = settings.pop("spark.master")
    submit = f"--master {master} " + " ".join(f"--conf {k}={v}" for k, v in settings.items())
    ties = ORDER_OF_TIES if suite == "tests/test_rdd" else ()
    run = pyspark_suites.run(*suites, suite, submit, env={"NETSPARK_TEST_MASTER": master},
                             timeout=1400, deselect=ties)
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert "netspark: enabled for" in run.stdout, "netspark did not activate"
    joined = set(re.findall(r"executor server at (\S+):\d+ joined", run.stdout))
    if suite != "tests/test_shuffle":  # most of test_shuffle runs no Spark job at all
        assert joined == {h.address for h in cluster.hosts}, joined
    assert re.search(r"\d+ passed", tail)
