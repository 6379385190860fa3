"""File-like streams over chains of arena blocks.

`BlockOutputStream` writes straight into block memory, moving to a fresh block when
one fills; `cut()` ends one output so the next can share the block as its own
extent. `BlockInputStream` reads a list of extents, verifies each extent's crc32c
before any byte of it is returned, and gives every block back the moment its last
byte is consumed (or, when views of it are still alive, when the last view dies).

The crc32c of a large stream's extents is computed ahead of the reader on a helper
thread (`checksum.AheadChecks`), so the check overlaps the unpickling of the
extents before it instead of adding to it; an extent's verdict still comes before
any byte of it is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from netspark.buffer_manager import Arena, BlockPool
from netspark.serde.checksum import CRC_MATCHES, AheadChecks, crc32c


class Extent(NamedTuple):
    """`length` bytes at `offset` of block `block_id`, with their crc32c (0: unchecked).
    A tuple, so that a stream's thousands of them turn into columns at C speed."""

    block_id: int
    offset: int
    length: int
    crc: int


class ChecksumError(IOError):
    """An extent's bytes do not match the checksum its writer recorded."""


class BlockOutputStream:
    """A writable stream over blocks leased from `pool`.

    Checksums are computed when an output is cut, so that `reserve`d bytes (a
    length written after what it measures) can still be filled in.
    """

    def __init__(self, pool: BlockPool, *, checksum: bool = True) -> None:
        self.pool = pool
        self.checksum = checksum
        self.blocks: list[int] = []  # every block this stream has written to
        self._views: list[memoryview] = []
        self._pieces: list[tuple[int, int, int]] = []  # (block index, start, length)
        self._offset = 0  # write position in the last block
        self._start = 0  # where the current piece began in that block
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes | bytearray | memoryview) -> int:
        src = memoryview(data).cast("B")
        size = len(src)
        pos = 0
        block_size = self.pool.block_size
        while pos < size:
            if not self._views or self._offset == block_size:
                self._next_block()
            take = min(size - pos, block_size - self._offset)
            self._views[-1][self._offset:self._offset + take] = src[pos:pos + take]
            self._offset += take
            pos += take
        self._written += size
        return size

    def reserve(self, size: int) -> list[memoryview]:
        """Skips `size` bytes and returns the views to fill them in before the next cut."""
        slots = []
        block_size = self.pool.block_size
        while size:
            if not self._views or self._offset == block_size:
                self._next_block()
            take = min(size, block_size - self._offset)
            slots.append(self._views[-1][self._offset:self._offset + take])
            self._offset += take
            self._written += take
            size -= take
        return slots

    def _end_piece(self) -> None:
        if self._views and self._offset > self._start:
            self._pieces.append((len(self.blocks) - 1, self._start, self._offset - self._start))
        self._start = self._offset

    def _next_block(self) -> None:
        self._end_piece()
        block = self.pool.acquire()
        self.blocks.append(block)
        self._views.append(self.pool.view(block))
        self._offset = self._start = 0

    def mark(self) -> tuple[int, int, int, int, int]:
        """A position that `rewind` can return to (undoing a failed write)."""
        return len(self.blocks), self._offset, self._start, len(self._pieces), self._written

    def rewind(self, mark: tuple[int, int, int, int, int]) -> None:
        blocks, self._offset, self._start, pieces, self._written = mark
        for block in self.blocks[blocks:]:
            self.pool.release(block)
        del self.blocks[blocks:], self._views[blocks:], self._pieces[pieces:]

    def cut(self) -> list[Extent]:
        """Ends the current output and returns its extents; later writes start a new
        output in the same block."""
        self._end_piece()
        extents = []
        for index, start, length in self._pieces:
            data = self._views[index][start:start + length]
            extents.append(Extent(self.blocks[index], start, length,
                                  crc32c(data) if self.checksum else 0))
        self._pieces = []
        return extents

    def close(self) -> list[Extent]:
        """Ends the last output and returns its extents. The blocks stay leased: the
        caller commits or releases `blocks`."""
        extents = self.cut()
        self._views = []
        return extents

    def discard(self) -> None:
        """Gives every block back (an attempt that will never commit)."""
        for block in self.blocks:
            self.pool.release(block)
        self.blocks, self._views, self._pieces = [], [], []


