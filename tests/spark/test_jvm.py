"""netspark's JVM shuffle manager (spark.netspark.jvm=true): how the flag decides the Spark
settings (no Spark), and, on one local cluster of two executors, that the driver and every
executor load the manager from spark.jars and that JVM and Python shuffles return what
plain Python computes."""

import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest

import netspark.jvm
from netspark.config import ConfigError
from netspark.spark.activate import DAEMON_MODULE, DEFAULTS, plan
from tests.spark.conftest import require_jvm_jar, spark_context

MANAGER = netspark.jvm.MANAGER_CLASS
# A master the executors' Python check does not apply to: plan() then starts nothing.
REMOTE = {"spark.master": "spark://example:7077", "spark.netspark.enabled": "true"}


# --- plan(): no Spark ----------------------------------------------------------------

@pytest.fixture
def built_jar(tmp_path, monkeypatch):
    jar = tmp_path / "netspark-shuffle.jar"
    jar.write_bytes(b"PK")
    monkeypatch.setattr(netspark.jvm, "JAR", jar)
    return jar


@pytest.fixture
def no_jar(tmp_path, monkeypatch):
    monkeypatch.setattr(netspark.jvm, "JAR", tmp_path / "absent.jar")


def test_jvm_is_on_by_default_and_off_on_request(built_jar):
    chosen = plan(dict(REMOTE))
    assert chosen.conf.jvm is True and chosen.spark["spark.shuffle.manager"] == MANAGER
    off = plan({**REMOTE, "spark.netspark.jvm": "false"})
    assert off.conf.jvm is False
    assert off.spark == {"spark.python.daemon.module": DAEMON_MODULE, **DEFAULTS}


def test_jar_present_names_the_manager_and_appends_the_jar(built_jar):
    chosen = plan({**REMOTE, "spark.netspark.jvm": "true", "spark.jars": "/opt/a.jar,b.jar"})
    assert chosen.spark == {"spark.python.daemon.module": DAEMON_MODULE, **DEFAULTS,
                            "spark.jars": f"/opt/a.jar,b.jar,{built_jar}",
                            "spark.shuffle.manager": MANAGER,
                            netspark.jvm.DATA_IO_KEY: netspark.jvm.DATA_IO_CLASS}
    assert chosen.jar == built_jar  # for the driver's class loader
    # already listed, or the manager already named: nothing doubled, nothing refused
    again = plan({**REMOTE, "spark.netspark.jvm": "true", "spark.jars": f"file:{built_jar}",
                  "spark.shuffle.manager": MANAGER})
    assert again.spark["spark.jars"] == f"file:{built_jar}"


def test_jar_missing_warns_how_to_build_and_keeps_the_rdd_path(no_jar, caplog):
    with caplog.at_level(logging.WARNING, logger="netspark"):
        chosen = plan({**REMOTE, "spark.netspark.jvm": "true"})
    assert chosen is not None  # netspark still runs the RDD shuffles
    assert chosen.spark == {"spark.python.daemon.module": DAEMON_MODULE, **DEFAULTS}
    assert chosen.jar is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and netspark.jvm.BUILD_COMMAND in warnings[0]


@pytest.mark.parametrize("key,theirs", [("spark.shuffle.manager", "sort"),
                                        ("spark.shuffle.manager", "org.example.OtherManager"),
                                        (netspark.jvm.DATA_IO_KEY, "org.example.OtherDataIO")])
def test_a_different_shuffle_manager_or_io_plugin_is_refused_by_name(built_jar, key, theirs):
    with pytest.raises(ConfigError, match=key) as err:
        plan({**REMOTE, "spark.netspark.jvm": "true", key: theirs})
    assert theirs in str(err.value) and "spark.netspark.jvm" in str(err.value)


def test_reduce_locality_is_off_unless_the_application_chose(built_jar):
    assert plan(dict(REMOTE)).spark["spark.shuffle.reduceLocality.enabled"] == "false"
    chosen = plan({**REMOTE, "spark.shuffle.reduceLocality.enabled": "true"})
    assert "spark.shuffle.reduceLocality.enabled" not in chosen.spark  # theirs stays


def test_a_user_shuffle_manager_is_kept_with_a_warning_unless_jvm_was_asked_for(built_jar,
                                                                                 caplog):
    with caplog.at_level(logging.WARNING, logger="netspark"):
        chosen = plan({**REMOTE, "spark.shuffle.manager": "sort"})
    assert chosen.conf.jvm is False and "spark.shuffle.manager" not in chosen.spark
    assert "spark.jars" not in chosen.spark
    assert any("spark.shuffle.manager=sort" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="netspark"):
        quiet = plan({**REMOTE, "spark.shuffle.manager": "sort", "spark.netspark.jvm": "false"})
    assert "spark.shuffle.manager" not in quiet.spark and not caplog.records


