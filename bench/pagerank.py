"""PageRank, netspark against Spark's own shuffle (the paper's Fig. 6).

    python bench/pagerank.py --scale 16 --edge-factor 8 --iterations 5 --rounds 2

The PySpark RDD PageRank of Spark's `examples/src/main/python/pagerank.py` (links
grouped by source and cached; each iteration joins them with the ranks, spreads
contributions, `reduceByKey(add)` and damps), on a deterministic R-MAT power-law
graph (Graph500's parameters). Each iteration is forced and timed on its own. The
final ranks are checked against an exact numpy power iteration of the same
formula, and every mode's ranks against Spark's, both within `--tolerance`.
"""

from __future__ import annotations

import argparse
import sys
from operator import add
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import sparkrun  # noqa: E402

RMAT = (0.57, 0.19, 0.19)  # a, b, c (d = 0.05): Graph500's quadrant probabilities


def rmat_edges(scale: int, edges: int, seed: int) -> np.ndarray:
    """`edges` (src, dst) pairs of an R-MAT graph on 2**scale vertices, relabelled at random."""
    rng = np.random.default_rng(seed)
    src = np.zeros(edges, dtype=np.int64)
    dst = np.zeros(edges, dtype=np.int64)
    a, b, c = RMAT
    for bit in range(scale):
        r = rng.random(edges)
        down = r >= a + b  # quadrants c or d: the source's bit is set
        right = ((r >= a) & (r < a + b)) | (r >= a + b + c)  # b or d: the destination's
        src |= down.astype(np.int64) << bit
        dst |= right.astype(np.int64) << bit
    relabel = np.random.default_rng(seed + 1).permutation(1 << scale)
    return np.stack([relabel[src], relabel[dst]], axis=1)


def edge_slice(args: argparse.Namespace, split: int) -> list[tuple[int, int]]:
    per = args.edge_factor * (1 << args.scale) // args.partitions
    return [(int(s), int(d)) for s, d in rmat_edges(args.scale, per, seed=1000 + split)]


def contributions(urls, rank):
    urls = list(urls)
    for url in urls:
        yield url, rank / len(urls)


def exact_ranks(args: argparse.Namespace) -> dict[int, float]:
    """The example's formula in numpy: only vertices with in-links keep a rank."""
    edges = np.unique(np.concatenate([np.array(edge_slice(args, s), dtype=np.int64)
                                      for s in range(args.partitions)]), axis=0)
    src, dst = edges[:, 0], edges[:, 1]
    n = 1 << args.scale
    outdeg = np.bincount(src, minlength=n)
    ranked = outdeg > 0
    rank = np.where(ranked, 1.0, 0.0)
    for _ in range(args.iterations):
        sends = ranked & (outdeg > 0)  # in the join of links and ranks
        share = np.where(sends, rank / np.maximum(outdeg, 1), 0.0)
        ranked = np.bincount(dst, weights=sends[src], minlength=n) > 0
        rank = np.where(ranked, 0.15 + 0.85 * np.bincount(dst, weights=share[src], minlength=n),
                        0.0)
    return {int(v): float(rank[v]) for v in np.flatnonzero(ranked)}


def close(a: dict[int, float], b: dict[int, float], tolerance: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tolerance * abs(a[k]) for k in a)


def run_mode(sc, args) -> tuple[dict[int, float], list[sparkrun.JobFigures]]:
    edges = sc.parallelize(range(args.partitions), args.partitions).flatMap(
        lambda split: edge_slice(args, split))
    links = edges.distinct().groupByKey().cache()
    links.count()  # the graph, built and cached untimed (as the paper times iterations)
    ranks = links.map(lambda url_neighbors: (url_neighbors[0], 1.0))
    figures = []
    for i in range(args.iterations):
        contribs = links.join(ranks).flatMap(
            lambda url_urls_rank: contributions(url_urls_rank[1][0], url_urls_rank[1][1]))
        previous = ranks
        ranks = contribs.reduceByKey(add).mapValues(lambda rank: rank * 0.85 + 0.15).cache()
        _, job = sparkrun.timed_job(sc, f"iteration {i + 1}", ranks.count)
        figures.append(job)
        previous.unpersist()
    return dict(ranks.collect()), figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=16, help="2**scale vertices")
    parser.add_argument("--edge-factor", type=int, default=8, help="edges per vertex")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=16,
                        help="spark.default.parallelism, and the edges' partitions")
    parser.add_argument("--tolerance", type=float, default=1e-9,
                        help="relative difference allowed between ranks (float sums in "
                             "another order)")
    report.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.scale <= 26 or args.edge_factor < 1 or args.iterations < 1:
        parser.error("--scale must be 1-26, --edge-factor and --iterations at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title = (f"PageRank, {args.iterations} iterations, R-MAT scale {args.scale} "
             f"({1 << args.scale:,} vertices, {args.edge_factor << args.scale:,} edges), "
             f"{args.partitions} partitions, {report.where(args)}")
    exact = exact_ranks(args)

    def agree(reference: dict[int, float], ranks: dict[int, float]) -> bool:
        return close(exact, ranks, args.tolerance) and close(reference, ranks, args.tolerance)

    settings = {"spark.default.parallelism": str(args.partitions)}
    return report.run_benchmark("pagerank", title, args, settings, run_mode, agree)


if __name__ == "__main__":
    sys.exit(main())
