"""The netspark demo: the buffer manager and block streams at work, with their figures.

A map task's records go straight into shared 2 MB blocks, one output per reduce
partition sharing blocks as extents; reduce tasks in other processes read them in
place, each block handed back as soon as it is consumed. Then the side-by-side
figures of bench/buffers.py at a demo size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import BlockInputStream, BlockOutputStream, RecordWriter, read_records

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
RECORDS = 400_000

READER = """
import sys, json
from netspark.buffer_manager import Arena, BlockPool
from netspark.serde import BlockInputStream, Extent, read_records
arena = Arena.attach(sys.argv[1])
extents = [Extent(*map(int, e.split(","))) for e in sys.argv[2].split(";")]
released = []
count = sum(1 for _ in read_records(BlockInputStream(arena, extents, released.append)))
print(json.dumps({"records": count, "released": len(released)}))
"""


def main() -> None:
    conf = NetsparkConf.from_spark({"spark.netspark.buffer.poolSize": "512m"})
    with Arena.create(conf) as arena:
        print(f"arena: {arena.stats()}")
        pool = BlockPool(arena)
        start = time.perf_counter()
        out = BlockOutputStream(pool)
        outputs = []
        for part in range(PARTITIONS):
            writer = RecordWriter(out)
            writer.write_all((k, os.urandom(100)) for k in range(part, RECORDS, PARTITIONS))
            writer.flush()
            outputs.append(out.cut())
        out.close()
        took = time.perf_counter() - start
        print(f"map: {RECORDS} (int, 100-byte) records into {len(out.blocks)} blocks in "
              f"{took:.2f} s; {PARTITIONS} outputs as "
              f"{[len(o) for o in outputs]} extents sharing blocks")
        pool.flush()
        arena.transfer(out.blocks, to_pid=os.getpid())  # as a commit hands them over
        total = 0
        for part, extents in enumerate(outputs):
            spec = ";".join(f"{e.block_id},{e.offset},{e.length},{e.crc}" for e in extents)
            reader = subprocess.run([sys.executable, "-c", READER, arena.path, spec],
                                    pass_fds=(arena.fd,), capture_output=True, text=True,
                                    check=True, cwd=ROOT)
            print(f"reduce {part} (pid-separate process): {reader.stdout.strip()}")
            total += int(reader.stdout.split('"records": ')[1].split(",")[0])
        assert total == RECORDS, f"read {total} records of {RECORDS}"
        local = sum(1 for _ in read_records(
            BlockInputStream(arena, [e for o in outputs for e in o], lambda b: None)))
        assert local == RECORDS
        arena.release(out.blocks)
        print(f"arena after: {arena.stats()}")
    print("\nfigures (bench/buffers.py --gib 0.25 --reps 3):")
    subprocess.run([sys.executable, str(ROOT / "bench" / "buffers.py"), "--gib", "0.25",
                    "--reps", "3"], check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
