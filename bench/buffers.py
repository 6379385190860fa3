"""Buffer manager and serde figures, each a ratio measured side by side in one run.

    python bench/buffers.py --gib 1 --reps 9 [--json out.json]

Ratios are medians of per-repetition ratios of neighbouring runs.

- serialize (int, 100 random bytes) records into blocks vs `pickle.dumps` into bytes
- deserialize from blocks (crc32c verified, ahead of the reader on a second core)
  vs `pickle.loads` from bytes, in wall and in CPU time
- the C pickler vs cloudpickle on the same batches
- block acquire+release in one process; a lease of 8 blocks from another process
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import cloudpickle

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import BlockInputStream, BlockOutputStream, read_batches
from netspark.serde.records import write_batch

BATCH = 2048  # records per batch on both sides


def make_batches(gib: float) -> list[list[tuple[int, bytes]]]:
    count = int(gib * (1 << 30)) // 110  # ~110 pickled bytes per record
    blob = os.urandom(100 * count)
    records = [(i, blob[i * 100:i * 100 + 100]) for i in range(count)]  # distinct bytes
    return [records[i:i + BATCH] for i in range(0, count, BATCH)]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (CPU of every thread of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def side_by_side(reps: int, **variants: Callable[[], object]) -> dict[str, dict[str, float]]:
    """Each variant's median wall and CPU seconds, and the median over repetitions of
    the first variant's wall time over its own (a ratio of neighbours in time, so the
    machine's drift cancels). Variants run interleaved A B A B ... after one untimed
    warm-up round (first touches of fresh memory are not what we measure)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for rep in range(reps):
        for name, fn in variants.items():
            times[name].append(timed(fn))
            print(f"  rep {rep + 1}/{reps} {name}: {times[name][-1][0]:.3f} s", file=sys.stderr)
    first = times[next(iter(variants))]
    return {name: {"wall_s": statistics.median(w for w, _ in values),
                   "cpu_s": statistics.median(c for _, c in values),
                   "speed_vs_first": statistics.median(
                       a[0] / b[0] for a, b in zip(first, values, strict=True))}
            for name, values in times.items()}


def serde_figures(batches: list[list[tuple[int, bytes]]], reps: int) -> dict:
    conf = NetsparkConf.from_spark({"spark.netspark.buffer.poolSize": "8g",
                                    "spark.netspark.buffer.initialSize": "32m"})
    with Arena.create(conf) as arena:
        pool = BlockPool(arena, batch=64)
        pickled: list[bytes] = []
        written: list[BlockOutputStream] = []

        def to_bytes() -> None:
            pickled[:] = [pickle.dumps(batch, protocol=5) for batch in batches]

        def to_blocks() -> None:
            for old in written:
                old.discard()
            out = BlockOutputStream(pool)
            for batch in batches:
                write_batch(out, batch)
            out.extents = out.close()
            written[:] = [out]

        ser = side_by_side(reps, pickle_dumps=to_bytes, into_blocks=to_blocks)
        size = sum(map(len, pickled))

        def from_bytes() -> None:
            for data in pickled:
                pickle.loads(data)

        def from_blocks(checksum: bool = True) -> None:
            stream = BlockInputStream(arena, written[0].extents, lambda block: None,
                                      checksum=checksum)
            for _ in read_batches(stream):
                pass

        de = side_by_side(reps, pickle_loads=from_bytes, from_blocks=from_blocks,
                          unchecked=lambda: from_blocks(checksum=False))
        sample = batches[: max(1, len(batches) // 10)]
        picklers = side_by_side(
            reps,
            c_pickler=lambda: [pickle.dumps(b, protocol=5) for b in sample],
            cloudpickle=lambda: [cloudpickle.dumps(b, protocol=5) for b in sample],
        )
        written[0].discard()
        return {"bytes": size, "serialize": ser, "deserialize": de, "picklers": picklers}


def _lease_timer(path: str, rounds: int) -> None:
    """Run in a child: times leases of 8 blocks from an arena another process owns."""
    arena = Arena.attach(path)
    lease, release = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        ids = arena.lease(8)
        lease.append(time.perf_counter() - start)
        start = time.perf_counter()
        arena.release(ids)
        release.append(time.perf_counter() - start)
    print(json.dumps({"lease8_us": statistics.median(lease) * 1e6,
                      "release8_us": statistics.median(release) * 1e6}))
    arena.close()


def allocation_figures(rounds: int = 100_000) -> dict[str, float]:
    conf = NetsparkConf.from_spark({"spark.netspark.buffer.poolSize": "256m"})
    with Arena.create(conf) as arena:
        pool = BlockPool(arena)
        pool.release(pool.acquire())
        start = time.perf_counter()
        for _ in range(rounds):
            pool.release(pool.acquire())
        in_process_us = (time.perf_counter() - start) / rounds * 1e6
        child = subprocess.run(
            [sys.executable, __file__, "--lease-child", arena.path],
            pass_fds=(arena.fd,), capture_output=True, text=True, check=True,
        )
        cross = json.loads(child.stdout)
    return {"acquire_release_us": in_process_us, **cross}


def report(serde: dict, alloc: dict[str, float]) -> str:
    gb = serde["bytes"] / 1e9
    ser, de, picklers = serde["serialize"], serde["deserialize"], serde["picklers"]

    def rate(variant: dict[str, float]) -> str:
        return f"{gb / variant['wall_s']:.2f}"

    rows = [
        ("serialize into blocks vs pickle.dumps into bytes (throughput ratio)",
         f"{ser['into_blocks']['speed_vs_first']:.2f}x",
         f"{rate(ser['into_blocks'])} vs {rate(ser['pickle_dumps'])} GB/s", ">= 0.95x"),
        ("deserialize from blocks (crc32c checked) vs pickle.loads from bytes",
         f"{de['from_blocks']['speed_vs_first']:.2f}x",
         f"{rate(de['from_blocks'])} vs {rate(de['pickle_loads'])} GB/s", ">= 1.0x"),
        ("the same in CPU time (the check runs on a second core)",
         f"{de['pickle_loads']['cpu_s'] / de['from_blocks']['cpu_s']:.2f}x",
         f"{de['from_blocks']['cpu_s']:.2f} vs {de['pickle_loads']['cpu_s']:.2f} s", ""),
        ("the same with checksum=none (what the crc32c check costs)",
         f"{de['unchecked']['speed_vs_first']:.2f}x", "", ""),
        ("cloudpickle vs C pickler, same batches (time ratio)",
         f"{1 / picklers['cloudpickle']['speed_vs_first']:.2f}x", "",
         "(why the C pickler first)"),
        ("block acquire+release, one process", f"{alloc['acquire_release_us']:.2f} us", "",
         "< 5 us"),
        ("lease of 8 blocks from another process's arena", f"{alloc['lease8_us']:.2f} us",
         f"release of 8: {alloc['release8_us']:.2f} us", "< 50 us"),
    ]
    lines = ["| figure | measured | detail | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="pickled data per run (GiB)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--lease-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lease_child:
        _lease_timer(args.lease_child, 20_000)
        return
    print(f"making {args.gib:g} GiB of (int, 100 random bytes) records...", file=sys.stderr)
    batches = make_batches(args.gib)
    serde = serde_figures(batches, args.reps)
    alloc = allocation_figures()
    print(report(serde, alloc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"serde": serde, "allocation": alloc, "gib": args.gib,
                       "reps": args.reps, "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
