"""The netspark demo: one unchanged PySpark GroupBy, with Spark's shuffle and with netspark.

    python bench/demo.py [--records 2000000] [--partitions 16] [--reps 1]

Runs on a local cluster of two executors (local-cluster[2,1,2048]), one context
per mode and never two at once. The job is the same program both times; only
`spark.netspark.enabled` differs. The results must be equal; the times are shown
side by side with their ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time

from pyspark import SparkConf, SparkContext


def make_records(split: int, count: int) -> list:
    rng = random.Random(split)
    return [(rng.randrange(count // 10 or 1), rng.randbytes(100)) for _ in range(count)]


def run(netspark: bool, records: int, partitions: int) -> tuple[float, str]:
    conf = (SparkConf().setMaster("local-cluster[2,1,2048]")
            .setAppName(f"netspark-demo-{'netspark' if netspark else 'spark'}")
            .set("spark.ui.enabled", "false")
            .set("spark.default.parallelism", str(partitions))
            .set("spark.netspark.enabled", str(netspark).lower()))
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        per_part = records // partitions
        data = sc.parallelize(range(partitions), partitions) \
            .flatMap(lambda split: make_records(split, per_part)).cache()
        data.count()  # generate and cache outside the timed job
        start = time.perf_counter()
        grouped = data.groupByKey(partitions).mapValues(
            lambda values: (len(values), hashlib.sha256(b"".join(sorted(values))).hexdigest()))
        result = sorted(grouped.collect())
        took = time.perf_counter() - start
        digest = hashlib.sha256(repr(result).encode()).hexdigest()
        active = getattr(sc, "_netspark", None) is not None
        if active != netspark:
            sys.exit(f"netspark was {'on' if active else 'off'} where it should not be")
        return took, digest
    finally:
        sc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2, help="rounds of spark, netspark")
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    print(f"GroupBy of {args.records:,} (int key, 100 random bytes) records, "
          f"{args.partitions} partitions, local-cluster[2,1,2048]\n")
    times: dict[str, list[float]] = {"spark": [], "netspark": []}
    digests = set()
    for rep in range(args.reps):
        for mode in times:
            print(f"round {rep + 1}/{args.reps}: {mode} ...", flush=True)
            took, digest = run(mode == "netspark", args.records, args.partitions)
            times[mode].append(took)
            digests.add(digest)
            print(f"  {took:.1f} s", flush=True)
    if len(digests) != 1:
        sys.exit("RESULTS DIFFER between Spark's shuffle and netspark")
    best = {mode: min(values) for mode, values in times.items()}
    print("\nresults: identical")
    print(f"| job time | Spark's shuffle | netspark | ratio |\n|---|---|---|---|\n"
          f"| GroupBy (best of {args.reps}) | {best['spark']:.1f} s | {best['netspark']:.1f} s "
          f"| {best['netspark'] / best['spark']:.2f}x |")


if __name__ == "__main__":
    main()
