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
  private final String json; // the environment of netspark.spark.launch, as JSON

  private Runtime(String appId, String secret, String python, String json) {
    this.appId = appId;
    this.secret = secret;
    this.python = python;
    this.json = json;
  }

  /** From the JSON the driver's activate.py writes: {"python": ..., "env": {NAME: value}}. */
  static Runtime parse(String json) throws IOException {
    JsonNode root = ServerConnection.JSON.readTree(json);
    JsonNode env = root.get("env");
    return new Runtime(env.get("NETSPARK_APP_ID").asText(), env.get("NETSPARK_SECRET").asText(),
        root.get("python").asText(), json);
  }

  Map<String, String> environment() throws IOException {
    Map<String, String> out = new HashMap<>();
    ServerConnection.JSON.readTree(json).get("env")
        .properties().forEach(e -> out.put(e.getKey(), e.getValue().asText()));
    return out;
  }
}
