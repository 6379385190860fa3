package org.apache.spark.shuffle.netspark;

import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ConcurrentHashMap;

/**
 * An executor's arena (or a same-host peer's), mapped from its memfd at
 * {@code /proc/<owner pid>/fd/<n>}: its blocks as ByteBuffers, read and written in place.
 * Mapped in windows of many blocks, on first use: one Java mapping stops at 2 GiB, and one
 * mapping per block would use up the process's map count.
 */
final class ArenaMap implements Closeable {
  private static final long WINDOW_BLOCKS = 64;

  final String path;
  final int blockSize;
  final long dataOffset;
  private final long size;
  private final FileChannel file;
  private final FileChannel.MapMode mode;
  private final ConcurrentHashMap<Long, MappedByteBuffer> windows = new ConcurrentHashMap<>();

  ArenaMap(String path, int blockSize, long dataOffset, boolean writable) throws IOException {
    this.path = path;
    this.blockSize = blockSize;
    this.dataOffset = dataOffset;
    this.mode = writable ? FileChannel.MapMode.READ_WRITE : FileChannel.MapMode.READ_ONLY;
    this.file = writable
        ? FileChannel.open(Path.of(path), StandardOpenOption.READ, StandardOpenOption.WRITE)
        : FileChannel.open(Path.of(path), StandardOpenOption.READ);
    this.size = file.size();
    if (dataOffset % blockSize != 0) { // then no block straddles two windows
      throw new IOException("the arena's data offset is not a multiple of its block size");
    }
  }

  /** Block {@code id} as a buffer of {@code blockSize} bytes, positioned at 0. */
  ByteBuffer block(int id) throws IOException {
    long start = dataOffset + (long) id * blockSize;
    if (id < 0 || start + blockSize > size) {
      throw new IOException("block " + id + " is outside the arena " + path);
    }
    long window = (long) id / WINDOW_BLOCKS;
    MappedByteBuffer mapped = windows.get(window);
    if (mapped == null) {
      mapped = windows.computeIfAbsent(window, this::map);
    }
    int at = (int) ((id % WINDOW_BLOCKS) * blockSize);
    return mapped.duplicate().position(at).limit(at + blockSize).slice();
  }

  private MappedByteBuffer map(long window) {
    long start = dataOffset + window * WINDOW_BLOCKS * blockSize;
    long length = Math.min(WINDOW_BLOCKS * blockSize, size - start);
    try {
      return file.map(mode, start, length);
    } catch (IOException e) {
      throw new java.io.UncheckedIOException("mapping the netspark arena " + path, e);
    }
  }

  @Override
  public void close() throws IOException {
    windows.clear(); // the mappings go with the garbage collector
    file.close();
  }
}
