import os

import pytest

from netspark.serde import BlockInputStream, ChecksumError, Extent
from netspark.serde.checksum import MIN_AHEAD_BYTES, AheadChecks, crc32c
from tests.serde.conftest import write_outputs

BLOCK = 64 << 10
BLOCKS = MIN_AHEAD_BYTES // BLOCK + 4  # enough for the helper thread to be used


def test_crc32c_is_the_standard_castagnoli_crc():
    assert crc32c(b"123456789") == 0xE3069283  # the catalogued check value of CRC-32C
    assert crc32c(b"") == 0
    data = os.urandom(3 * BLOCK + 5)
    assert crc32c(memoryview(data)[1:]) == crc32c(data[1:])
    assert crc32c(data) != crc32c(data[:-1] + bytes([data[-1] ^ 1]))


def test_the_helper_computes_every_extents_crc(arena, pool):
    _, [extents] = write_outputs(pool, os.urandom(BLOCKS * BLOCK))
    assert AheadChecks.worth_it(extents)
    checks = AheadChecks(arena, extents)
    checks._thread.join()  # let it finish, so every verdict is the helper's
    assert [checks.verdict(i) for i in range(len(extents))] == [True] * len(extents)
    checks.close()


def test_a_flipped_byte_found_by_the_helper_stops_the_reader_at_its_extent(arena, pool):
    out, [extents] = write_outputs(pool, data := os.urandom(BLOCKS * BLOCK))
    arena.block_view(out.blocks[5])[100] ^= 0x40
    stream = BlockInputStream(arena, extents, pool.release)
    stream._ahead._thread.join()
    assert stream._ahead.verdict(5) is False and stream._ahead.verdict(4) is True
    assert stream.read(5 * BLOCK) == data[:5 * BLOCK]  # the extents before it are intact
    with pytest.raises(ChecksumError, match=rf"extent 5 of {BLOCKS} \(block \d+, offset 0"):
        stream.read(1)
    stream.close()


def test_an_extent_past_its_block_is_refused_without_the_helper_reading_past_it(arena, pool):
    out, [extents] = write_outputs(pool, os.urandom(BLOCKS * BLOCK))
    last = out.blocks[-1]
    extents[-1] = Extent(last, BLOCK - 10, 1 << 30, 0)  # would run far beyond the arena
    stream = BlockInputStream(arena, extents, pool.release)
    stream._ahead._thread.join()
    with pytest.raises(ChecksumError, match="outside its block"):
        stream.read()
    stream.close()


def test_closing_a_stream_stops_its_helper(arena, pool):
    _, [extents] = write_outputs(pool, os.urandom(BLOCKS * BLOCK))
    stream = BlockInputStream(arena, extents, pool.release)
    helper = stream._ahead._thread
    stream.read(10)
    stream.close()
    assert not helper.is_alive()


def test_small_streams_are_checked_inline(arena, pool):
    _, [extents] = write_outputs(pool, data := os.urandom(3 * BLOCK))
    stream = BlockInputStream(arena, extents, pool.release)
    assert stream._ahead is None
    assert stream.read() == data
