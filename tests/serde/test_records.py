import gc
import os
from collections import OrderedDict, namedtuple
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspark.buffer_manager import Arena, BlockPool
from netspark.serde import (
    BlockInputStream,
    BlockOutputStream,
    CorruptBatch,
    RecordWriter,
    read_batches,
    read_records,
)
from netspark.serde.records import HEADER, write_batch
from tests.conftest import small_conf

Point = namedtuple("Point", "x y")


class UserRecord:
    def __init__(self, key, payload):
        self.key, self.payload = key, payload

    def __eq__(self, other):
        return (type(other) is UserRecord and self.key == other.key
                and self.payload == other.payload)


def round_trip(pool, arena, records, **writer_args):
    out = BlockOutputStream(pool)
    writer = RecordWriter(out, **writer_args)
    writer.write_all(records)
    writer.flush()
    extents = out.close()
    return list(read_records(BlockInputStream(arena, extents, pool.release))), writer


def assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        elif isinstance(b, tuple) and any(isinstance(x, np.ndarray) for x in b):
            assert_same(list(a), list(b))
        else:
            assert a == b and type(a) is type(b)


def mixed(i: int):
    kinds = [
        i, -i * 1.5, str(i) * (i % 7), os.urandom(i % 50), None, (i, "t", None),
        [i, [i, {"k": i}]], {"a": i, "b": [1.0, None]}, np.int64(i), np.float32(i / 3),
        Point(i, -i), UserRecord(i, b"p"), Decimal(i) / 7, frozenset({i, i + 1}),
        OrderedDict(z=i), True, complex(i, 1), 2**70 + i,
    ]
    return kinds[i % len(kinds)]


@pytest.fixture
def big_arena():
    conf = small_conf(**{"buffer.blockSize": "2m", "buffer.slabSize": "8m",
                         "buffer.poolSize": "256m", "buffer.initialSize": "8m"})
    with Arena.create(conf) as arena:
        pool = BlockPool(arena)
        yield arena, pool
        pool.close()


def test_a_million_mixed_records_round_trip(big_arena):
    arena, pool = big_arena
    records = [(mixed(i), mixed(i * 7 + 3)) for i in range(1_000_000)]
    got, writer = round_trip(pool, arena, records)
    assert got == records
    assert writer.records == 1_000_000
    pool.flush()
    assert arena.stats().leased_blocks == 0  # every block went back as it was read


def test_numpy_arrays_and_scalars(arena, pool):
    records = [np.arange(i, dtype=np.float64) for i in range(50)]
    records += [np.zeros((3, 4), dtype=np.int16), np.array(["a", "bc"]), np.bool_(True)]
    records += [np.arange(100)[::3]]  # not contiguous: pickled in band
    got, _ = round_trip(pool, arena, records)
    assert_same(got, records)


def test_lambdas_and_local_classes_go_through_cloudpickle(arena, pool):
    class Local:
        def __init__(self, v):
            self.v = v

    records = [(1, lambda x: x + 1), Local(5)]
    got, writer = round_trip(pool, arena, records)
    assert writer.cloudpickled_batches >= 1
    assert got[0][1](1) == 2 and got[1].v == 5


def test_records_larger_than_a_block(arena, pool):
    big = os.urandom(5 * (64 << 10) + 17)
    got, _ = round_trip(pool, arena, [big, 1, big])
    assert got == [big, 1, big]


def test_array_views_keep_their_block_from_reuse(arena, pool):
    records = [np.full(1000, i, dtype=np.int64) for i in range(40)]
    out = BlockOutputStream(pool)
    writer = RecordWriter(out)
    writer.write_all(records)
    writer.flush()
    extents = out.close()
    released = []

    def release(block):
        released.append(block)
        pool.release(block)

    arrays = list(read_records(BlockInputStream(arena, extents, release)))
    assert not arrays[0].flags.owndata  # a view of block memory, not a copy
    assert released == []  # every block still has a live array on it
    pool.flush()
    scribblers = arena.lease(arena.max_blocks)  # every other block of the pool
    for block in scribblers:
        arena.block_view(block)[:] = b"\xff" * arena.block_size
    for i, array in enumerate(arrays):
        assert (array == i).all()
    del arrays, array
    gc.collect()
    assert sorted(released) == sorted(set(out.blocks))
    arena.release(scribblers)


def test_a_corrupt_header_is_an_error_not_a_crash(arena, pool):
    out = BlockOutputStream(pool, checksum=False)
    out.write((10**12).to_bytes(8, "little") + (0).to_bytes(4, "little") + b"junk")
    extents = out.close()
    with pytest.raises(CorruptBatch, match="short"):
        list(read_records(BlockInputStream(arena, extents, pool.release, checksum=False)))


def test_a_batch_s_blocks_go_back_before_its_records_are_used(arena, pool):
    out = BlockOutputStream(pool)
    first = [os.urandom(40_000) for _ in range(10)]  # ~400 KB: seven 64 KiB blocks
    write_batch(out, first)
    write_batch(out, [b"second"])  # begins in the first batch's last block
    extents = out.close()
    released = []
    batches = read_batches(BlockInputStream(arena, extents, released.append))
    assert next(batches) == first
    assert sorted(released) == out.blocks[:-1]  # all but the block the next batch is in
    assert next(batches) == [b"second"]
    assert sorted(released) == out.blocks
    for block in out.blocks:
        pool.release(block)


def test_a_corrupt_header_after_good_batches_is_an_error(arena, pool):
    out = BlockOutputStream(pool, checksum=False)
    for i in range(3):
        write_batch(out, [i])
    out.write(HEADER.pack(8, 1 << 30) + b"12345678" + b"padding" * 10)
    extents = out.close()
    batches = read_batches(BlockInputStream(arena, extents, pool.release, checksum=False))
    assert [next(batches) for _ in range(3)] == [[0], [1], [2]]
    with pytest.raises(CorruptBatch, match="names 1073741824 buffers"):
        next(batches)


records_strategy = st.lists(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text() | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=20,
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records_strategy)
def test_any_records_round_trip(arena, pool, records):
    got, _ = round_trip(pool, arena, records, batch_bytes=512)
    assert got == records
