import gc
import os

import pytest

from netspark.serde import BlockInputStream, BlockOutputStream, ChecksumError, Extent
from netspark.serde.checksum import crc32c
from tests.serde.conftest import write_outputs

BLOCK = 64 << 10


def test_a_large_output_spans_blocks(arena, pool):
    data = os.urandom(3 * BLOCK + 123)
    out, [extents] = write_outputs(pool, data)
    assert [e.length for e in extents] == [BLOCK, BLOCK, BLOCK, 123]
    assert len(set(out.blocks)) == 4
    stream = BlockInputStream(arena, extents, pool.release)
    assert stream.read() == data


def test_small_outputs_share_a_block_as_separate_extents(arena, pool):
    out, outputs = write_outputs(pool, b"a" * 10, b"b" * 20, b"c" * 30)
    assert len(out.blocks) == 1
    assert [(e.offset, e.length) for [e] in outputs] == [(0, 10), (10, 20), (30, 30)]
    for payload, extents in zip((b"a" * 10, b"b" * 20, b"c" * 30), outputs, strict=True):
        assert BlockInputStream(arena, extents, lambda b: None).read() == payload


def test_each_block_goes_back_as_its_last_byte_is_consumed(arena, pool):
    data = os.urandom(2 * BLOCK + 10)
    out, [extents] = write_outputs(pool, data)
    released = []
    stream = BlockInputStream(arena, extents, released.append)
    assert stream.read(BLOCK - 1) == data[:BLOCK - 1]
    assert released == []
    assert stream.read(1) == data[BLOCK - 1:BLOCK]
    assert released == [out.blocks[0]]  # at once, not at the next read
    stream.read(BLOCK)
    assert released == out.blocks[:2]
    assert stream.read() == data[2 * BLOCK:]
    assert released == out.blocks


def test_a_block_shared_by_extents_goes_back_after_the_last(arena, pool):
    out, outputs = write_outputs(pool, b"x" * 100, b"y" * 100)
    released = []
    stream = BlockInputStream(arena, outputs[0] + outputs[1], released.append)
    stream.read(150)
    assert released == []
    stream.read(50)
    assert released == out.blocks


def test_readinto_readline_and_read_views(arena, pool):
    _, [extents] = write_outputs(pool, b"first line\nsecond\n" + b"z" * BLOCK + b"\ntail")
    stream = BlockInputStream(arena, extents, pool.release)
    assert stream.readline() == b"first line\n"
    buf = bytearray(3)
    assert stream.readinto(buf) == 3 and buf == b"sec"
    assert stream.readline() == b"ond\n"
    assert stream.readline() == b"z" * BLOCK + b"\n"  # across the block boundary
    view = stream.read_view(2)
    assert bytes(view) == b"ta"
    assert stream.read_view(100).tobytes() == b"il"  # short only at the end
    assert stream.read() == b"" and stream.unread == 0


def test_a_flipped_byte_is_caught_before_any_byte_of_its_extent(arena, pool):
    out, [extents] = write_outputs(pool, os.urandom(BLOCK + 500))
    arena.block_view(out.blocks[1])[7] ^= 0x01
    stream = BlockInputStream(arena, extents, pool.release)
    assert len(stream.read(BLOCK)) == BLOCK  # the first extent is intact
    with pytest.raises(ChecksumError, match=r"extent 1 of 2 \(block \d+, offset 0, length 500\)"):
        stream.read(1)


def test_a_failed_extent_fails_again_rather_than_being_skipped(arena, pool):
    _, [extents] = write_outputs(pool, os.urandom(BLOCK + 500))
    extents.append(extents[-1])  # an intact extent after the bad one
    good = extents[0]
    extents[1] = Extent(good.block_id, good.offset, good.length, good.crc ^ 1)
    stream = BlockInputStream(arena, extents, pool.release)
    stream.read(BLOCK)
    for _ in range(2):  # a caller that carries on past the error gets it again
        with pytest.raises(ChecksumError, match="extent 1 of 3"):
            stream.read(1)
    stream.close()


