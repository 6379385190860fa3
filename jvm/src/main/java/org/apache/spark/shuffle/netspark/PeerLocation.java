package org.apache.spark.shuffle.netspark;

import java.util.Optional;

import org.apache.spark.storage.BlockManagerId;

/**
 * Where a JVM map output lives, kept in its MapStatus: the writer's BlockManagerId with the
 * netspark server's address as topology info (as spark-rapids keeps its UCX port there), so
 * reducers know which server to ask without asking anyone, and Spark's own bookkeeping
 * (executor loss, fetch failures, locality) keeps working on the same executor and host.
 */
final class PeerLocation {
  private static final String PREFIX = "netspark\u0001";
  private static final String SEPARATOR = "\u0001";

  final String host;
  final int port;
  final String hostKey;
  final String arenaPath;

  private PeerLocation(String host, int port, String hostKey, String arenaPath) {
    this.host = host;
    this.port = port;
    this.hostKey = hostKey;
    this.arenaPath = arenaPath;
  }

  static String format(String host, int port, String hostKey, String arenaPath) {
    return PREFIX + String.join(SEPARATOR, host, Integer.toString(port), hostKey, arenaPath);
  }

  /** This executor's block manager id, carrying our server's address. */
  static BlockManagerId of(BlockManagerId executor, String location) {
    return org.apache.spark.storage.BlockManagerId$.MODULE$.apply(executor.executorId(), executor.host(), executor.port(),
        scala.Option.apply(location));
  }

  /** The server of a map output's location, if netspark wrote it. */
  static Optional<PeerLocation> parse(BlockManagerId id) {
    return id.topologyInfo().isEmpty() ? Optional.empty() : parse(id.topologyInfo().get());
  }

  /** The server a location string of {@link #format} names. */
  static Optional<PeerLocation> parse(String location) {
    if (!location.startsWith(PREFIX)) {
      return Optional.empty();
    }
    String[] parts = location.substring(PREFIX.length()).split(SEPARATOR, -1);
    if (parts.length != 4) {
      return Optional.empty();
    }
    return Optional.of(new PeerLocation(parts[0], Integer.parseInt(parts[1]), parts[2], parts[3]));
  }
}
