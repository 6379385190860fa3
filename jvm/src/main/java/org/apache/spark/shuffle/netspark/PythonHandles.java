package org.apache.spark.shuffle.netspark;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleBlockId;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.Tuple3;
import scala.collection.Seq;

/**
 * The shuffle that carries the Python path's handles, without storing them. Everything a
 * handle says is what a map status says: the server (its location), the map (its index),
 * the attempt (the low half of its task attempt id, which the Python writer commits under)
 * and how many bytes each reduce partition has (its sizes). So a map task keeps only those
 * sizes, and a reduce task makes its handles again from the statuses that Spark's
 * MapOutputTracker gives it: only the attempts Spark registered, as before, and no fetch.
 *
 * <p>Sizes in a map status are rounded (within about 10%); the Python reader uses them only
 * to plan its requests. The layout is {@code netspark/spark/handles.py}'s.
 */
final class PythonHandles {
  private static final byte[] MAGIC = "NSH1".getBytes(StandardCharsets.US_ASCII);
  private static final int FIXED = 38; // <4sIIIIQIIH
  private static final int SIZE_AT = 20;

  private PythonHandles() {}

  /** A map task's writer: checks each handle against its task and server, keeps its size. */
  static <K, V> ShuffleWriter<K, V> writer(ExecutorServer server, HandlesPartitioner partitioner,
      long mapId, TaskContext context, ShuffleWriteMetricsReporter metrics) {
    long[] lengths = new long[partitioner.numPartitions()];
    byte[] address = encodedAddress(server.peer);
    return new ShuffleWriter<K, V>() {
      @Override
      public void write(scala.collection.Iterator<Product2<K, V>> records) throws IOException {
        long bytes = 0;
        while (records.hasNext()) {
          Product2<K, V> record = records.next();
          int reduceId = (int) (long) (Long) record._1();
          ByteBuffer handle = ByteBuffer.wrap((byte[]) record._2()).order(ByteOrder.LITTLE_ENDIAN);
          check(handle, reduceId, address, partitioner, context, mapId);
          long size = handle.getLong(SIZE_AT);
          lengths[reduceId] += size;
          bytes += size;
          metrics.incRecordsWritten(1);
        }
        metrics.incBytesWritten(bytes);
      }

      @Override
      public Option<MapStatus> stop(boolean success) {
        if (!success) {
          return Option.empty();
        }
        BlockManagerId location = PeerLocation.of(
            SparkEnv.get().blockManager().shuffleServerId(), server.location);
        return Option.apply(MapStatus.apply(location, lengths, mapId, 0L));
      }

      @Override
      public long[] getPartitionLengths() {
        return lengths;
      }
    };
  }

  private static void check(ByteBuffer handle, int reduceId, byte[] address,
      HandlesPartitioner partitioner, TaskContext context, long mapId) throws IOException {
    byte[] magic = new byte[MAGIC.length];
    if (handle.remaining() < FIXED) {
      throw new IOException("netspark: a map task's handle is " + handle.remaining() + " bytes");
    }
    handle.get(0, magic);
    long attempt = mapId & 0xffffffffL;
    if (!java.util.Arrays.equals(magic, MAGIC)
        || handle.getInt(4) != partitioner.pythonShuffle
        || handle.getInt(8) != context.partitionId()
        || (handle.getInt(12) & 0xffffffffL) != attempt
        || handle.getInt(16) != reduceId || reduceId < 0
        || reduceId >= partitioner.numPartitions()
        || !handle.slice(FIXED - 6, handle.limit() - FIXED + 6).equals(ByteBuffer.wrap(address))) {
      throw new IOException("netspark: map " + context.partitionId() + " attempt " + attempt
          + " of shuffle " + partitioner.pythonShuffle + " gave a handle of another shuffle, "
          + "map, attempt, partition or server (is the executor's Python worker using another "
          + "netspark server than its JVM?)");
    }
  }

  /** One handle a reduce task was given: enough to name its map output to Spark. */
  private record Given(BlockManagerId location, long mapId, int mapIndex, int reduceId) {}

