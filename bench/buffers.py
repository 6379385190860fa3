"""Buffer manager and serde figures, each a ratio measured side by side in one run.

    python bench/buffers.py --gib 1 --passes 5 [--json out.json]

The variants take turns batch by batch (see `per_batch`); ratios are medians over
passes of the per-pass time ratios.

- serialize (int, 100 random bytes) records into blocks vs `pickle.dumps` into bytes
- deserialize from blocks (crc32c verified, ahead of the reader on a second core)
  vs `pickle.loads` from bytes, and vs PySpark's own reader of the same pickles
  framed in memory; what the check costs in CPU
- the C pickler vs cloudpickle on the same batches
- block acquire+release in one process; a lease of 8 blocks from another process
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import pickle
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import cloudpickle
from pyspark.serializers import CPickleSerializer

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import BlockInputStream, BlockOutputStream, read_batches
from netspark.serde.checksum import crc32c
from netspark.serde.records import write_batch

BATCH = 2048  # records per batch on both sides


def make_batches(gib: float) -> list[list[tuple[int, bytes]]]:
    count = int(gib * (1 << 30)) // 110  # ~110 pickled bytes per record
    blob = os.urandom(100 * count)
    records = [(i, blob[i * 100:i * 100 + 100]) for i in range(count)]  # distinct bytes
    return [records[i:i + BATCH] for i in range(0, count, BATCH)]


def quiet_collector() -> None:
    """Moves every object alive now (the input: ~20 million of them for 1 GiB of
    records) out of the garbage collector's sight. A full collection walks them all for
    a quarter of a second, and it lands in whichever variant happens to allocate when
    the collector's counters run over: measured, it fell on one variant in two passes
    of five. Young objects, the variants' own, are still collected as usual."""
    gc.collect()
    gc.freeze()


def per_batch(passes: int, count: int,
              **variants: Callable[[], Callable[[int], object]]) -> dict[str, dict[str, float]]:
    """Each variant is a factory, called once a pass, of a function that does batch i's
    work. Within a pass every batch is done by every variant back to back, the order
    rotating from batch to batch (whoever goes second does not always find the input
    warm), so the machine's drift, which reaches 2x within a minute here, cancels at the
    scale of a batch. Per-pass totals; a ratio is the median over passes of the first
    variant's time over another's. Pass 0 is an untimed warm-up."""
    names = list(variants)
    totals: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for n in range(passes + 1):
        work = [variants[name]() for name in names]
        spent = [0.0] * len(names)
        for i in range(count):
            for k in range(len(names)):
                j = (i + k) % len(names)
                start = clock()
                work[j](i)
                spent[j] += clock() - start
        if n:
            for name, seconds in zip(names, spent, strict=True):
                totals[name].append(seconds)
            print(f"  pass {n}/{passes}: "
                  + ", ".join(f"{name} {t:.3f} s" for name, t in zip(names, spent, strict=True)),
                  file=sys.stderr)
    first = totals[names[0]]
    return {name: {"wall_s": statistics.median(values), "passes_s": values,
                   "speed_vs_first": statistics.median(
                       a / b for a, b in zip(first, values, strict=True))}
            for name, values in totals.items()}


