"""DataFrame and SQL shuffles through netspark (spark.netspark.jvm=true): every operation of
`dataframe_ops` under every SQL setting returns exactly what it returns with the flag off,
and the map outputs of its shuffles were held by netspark's servers. Both runs happen on the
same local cluster shape, one after the other, in this process."""

from pathlib import Path

import pytest

from tests.spark import dataframe_ops
from tests.spark.conftest import (
    require_jvm_jar,
    spark_context,
)

# Two full runs of every operation under every setting: ~7 minutes here, so a make
# target of its own (`make test-dataframe`), and a bound for the shared fixture.
pytestmark = [pytest.mark.dataframe, pytest.mark.timeout(1800)]


def _answers(edges: Path, out: Path, **settings: str) -> tuple[dict, list[list[int]]]:
    from pyspark.sql import SparkSession

    with spark_context(**dataframe_ops.COMMON, **settings) as sc:
        answers = dataframe_ops.run_all(SparkSession(sc))
        answers["graphx"] = dataframe_ops.graphx_ranks(sc, str(edges), str(out))
        return answers, dataframe_ops.map_output_counts(sc) if settings else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_jvm_jar()
    here = tmp_path_factory.mktemp("dataframe")
    dataframe_ops.write_rmat_edges(str(here / "edges.txt"))
    spark_own, _ = _answers(here / "edges.txt", here / "off")
    ours, counts = _answers(here / "edges.txt", here / "on",
                            **{"netspark.enabled": "true", "netspark.jvm": "true"})
    return spark_own, ours, counts


@pytest.mark.parametrize("setting", range(len(dataframe_ops.SETTINGS)))
@pytest.mark.parametrize("operation", dataframe_ops.OPERATIONS)
def test_flag_on_returns_what_flag_off_returns(runs, operation, setting):
    spark_own, ours, _ = runs
    assert ours[operation, setting] == spark_own[operation, setting]


def test_the_jvm_shuffles_went_through_netspark(runs):
    *_, counts = runs
    held = [c for c in counts if c[1]]  # shuffles whose map outputs are still registered
    assert len(held) >= 5, counts  # the rest were cleaned up as their DataFrames went
    assert all(ours == total for ours, total in held), counts


@pytest.mark.parametrize("kind", ["static", "convergence"])
def test_graphx_pagerank_ranks_equal_spark_own(runs, kind):
    spark_own, ours, _ = runs
    dataframe_ops.assert_same_ranks(spark_own["graphx"][kind], ours["graphx"][kind])
