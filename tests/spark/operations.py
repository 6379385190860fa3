"""Every RDD operation that shuffles, as functions of a SparkContext returning plain,
comparable results. Run with netspark off and on, they must return the same."""

from __future__ import annotations

import gc
import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

Op = Callable[[Any], Any]
OPERATIONS: dict[str, Op] = {}


def op(fn: Op) -> Op:
    OPERATIONS[fn.__name__] = fn
    return fn


def pairs(sc: Any, n: int = 20_000, keys: int = 97, parts: int = 7) -> Any:
    return sc.parallelize([(i % keys, i) for i in range(n)], parts)


def norm(items: list) -> list:
    return sorted(items, key=repr)


@op
def group_by_key(sc):
    return norm((k, sorted(v)) for k, v in pairs(sc).groupByKey().collect())


@op
def reduce_by_key(sc):
    return norm(pairs(sc).reduceByKey(lambda a, b: a + b).collect())


@op
def aggregate_by_key(sc):
    return norm(pairs(sc).aggregateByKey((0, 0), lambda acc, v: (acc[0] + v, acc[1] + 1),
                                         lambda a, b: (a[0] + b[0], a[1] + b[1])).collect())


@op
def fold_by_key(sc):
    return norm(pairs(sc).foldByKey(0, lambda a, b: a + b).collect())


@op
def combine_by_key(sc):
    return norm(pairs(sc).combineByKey(lambda v: [v], lambda c, v: c + [v],
                                       lambda a, b: a + b).mapValues(sorted).collect())


@op
def group_by(sc):
    rdd = sc.parallelize(range(5000), 5).groupBy(lambda x: x % 13)
    return norm((k, sorted(v)) for k, v in rdd.collect())


def two_sides(sc):
    left = sc.parallelize([(i % 50, f"l{i}") for i in range(600)], 4)
    right = sc.parallelize([(i % 70, f"r{i}") for i in range(0, 700, 3)], 3)
    return left, right


@op
def join(sc):
    left, right = two_sides(sc)
    return norm(left.join(right).collect())


@op
def left_outer_join(sc):
    left, right = two_sides(sc)
    return norm(left.leftOuterJoin(right).collect())


@op
def right_outer_join(sc):
    left, right = two_sides(sc)
    return norm(left.rightOuterJoin(right).collect())


@op
def full_outer_join(sc):
    left, right = two_sides(sc)
    return norm(left.fullOuterJoin(right).collect())


@op
def cogroup(sc):
    left, right = two_sides(sc)
    return norm((k, (sorted(a), sorted(b))) for k, (a, b) in left.cogroup(right).collect())


@op
def group_with(sc):
    left, right = two_sides(sc)
    third = sc.parallelize([(i, i) for i in range(10)], 2)
    return norm((k, tuple(sorted(x) for x in vs))
                for k, vs in left.groupWith(right, third).collect())


@op
def subtract_by_key(sc):
    left, right = two_sides(sc)
    return norm(left.subtractByKey(right).collect())


@op
def subtract(sc):
    return sorted(sc.parallelize(range(1000), 4).subtract(sc.parallelize(range(0, 1000, 7)))
                  .collect())


@op
def intersection(sc):
    return sorted(sc.parallelize(range(0, 1000, 2), 3)
                  .intersection(sc.parallelize(range(0, 1000, 3), 5)).collect())


@op
def distinct(sc):
    return sorted(sc.parallelize([i % 333 for i in range(5000)], 6).distinct().collect())


@op
def sort_by_key_ascending(sc):
    return pairs(sc, 3000, 3000).map(lambda kv: (kv[1] * 7919 % 3001, kv[1])).sortByKey() \
        .collect()


@op
def sort_by_key_descending(sc):
    return pairs(sc, 3000, 3000).map(lambda kv: (kv[1] * 7919 % 3001, kv[1])) \
        .sortByKey(ascending=False, numPartitions=3).collect()


@op
def sort_by_key_with_keyfunc(sc):
    words = sc.parallelize([(f"Word{i % 17}x{i}", i) for i in range(500)], 4)
    return words.sortByKey(keyfunc=lambda k: k.lower()[::-1]).collect()


