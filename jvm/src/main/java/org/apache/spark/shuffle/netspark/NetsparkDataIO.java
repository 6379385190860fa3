package org.apache.spark.shuffle.netspark;

import java.io.IOException;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.api.ShuffleDataIO;
import org.apache.spark.shuffle.api.ShuffleDriverComponents;
import org.apache.spark.shuffle.api.ShuffleExecutorComponents;
import org.apache.spark.shuffle.api.ShuffleMapOutputWriter;
import org.apache.spark.shuffle.api.SingleSpillShuffleMapOutputWriter;
import org.apache.spark.shuffle.sort.io.LocalDiskShuffleDataIO;

/**
 * Where Spark's own map-side writers put their bytes ({@code spark.shuffle.sort.io.plugin.class}):
 * for netspark's shuffles, into arena blocks ({@link ArenaMapOutputWriter}); for any other,
 * local disk as always. All three of Spark's write paths (bypass-merge, unsafe, sort) end in
 * this API, so map-side combine, serialization, compression and encryption stay Spark's.
 */
public final class NetsparkDataIO implements ShuffleDataIO {
  /** Shuffles whose map outputs go to the executor's server, and through which server. */
  static final Map<Integer, ExecutorServer> SHUFFLES = new ConcurrentHashMap<>();

  private final LocalDiskShuffleDataIO localDisk;

  public NetsparkDataIO(SparkConf conf) {
    localDisk = new LocalDiskShuffleDataIO(conf);
  }

  @Override
  public ShuffleExecutorComponents executor() {
    ShuffleExecutorComponents disk = localDisk.executor();
    return new ShuffleExecutorComponents() {
      @Override
      public void initializeExecutor(String appId, String execId, Map<String, String> extra) {
        disk.initializeExecutor(appId, execId, extra);
      }

      @Override
      public ShuffleMapOutputWriter createMapOutputWriter(int shuffleId, long mapTaskId,
          int numPartitions) throws IOException {
        ExecutorServer server = SHUFFLES.get(shuffleId);
        if (server == null) {
          return disk.createMapOutputWriter(shuffleId, mapTaskId, numPartitions);
        }
        return new ArenaMapOutputWriter(server, shuffleId, mapTaskId, numPartitions);
      }

      @Override
      public Optional<SingleSpillShuffleMapOutputWriter> createSingleFileMapOutputWriter(
          int shuffleId, long mapId) throws IOException {
        return SHUFFLES.containsKey(shuffleId) ? Optional.empty()
            : disk.createSingleFileMapOutputWriter(shuffleId, mapId);
      }
    };
  }

  @Override
  public ShuffleDriverComponents driver() {
    return localDisk.driver();
  }
}
