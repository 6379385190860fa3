"""The RDD shuffle entry points, rerouted through netspark for activated contexts.

`RDD.partitionBy` is PySpark's one shuffle primitive (groupByKey, reduceByKey,
joins, cogroup, sortByKey, distinct, ... all reach it); `coalesce(shuffle=True)`
(and so `repartition`) goes through the JVM instead, so it is rerouted here too.
The shape of the JVM side is kept exactly: a `PairwiseRDD` partitioned by a
`PythonPartitioner(n, id(partitionFunc))`, so partitioner-aware unions and
co-partitioned joins gain no shuffle. Only the records' bytes take another road.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pyspark.core.rdd import RDD, Partitioner, portable_hash
from pyspark.serializers import NoOpSerializer
from pyspark.taskcontext import TaskContext
from pyspark.traceback_utils import SCCallSiteSync

from netspark.spark import tasks

_ORIGINAL: dict[str, Callable[..., Any]] = {}


def install() -> None:
    """Reroutes the RDD shuffles (once per process); inactive contexts are untouched."""
    if _ORIGINAL:
        return
    _ORIGINAL["partitionBy"] = RDD.partitionBy
    _ORIGINAL["coalesce"] = RDD.coalesce
    RDD.partitionBy = partitionBy  # type: ignore[method-assign]
    RDD.coalesce = coalesce  # type: ignore[method-assign]


def _state(rdd: RDD) -> Any:
    return getattr(rdd.ctx, "_netspark", None)


def partitionBy(self: RDD, numPartitions: int | None,
                partitionFunc: Callable[[Any], int] = portable_hash) -> RDD:
    state = _state(self)
    if state is None:
        return _ORIGINAL["partitionBy"](self, numPartitions, partitionFunc)
    partitions = numPartitions if numPartitions is not None \
        else self._defaultReducePartitions()
    partitioner = Partitioner(partitions, partitionFunc)
    if self.partitioner == partitioner:
        return self
    shuffled = _shuffle(self, partitions, partitionFunc, state)
    shuffled.partitioner = partitioner
    return shuffled


def coalesce(self: RDD, numPartitions: int, shuffle: bool = False) -> RDD:
    state = _state(self)
    if state is None or not shuffle:
        return _ORIGINAL["coalesce"](self, numPartitions, shuffle)
    if not numPartitions > 0:
        raise ValueError("Number of partitions must be positive.")
    keyed = self.mapPartitionsWithIndex(
        lambda split, it: tasks.round_robin(split, it, numPartitions))
    return _shuffle(keyed, numPartitions, _identity, state).values()


def _identity(key: int) -> int:
    return key


def _shuffle(rdd: RDD, partitions: int, partition_func: Callable[[Any], int],
             state: Any) -> RDD:
    shuffle_id = state.next_shuffle_id()
    state.metrics_param.partitions[shuffle_id] = partitions
    metrics = state.metrics

    def report(counters: dict[str, Any]) -> None:
        metrics.add({shuffle_id: counters})

    def map_side(split: int, records: Iterable[Any]) -> Iterable[bytes]:
        attempt = TaskContext.get().taskAttemptId() & 0xFFFFFFFF
        return tasks.write_map_output(shuffle_id, split, records, partition_func, partitions,
                                      attempt, report)

    keyed = rdd.mapPartitionsWithIndex(map_side, preservesPartitioning=True)
    keyed._bypass_serializer = True  # type: ignore[attr-defined]
    jvm = rdd.ctx._jvm
    with SCCallSiteSync(rdd.context):
        pairs = jvm.PairwiseRDD(keyed._jrdd.rdd()).asJavaPairRDD()
        if state.jvm_shuffles:  # handles kept in map statuses, not stored (PythonHandles.java)
            jpartitioner = jvm.org.apache.spark.shuffle.netspark.HandlesPartitioner(
                partitions, id(partition_func), shuffle_id)
        else:
            jpartitioner = jvm.PythonPartitioner(partitions, id(partition_func))
    shuffled = pairs.partitionBy(jpartitioner)
    state.track(shuffled.rdd().dependencies().head().shuffleId(), shuffle_id)
    handles = RDD(jvm.PythonRDD.valueOfPair(shuffled), rdd.ctx, NoOpSerializer())
    spark_reruns = state.jvm_shuffles
    return handles.mapPartitionsWithIndex(
        lambda split, it: tasks.read_reduce_partition(shuffle_id, split, it, report,
                                                      spark_reruns),
        preservesPartitioning=True)
