"""DataFrame and SQL operations whose shuffles run in the JVM, each a function of a
SparkSession returning its rows canonically (sorted unless the operation orders them), so
that the flag-on answers can be compared with the flag-off ones of the same process.

The tables mix what shuffles must carry: long strings, nulls, decimals, arrays, maps; one
of them has a key holding more than one 2 MiB block of rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

Rows = list[tuple[Any, ...]]
# Every run: no broadcast joins (so joins shuffle), Arrow for the pandas UDFs.
COMMON = {"sql.autoBroadcastJoinThreshold": "-1", "sql.execution.arrow.pyspark.enabled": "true"}

SCHEMA = ("id long, key string, value long, price decimal(12,2), text string, "
          "tags array<string>, attrs map<string,int>")


def rows(seed: int, n: int, keys: int) -> Rows:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = None if rng.random() < 0.02 else f"k{rng.randrange(keys)}"
        text = "x" * rng.choice([0, 5, 300, 5000]) if rng.random() > 0.05 else None
        out.append((i, key, rng.randrange(-10**6, 10**6) if rng.random() > 0.03 else None,
                    Decimal(rng.randrange(-10**8, 10**8)) / 100, text,
                    [f"t{rng.randrange(9)}" for _ in range(rng.randrange(4))],
                    {f"a{j}": rng.randrange(100) for j in range(rng.randrange(3))}))
    return out


def tables(spark: Any) -> dict[str, Any]:
    from pyspark.sql import functions as F

    left = spark.createDataFrame(rows(1, 6000, 41), SCHEMA).repartition(5)
    right = spark.createDataFrame(rows(2, 900, 60), SCHEMA).repartition(3)
    # one key with ~6 MiB of rows: a reduce partition that spans blocks
    big = spark.range(0, 1200, numPartitions=4).select(
        F.lit("big").alias("key"), F.col("id"), F.expr("repeat('y', 5000)").alias("text"))
    empty = spark.createDataFrame([], SCHEMA)
    return {"left": left, "right": right, "big": big, "empty": empty}


def canonical(df: Any, ordered: bool = False) -> Rows:
    """The rows as comparable tuples (maps as sorted item lists)."""
    def value(v: Any) -> Any:
        if isinstance(v, dict):
            return tuple(sorted(v.items()))
        if isinstance(v, list):
            return tuple(value(x) for x in v)
        return v

    out = [tuple(value(v) for v in row) for row in df.collect()]
    return out if ordered else sorted(out, key=repr)


def _operations() -> dict[str, Callable[[dict[str, Any]], Rows]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def join(how: str, hint: str | None = None) -> Callable[[dict[str, Any]], Rows]:
        def run(t: dict[str, Any]) -> Rows:
            right = t["right"].select("key", F.col("id").alias("rid"), F.col("price").alias("rp"))
            if hint:
                right = right.hint(hint)
            joined = t["left"].join(right, "key", how)
            if how in ("left_semi", "left_anti"):
                return canonical(joined.select("id", "key"))
            return canonical(joined.select("id", "key", "rid", "rp"))
        return run

    def window(t: dict[str, Any]) -> Rows:
        by_key = Window.partitionBy("key").orderBy(F.col("value").asc_nulls_last(), "id")
        return canonical(t["left"].select(
            "id", "key", F.row_number().over(by_key), F.sum("value").over(by_key),
            F.lag("price").over(by_key)))

    return {
        "group_by_agg": lambda t: canonical(t["left"].groupBy("key").agg(
            F.count("*"), F.sum("value"), F.sum("price"), F.max("text"),
            F.sort_array(F.collect_list("id")))),
        "sort_merge_join": join("inner", "merge"),
        "shuffled_hash_join": join("inner", "shuffle_hash"),
        "left_outer_join": join("left"),
        "right_outer_join": join("right"),
        "full_outer_join": join("full"),
        "left_semi_join": join("left_semi"),
        "left_anti_join": join("left_anti"),
        "window": window,
        "order_by": lambda t: canonical(
            t["left"].orderBy(F.col("price").desc(), "id").select("id", "price", "tags"),
            ordered=True),
        "distinct": lambda t: canonical(t["left"].select("key", "tags").distinct()),
        "drop_duplicates": lambda t: canonical(
            t["left"].dropDuplicates(["key"]).select("key").distinct()),
        "repartition_by_number": lambda t: canonical(t["left"].repartition(9)),
        "repartition_by_column": lambda t: canonical(t["left"].repartition(6, "key")),
        "union_group_by": lambda t: canonical(
            t["left"].unionByName(t["right"]).groupBy("key").agg(F.count("*"), F.avg("value"))),
        "empty_input": lambda t: canonical(
            t["empty"].groupBy("key").count().join(t["empty"].select("key"), "key")),
        "partition_larger_than_a_block": lambda t: canonical(
            t["big"].repartition(2, "key").groupBy("key").agg(
                F.count("*"), F.sum(F.length("text")), F.sort_array(F.collect_list("id")))),
        "apply_in_pandas": lambda t: canonical(t["left"].select("key", "value").groupBy(
            "key").applyInPandas(
                lambda pdf: pdf.assign(value=pdf["value"].fillna(0).cumsum()).tail(1),
                "key string, value double")),
        "sql_tpch_like": lambda t: _tpch_like(t),
    }


def _tpch_like(t: dict[str, Any]) -> Rows:
    """A TPC-H-shaped query (Q3/Q10 style): join, filter, aggregate, order, limit."""
    spark = t["left"].sparkSession
    t["left"].createOrReplaceTempView("orders")
    t["right"].createOrReplaceTempView("customer")
    return canonical(spark.sql("""
        SELECT c.key, count(DISTINCT o.id) AS orders, sum(o.price) AS revenue,
               max(o.value) AS top
        FROM orders o JOIN customer c ON o.key = c.key
        WHERE o.value IS NOT NULL AND c.price > 0
        GROUP BY c.key
        ORDER BY revenue DESC, c.key
        LIMIT 20"""), ordered=True)


OPERATIONS = [
    "apply_in_pandas", "distinct", "drop_duplicates", "empty_input", "full_outer_join",
    "group_by_agg", "left_anti_join", "left_outer_join", "left_semi_join", "order_by",
    "partition_larger_than_a_block", "repartition_by_column", "repartition_by_number",
    "right_outer_join", "shuffled_hash_join", "sort_merge_join", "sql_tpch_like",
    "union_group_by", "window"]
# SQL settings the operations run under (AQE on and off; few, odd and many partitions)
SETTINGS = [
    {"spark.sql.adaptive.enabled": "false", "spark.sql.shuffle.partitions": "7"},
    {"spark.sql.adaptive.enabled": "false", "spark.sql.shuffle.partitions": "1"},
    {"spark.sql.adaptive.enabled": "true", "spark.sql.shuffle.partitions": "200",
     "spark.sql.adaptive.coalescePartitions.enabled": "true",
     "spark.sql.adaptive.localShuffleReader.enabled": "true",
     # split skewed partitions (map-range reads) even at these sizes
     "spark.sql.adaptive.skewJoin.enabled": "true",
     "spark.sql.adaptive.skewJoin.skewedPartitionFactor": "1",
     "spark.sql.adaptive.skewJoin.skewedPartitionThresholdInBytes": "1k",
     "spark.sql.adaptive.advisoryPartitionSizeInBytes": "16k"},
]


def run_all(spark: Any, settings: Sequence[int] = range(len(SETTINGS))
            ) -> dict[tuple[str, int], Rows]:
    """Every operation under every setting (or under those whose indices are given)."""
    operations = _operations()
    assert sorted(operations) == OPERATIONS
    t = tables(spark)
    answers = {}
    for index in settings:
        for key, value in SETTINGS[index].items():
            spark.conf.set(key, value)
        for name in OPERATIONS:
            answers[name, index] = operations[name](t)
    return answers


def write_rmat_edges(path: str, scale: int = 10, edges: int = 8000, seed: int = 7) -> None:
    """An R-MAT power-law graph (Graph500's quadrant probabilities) as GraphLoader's edge
    list, the same in every run."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for _ in range(edges):
            src = dst = 0
            for bit in range(scale):
                r = rng.random()
                src |= (r >= 0.76) << bit  # quadrants c, d
                dst |= (0.57 <= r < 0.76 or r >= 0.95) << bit  # b, d
            out.write(f"{src}\t{dst}\n")


def graphx_ranks(sc: Any, edge_file: str, out_dir: str) -> dict[str, dict[int, float]]:
    """GraphX's static (10 iterations) and until-convergence PageRank, through py4j."""
    import glob

    jvm = sc._jvm
    memory = jvm.org.apache.spark.storage.StorageLevel.MEMORY_ONLY()
    graph = jvm.org.apache.spark.graphx.GraphLoader.edgeListFile(
        sc._jsc.sc(), edge_file, False, 4, memory, memory)
    ranks = {}
    for name, ranked in (("static", graph.ops().staticPageRank(10, 0.15)),
                         ("convergence", graph.ops().pageRank(1e-6, 0.15))):
        ranked.vertices().saveAsTextFile(f"{out_dir}/{name}")
        ranks[name] = {}
        for part in glob.glob(f"{out_dir}/{name}/part-*"):
            with open(part) as lines:
                for line in lines:
                    vertex, rank = line.strip().strip("()").split(",")
                    ranks[name][int(vertex)] = float(rank)
    return ranks


def assert_same_ranks(theirs: dict[int, float], mine: dict[int, float]) -> None:
    """GraphX ranks equal to Spark's own within 1e-9, over the same vertices."""
    assert len(theirs) > 500 and mine.keys() == theirs.keys()
    assert all(abs(mine[v] - theirs[v]) <= 1e-9 * abs(theirs[v]) for v in theirs)


def map_output_counts(sc: Any) -> list[list[int]]:
    """For every shuffle of the run: [map outputs netspark's servers hold, map outputs]."""
    manager = sc._jvm.org.apache.spark.shuffle.netspark.NetsparkShuffleManager
    shuffles = sc._jsc.sc().newShuffleId()  # one past the last shuffle of the run
    return [list(manager.mapOutputsThroughNetspark(i)) for i in range(shuffles)]