@op
def sort_by(sc):
    return sc.parallelize(range(2000), 5).sortBy(lambda x: (x % 10, -x)).collect()


@op
def partition_by_custom_function(sc):
    return pairs(sc, 2000).partitionBy(5, lambda k: k * 3 + 1).glom() \
        .map(lambda part: sorted(part)).collect()


@op
def repartition_and_sort_within_partitions(sc):
    parts = pairs(sc, 3000).repartitionAndSortWithinPartitions(
        4, lambda k: k % 4, ascending=False).glom().collect()
    # sorted by key; the order of equal keys depends on fetch order, in Spark too
    in_order = all([k for k, _ in p] == sorted((k for k, _ in p), reverse=True) for p in parts)
    return in_order, [sorted(p) for p in parts]


@op
def repartition(sc):
    rdd = sc.parallelize(range(10_000), 3).repartition(7)
    sizes = rdd.glom().map(len).collect()
    return rdd.getNumPartitions(), sorted(rdd.collect()), max(sizes) - min(sizes) < 500


@op
def coalesce_with_shuffle(sc):
    rdd = sc.parallelize(range(5000), 8).coalesce(3, shuffle=True)
    return rdd.getNumPartitions(), sorted(rdd.collect())


@op
def count_by_key(sc):
    return sorted(pairs(sc).countByKey().items())


@op
def mixed_keys(sc):
    keys = [None, (1, "a"), 2.5, "s", b"b", np.int64(7), np.float64(1.25), -3, (None, (2,)),
            True, frozenset({1})]
    data = [(keys[i % len(keys)], i) for i in range(3000)]
    out = sc.parallelize(data, 5).groupByKey().mapValues(sorted).collect()
    return norm((repr(k), type(k).__name__, v) for k, v in out)


@op
def one_key_with_a_million_values(sc):
    rdd = sc.parallelize(range(1_000_000), 4).map(lambda i: ("hot", i))
    [(key, values)] = rdd.groupByKey().mapValues(lambda v: (len(v), sum(v))).collect()
    return key, values


@op
def empty_partitions(sc):
    return norm(sc.parallelize([(1, 1), (2, 2)], 8).groupByKey(6).mapValues(list).collect())


@op
def empty_rdd(sc):
    return sc.emptyRDD().groupByKey().collect(), sc.parallelize([], 3).distinct().collect()


@op
def one_partition(sc):
    return norm(pairs(sc).reduceByKey(lambda a, b: a + b, numPartitions=1).collect())


@op
def a_thousand_partitions(sc):
    rdd = pairs(sc, 5000, 1500).reduceByKey(lambda a, b: a + b, numPartitions=1000)
    return rdd.getNumPartitions(), norm(rdd.collect())


@op
def values_larger_than_a_block(sc):
    big = sc.parallelize(range(6), 3).map(
        lambda i: (i % 2, np.random.default_rng(i).bytes(10 << 20)))
    out = big.groupByKey().mapValues(
        lambda vs: sorted(hashlib.sha256(v).hexdigest() for v in vs)).collect()
    return norm(out)


@op
def numpy_arrays(sc):
    rdd = sc.parallelize(range(200), 4).map(lambda i: (i % 5, np.arange(i, dtype=np.float32)))
    return norm((k, sorted(float(a.sum()) for a in vs)) for k, vs in rdd.groupByKey().collect())


@op
def nothing_left_frozen_in_reused_workers(sc):
    """netspark freezes what a large read has read (netspark/spark/collector.py): reused
    workers must find nothing frozen afterwards, after whole reads and reads given up."""
    rdd = pairs(sc, n=200_000, parts=4)  # 100,000 records a reduce partition: they freeze
    counted = rdd.partitionBy(2).count()
    taken = rdd.partitionBy(2).mapPartitions(
        lambda it: [len(list(itertools.islice(it, 60_000)))]).collect()
    frozen = sc.parallelize(range(8), 8).map(lambda _: gc.get_freeze_count()).collect()
    return counted, taken, frozen
