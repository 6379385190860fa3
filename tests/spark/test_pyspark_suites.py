"""PySpark's own RDD and SQL test suites, shipped inside pyspark.zip, run with the flag on.

They create their own contexts (local[4]); the flag reaches them the way it would
reach any unchanged program: PYSPARK_SUBMIT_ARGS.
"""

import re

import pytest

pytest.importorskip("pyspark")

from tests import pyspark_suites  # noqa: E402


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    return pyspark_suites.unpack(tmp_path_factory.mktemp("pyspark-suites"))


@pytest.mark.slow
@pytest.mark.parametrize("suite", pyspark_suites.SUITES)
def test_pyspark_suite_passes_with_netspark_on(suites, suite):
    run = pyspark_suites.run(*suites, suite, "--conf spark.netspark.enabled=true")
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert "netspark: enabled for" in run.stdout, "netspark did not activate"
    assert re.search(r"executor server at \S+ joined", run.stdout), tail
    assert re.search(r"\d+ passed", tail)


@pytest.mark.dataframe
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("suite", pyspark_suites.SQL_SUITES)
def test_pyspark_sql_suite_passes_with_jvm_shuffles_through_netspark(suites, suite):
    run = pyspark_suites.run(
        *suites, suite, "--conf spark.netspark.enabled=true --conf spark.netspark.jvm=true",
        timeout=1100)
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert re.search(r"netspark: enabled for .*JVM shuffles too", run.stdout), tail
    assert re.search(r"\d+ passed", tail)
