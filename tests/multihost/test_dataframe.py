"""Across hosts, DataFrame, SQL and GraphX shuffles (in the JVM) through netspark: flag on
(spark.netspark.jvm=true) returns exactly what flag off returns, and the map outputs of
the shuffles were held by the servers of every host."""

import pytest

from tests.multihost.conftest import cluster_context
from tests.spark import dataframe_ops
from tests.spark.conftest import require_jvm_jar

pytestmark = pytest.mark.timeout(1500)
# AQE on with 200 partitions (coalescing, local reads, skew splits): what differs most
# across hosts; the other two settings run on one host (make test-dataframe), for CI time.
SETTINGS = (2,)


def _answers(cluster, edges: str, out: str, **settings: str):
    from pyspark.sql import SparkSession

    with cluster_context(cluster, **dataframe_ops.COMMON, **settings) as sc:
        answers = dataframe_ops.run_all(SparkSession(sc), SETTINGS)
        answers["graphx"] = dataframe_ops.graphx_ranks(sc, edges, out)
        servers = []
        if settings:
            servers = [s["host"] for s in sc._netspark.coordinator.servers]
            answers["held"] = [c for c in dataframe_ops.map_output_counts(sc) if c[1]]
        return answers, servers


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    require_jvm_jar()
    here = tmp_path_factory.mktemp("dataframe")
    edges = str(here / "edges.txt")  # the hosts share this machine's file system
    dataframe_ops.write_rmat_edges(edges)
    spark_own, _ = _answers(cluster, edges, str(here / "off"))
    ours, servers = _answers(cluster, edges, str(here / "on"),
                             **{"netspark.enabled": "true", "netspark.jvm": "true"})
    return spark_own, ours, servers


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("operation", dataframe_ops.OPERATIONS)
def test_flag_on_returns_what_flag_off_returns_across_hosts(runs, operation, setting):
    spark_own, ours, _ = runs
    assert ours[operation, setting] == spark_own[operation, setting]


def test_the_jvm_shuffles_went_through_every_host_s_server(runs, cluster):
    _, ours, servers = runs
    assert sorted(servers) == sorted(h.address for h in cluster.hosts)
    held = ours["held"]
    assert len(held) >= 5 and all(mine == total for mine, total in held), held


@pytest.mark.parametrize("kind", ["static", "convergence"])
def test_graphx_pagerank_across_hosts_equals_spark_own(runs, kind):
    spark_own, ours, _ = runs
    dataframe_ops.assert_same_ranks(spark_own["graphx"][kind], ours["graphx"][kind])
