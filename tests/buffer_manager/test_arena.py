import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from netspark.buffer_manager import (
    Arena,
    ArenaError,
    BlockPool,
    HugepagesUnavailable,
    PoolExhausted,
)
from tests.conftest import small_conf

BLOCK = 64 << 10


def run_child(code: str, *args: str, fds: tuple[int, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_create_reports_what_it_obtained(arena):
    stats = arena.stats()
    assert stats.block_size == BLOCK
    assert stats.max_blocks == 64
    assert stats.total_blocks == 4  # one initial slab
    assert stats.free_blocks == 4 and stats.leased_blocks == 0
    assert stats.page_kind in ("hugetlb", "thp", "4k")
    assert "blocks of" in str(stats)


def test_blocks_are_real_shared_memory(arena):
    other = Arena.attach(arena.path)
    try:
        [block] = arena.lease(1)
        arena.block_view(block)[:5] = b"hello"
        assert bytes(other.block_view(block)[:5]) == b"hello"
        assert other.owner_of(block) == os.getpid()
    finally:
        other.close()


def test_release_of_a_block_not_held_changes_nothing(arena):
    mine = arena.lease(2)
    with pytest.raises(ArenaError, match="not all are held"):
        arena.release([mine[0], mine[1] + 1])
    assert arena.stats().leased_blocks == 2
    with pytest.raises(ArenaError):
        arena.release([mine[0], mine[0]])  # twice in one call
    arena.release(mine)
    assert arena.stats().leased_blocks == 0


def test_transfer_moves_ownership(arena):
    blocks = arena.lease(3)
    arena.transfer(blocks, to_pid=1)
    assert {arena.owner_of(b) for b in blocks} == {1}
    with pytest.raises(ArenaError):
        arena.release(blocks)  # no longer ours
    arena.release(blocks, pid=1)


def test_out_of_range_block_is_refused(arena):
    with pytest.raises(IndexError, match="outside the arena"):
        arena.block_view(arena.max_blocks)


def test_grows_to_the_cap_then_gives_idle_slabs_back():
    now = [1000.0]
    with Arena.create(small_conf(), clock=lambda: now[0]) as arena:
        held = arena.lease(64)
        assert len(held) == 64
        assert arena.lease(1) == []  # at the cap: no block, no error
        stats = arena.stats()
        assert stats.grows == 15 and stats.total_blocks == 64 and stats.high_water == 64
        allocated = os.fstat(arena.fd).st_blocks
        arena.release(held)
        assert arena.shrink_idle(idle_seconds=30, min_slabs=1) == 0  # not idle yet
        now[0] += 31
        assert arena.shrink_idle(idle_seconds=30, min_slabs=1) == 15
        stats = arena.stats()
        assert stats.total_blocks == 4 and stats.shrinks == 15
        assert os.fstat(arena.fd).st_blocks < allocated  # pages went back to the OS
        assert len(arena.lease(8)) == 8  # and it grows again on demand


def test_a_slab_with_a_leased_block_is_never_shrunk():
    now = [0.0]
    with Arena.create(small_conf(), clock=lambda: now[0]) as arena:
        held = arena.lease(8)  # slabs 0 and 1
        arena.release(held[:4])
        now[0] += 100
        arena.shrink_idle(idle_seconds=1, min_slabs=0)
        assert arena.stats().total_blocks == 4
        assert all(arena.owner_of(b) == os.getpid() for b in held[4:])


def test_two_processes_write_one_arena_at_once(arena):
    code = """
        import os, sys
        from netspark.buffer_manager import Arena, BlockPool
        arena = Arena.attach(sys.argv[1])
        pool = BlockPool(arena, batch=2)
        mark = os.getpid().to_bytes(4, "little")
        for _ in range(300):
            ids = [pool.acquire() for _ in range(6)]
            for b in ids:
                arena.block_view(b)[:] = mark * (arena.block_size // 4)
            for b in ids:
                if bytes(arena.block_view(b)) != mark * (arena.block_size // 4):
                    sys.exit(f"block {b} was written by someone else while held")
            for b in ids:
                pool.release(b)
        pool.close()
        print("ok")
    """
    children = [run_child(code, arena.path, fds=(arena.fd,)) for _ in range(2)]
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == "ok"
    assert arena.stats().leased_blocks == 0


def test_blocks_of_a_killed_process_come_back(arena):
    code = """
        import sys
        from netspark.buffer_manager import Arena
        arena = Arena.attach(sys.argv[1])
        print(len(arena.lease(10)), flush=True)
        sys.stdin = None
        import time; time.sleep(60)
    """
    child = run_child(code, arena.path, fds=(arena.fd,))
    assert child.stdout.readline().strip() == "10"
    assert arena.stats().leased_blocks == 10
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert arena.reclaim_dead() == 10
    stats = arena.stats()
    assert stats.leased_blocks == 0 and stats.reclaimed == 10


def test_killing_processes_mid_operation_leaves_the_allocator_consistent(arena):
    code = """
        import sys
        from netspark.buffer_manager import Arena
        arena = Arena.attach(sys.argv[1])
        print("go", flush=True)
        while True:
            arena.release(arena.lease(7))
    """
    for _ in range(8):
        child = run_child(code, arena.path, fds=(arena.fd,))
        assert child.stdout.readline().strip() == "go"
        time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        arena.reclaim_dead()
    stats = arena.stats()
    assert stats.leased_blocks == 0
    assert stats.free_blocks == stats.total_blocks
    everything = arena.lease(arena.max_blocks)
    assert len(set(everything)) == arena.max_blocks


def test_full_pool_waits_then_names_the_setting(arena):
    pool = BlockPool(arena, batch=4, acquire_timeout=0.3)
    held = [pool.acquire() for _ in range(64)]
    start = time.monotonic()
    with pytest.raises(PoolExhausted) as err:
        pool.acquire()
    assert time.monotonic() - start >= 0.3
    assert "spark.netspark.buffer.poolSize" in str(err.value)
    assert "64 blocks (4 MiB" in str(err.value)
    for block in held:
        pool.release(block)


def test_full_pool_gives_back_pressure_not_failure(arena):
    pool = BlockPool(arena, batch=4, acquire_timeout=5)
    other = BlockPool(arena, batch=4, acquire_timeout=5)
    held = [other.acquire() for _ in range(64)]
    timer = threading.Timer(0.2, other.close)
    threading.Timer(0.1, lambda: [other.release(b) for b in held]).start()
    timer.start()
    block = pool.acquire()  # waits until the other releases
    assert 0 <= block < arena.max_blocks
    timer.join()


def test_tiny_pool_of_one_block():
    conf = small_conf(**{"buffer.poolSize": "64k", "buffer.slabSize": "64k",
                         "buffer.initialSize": "64k"})
    with Arena.create(conf) as arena:
        pool = BlockPool(arena, batch=8, acquire_timeout=0.1)
        block = pool.acquire()
        with pytest.raises(PoolExhausted):
            pool.acquire()
        pool.release(block)
        assert pool.acquire() == block


def test_low_memlock_limit_warns_once_and_goes_on_unpinned():
    code = """
        import logging, os, resource
        from netspark.buffer_manager import Arena
        from tests.conftest import small_conf
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 << 10, 64 << 10))
        if os.geteuid() == 0:  # root pins whatever the limit: be somebody else
            os.setgid(65534); os.setuid(65534)
        with Arena.create(small_conf()) as a, Arena.create(small_conf()) as b:
            print(a.stats().pinned, b.stats().pinned)
    """
    child = run_child(code)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "False False"
    assert err.count("cannot pin the buffer arena") == 1
    assert "RLIMIT_MEMLOCK is 64 KiB" in err and "ulimit -l" in err


def test_pinned_when_the_limit_allows(arena):
    assert arena.stats().pinned


def test_hugepages_true_without_hugepages_fails_clearly(monkeypatch):
    monkeypatch.setattr("netspark.buffer_manager.arena.free_hugepages", lambda: 0)
    conf = small_conf(**{"buffer.blockSize": "2m", "buffer.slabSize": "2m",
                         "buffer.poolSize": "8m", "buffer.initialSize": "2m",
                         "buffer.hugepages": "true"})
    with pytest.raises(HugepagesUnavailable, match="nr_hugepages"):
        Arena.create(conf)
    auto = conf.with_overrides(buffer_hugepages="auto")
    with Arena.create(auto) as arena:
        assert arena.page_kind in ("thp", "4k")


NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


@pytest.fixture
def reserved_hugepages():
    try:
        with open(NR_HUGEPAGES) as f:
            before = int(f.read())
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before + 8))
    except OSError as err:
        pytest.skip(f"cannot reserve hugepages here: {err}")
    with open(NR_HUGEPAGES) as f:
        if int(f.read()) < before + 8:
            pytest.skip("the kernel could not reserve 8 hugepages")
    yield
    with open(NR_HUGEPAGES, "w") as f:
        f.write(str(before))


def test_hugetlb_pages_when_the_system_has_them(reserved_hugepages):
    conf = small_conf(**{"buffer.blockSize": "2m", "buffer.slabSize": "2m",
                         "buffer.poolSize": "6m", "buffer.initialSize": "2m",
                         "buffer.hugepages": "true"})
    with Arena.create(conf) as arena:
        assert arena.page_kind == "hugetlb"
        blocks = arena.lease(3)
        assert len(blocks) == 3  # grown on hugepages too
        arena.block_view(blocks[-1])[-1:] = b"x"


def test_arena_vanishes_with_its_owner_even_on_sigkill():
    code = """
        from netspark.buffer_manager import Arena
        from tests.conftest import small_conf
        arena = Arena.create(small_conf())
        print(arena.path, flush=True)
        import time; time.sleep(60)
    """
    child = run_child(code)
    path = child.stdout.readline().strip()
    assert os.path.exists(path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not os.path.exists(path)
    with pytest.raises(ArenaError, match="cannot open"):
        Arena.attach(path)
    assert not [n for n in os.listdir("/dev/shm") if "netspark" in n]
