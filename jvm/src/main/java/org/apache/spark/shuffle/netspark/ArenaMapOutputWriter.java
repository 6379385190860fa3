package org.apache.spark.shuffle.netspark;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.zip.CRC32C;

import org.apache.spark.shuffle.api.ShuffleMapOutputWriter;
import org.apache.spark.shuffle.api.ShufflePartitionWriter;
import org.apache.spark.shuffle.api.metadata.MapOutputCommitMessage;

/**
 * One JVM map attempt's partitions, written by Spark's writer straight into arena blocks
 * leased from the executor's server, then committed to it by (shuffle, map attempt) as the
 * Python writer commits its own ({@code netspark/server/worker.py}). Partitions come one
 * after another in increasing order (the API's contract), so they share blocks: each is a
 * list of extents (block, offset, length, crc32c), cut where a block ends.
 */
final class ArenaMapOutputWriter implements ShuffleMapOutputWriter {
  private final ExecutorServer server;
  private final int shuffleId;
  private final long mapTaskId;
  private final long[] lengths;
  private final List<Integer> blocks = new ArrayList<>();
  private final Map<Integer, List<long[]>> extents = new TreeMap<>();
  private ByteBuffer block; // the block being filled, positioned at its first free byte
  private boolean committed;

  ArenaMapOutputWriter(ExecutorServer server, int shuffleId, long mapTaskId, int partitions) {
    this.server = server;
    this.shuffleId = shuffleId;
    this.mapTaskId = mapTaskId;
    this.lengths = new long[partitions];
  }

  /** The registry's shuffle id of JVM shuffle {@code shuffleId}: apart from Python's ids. */
  static long registryShuffle(int shuffleId) {
    return (1L << 31) | shuffleId;
  }

  /** A map attempt's (map id, attempt) on the wire: its task attempt id in two u32 halves. */
  static List<Long> mapAttempt(long mapTaskId) {
    return List.of(mapTaskId & 0xffffffffL, mapTaskId >>> 32);
  }

  @Override
  public ShufflePartitionWriter getPartitionWriter(int reduceId) {
    return new ShufflePartitionWriter() {
      @Override
      public OutputStream openStream() {
        return new PartitionStream(reduceId);
      }

      @Override
      public long getNumBytesWritten() {
        return lengths[reduceId];
      }
    };
  }

  private final class PartitionStream extends OutputStream {
    private final int reduceId;
    private int extentStart;
    private boolean closed;

    PartitionStream(int reduceId) {
      this.reduceId = reduceId;
      this.extentStart = block == null ? 0 : block.position();
    }

    @Override
    public void write(int b) throws IOException {
      write(new byte[] {(byte) b}, 0, 1);
    }

    @Override
    public void write(byte[] bytes, int offset, int length) throws IOException {
      if (closed) {
        throw new IOException("the partition's stream is closed");
      }
      while (length > 0) {
        if (block == null || !block.hasRemaining()) {
          cut();
          block = server.arena.block(nextBlock());
          extentStart = 0;
        }
        int n = Math.min(length, block.remaining());
        block.put(bytes, offset, n);
        offset += n;
        length -= n;
        lengths[reduceId] += n;
      }
    }

    /** Ends the extent that is being written (at a block's end, or the stream's). */
    private void cut() {
      if (block == null || block.position() == extentStart) {
        return;
      }
      CRC32C crc = new CRC32C();
      crc.update(block.duplicate().position(extentStart).limit(block.position()));
      extents.computeIfAbsent(reduceId, r -> new ArrayList<>()).add(new long[] {
          blocks.get(blocks.size() - 1), extentStart, block.position() - extentStart, crc.getValue()});
      extentStart = block.position();
    }

    @Override
    public void close() {
      if (!closed) {
        cut();
        closed = true;
      }
    }
  }

  private int nextBlock() throws IOException {
    int id = server.takeBlock();
    blocks.add(id);
    return id;
  }

  @Override
  public MapOutputCommitMessage commitAllPartitions(long[] checksums) throws IOException {
    Map<String, Object> partitions = new LinkedHashMap<>();
    extents.forEach((reduceId, list) -> partitions.put(Integer.toString(reduceId), List.of(0, list)));
    List<Long> map = mapAttempt(mapTaskId);
    Map<String, Object> commit = new LinkedHashMap<>();
    commit.put("shuffle", registryShuffle(shuffleId));
    commit.put("map", map.get(0));
    commit.put("attempt", map.get(1));
    commit.put("blocks", blocks);
    commit.put("partitions", partitions);
    try {
      server.commit(commit);
    } catch (IOException e) {
      abort(e);
      throw e;
    }
    committed = true;
    return MapOutputCommitMessage.of(lengths);
  }

  @Override
  public void abort(Throwable error) throws IOException {
    if (!committed && !blocks.isEmpty()) {
      List<Integer> ours = new ArrayList<>(blocks);
      blocks.clear();
      server.release(ours);
    }
  }
}
