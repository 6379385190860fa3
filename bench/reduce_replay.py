"""One GroupBy reduce task replayed in one process, with and without the reduce side's
freeze of what it has read (netspark/spark/collector.py), taking turns.

    python bench/reduce_replay.py --repeats 9

The input is what a reduce partition of `bench/groupby.py --preset large` receives:
the map-side combined (key, [values]) pairs of 32 map tasks (8,000,000 records of
800,000 keys in all, 100 random bytes each, one partition in 32 of them), written into
arena blocks as map tasks write them. A replay reads them through netspark's reader
(crc32c verified), merges them with PySpark's `ExternalGroupBy` as `groupByKey` does,
and digests the groups as the benchmark's job does. Without Spark's scheduling, the
difference between the two is the freeze's alone; the variants alternate, the first
one rotating, so the machine's drift falls on both.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

from pyspark.serializers import CPickleSerializer
from pyspark.shuffle import Aggregator, ExternalGroupBy

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groupby import digest  # noqa: E402

from netspark.buffer_manager import Arena, BlockPool  # noqa: E402
from netspark.config import NetsparkConf  # noqa: E402
from netspark.serde import BlockInputStream, BlockOutputStream, read_batches  # noqa: E402
from netspark.serde.records import write_batch  # noqa: E402
from netspark.spark.collector import frozen_between_batches  # noqa: E402

MAPS, PARTITIONS, RECORDS, KEYS = 32, 32, 8_000_000, 800_000
BATCH_RECORDS = 2300  # ~256 KB pickled: a map task's batch per partition (tasks.py)


def map_outputs(seed: int = 1) -> list[list[tuple[int, list[bytes]]]]:
    """For each map task, its combined pairs for reduce partition 0 (hash(k) % 32 == 0)."""
    rng = random.Random(seed)
    per_map = RECORDS // MAPS // PARTITIONS  # the records of one map that go to partition 0
    outputs = []
    for _ in range(MAPS):
        combined: dict[int, list[bytes]] = {}
        for _ in range(per_map):
            combined.setdefault(rng.randrange(KEYS // PARTITIONS) * PARTITIONS,
                                []).append(rng.randbytes(100))
        outputs.append(list(combined.items()))
    return outputs


def groupby_merge(records) -> list:
    """What PySpark's groupByKey does on the reduce side with the records it reads."""
    agg = Aggregator(lambda v: [v], lambda vs, v: vs.append(v) or vs,
                     lambda a, b: a.extend(b) or a)
    merger = ExternalGroupBy(agg, 1 << 20, CPickleSerializer())  # memory limit never hit
    merger.mergeCombiners(records)
    return list(merger.items())


class CollectorClock:
    """Time spent in the cyclic garbage collector, and its full collections (gc.callbacks):
    what the freeze is about, and less subject to the machine's drift than wall times."""

    def __init__(self) -> None:
        self.seconds, self.full, self._start = 0.0, 0, 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2

    def reset(self) -> None:
        self.seconds, self.full = 0.0, 0


def replay(arena: Arena, extents, freeze: bool) -> tuple[float, float]:
    """(read and merge, digest) seconds of one reduce task."""
    start = time.perf_counter()
    stream = BlockInputStream(arena, extents, lambda block: None)

    def records():
        with frozen_between_batches(freeze) as after_batch:
            for batch in read_batches(stream):
                after_batch(len(batch))
                yield from batch

    groups = groupby_merge(records())
    stream.close()
    merged = time.perf_counter()
    digest(groups)
    del groups
    return merged - start, time.perf_counter() - merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="replays of each variant")
    args = parser.parse_args(argv)
    conf = NetsparkConf.from_spark({"spark.netspark.buffer.poolSize": "256m"})
    with Arena.create(conf) as arena:
        pool = BlockPool(arena)
        out = BlockOutputStream(pool)
        extents = []
        for pairs in map_outputs():  # batches of ~256 KB, an extent each, as maps cut them
            for i in range(0, len(pairs), BATCH_RECORDS):
                write_batch(out, pairs[i:i + BATCH_RECORDS])
                extents += out.cut()
        print(f"{sum(e.length for e in extents) / 2**20:.1f} MiB in {len(extents)} extents",
              file=sys.stderr)
        clock = CollectorClock()
        times: dict[bool, list[tuple[float, ...]]] = {True: [], False: []}
        for n in range(args.repeats + 1):
            for freeze in ((True, False) if n % 2 else (False, True)):
                clock.reset()
                merge_s, digest_s = replay(arena, extents, freeze)
                if n:  # the first round warms up
                    times[freeze].append((merge_s, digest_s, merge_s + digest_s,
                                          clock.seconds, clock.full))
        out.discard()
    print("| per replayed reduce task (median) | freeze on | freeze off | ratio |")
    print("|---|---|---|---|")
    for i, what in enumerate(["read and merge", "digest (after the read)", "whole task",
                              "of which in the garbage collector"]):
        on = statistics.median(t[i] for t in times[True])
        off = statistics.median(t[i] for t in times[False])
        print(f"| {what} | {on * 1e3:.0f} ms | {off * 1e3:.0f} ms | {on / off:.2f}x |")
    on = statistics.median(t[4] for t in times[True])
    off = statistics.median(t[4] for t in times[False])
    print(f"| full collections | {on:.0f} | {off:.0f} | |")
    return 0


if __name__ == "__main__":
    gc.collect()
    sys.exit(main())
