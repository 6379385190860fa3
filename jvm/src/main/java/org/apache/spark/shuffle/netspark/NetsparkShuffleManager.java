package org.apache.spark.shuffle.netspark;

import java.io.IOException;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.shuffle.sort.SortShuffleManager;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Option;
import scala.Product2;

/**
 * The JVM side of netspark's one flag: the shuffle manager of DataFrame/SQL exchanges, GraphX,
 * and the JVM shuffle that carries the Python path's handles, set as
 * {@code spark.shuffle.manager} (with {@link NetsparkDataIO} as Spark's shuffle IO plugin)
 * when {@code spark.netspark.enabled=true}, unless {@code spark.netspark.jvm=false}.
 *
 * <p>Map side: Spark's own writers (bypass-merge, unsafe, sort; chosen as Spark chooses) write
 * through the plugin into arena blocks, committed to the executor's netspark server; the map
 * status names that server. Reduce side: {@link NetsparkShuffleReader} has the server fetch
 * and reads the landed blocks in place. One server per executor serves Python and JVM data.
 *
 * <p>Until the driver's Python side has started netspark ({@link #configure}), and for any
 * shuffle registered before, everything is Spark's sort shuffle, unchanged.
 *
 * <p>Why extend SortShuffleManager: Spark 4.3 accepts only a {@code BlockingShuffleManager},
 * and SortShuffleManager's writers, handles and block resolver are what the plugin and the
 * fallback need. Why this package: the shuffle types are {@code private[spark]} in Scala.
 */
public class NetsparkShuffleManager extends SortShuffleManager {
  private static final Logger LOG = LoggerFactory.getLogger(NetsparkShuffleManager.class);
  private static final AtomicBoolean LOGGED = new AtomicBoolean();
  // One manager per driver or executor (local mode's executor shares the driver's), and one
  // more per SparkContext a process makes in turn; these say that one exists and where.
  private static volatile boolean active;
  private static volatile String side;
  private static volatile Runtime runtime; // the driver's, once netspark is on

  /** The constructor Spark tries first (Utils.instantiateSerializerOrShuffleManager). */
  public NetsparkShuffleManager(SparkConf conf, boolean isDriver) {
    super(conf);
    started(isDriver ? "driver" : "executor " + conf.get("spark.executor.id", "?"));
  }

  /** For callers that construct shuffle managers from a conf alone. */
  public NetsparkShuffleManager(SparkConf conf) {
    super(conf);
    String id = conf.get("spark.executor.id", "driver");
    started("driver".equals(id) ? "driver" : "executor " + id);
  }

  private static void started(String where) {
    if (LOGGED.compareAndSet(false, true)) {
      side = where;
      active = true;
      LOG.info("netspark shuffle manager active on {} (JVM shuffles go through netspark once "
          + "its driver side is on)", "driver".equals(where) ? "the driver" : where);
    }
  }

  /**
   * Called by the driver's Python side once its coordinator runs: from now on new shuffles go
   * through netspark. {@code json}: the executors' Python and the environment of its server
   * launcher (netspark/spark/launch.py); null turns netspark off for new shuffles.
   */
  public static void configure(String json) throws IOException {
    runtime = json == null ? null : Runtime.parse(json);
  }

  /** Whether a netspark shuffle manager was created in this JVM. */
  public static boolean active() {
    return active;
  }

  /** "driver" or "executor <id>": the side that created the first one in this JVM, or null. */
  public static String side() {
    return side;
  }

  /**
   * On the driver: how many of shuffle {@code shuffleId}'s registered map outputs netspark's
   * servers hold, and how many it has in all (so tests and users can see where JVM shuffles
   * went; py4j cannot reflect on SparkEnv itself in the 4.3 wheel).
   */
  public static int[] mapOutputsThroughNetspark(int shuffleId) {
    org.apache.spark.MapOutputTrackerMaster tracker =
        (org.apache.spark.MapOutputTrackerMaster) SparkEnv.get().mapOutputTracker();
    int[] counts = new int[2];
    if (!tracker.containsShuffle(shuffleId)) {
      return counts;
    }
    for (MapStatus status : tracker.shuffleStatuses().apply(shuffleId).mapStatuses()) {
      if (status != null) {
        counts[1]++;
        counts[0] += PeerLocation.parse(status.location()).isPresent() ? 1 : 0;
      }
    }
    return counts;
  }

