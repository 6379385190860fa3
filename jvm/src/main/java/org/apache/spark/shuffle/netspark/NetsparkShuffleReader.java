package org.apache.spark.shuffle.netspark;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.zip.CRC32C;

import com.fasterxml.jackson.databind.JsonNode;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.serializer.SerializerManager;
import org.apache.spark.shuffle.BaseShuffleHandle;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.storage.ShuffleBlockId;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.Product2;

/**
 * A JVM reduce task's records: its executor's server fetches each request's map outputs
 * (from its own arena, a same-host peer's, or over TCP or RDMA: the server's routes, as for
 * Python), the bytes are checked and deserialized in place, and the request's blocks go back
 * as soon as its records are read. A request that cannot be fetched, or whose bytes fail
 * their checksum, is Spark's FetchFailedException: Spark reruns the maps it must.
 * Aggregation and key ordering then go as in Spark's BlockStoreShuffleReader.
 */
final class NetsparkShuffleReader<K, C> implements ShuffleReader<K, C> {
  private final ExecutorServer server;
  private final ShuffleDependency<K, ?, C> dep;
  private final List<FetchPlan.Request> requests;
  private final TaskContext context;
  private final ShuffleReadMetricsReporter metrics;

  NetsparkShuffleReader(ExecutorServer server, BaseShuffleHandle<K, ?, C> handle,
      List<FetchPlan.Request> requests, TaskContext context, ShuffleReadMetricsReporter metrics) {
    this.server = server;
    this.dep = handle.dependency();
    this.requests = requests;
    this.context = context;
    this.metrics = metrics;
  }

  @Override
  @SuppressWarnings("unchecked")
  public scala.collection.Iterator<Product2<K, C>> read() {
    Records records = new Records();
    context.addTaskCompletionListener((org.apache.spark.util.TaskCompletionListener) ctx -> records.releaseQuietly());
    scala.collection.Iterator<Product2<K, C>> in =
        new InterruptibleIterator<>(context, (scala.collection.Iterator<Product2<K, C>>) (Object) records);
    scala.collection.Iterator<Product2<K, C>> aggregated = in;
    if (dep.aggregator().isDefined()) {
      aggregated = (scala.collection.Iterator<Product2<K, C>>) (Object) (dep.mapSideCombine()
          ? dep.aggregator().get().combineCombinersByKey(in, context)
          : dep.aggregator().get().combineValuesByKey((scala.collection.Iterator) in, context));
    }
    if (dep.keyOrdering().isEmpty()) {
      return aggregated instanceof InterruptibleIterator ? aggregated
          : new InterruptibleIterator<>(context, aggregated);
    }
    ExternalSorter<K, C, C> sorter = new ExternalSorter<>(context, Option.empty(), Option.empty(),
        dep.keyOrdering(), dep.serializer(),
        ExternalSorter.$lessinit$greater$default$6());
    return new InterruptibleIterator<>(context,
        (scala.collection.Iterator<Product2<K, C>>) (Object) sorter.insertAllAndUpdateMetrics(aggregated));
  }

  /**
   * The (key, value) records of every request in turn. While one request's records are
   * read, the server already fetches the next (at most two requests' blocks, each within
   * half of maxBytesInFlight, are held at once).
   */
  private final class Records extends scala.collection.AbstractIterator<Product2<Object, Object>> {
    private final SerializerManager serializers = SparkEnv.get().serializerManager();
    private final SerializerInstance serializer = dep.serializer().newInstance();
    private int next; // the index of the next request to read
    private CompletableFuture<JsonNode> ahead; // the fetch of request `next`, once started
    private Iterator<scala.collection.Iterator<scala.Tuple2<Object, Object>>> maps;
    private scala.collection.Iterator<scala.Tuple2<Object, Object>> records;
    private final List<Integer> held = new ArrayList<>(); // blocks of the request being read
    private boolean merged;

    @Override
    public boolean hasNext() {
      try {
        while (records == null || !records.hasNext()) {
          if (maps != null && maps.hasNext()) {
            records = maps.next();
            continue;
          }
          release();
          if (next == requests.size()) {
            if (!merged) {
              merged = true;
              context.taskMetrics().mergeShuffleReadMetrics();
            }
            return false;
          }
          maps = read(requests.get(next++)).iterator();
        }
        return true;
      } catch (IOException e) {
        throw new java.io.UncheckedIOException(e);
      }
    }

    @Override
    public Product2<Object, Object> next() {
      if (!hasNext()) {
        throw new java.util.NoSuchElementException();
      }
      metrics.incRecordsRead(1);
      return records.next();
    }

    /** Starts the server's fetch of request {@code index} on a helper thread. */
    private CompletableFuture<JsonNode> fetch(int index) {
      FetchPlan.Request r = requests.get(index);
      List<Object> maps = new ArrayList<>();
      for (FetchPlan.MapBlock map : r.maps()) {
        maps.add(ArenaMapOutputWriter.mapAttempt(map.mapId()));
      }
      PeerLocation peer = r.peer();
      List<Object> request = List.of(peer.host, peer.port, peer.hostKey, peer.arenaPath,
          ArenaMapOutputWriter.registryShuffle(dep.shuffleId()), r.reduceId(), maps);
      return CompletableFuture.supplyAsync(() -> {
        try {
          return server.call("fetch", Map.of("requests", List.of(request))).get("landed").get(0);
        } catch (IOException e) {
          throw new java.io.UncheckedIOException(e);
        }
      }, ExecutorServer.FETCHES);
    }

