package org.apache.spark.shuffle.netspark;

import org.apache.spark.api.python.PythonPartitioner;

/**
 * The partitioner of a Python RDD shuffle whose records are netspark handles (one per map
 * attempt and non-empty reduce partition; {@code netspark/spark/handles.py}), made by the
 * Python side when the JVM part is on. It partitions exactly as PySpark's own does (so
 * co-partitioned RDDs stay co-partitioned); it only tells the shuffle manager that this
 * shuffle's records need not be stored: {@link PythonHandles} keeps what they say in the
 * map statuses instead, and makes them again for the reducers.
 */
public class HandlesPartitioner extends PythonPartitioner {
  private static final long serialVersionUID = 1L;

  /** The Python side's shuffle id, which its handles carry. */
  final int pythonShuffle;

  public HandlesPartitioner(int numPartitions, long pyPartitionFunctionId, int pythonShuffle) {
    super(numPartitions, pyPartitionFunctionId);
    this.pythonShuffle = pythonShuffle;
  }
}