  /** On the driver: the bytes of shuffle {@code shuffleId}'s registered map outputs for
   * reduce partitions 0 to {@code partitions} - 1, as their map statuses say. */
  public static long mapOutputBytes(int shuffleId, int partitions) {
    org.apache.spark.MapOutputTrackerMaster tracker =
        (org.apache.spark.MapOutputTrackerMaster) SparkEnv.get().mapOutputTracker();
    long bytes = 0;
    if (tracker.containsShuffle(shuffleId)) {
      for (MapStatus status : tracker.shuffleStatuses().apply(shuffleId).mapStatuses()) {
        for (int r = 0; status != null && r < partitions; r++) {
          bytes += status.getSizeForBlock(r);
        }
      }
    }
    return bytes;
  }

  @Override
  public <K, V, C> ShuffleHandle registerShuffle(int shuffleId, ShuffleDependency<K, V, C> dep) {
    ShuffleHandle spark = super.registerShuffle(shuffleId, dep);
    Runtime current = runtime;
    if (current == null) {
      return spark;
    }
    // Handles are rebuilt from map statuses whose map id is the task attempt id: not so
    // under the old fetch protocol, where they are stored as any shuffle's records.
    HandlesPartitioner handles = dep.partitioner() instanceof HandlesPartitioner p
        && !SparkEnv.get().conf().getBoolean("spark.shuffle.useOldFetchProtocol", false)
        ? p : null;
    return new NetsparkShuffleHandle<>(spark, dep, current, handles);
  }

  @Override
  public <K, V> ShuffleWriter<K, V> getWriter(ShuffleHandle handle, long mapId, TaskContext context,
      ShuffleWriteMetricsReporter metrics) {
    if (!(handle instanceof NetsparkShuffleHandle)) {
      return super.getWriter(handle, mapId, context, metrics);
    }
    NetsparkShuffleHandle<?, ?, ?> ours = (NetsparkShuffleHandle<?, ?, ?>) handle;
    ExecutorServer server = server(ours);
    if (ours.pythonHandles != null) {
      return PythonHandles.writer(server, ours.pythonHandles, mapId, context, metrics);
    }
    NetsparkDataIO.SHUFFLES.put(handle.shuffleId(), server);
    ShuffleWriter<K, V> spark = super.getWriter(ours.spark, mapId, context, metrics);
    return new ShuffleWriter<K, V>() {
      @Override
      public void write(scala.collection.Iterator<Product2<K, V>> records) throws IOException {
        spark.write(records);
      }

      @Override
      public Option<MapStatus> stop(boolean success) {
        Option<MapStatus> status = spark.stop(success);
        if (status.isDefined()) { // reducers find our server in the status
          status.get().updateLocation(PeerLocation.of(status.get().location(), server.location));
        }
        return status;
      }

      @Override
      public long[] getPartitionLengths() {
        return spark.getPartitionLengths();
      }
    };
  }

  @Override
  public <K, C> ShuffleReader<K, C> getReader(ShuffleHandle handle, int startMapIndex,
      int endMapIndex, int startPartition, int endPartition, TaskContext context,
      ShuffleReadMetricsReporter metrics) {
    if (!(handle instanceof NetsparkShuffleHandle)) {
      return super.getReader(handle, startMapIndex, endMapIndex, startPartition, endPartition,
          context, metrics);
    }
    @SuppressWarnings("unchecked")
    NetsparkShuffleHandle<K, ?, C> ours = (NetsparkShuffleHandle<K, ?, C>) handle;
    var locations = SparkEnv.get().mapOutputTracker().getMapSizesByExecutorId(
        handle.shuffleId(), startMapIndex, endMapIndex, startPartition, endPartition);
    if (ours.pythonHandles != null) {
      return PythonHandles.reader(ours.pythonHandles, handle.shuffleId(), locations,
          context, metrics);
    }
    ExecutorServer server = server(ours);
    return new NetsparkShuffleReader<>(server, ours,
        FetchPlan.of(locations, server.requestBudget, server.peer.hostKey), context, metrics);
  }

  private static ExecutorServer server(NetsparkShuffleHandle<?, ?, ?> handle) {
    try {
      return ExecutorServer.get(handle.runtime);
    } catch (IOException e) {
      throw new java.io.UncheckedIOException(e);
    }
  }

  @Override
  public boolean unregisterShuffle(int shuffleId) {
    ExecutorServer server = NetsparkDataIO.SHUFFLES.remove(shuffleId);
    if (server != null) {
      try {
        server.call("unregister", Map.of("shuffle", ArenaMapOutputWriter.registryShuffle(shuffleId)));
      } catch (IOException e) {
        LOG.warn("netspark: could not free shuffle {} on this executor's server: {}", shuffleId,
            e.getMessage());
      }
    }
    return super.unregisterShuffle(shuffleId);
  }

  @Override
  public void stop() {
    NetsparkDataIO.SHUFFLES.clear();
    ExecutorServer.forget();
    super.stop();
  }
}
