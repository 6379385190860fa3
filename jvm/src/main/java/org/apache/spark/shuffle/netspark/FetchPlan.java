package org.apache.spark.shuffle.netspark;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleBlockId;
import scala.Tuple2;
import scala.Tuple3;
import scala.collection.Seq;

/**
 * A reduce task's requests, from the map output locations Spark's MapOutputTracker gives
 * (map and partition ranges as AQE asks): one per server and reduce partition, split where
 * the maps' bytes would exceed a budget, so that a request's landed blocks stay bounded.
 * Requests to this host's servers come first: they land at once (read in place), and the
 * reader works on them while the first request to another host is on its way, as Spark's
 * own reader reads local blocks while its remote fetches are in flight.
 */
final class FetchPlan {
  /** One map output's part of a request. */
  record MapBlock(long mapId, int mapIndex, long size) {}

  /** The maps of one reduce partition that one server holds. */
  record Request(BlockManagerId location, PeerLocation peer, int reduceId, List<MapBlock> maps) {}

  private FetchPlan() {}

  static List<Request> of(scala.collection.Iterator<Tuple2<BlockManagerId,
      Seq<Tuple3<BlockId, Object, Object>>>> locations, long budget, String hostKey) {
    List<Request> requests = new ArrayList<>();
    while (locations.hasNext()) {
      Tuple2<BlockManagerId, Seq<Tuple3<BlockId, Object, Object>>> entry = locations.next();
      BlockManagerId location = entry._1();
      PeerLocation peer = PeerLocation.parse(location).orElseThrow(() -> new IllegalStateException(
          "netspark: a map output of executor " + location.executorId() + " was not written "
          + "through its netspark server (is spark.shuffle.sort.io.plugin.class overridden?)"));
      Map<Integer, List<MapBlock>> byReduce = new LinkedHashMap<>();
      scala.collection.Iterator<Tuple3<BlockId, Object, Object>> blocks = entry._2().iterator();
      while (blocks.hasNext()) {
        Tuple3<BlockId, Object, Object> block = blocks.next();
        ShuffleBlockId id = (ShuffleBlockId) block._1();
        byReduce.computeIfAbsent(id.reduceId(), r -> new ArrayList<>())
            .add(new MapBlock(id.mapId(), (Integer) block._3(), (Long) block._2()));
      }
      byReduce.forEach((reduceId, maps) -> {
        List<MapBlock> group = new ArrayList<>();
        long bytes = 0;
        for (MapBlock map : maps) {
          if (!group.isEmpty() && bytes + map.size() > budget) {
            requests.add(new Request(location, peer, reduceId, group));
            group = new ArrayList<>();
            bytes = 0;
          }
          group.add(map);
          bytes += map.size();
        }
        requests.add(new Request(location, peer, reduceId, group));
      });
    }
    requests.sort(java.util.Comparator.comparing(r -> !r.peer().hostKey.equals(hostKey)));
    return requests;
  }
}