def serde_figures(batches: list[list[tuple[int, bytes]]], passes: int) -> dict:
    conf = NetsparkConf.from_spark({"spark.netspark.buffer.poolSize": "8g",
                                    "spark.netspark.buffer.initialSize": "32m"})
    with Arena.create(conf) as arena:
        pool = BlockPool(arena, batch=64)
        outputs: list[BlockOutputStream] = []

        kept: list[bytes] = []

        # Both sides keep a pass's output (1 GiB of bytes, or of blocks) and let the
        # last pass's go just before they start, as a map task's output lives until
        # it is sent; each batch is its own extent with its crc32c, as a map writes it.
        def into_bytes() -> Callable[[int], object]:
            kept.clear()
            return lambda i: kept.append(pickle.dumps(batches[i], protocol=5))

        def into_blocks() -> Callable[[int], object]:
            for old in outputs:
                old.discard()
            out = BlockOutputStream(pool)
            outputs[:] = [out]
            return lambda i: (write_batch(out, batches[i]), out.cut())

        ser = per_batch(passes, len(batches), pickle_dumps=into_bytes, into_blocks=into_blocks)
        outputs[0].discard()
        kept.clear()

        pickled = [pickle.dumps(batch, protocol=5) for batch in batches]
        framed = io.BytesIO()  # what PySpark reads from Spark's shuffle: length, pickle
        for data in pickled:
            framed.write(struct.pack("!i", len(data)) + data)
        checked, unchecked = written(pool, batches), written(pool, batches)
        quiet_collector()

        def pyspark_reader() -> Callable[[int], object]:
            framed.seek(0)
            frames = CPickleSerializer().load_stream(framed)
            return lambda i: next(frames)

        def from_blocks(output: BlockOutputStream, checksum: bool) -> Callable[[int], object]:
            reader = []

            def next_batch(i: int) -> object:
                if not i:  # the stream is set up in the first batch's time
                    reader.append(read_batches(BlockInputStream(
                        arena, output.extents, lambda block: None, checksum=checksum)))
                return next(reader[0])
            return next_batch

        de = per_batch(passes, len(batches),
                       pickle_loads=lambda: lambda i: pickle.loads(pickled[i]),
                       from_blocks=lambda: from_blocks(checked, True),
                       unchecked=lambda: from_blocks(unchecked, False),
                       pyspark_reader=pyspark_reader)
        de["from_blocks"]["speed_vs_pyspark"] = statistics.median(
            r / b for r, b in zip(de["pyspark_reader"]["passes_s"],
                                  de["from_blocks"]["passes_s"], strict=True))
        start = time.process_time()
        crcs = [crc32c(view) for view in extent_views(arena, checked.extents)]
        check_cpu_s = time.process_time() - start
        assert crcs == [ext.crc for ext in checked.extents]
        checked.discard()
        unchecked.discard()
        sample = batches[: max(1, len(batches) // 10)]
        picklers = per_batch(
            passes, len(sample),
            c_pickler=lambda: lambda i: pickle.dumps(sample[i], protocol=5),
            cloudpickle=lambda: lambda i: cloudpickle.dumps(sample[i], protocol=5),
        )
        return {"bytes": sum(map(len, pickled)), "serialize": ser, "deserialize": de,
                "check_cpu_s": check_cpu_s, "picklers": picklers}


def written(pool: BlockPool, batches: list[list[tuple[int, bytes]]]) -> BlockOutputStream:
    """The batches in blocks as a map task leaves them: each its own extent(s)."""
    out = BlockOutputStream(pool)
    out.extents = []
    for batch in batches:
        write_batch(out, batch)
        out.extents += out.cut()
    out.close()
    return out


def extent_views(arena: Arena, extents: list) -> list[memoryview]:
    return [arena.block_view(ext.block_id)[ext.offset:ext.offset + ext.length]
            for ext in extents]


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
        ("deserialize from blocks vs PySpark's own reader (the same pickles framed in "
         "memory: read length, read bytes, pickle.loads)",
         f"{de['from_blocks']['speed_vs_pyspark']:.2f}x",
         f"{rate(de['from_blocks'])} vs {rate(de['pyspark_reader'])} GB/s", ""),
        ("CPU the crc32c check takes on a helper core (off the reader's path)",
         f"{serde['check_cpu_s'] / gb:.2f} s/GB", "", ""),
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
    parser.add_argument("--passes", type=int, default=3,
                        help="timed passes over the data (each variant batch by batch)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--lease-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lease_child:
        _lease_timer(args.lease_child, 20_000)
        return
    print(f"making {args.gib:g} GiB of (int, 100 random bytes) records...", file=sys.stderr)
    batches = make_batches(args.gib)
    quiet_collector()
    serde = serde_figures(batches, args.passes)
    alloc = allocation_figures()
    print(report(serde, alloc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"serde": serde, "allocation": alloc, "gib": args.gib,
                       "passes": args.passes, "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
