package org.apache.spark.shuffle.netspark;

import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.sort.SortShuffleManager;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The JVM side of netspark's one flag: the shuffle manager of DataFrame/SQL exchanges and
 * GraphX, set as {@code spark.shuffle.manager} (with its jar on {@code spark.jars}) when
 * {@code spark.netspark.enabled=true} and {@code spark.netspark.jvm=true}.
 *
 * <p>At this step it only proves the build and load path: Spark behaves exactly as with its own
 * sort shuffle, because every method is SortShuffleManager's. The next steps override the
 * writers and readers so that JVM map outputs go into the executor's netspark arena and are
 * served by the same server and transports as the Python path's.
 *
 * <p>Why extend SortShuffleManager rather than implement the traits: Spark 4.3 accepts only a
 * {@code BlockingShuffleManager} as {@code spark.shuffle.manager}, and SortShuffleManager is one
 * whose {@code shuffleBlockResolver()} keeps serving sort-written files to BlockManager fetches,
 * decommissioning and {@code unregisterShuffle}. Overriding what we replace, one method at a
 * time, keeps everything else Spark's own.
 *
 * <p>Why this package: the manager and shuffle types are {@code private[spark]} in Scala; Java
 * ignores that, but living under {@code org.apache.spark} keeps the code legal for scalac too,
 * should a later step move to Scala.
 */
public class NetsparkShuffleManager extends SortShuffleManager {
  private static final Logger LOG = LoggerFactory.getLogger(NetsparkShuffleManager.class);
  private static final AtomicBoolean LOGGED = new AtomicBoolean();
  // Spark makes one manager per driver or executor (local mode's executor shares the
  // driver's), and one more per SparkContext a process makes in turn; these say that one
  // exists and on which side the first was made, for tests and diagnostics through py4j.
  private static volatile boolean active;
  private static volatile String side;

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
      LOG.info("netspark shuffle manager active on {} (JVM shuffles still written and read "
          + "as by Spark's sort shuffle)", "driver".equals(where) ? "the driver" : where);
    }
  }

  /** Whether a netspark shuffle manager was created in this JVM. */
  public static boolean active() {
    return active;
  }

  /** "driver" or "executor <id>": the side that created the first one in this JVM, or null. */
  public static String side() {
    return side;
  }
}
