package org.apache.spark.shuffle.netspark;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentLinkedQueue;

import com.fasterxml.jackson.databind.JsonNode;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * This executor's netspark server, as the JVM sees it: found or started on first use
 * ({@code python -m netspark.spark.launch}, the same launcher PySpark's daemon uses, so that
 * one server serves both), with its arena mapped and a few connections kept for the tasks.
 */
final class ExecutorServer {
  private static final Logger LOG = LoggerFactory.getLogger(ExecutorServer.class);
  private static ExecutorServer current;
  /** Threads that wait on the server's fetches while tasks read what landed before. */
  static final java.util.concurrent.ExecutorService FETCHES =
      java.util.concurrent.Executors.newCachedThreadPool(task -> {
        Thread thread = new Thread(task, "netspark-fetch");
        thread.setDaemon(true);
        return thread;
      });

  final String localPath;
  final ArenaMap arena;
  final String location; // this server's address, as MapStatus topology info (PeerLocation)
  final PeerLocation peer; // the same, parsed once
  final long acquireTimeoutMs;
  final long requestBudget; // bytes of map output one fetch request may ask for
  private final byte[] secret;
  private final String appId;
  private final ConcurrentLinkedQueue<ServerConnection> idle = new ConcurrentLinkedQueue<>();
  /** Blocks leased with a map task's commit for the next ones: a round trip saved per task. */
  private final ConcurrentLinkedQueue<Integer> spare = new ConcurrentLinkedQueue<>();
  /** At most this many spare blocks idle between tasks (an executor's concurrent writers). */
  private static final int SPARE_BLOCKS = 2;
  private final ConcurrentHashMap<String, ArenaMap> peerArenas = new ConcurrentHashMap<>();

  private ExecutorServer(String localPath, Runtime runtime) throws IOException {
    this.localPath = localPath;
    this.secret = runtime.secret.getBytes(StandardCharsets.UTF_8);
    this.appId = runtime.appId;
    JsonNode info = call("info", Map.of());
    JsonNode address = info.get("address"); // host, port, host key, arena path
    this.arena = new ArenaMap(address.get(3).asText(), info.get("block_size").asInt(),
        info.get("data_offset").asLong(), true);
    this.location = PeerLocation.format(address.get(0).asText(), address.get(1).asInt(),
        address.get(2).asText(), address.get(3).asText());
    this.peer = PeerLocation.parse(location).orElseThrow();
    this.acquireTimeoutMs = (long) (info.get("acquire_timeout").asDouble() * 1000);
    this.requestBudget = Math.max(1, info.get("max_bytes_in_flight").asLong() / 2);
  }

  /** The server of this executor for the application of {@code runtime}. */
  static synchronized ExecutorServer get(Runtime runtime) throws IOException {
    if (current == null || !current.appId.equals(runtime.appId)) {
      forget(); // a local-mode driver runs one application after another
      current = new ExecutorServer(launch(runtime), runtime);
      String path = current.localPath;
      java.lang.Runtime.getRuntime().addShutdownHook(new Thread(() -> removeIfUnserved(path)));
      LOG.info("netspark: JVM shuffles of this executor go through its server at {} ({})",
          current.localPath, current.location);
    }
    return current;
  }

  /** Closes our connections and mappings of the server (which outlives them). */
  static synchronized void forget() {
    if (current == null) {
      return;
    }
    List<Integer> spares = new ArrayList<>(current.spare);
    current.spare.clear();
    try {
      current.release(spares);
    } catch (IOException e) {
      LOG.warn("netspark: could not give back {} spare blocks: {}", spares.size(), e.getMessage());
    }
    for (ServerConnection c; (c = current.idle.poll()) != null; ) {
      closeQuietly(c);
    }
    current.peerArenas.values().forEach(ExecutorServer::closeQuietly);
    closeQuietly(current.arena); // its pages go once the collector drops the mappings
    current = null;
  }

  private static void closeQuietly(java.io.Closeable closeable) {
    try {
      closeable.close();
    } catch (IOException ignored) {
      // closing what is no longer needed
    }
  }

  /** A server that was killed leaves its socket file; one that stops deletes its own. */
  private static void removeIfUnserved(String path) {
    try (java.nio.channels.SocketChannel probe =
        java.nio.channels.SocketChannel.open(java.net.StandardProtocolFamily.UNIX)) {
      probe.connect(java.net.UnixDomainSocketAddress.of(path));
    } catch (IOException gone) {
      try {
        java.nio.file.Files.deleteIfExists(java.nio.file.Path.of(path));
      } catch (IOException ignored) {
        // nothing more to do while the JVM exits
      }
    }
  }

