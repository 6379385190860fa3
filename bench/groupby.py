"""GroupBy, netspark against Spark's own shuffle (the paper's Figs. 3-5).

    python bench/groupby.py --preset small --rounds 3 --out docs/results/groupby-small

N (int key, V-byte value) records are generated and cached, untimed; the timed job
is `groupByKey(P)` followed by a per-partition digest of every group (its key, its
size and a CRC of its sorted values), so that every mode's answer is checked equal
to Spark's. Values are random bytes (incompressible) unless `--compressible`.
Modes run interleaved, one fresh context each, round after round.
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import sparkrun  # noqa: E402

PRESETS = {  # scaled to a 2-core machine; "small" has reduce tasks of about a second
    "small": {"records": 2_000_000, "value_bytes": 100, "partitions": 8},
    "large": {"records": 8_000_000, "value_bytes": 100, "partitions": 32},
}


def make_records(split: int, count: int, value_bytes: int, keys: int,
                 compressible: bool) -> list[tuple[int, bytes]]:
    rng = random.Random(split)
    if compressible:  # a few distinct digits repeated: lz4 shrinks it ~10x
        return [(rng.randrange(keys), (b"%08d" % rng.randrange(100))
                 * (value_bytes // 8 + 1))[:value_bytes] for _ in range(count)]
    return [(rng.randrange(keys), rng.randbytes(value_bytes)) for _ in range(count)]


def digest(groups) -> list[tuple[int, int, int]]:
    """(groups, values, checksum) of one partition: equal iff the groups are equal."""
    n_groups = n_values = total = 0
    for key, values in groups:
        values = sorted(values)
        n_groups += 1
        n_values += len(values)
        total = (total + zlib.crc32(b"".join(values), key & 0xFFFFFFFF) * (key + 1)) % (1 << 61)
    return [(n_groups, n_values, total)]


def run_mode(sc, args) -> tuple[object, list[sparkrun.JobFigures]]:
    per_split = args.records // args.partitions
    keys = max(1, args.records // 10)
    data = sc.parallelize(range(args.partitions), args.partitions).flatMap(
        lambda split: make_records(split, per_split, args.value_bytes, keys,
                                   args.compressible)).cache()
    data.count()  # generate and cache, untimed
    result, figures = sparkrun.timed_job(
        sc, "groupby", lambda: sorted(data.groupByKey(args.partitions)
                                      .mapPartitions(digest).collect()))
    data.unpersist()
    return result, [figures]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--records", type=int, help="records (default: the preset's)")
    parser.add_argument("--value-bytes", type=int, help="bytes per value")
    parser.add_argument("--partitions", type=int, help="map and reduce partitions")
    parser.add_argument("--compressible", action="store_true",
                        help="compressible values instead of random bytes")
    report.add_common_arguments(parser)
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.records < args.partitions or args.value_bytes < 1:
        parser.error("--records must be at least --partitions, --value-bytes at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    values = "compressible" if args.compressible else "random (incompressible)"
    title = (f"GroupBy of {args.records:,} (int key, {args.value_bytes}-byte {values}) "
             f"records, {args.partitions} partitions, {report.where(args)}")
    settings = {"spark.default.parallelism": str(args.partitions)}
    return report.run_benchmark("groupby", title, args, settings, run_mode)


if __name__ == "__main__":
    sys.exit(main())