  /**
   * A reduce task's handles, made from the map statuses of its partitions. If the task then
   * fails because the Python reader could not get one of their map outputs (its message
   * names it: see {@code netspark/spark/tasks.py}), the failure is Spark's fetch failure of
   * that output, so Spark reruns the maps it must as for its own shuffle.
   */
  static <K, C> ShuffleReader<K, C> reader(HandlesPartitioner partitioner, int shuffleId,
      scala.collection.Iterator<Tuple2<BlockManagerId, Seq<Tuple3<BlockId, Object, Object>>>>
          locations, TaskContext context, ShuffleReadMetricsReporter metrics) {
    List<Product2<Object, Object>> handles = new ArrayList<>();
    List<Given> given = new ArrayList<>();
    while (locations.hasNext()) {
      Tuple2<BlockManagerId, Seq<Tuple3<BlockId, Object, Object>>> entry = locations.next();
      BlockManagerId location = entry._1();
      byte[] address = encodedAddress(PeerLocation.parse(location).orElseThrow(() ->
          new IllegalStateException("netspark: a map status of a Python shuffle does not name "
              + "a netspark server")));
      scala.collection.Iterator<Tuple3<BlockId, Object, Object>> blocks = entry._2().iterator();
      while (blocks.hasNext()) {
        Tuple3<BlockId, Object, Object> block = blocks.next();
        ShuffleBlockId id = (ShuffleBlockId) block._1();
        ByteBuffer handle = ByteBuffer.allocate(FIXED - 6 + address.length)
            .order(ByteOrder.LITTLE_ENDIAN)
            .put(MAGIC).putInt(partitioner.pythonShuffle).putInt((Integer) block._3())
            .putInt((int) id.mapId()).putInt(id.reduceId()).putLong((Long) block._2())
            .putInt(0).put(address);
        handles.add(new Tuple2<>((long) id.reduceId(), handle.array()));
        given.add(new Given(location, id.mapId(), (Integer) block._3(), id.reduceId()));
      }
    }
    context.addTaskFailureListener((org.apache.spark.util.TaskFailureListener) (ctx, error) ->
        lost(error, partitioner.pythonShuffle, given).ifPresent(lost -> ctx.setFetchFailed(
            new FetchFailedException(lost.given().location(), shuffleId, lost.given().mapId(),
                lost.given().mapIndex(), lost.given().reduceId(), lost.why(), error))));
    metrics.incRecordsRead(handles.size());
    context.taskMetrics().mergeShuffleReadMetrics();
    @SuppressWarnings("unchecked")
    scala.collection.Iterator<Product2<K, C>> records = (scala.collection.Iterator<Product2<K, C>>)
        (Object) scala.jdk.javaapi.CollectionConverters.asScala(handles.iterator());
    return () -> records;
  }

  private static final Pattern LOST = Pattern.compile(
      "\\[netspark lost: shuffle=(\\d+) map=(\\d+) attempt=(\\d+) partition=(\\d+)\\]");

  /** A map output the Python reader could not read, and the line of its error that says so. */
  private record Lost(Given given, String why) {}

  /** The map output a failed task's error names as lost, if it is one of the task's own. */
  private static Optional<Lost> lost(Throwable error, int pythonShuffle, List<Given> given) {
    for (Throwable e = error; e != null; e = e.getCause()) {
      String message = String.valueOf(e.getMessage());
      Matcher m = LOST.matcher(message);
      while (m.find()) {
        if (Long.parseLong(m.group(1)) != pythonShuffle) {
          continue;
        }
        long map = Long.parseLong(m.group(2));
        long attempt = Long.parseLong(m.group(3));
        long partition = Long.parseLong(m.group(4));
        for (Given g : given) {
          if (g.mapIndex() == map && (g.mapId() & 0xffffffffL) == attempt
              && g.reduceId() == partition) {
            int from = message.lastIndexOf('\n', m.start()) + 1;
            return Optional.of(new Lost(g, "netspark: " + message.substring(from, m.end())));
          }
        }
      }
    }
    return Optional.empty();
  }

  /** A handle's tail from its port on: port, then host, host key and arena path, each
   * behind its u16 length. */
  private static byte[] encodedAddress(PeerLocation peer) {
    byte[][] strings = {peer.host.getBytes(StandardCharsets.UTF_8),
        peer.hostKey.getBytes(StandardCharsets.UTF_8),
        peer.arenaPath.getBytes(StandardCharsets.UTF_8)};
    ByteBuffer out = ByteBuffer.allocate(4 + 6 + strings[0].length + strings[1].length
        + strings[2].length).order(ByteOrder.LITTLE_ENDIAN).putInt(peer.port);
    for (byte[] s : strings) {
      out.putShort((short) s.length).put(s);
    }
    return out.array();
  }
}