  private static String launch(Runtime runtime) throws IOException {
    ProcessBuilder builder = new ProcessBuilder(runtime.python, "-m", "netspark.spark.launch");
    builder.environment().putAll(runtime.environment());
    builder.redirectError(ProcessBuilder.Redirect.INHERIT); // the server keeps it: don't wait on it
    builder.redirectInput(ProcessBuilder.Redirect.PIPE);
    Process launcher = builder.start();
    launcher.getOutputStream().close();
    String line;
    try (BufferedReader out = new BufferedReader(
        new InputStreamReader(launcher.getInputStream(), StandardCharsets.UTF_8))) {
      line = out.readLine();
    }
    try {
      launcher.waitFor();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IOException("interrupted while starting the netspark server", e);
    }
    if (line == null) {
      throw new IOException("netspark: the server launcher (" + runtime.python
          + " -m netspark.spark.launch) printed nothing; exit status " + launcher.exitValue()
          + " (is netspark installed in the executors' Python?)");
    }
    JsonNode reply = ServerConnection.JSON.readTree(line);
    if (reply.has("error")) {
      throw new IOException("netspark: this executor's server did not start: "
          + reply.get("error").asText());
    }
    return reply.get("local").asText();
  }

  JsonNode call(String op, Map<String, Object> args) throws IOException {
    ServerConnection connection = idle.poll();
    if (connection == null) {
      connection = new ServerConnection(localPath, secret, appId);
    }
    try {
      JsonNode reply = connection.call(op, args);
      idle.add(connection);
      return reply;
    } catch (ServerConnection.Refused e) {
      idle.add(connection); // a refusal leaves the connection in step
      throw e;
    } catch (IOException e) {
      connection.close();
      throw e;
    }
  }

  /** A block for a map writer: a spare one, else one leased now. */
  int takeBlock() throws IOException {
    Integer id = spare.poll();
    return id != null ? id : lease(1).get(0);
  }

  /** Commits a map attempt's output; the reply brings a spare block for the next writer. */
  void commit(Map<String, Object> output) throws IOException {
    Map<String, Object> request = new java.util.LinkedHashMap<>(output);
    request.put("lease", spare.size() < SPARE_BLOCKS ? 1 : 0);
    for (JsonNode block : call("commit", request).get("blocks")) {
      spare.add(block.asInt());
    }
  }

  /** {@code count} blocks of the arena, ours until committed or released; waits for room. */
  List<Integer> lease(int count) throws IOException {
    long deadline = System.currentTimeMillis() + acquireTimeoutMs;
    List<Integer> blocks = new ArrayList<>();
    long pause = 5;
    while (true) {
      for (Iterator<JsonNode> it = call("lease", Map.of("count", count - blocks.size()))
          .get("blocks").elements(); it.hasNext(); ) {
        blocks.add(it.next().asInt());
      }
      if (blocks.size() == count) {
        return blocks;
      }
      if (System.currentTimeMillis() > deadline) {
        release(blocks);
        throw new IOException("netspark: the arena had no free block for "
            + (acquireTimeoutMs / 1000) + " s (spark.netspark.buffer.poolSize, "
            + "spark.netspark.buffer.acquireTimeout)");
      }
      try {
        Thread.sleep(pause);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        release(blocks);
        throw new IOException("interrupted while waiting for arena blocks", e);
      }
      pause = Math.min(pause * 2, 200);
    }
  }

  void release(List<Integer> blocks) throws IOException {
    if (!blocks.isEmpty()) {
      call("release", Map.of("blocks", blocks));
    }
  }

  /** The arena at {@code path}: ours, or a same-host peer's (read in place). */
  ArenaMap arenaAt(String path) throws IOException {
    if (path.equals(arena.path)) {
      return arena;
    }
    ArenaMap peer = peerArenas.get(path);
    if (peer == null) {
      peer = new ArenaMap(path, arena.blockSize, arena.dataOffset, false); // same conf, same layout
      ArenaMap raced = peerArenas.putIfAbsent(path, peer);
      if (raced != null) {
        peer.close();
        peer = raced;
      }
    }
    return peer;
  }
}