def test_checksum_none_skips_the_check(arena, pool):
    out = BlockOutputStream(pool, checksum=False)
    out.write(b"abc")
    [extent] = out.close()
    assert extent.crc == 0
    assert BlockInputStream(arena, [extent], pool.release, checksum=False).read() == b"abc"


def test_an_extent_outside_its_block_is_refused(arena, pool):
    bad = Extent(pool.acquire(), BLOCK - 10, 20, 0)
    with pytest.raises(ChecksumError, match="outside its block"):
        BlockInputStream(arena, [bad], pool.release).read()


def test_rewind_undoes_a_failed_write_and_frees_its_blocks(arena, pool):
    out = BlockOutputStream(pool)
    out.write(b"keep")
    mark = out.mark()
    out.write(os.urandom(2 * BLOCK))
    assert len(out.blocks) == 3
    out.rewind(mark)
    out.write(b"!")
    assert len(out.blocks) == 1
    [extent] = out.close()
    assert BlockInputStream(arena, [extent], pool.release).read() == b"keep!"


def test_reserved_bytes_are_filled_in_later_and_checksummed(arena, pool):
    out = BlockOutputStream(pool)
    out.write(b"x" * (BLOCK - 2))
    slots = out.reserve(4)  # straddles two blocks
    assert [len(s) for s in slots] == [2, 2]
    out.write(b"end")
    slots[0][:] = b"AB"
    slots[1][:] = b"CD"
    extents = out.close()
    assert BlockInputStream(arena, extents, pool.release).read()[-7:] == b"ABCDend"


def test_closing_early_releases_unread_blocks(arena, pool):
    _, [extents] = write_outputs(pool, os.urandom(3 * BLOCK))
    released = []
    stream = BlockInputStream(arena, extents, released.append)
    stream.read(10)
    stream.close()
    gc.collect()
    assert len(released) == 3


def test_discard_gives_every_block_back(arena, pool):
    out, _ = write_outputs(pool, os.urandom(3 * BLOCK))
    pool.flush()
    assert arena.stats().leased_blocks == 3
    out.discard()
    pool.flush()
    assert arena.stats().leased_blocks == 0


def test_a_read_across_adjacent_blocks_is_a_view_that_holds_both(arena, pool):
    out, [extents] = write_outputs(pool, data := os.urandom(2 * BLOCK))
    assert out.blocks[1] == out.blocks[0] + 1  # fresh leases come in order
    released = []
    stream = BlockInputStream(arena, extents, released.append)
    stream.read(BLOCK - 10)
    view = stream.read_view(20)
    assert not isinstance(view.obj, bytearray)  # no copy
    assert bytes(view) == data[BLOCK - 10:BLOCK + 10]
    stream.read()
    gc.collect()
    assert released == []  # the view still looks at both blocks
    del view
    gc.collect()
    assert sorted(released) == sorted(out.blocks)


def test_a_read_across_blocks_apart_is_a_copy(arena, pool):
    first, second = pool.acquire(), pool.acquire()
    third = pool.acquire()
    arena.block_view(first)[:] = b"a" * BLOCK
    arena.block_view(third)[:] = b"c" * BLOCK
    extents = [Extent(first, 0, BLOCK, crc32c(b"a" * BLOCK)),
               Extent(third, 0, BLOCK, crc32c(b"c" * BLOCK))]
    stream = BlockInputStream(arena, extents, lambda b: None)
    stream.read(BLOCK - 1)
    view = stream.read_view(2)
    assert isinstance(view.obj, bytearray) and bytes(view) == b"ac"
    for block in (first, second, third):
        pool.release(block)


def test_a_flipped_byte_in_the_next_block_fails_a_read_across_it(arena, pool):
    out, [extents] = write_outputs(pool, os.urandom(2 * BLOCK))
    arena.block_view(out.blocks[1])[BLOCK - 1] ^= 0x01
    stream = BlockInputStream(arena, extents, pool.release)
    stream.read(BLOCK - 10)
    with pytest.raises(ChecksumError, match="extent 1 of 2"):
        stream.read_view(20)
