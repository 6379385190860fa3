package org.apache.spark.shuffle.netspark;

import java.io.IOException;
import java.io.Serializable;
import java.util.HashMap;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;

/**
 * What an executor needs to find or start its netspark server: the driver's netspark
 * settings, its coordinator and secret, and the executors' Python. The driver's Python side
 * hands it to {@link NetsparkShuffleManager#configure} once netspark is active; it reaches
 * the executors inside each shuffle's handle (as PySpark's own Python functions carry the
 * same environment inside each task).
 */
final class Runtime implements Serializable {
  private static final long serialVersionUID = 1L;

  final String appId;
  final String secret;
  final String python;
  private final HashMap<String, String> environment; // of netspark.spark.launch

  private Runtime(String python, HashMap<String, String> environment) {
    this.appId = environment.get("NETSPARK_APP_ID");
    this.secret = environment.get("NETSPARK_SECRET");
    this.python = python;
    this.environment = environment;
  }

  /** From the JSON the driver's activate.py writes: {"python": ..., "env": {NAME: value}}. */
  static Runtime parse(String json) throws IOException {
    JsonNode root = ServerConnection.JSON.readTree(json);
    HashMap<String, String> environment = new HashMap<>();
    root.get("env").properties().forEach(e -> environment.put(e.getKey(), e.getValue().asText()));
    return new Runtime(root.get("python").asText(), environment);
  }

  Map<String, String> environment() {
    return environment;
  }
}
