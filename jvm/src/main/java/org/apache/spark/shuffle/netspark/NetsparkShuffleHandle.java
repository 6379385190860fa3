package org.apache.spark.shuffle.netspark;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;
import org.apache.spark.shuffle.ShuffleHandle;

/**
 * A shuffle that goes through netspark: Spark's own handle (which picks Spark's map-side
 * writer) and what the executors need to reach their servers.
 */
final class NetsparkShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
  private static final long serialVersionUID = 1L;

  final ShuffleHandle spark;
  final Runtime runtime;
  /** Python handles kept in the map statuses ({@link PythonHandles}), or null. */
  final HandlesPartitioner pythonHandles;

  NetsparkShuffleHandle(ShuffleHandle spark, ShuffleDependency<K, V, C> dependency, Runtime runtime,
      HandlesPartitioner pythonHandles) {
    super(spark.shuffleId(), dependency);
    this.spark = spark;
    this.runtime = runtime;
    this.pythonHandles = pythonHandles;
  }
}