# --- one cluster, jvm=true ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sc():
    require_jvm_jar()
    with spark_context(**{"netspark.enabled": "true", "netspark.jvm": "true",
                          "sql.autoBroadcastJoinThreshold": "-1"}) as context:
        assert getattr(context, "_netspark", None) is not None
        yield context


def _shuffle_manager_class(sc) -> str:
    """SparkEnv's shuffle manager on the driver. py4j cannot reflect on SparkEnv in the
    4.3.0 wheel (a method's signature names a protobuf class the wheel lacks), so the one
    method is looked up on its own, through a method handle."""
    jvm = sc._jvm
    cls = jvm.java.lang.Class.forName
    handle = jvm.java.lang.invoke.MethodHandles.publicLookup().findVirtual(
        cls("org.apache.spark.SparkEnv"), "shuffleManager",
        jvm.java.lang.invoke.MethodType.methodType(cls("org.apache.spark.shuffle.ShuffleManager")))
    return handle.invokeWithArguments([sc._jsc.sc().env()]).getClass().getName()


@pytest.mark.slow
def test_the_driver_runs_netspark_shuffle_manager(sc):
    assert _shuffle_manager_class(sc) == MANAGER
    assert sc._jvm.org.apache.spark.shuffle.netspark.NetsparkShuffleManager.side() == "driver"


@pytest.mark.slow
def test_every_executor_runs_netspark_shuffle_manager(sc):
    """Each executor logs the side it runs on from the manager's constructor, into the
    stderr file of its work dir (the working directory its tasks see)."""
    from pyspark import SparkFiles

    here = sc.parallelize(range(8), 8).map(
        lambda _: str(Path(SparkFiles.getRootDirectory()).resolve())).distinct().collect()
    app_dir = Path(here[0]).parent
    assert app_dir.name == sc.applicationId
    deadline = time.monotonic() + 30
    while True:
        found = {d.name: f"netspark shuffle manager active on executor {d.name} "
                 in (d / "stderr").read_text(errors="replace")
                 for d in app_dir.iterdir() if (d / "stderr").is_file()}
        if (len(found) >= 2 and all(found.values())) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(found) >= 2 and all(found.values()), found


def _rows(seed: int, n: int) -> list[tuple[int, str, int]]:
    rng = random.Random(seed)
    return [(i, f"k{rng.randrange(37)}", rng.randrange(-1000, 1000)) for i in range(n)]


@pytest.mark.slow
def test_dataframe_shuffles_return_what_python_computes(sc):
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession(sc)
    left, right = _rows(1, 5000), _rows(2, 300)
    ldf = spark.createDataFrame(left, "id long, key string, value long").repartition(5)
    rdf = spark.createDataFrame(right, "id long, key string, value long").repartition(3)

    grouped = ldf.groupBy("key").agg(F.count("*").alias("n"), F.sum("value").alias("total"))
    expected = defaultdict(lambda: [0, 0])
    for _, key, value in left:
        expected[key][0] += 1
        expected[key][1] += value
    assert {r.key: [r.n, r.total] for r in grouped.collect()} == dict(expected)

    joined = ldf.alias("l").join(rdf.alias("r"), "key").select("l.id", "r.id")
    plan_text = joined._jdf.queryExecution().executedPlan().toString()
    assert "Broadcast" not in plan_text and "Exchange" in plan_text, plan_text
    by_key = defaultdict(list)
    for rid, key, _ in right:
        by_key[key].append(rid)
    assert sorted(tuple(r) for r in joined.collect()) == sorted(
        (lid, rid) for lid, key, _ in left for rid in by_key[key])

    ordered = [tuple(r) for r in ldf.orderBy(F.col("value").desc(), "id").collect()]
    assert ordered == sorted(left, key=lambda row: (-row[2], row[0]))


@pytest.mark.slow
def test_rdd_group_by_key_still_goes_through_netspark(sc):
    pairs = [(i % 53, i) for i in range(20_000)]
    got = sc.parallelize(pairs, 6).groupByKey(4).mapValues(sorted).collect()
    expected = defaultdict(list)
    for key, value in pairs:
        expected[key].append(value)
    assert dict(got) == {key: sorted(values) for key, values in expected.items()}
    state = sc._netspark
    shuffle = max(state.summaries())  # this test's: the last one
    summary = state.summaries()[shuffle]
    # The handles were not stored: the JVM shuffle that carried them kept the data's sizes
    # in its map statuses (rounded up by at most 10%), and made them again for the reducers.
    manager = sc._jvm.org.apache.spark.shuffle.netspark.NetsparkShuffleManager
    [jvm_shuffle] = [j for j, s in state._by_jvm_id.items() if s == shuffle]
    assert list(manager.mapOutputsThroughNetspark(jvm_shuffle)) == [6, 6]
    kept = manager.mapOutputBytes(jvm_shuffle, 4)
    assert summary["map_bytes"] <= kept <= 1.1 * summary["map_bytes"], (kept, summary)
    assert summary["fetched_bytes"] == summary["map_bytes"]
