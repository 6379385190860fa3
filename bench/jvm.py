"""JVM shuffles, netspark against Spark's own sort shuffle: a DataFrame GroupBy and GraphX
PageRank (the paper's benchmark), run from PySpark.

    python bench/jvm.py --job groupby --modes spark,netspark-local,netspark-tcp \\
        --conf spark.netspark.jvm=true --rounds 3 --out docs/results/jvm-groupby
    python bench/jvm.py --job graphx --modes spark,netspark-local,netspark-tcp \\
        --conf spark.netspark.jvm=true --rounds 3 --out docs/results/jvm-graphx

groupby: N rows (int key, V-byte string) generated and cached untimed; the timed job is
`groupBy(key).agg(count, sum(crc32(value)))`, whose reduce stage reads the shuffle; every
mode's answer is checked equal to Spark's. graphx: `staticPageRank` on the R-MAT graph of
bench/pagerank.py, loaded with GraphLoader and cached untimed; ranks checked against
Spark's within `--tolerance`. Both shuffles run in the JVM only (no Python worker), so
`spark.netspark.jvm=true` is what puts them through netspark.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pagerank  # noqa: E402
import report  # noqa: E402
import sparkrun  # noqa: E402


def run_groupby(sc, args) -> tuple[object, list[sparkrun.JobFigures]]:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession(sc)
    spark.conf.set("spark.sql.shuffle.partitions", str(args.partitions))
    spark.conf.set("spark.sql.adaptive.enabled", "false")  # the same plan in every mode
    rows = spark.range(0, args.records, numPartitions=args.partitions).select(
        (F.hash("id") % (args.records // 10)).alias("key"),
        F.expr(f"substring(repeat(sha2(cast(id as string), 256), {args.value_bytes // 64 + 1}),"
               f" 1, {args.value_bytes})").alias("value")).cache()
    rows.count()
    result, figures = sparkrun.timed_job(sc, "groupby", lambda: sorted(
        tuple(r) for r in rows.groupBy("key").agg(
            F.count("*"), F.sum(F.crc32("value"))).collect()))
    rows.unpersist()
    return result, [figures]


def run_graphx(sc, args) -> tuple[dict[int, float], list[sparkrun.JobFigures]]:
    jvm = sc._jvm
    memory = jvm.org.apache.spark.storage.StorageLevel.MEMORY_ONLY()
    graph = jvm.org.apache.spark.graphx.GraphLoader.edgeListFile(
        sc._jsc.sc(), args.edge_file, False, args.partitions, memory, memory).cache()
    graph.edges().count()  # loaded and cached untimed
    out = tempfile.mkdtemp(prefix="netspark-graphx-")

    # GraphX runs one Spark job an iteration (it materializes each iteration's graph)
    ranked, figures = sparkrun.timed_jobs(
        sc, "graphx pagerank", lambda: graph.ops().staticPageRank(args.iterations, 0.15))
    ranked.vertices().saveAsTextFile(out + "/ranks")
    ranks = {}
    for part in sorted(Path(out, "ranks").glob("part-*")):
        for line in part.read_text().splitlines():  # "(vertex,rank)"
            vertex, rank = line.strip("()").split(",")
            ranks[int(vertex)] = float(rank)
        part.unlink()
    for leftover in sorted(Path(out).rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    Path(out).rmdir()
    graph.unpersist(False)
    return ranks, figures


def write_edges(args: argparse.Namespace) -> str:
    """The R-MAT graph of bench/pagerank.py as GraphLoader's edge list file."""
    handle, path = tempfile.mkstemp(prefix="netspark-rmat-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        for split in range(args.partitions):
            out.writelines(f"{s}\t{d}\n" for s, d in pagerank.edge_slice(args, split))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=["groupby", "graphx"], default="groupby")
    parser.add_argument("--records", type=int, default=4_000_000, help="groupby: rows")
    parser.add_argument("--value-bytes", type=int, default=100, help="groupby: bytes a value")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--scale", type=int, default=16, help="graphx: 2**scale vertices")
    parser.add_argument("--edge-factor", type=int, default=8, help="graphx: edges per vertex")
    parser.add_argument("--iterations", type=int, default=5, help="graphx: PageRank iterations")
    parser.add_argument("--tolerance", type=float, default=1e-9,
                        help="graphx: relative difference allowed between ranks")
    report.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.records < 10 or args.value_bytes < 1 or args.partitions < 1:
        parser.error("--records at least 10, --value-bytes and --partitions at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {"spark.default.parallelism": str(args.partitions)}
    if args.job == "groupby":
        title = (f"DataFrame GroupBy of {args.records:,} rows (int key, {args.value_bytes}-byte "
                 f"string), {args.partitions} partitions, {report.where(args)}")
        return report.run_benchmark("jvm-groupby", title, args, settings, run_groupby,
                                    iterations=False)
    title = (f"GraphX PageRank, {args.iterations} iterations, R-MAT scale {args.scale} "
             f"({1 << args.scale:,} vertices, {args.edge_factor << args.scale:,} edges), "
             f"{args.partitions} partitions, {report.where(args)}")
    args.edge_file = write_edges(args)
    try:
        return report.run_benchmark(
            "jvm-graphx", title, args, settings, run_graphx,
            agree=lambda a, b: pagerank.close(a, b, args.tolerance))
    finally:
        os.unlink(args.edge_file)


if __name__ == "__main__":
    sys.exit(main())
