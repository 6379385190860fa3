package org.apache.spark.shuffle.netspark;

import java.io.InputStream;
import java.nio.ByteBuffer;
import java.util.Iterator;
import java.util.List;

/** The bytes of one map output's partition, read in place from the blocks they landed in. */
final class ExtentInputStream extends InputStream {
  private final Iterator<ByteBuffer> extents;
  private ByteBuffer current;

  ExtentInputStream(List<ByteBuffer> extents) {
    this.extents = extents.iterator();
  }

  private boolean advance() {
    while (current == null || !current.hasRemaining()) {
      if (!extents.hasNext()) {
        return false;
      }
      current = extents.next().duplicate();
    }
    return true;
  }

  @Override
  public int read() {
    return advance() ? current.get() & 0xff : -1;
  }

  @Override
  public int read(byte[] into, int offset, int length) {
    if (length == 0) {
      return 0;
    }
    if (!advance()) {
      return -1;
    }
    int n = Math.min(length, current.remaining());
    current.get(into, offset, n);
    return n;
  }

  @Override
  public int available() {
    return current == null ? 0 : current.remaining();
  }
}
