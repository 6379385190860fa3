"""PySpark's spill measure in netspark's executors leaves out the shared arena."""

import pyspark.shuffle
from pyspark.core import rdd

from netspark.buffer_manager import Arena
from netspark.spark import memory
from tests.conftest import small_conf


def resident_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) >> 10


def test_touched_arena_blocks_do_not_count_as_the_worker_s_memory():
    conf = small_conf(**{"buffer.blockSize": "2m", "buffer.slabSize": "32m",
                         "buffer.poolSize": "128m", "buffer.initialSize": "128m",
                         "buffer.hugepages": "false"})
    rss, private = resident_mib(), memory.private_memory_mib()
    with Arena.create(conf) as arena:  # pinned, so resident at once; touched anyway
        for block in range(arena.max_blocks):
            arena.block_view(block)[::4096] = b"x" * len(range(0, arena.block_size, 4096))
        assert resident_mib() - rss >= 100  # what PySpark's own measure would see
        assert memory.private_memory_mib() - private < 16


def test_install_points_pyspark_s_spilling_at_it(monkeypatch):
    monkeypatch.setattr(pyspark.shuffle, "get_used_memory", pyspark.shuffle.get_used_memory)
    monkeypatch.setattr(rdd, "get_used_memory", rdd.get_used_memory)
    memory.install()
    assert pyspark.shuffle.get_used_memory is memory.private_memory_mib
    assert rdd.get_used_memory is memory.private_memory_mib
