"""PySpark's spill decisions, measured on the worker's own memory, not the arena's.

PySpark's ExternalMerger and ExternalSorter spill to disk once `get_used_memory()`,
the process's resident set, passes `spark.python.worker.memory`. A netspark worker
maps its executor's shared arena (and, for short-circuit reads, its peers'), so
every block it has written or read stays in its resident set as shared memory,
although those pages belong to the arena and are capped by `buffer.poolSize`.
Measured on a GroupBy of 1 GB, workers that had touched a few hundred MiB of
blocks spilled at every batch and the reduce stage ran 2x slower than Spark's.
So in netspark's executors the measure is the resident set less its shared
memory pages: the Python heap that PySpark's limit is about.
"""

from __future__ import annotations

import os

_STATUS = "/proc/self/status"


def private_memory_mib() -> int:
    """Resident memory of this process, less shared-memory pages (VmRSS - RssShmem)."""
    rss = shmem = 0
    with open(_STATUS, encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssShmem:"):
                shmem = int(line.split()[1])
                break  # listed after VmRSS
    return (rss - shmem) >> 10


def install() -> None:
    """Makes PySpark's spilling use `private_memory_mib` in this process and its forks."""
    if not os.path.exists(_STATUS):
        return  # not Linux: PySpark's own measure stays
    import pyspark.core.rdd
    import pyspark.shuffle

    pyspark.shuffle.get_used_memory = private_memory_mib
    pyspark.core.rdd.get_used_memory = private_memory_mib  # imported there by name