class BlockInputStream:
    """A readable stream over `extents` of `arena`.

    `on_release(block_id)` is called exactly once per distinct block, as soon as the
    stream has consumed every extent on it and no view handed out still refers to it.
    """

    def __init__(self, arena: Arena, extents: Sequence[Extent],
                 on_release: Callable[[int], None], *, checksum: bool = True) -> None:
        self.arena = arena
        self.checksum = checksum
        self._extents = list(extents)
        self._unread = sum(ext.length for ext in self._extents)
        blocks = {block: arena.guarded_view(block, on_release)
                  for block in dict.fromkeys(ext.block_id for ext in self._extents)}
        # One view per extent, dropped once it is consumed; the block views go with
        # `blocks`, so a block goes back as soon as the views of all its extents (and
        # whatever was built on them) are gone: no count of extents per block to keep.
        self._views: list[memoryview | None] = [
            blocks[block][offset:offset + length] for block, offset, length, _ in self._extents]
        self._outside = {i for i, (view, ext) in enumerate(zip(self._views, self._extents,
                                                               strict=True))
                         if len(view) != ext.length}  # refused when reached
        self._spans = self._adjacent_spans()
        self._index = -1  # extent being read
        self._view: memoryview | None = None  # unread part of that extent
        # The helper reads the blocks by address: the extents' views keep them leased
        # until `close` has stopped it.
        self._ahead = (AheadChecks(arena, self._extents)
                       if checksum and AheadChecks.worth_it(self._extents) else None)
        self._verdicts = self._ahead.verdicts if self._ahead is not None else None

    def readable(self) -> bool:
        return True

    @property
    def unread(self) -> int:
        """Bytes not yet consumed."""
        return self._unread

    def extent_view(self) -> memoryview | None:
        """The unread rest of the current extent, not consumed (the next extent is opened,
        and verified, when the current one is used up); None at the end."""
        return self._current()

    def skip_extent(self) -> None:
        """Consumes the rest of the current extent, as `extent_view` showed it."""
        if self._view is not None:
            self._unread -= len(self._view)
            self._finish_extent()

    def _current(self) -> memoryview | None:
        """The unread part of the current extent, opening (and verifying) the next one
        when the current one is used up; None at the end."""
        while not self._view:  # None, or used up
            if self._view is not None:
                self._finish_extent()
            index = self._index + 1
            if index >= len(self._views):
                return None
            self._view = self._open(index)  # raises again if called again: nothing skipped
            self._index = index
        return self._view

    def _open(self, index: int) -> memoryview:
        view = self._views[index]
        assert view is not None
        if self._outside and index in self._outside:
            raise ChecksumError(f"extent {index} ({self._extents[index]}) lies outside its block")
        # The helper's verdict when it has one (a byte: the common case, kept short).
        if self.checksum and (self._verdicts is None or self._verdicts[index] != CRC_MATCHES):
            self._verify(index, view)
        return view

    def _verify(self, index: int, view: memoryview) -> None:
        ext = self._extents[index]
        verdict = self._ahead.verdict(index) if self._ahead is not None else None
        if verdict is None:
            verdict = crc32c(view) == ext.crc
        if not verdict:
            raise ChecksumError(
                f"extent {index} of {len(self._extents)} (block {ext.block_id}, "
                f"offset {ext.offset}, length {ext.length}) fails its crc32c check: "
                f"recorded {ext.crc:#010x}, found {crc32c(view):#010x}"
            )

    def _finish_extent(self) -> None:
        self._view = None
        self._views[self._index] = None  # the block goes back when nothing else holds it
        if self._spans:
            self._spans.pop(self._index, None)

    def _consume(self, count: int) -> memoryview:
        view = self._view
        assert view is not None
        taken, self._view = view[:count], view[count:]
        self._unread -= count
        if not len(self._view):
            self._finish_extent()
        return taken

    def read_view(self, size: int, scratch: bytearray | None = None) -> memoryview:
        """`size` bytes as a view of block memory when they lie in one extent (the view
        keeps its block from being reused), else as a copy: into `scratch` (grown as
        needed; the caller releases the view before passing it again) or a new buffer.
        Short only at the end."""
        view = self._view
        if view is not None and len(view) > size:  # the common case, kept short
            self._view = view[size:]
            self._unread -= size
            return view[:size]
        size = min(size, self._unread)
        current = self._current()
        if current is not None and len(current) >= size:
            return self._consume(size)
        joined = self._across_adjacent_blocks(size)
        if joined is not None:
            return joined
        if scratch is None:
            buffer = bytearray(size)
        else:
            if len(scratch) < size:
                scratch.extend(bytes(size - len(scratch)))
            buffer = scratch
        got = self.readinto(memoryview(buffer)[:size])
        return memoryview(buffer)[:got]

    def _adjacent_spans(self) -> dict[int, memoryview]:
        """For each extent the next one continues in the arena (it begins at the start
        of the following block), one view of both: a read that runs from one into the
        other (a batch that crossed into the next block) is a slice of it. Made here,
        as a view made mid-read costs ten times more, after a parse has flushed the
        caches."""
        spans = {}
        for i, (ext, nxt) in enumerate(zip(self._extents, self._extents[1:], strict=False)):
            if (ext.offset + ext.length == self.arena.block_size and nxt.offset == 0
                    and nxt.block_id == ext.block_id + 1
                    and not self._outside.intersection((i, i + 1))):
                pair = self._views[i], self._views[i + 1]
                spans[i] = self.arena.span_view(ext.block_id, ext.offset,
                                                ext.length + nxt.length, pair)
        return spans

    def _across_adjacent_blocks(self, size: int) -> memoryview | None:
        """`size` bytes running from the current extent into the next as one view, with
        no copy, when the next begins where the current one ends in the arena; else None."""
        head, index = self._view, self._index
        span = self._spans.get(index)
        if head is None or span is None:
            return None
        start = self._extents[index].length - len(head)  # where head lies in the span
        if len(span) - start < size:
            return None
        self._consume(len(head))
        self._current()  # opens the next extent: verified before any byte of it is returned
        self._consume(size - len(head))
        return span[start:start + size]

    def readinto(self, buffer: bytearray | memoryview) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target):
            current = self._current()
            if current is None:
                break
            take = min(len(target) - filled, len(current))
            target[filled:filled + take] = self._consume(take)
            filled += take
        return filled

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while (current := self._current()) is not None:
                chunks.append(bytes(self._consume(len(current))))
            return b"".join(chunks)
        return bytes(self.read_view(size))

    def readline(self, size: int = -1) -> bytes:
        line = bytearray()
        while size < 0 or len(line) < size:
            current = self._current()
            if current is None:
                break
            limit = len(current) if size < 0 else min(len(current), size - len(line))
            end = bytes(current[:limit]).find(b"\n")
            take = limit if end < 0 else end + 1
            line += self._consume(take)
            if end >= 0:
                break
        return bytes(line)

    def close(self) -> None:
        """Stops reading; unread blocks are released (once their views are gone)."""
        if self._ahead is not None:
            self._ahead.close()  # before the blocks can go back
        self._view = None
        self._index = len(self._extents)
        self._unread = 0
        self._views.clear()
        self._spans.clear()

    def __enter__(self) -> BlockInputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
