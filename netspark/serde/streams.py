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

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netspark.buffer_manager import Arena, BlockPool
from netspark.serde.checksum import AheadChecks, crc32c


@dataclass(frozen=True)
class Extent:
    """`length` bytes at `offset` of block `block_id`, with their crc32c (0: unchecked)."""

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
        self._on_release = on_release
        self._remaining = Counter(ext.block_id for ext in self._extents)
        self._unread = sum(ext.length for ext in self._extents)
        self._block_views: dict[int, memoryview] = {}
        self._index = -1  # extent being read
        self._view: memoryview | None = None  # unread part of that extent
        for block in self._remaining:
            self._block_views[block] = arena.guarded_view(block, on_release)
        # The helper reads the blocks by address: this stream's guarded views keep
        # them leased until `close` has stopped it.
        self._ahead = (AheadChecks(arena, self._extents)
                       if checksum and AheadChecks.worth_it(self._extents) else None)

    def readable(self) -> bool:
        return True

    @property
    def unread(self) -> int:
        """Bytes not yet consumed."""
        return self._unread

    def _current(self) -> memoryview | None:
        """The unread part of the current extent, opening (and verifying) the next one
        when the current one is used up; None at the end."""
        while self._view is None or not len(self._view):
            if self._view is not None:
                self._finish_extent()
            if self._index + 1 >= len(self._extents):
                return None
            self._index += 1
            self._view = self._open(self._extents[self._index])
        return self._view

    def _open(self, ext: Extent) -> memoryview:
        view = self._block_views[ext.block_id][ext.offset:ext.offset + ext.length]
        if len(view) != ext.length:
            raise ChecksumError(f"extent {self._index} ({ext}) lies outside its block")
        if not self.checksum:
            return view
        found = self._ahead.crc(self._index) if self._ahead is not None else None
        if found is None:
            found = crc32c(view)
        if found != ext.crc:
            raise ChecksumError(
                f"extent {self._index} of {len(self._extents)} (block {ext.block_id}, "
                f"offset {ext.offset}, length {ext.length}) fails its crc32c check: "
                f"recorded {ext.crc:#010x}, found {found:#010x}"
            )
        return view

    def _finish_extent(self) -> None:
        self._view = None
        block = self._extents[self._index].block_id
        self._remaining[block] -= 1
        if self._remaining[block] == 0:
            del self._block_views[block]  # the guard calls on_release when unreferenced

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

    def _across_adjacent_blocks(self, size: int) -> memoryview | None:
        """`size` bytes running from the current extent into the next as one view, with
        no copy, when the next begins where the current one ends in the arena (at the
        start of the following block); else None."""
        head, index = self._view, self._index
        if head is None or index + 1 >= len(self._extents):
            return None
        ext, nxt = self._extents[index], self._extents[index + 1]
        if not (ext.offset + ext.length == self.arena.block_size and nxt.offset == 0
                and nxt.block_id == ext.block_id + 1 and len(head) + nxt.length >= size):
            return None
        keep = self._block_views[ext.block_id], self._block_views[nxt.block_id]
        start = self.arena.block_size - len(head)
        self._consume(len(head))
        self._current()  # opens the next extent: verified before any byte of it is returned
        self._consume(size - len(head))
        return self.arena.span_view(ext.block_id, start, size, keep)

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
        self._block_views.clear()
        self._remaining.clear()

    def __enter__(self) -> BlockInputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