    /** Request {@code r} (the one at next - 1) landed, checked and opened map by map. */
    private List<scala.collection.Iterator<scala.Tuple2<Object, Object>>> read(FetchPlan.Request r) {
      int shuffleId = dep.shuffleId();
      FetchPlan.MapBlock first = r.maps().get(0);
      CompletableFuture<JsonNode> landing = ahead != null ? ahead : fetch(next - 1);
      ahead = next < requests.size() ? fetch(next) : null;
      long start = System.nanoTime();
      try {
        JsonNode landed;
        try {
          landed = landing.get();
        } catch (ExecutionException e) {
          throw e.getCause() instanceof java.io.UncheckedIOException u ? u.getCause()
              : new IOException(e.getCause());
        }
        metrics.incFetchWaitTime((System.nanoTime() - start) / 1_000_000);
        held.addAll(ownedBlocks(landed));
        return open(r, landed, landed.get("owned").asBoolean());
      } catch (IOException | RuntimeException | InterruptedException e) {
        if (e instanceof InterruptedException) {
          Thread.currentThread().interrupt();
        }
        releaseQuietly();
        throw sneaky(new FetchFailedException(r.location(), shuffleId, first.mapId(),
            first.mapIndex(), r.reduceId(), "netspark: " + e.getMessage(), e));
      }
    }

    private List<scala.collection.Iterator<scala.Tuple2<Object, Object>>> open(
        FetchPlan.Request r, JsonNode landed, boolean owned) throws IOException {
      Map<Long, FetchPlan.MapBlock> byLowBits = new HashMap<>();
      for (FetchPlan.MapBlock map : r.maps()) {
        byLowBits.put(map.mapId() & 0xffffffffL, map);
      }
      ArenaMap arena = server.arenaAt(landed.get("arena").asText());
      Map<Long, List<ByteBuffer>> extents = new LinkedHashMap<>();
      Iterator<JsonNode> mapIds = landed.get("maps").elements();
      long bytes = 0;
      for (JsonNode e : landed.get("extents")) {
        int offset = e.get(1).asInt();
        int length = e.get(2).asInt();
        ByteBuffer view = arena.block(e.get(0).asInt()).position(offset).limit(offset + length)
            .slice();
        long mapId = byLowBits.get(mapIds.next().asLong()).mapId();
        check(view, e.get(3).asLong(), r, mapId);
        extents.computeIfAbsent(mapId, m -> new ArrayList<>()).add(view);
        bytes += length;
      }
      if (owned) {
        metrics.incRemoteBytesRead(bytes);
        metrics.incRemoteBlocksFetched(extents.size());
      } else {
        metrics.incLocalBytesRead(bytes);
        metrics.incLocalBlocksFetched(extents.size());
      }
      List<scala.collection.Iterator<scala.Tuple2<Object, Object>>> out = new ArrayList<>();
      for (Map.Entry<Long, List<ByteBuffer>> map : extents.entrySet()) {
        ShuffleBlockId id = new ShuffleBlockId(dep.shuffleId(), map.getKey(), r.reduceId());
        out.add(serializer.deserializeStream(
            serializers.wrapStream(id, new ExtentInputStream(map.getValue()))).asKeyValueIterator());
      }
      return out;
    }

    private void check(ByteBuffer view, long expected, FetchPlan.Request r, long mapId)
        throws IOException {
      if (expected == 0) {
        return;
      }
      CRC32C crc = new CRC32C();
      crc.update(view.duplicate());
      if (crc.getValue() != expected) {
        throw new IOException("crc32c mismatch in shuffle " + dep.shuffleId() + " map " + mapId
            + " partition " + r.reduceId() + " from " + r.peer().host + ":" + r.peer().port);
      }
    }

    private void release() throws IOException {
      List<Integer> blocks = new ArrayList<>(held);
      held.clear();
      server.release(blocks);
    }

    /** At the task's end or on a failure: our blocks back, and those of a fetch ahead once
     * it lands (a task may end before it reads every request). */
    void releaseQuietly() {
      try {
        release();
      } catch (IOException ignored) {
        // the server is gone, and with it the arena: nothing left to give back
      }
      CompletableFuture<JsonNode> abandoned = ahead;
      ahead = null;
      if (abandoned != null) {
        abandoned.thenAccept(landed -> {
          try {
            server.release(ownedBlocks(landed));
          } catch (IOException ignored) {
            // the server is gone, and with it the arena
          }
        });
      }
    }
  }

  /** The blocks a landed request handed us, each once (none when read in place). */
  private static List<Integer> ownedBlocks(JsonNode landed) {
    java.util.Set<Integer> blocks = new java.util.LinkedHashSet<>();
    if (landed.get("owned").asBoolean()) {
      landed.get("extents").forEach(e -> blocks.add(e.get(0).asInt()));
    }
    return new ArrayList<>(blocks);
  }

  @SuppressWarnings("unchecked")
  private static <E extends Throwable> RuntimeException sneaky(Throwable e) throws E {
    throw (E) e; // FetchFailedException is checked; Iterator.hasNext cannot declare it
  }
}
