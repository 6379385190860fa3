"""crc32c (ISA-L's, through netspark's native module), and the checks of a stream's
extents computed on a helper thread ahead of its reader.

For the helper, one C call (`ns_crc32c_many`) runs through every extent with the
GIL released, so the checks overlap the reader's unpickling instead of adding to
it (a Python loop would take the GIL back after every extent, and wait up to the
interpreter's 5 ms switch interval for it each time). The reader never waits for
the helper: an extent it reaches first it checks itself. Each verdict is one byte, so
a reader sees either none or all of it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from netspark._native import ffi, lib
from netspark.buffer_manager import Arena

if TYPE_CHECKING:  # streams imports this module
    from netspark.serde.streams import Extent

# Not worth a thread: a stream this small is checked inline, extent by extent.
MIN_AHEAD_BYTES = 1 << 20
UNCHECKED, CRC_MATCHES = lib.NS_UNCHECKED, lib.NS_CRC_MATCHES


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The standard CRC-32C of `data` (the GIL is released while it runs)."""
    buffer = ffi.from_buffer(data)
    return lib.ns_crc32c(buffer, len(buffer))


class AheadChecks:
    """Verdicts on `extents` of `arena` (does each still match its recorded crc32c?),
    filled in by a helper thread, in order."""

    def __init__(self, arena: Arena, extents: Sequence[Extent]) -> None:
        count = len(extents)
        self._data = ffi.new("unsigned char *[]", count)
        self._lengths = ffi.new("uint32_t[]", count)
        for i, ext in enumerate(extents):
            # Clamped to the block: an extent that overruns it is refused by the
            # reader, and the helper must not read past the arena meanwhile.
            length = max(0, min(ext.length, arena.block_size - ext.offset))
            if length:
                self._data[i] = ffi.cast("unsigned char *",
                                         arena.block_address(ext.block_id) + ext.offset)
                self._lengths[i] = length
        self._expected = ffi.new("uint32_t[]", [ext.crc for ext in extents])
        self._verdict_bytes = ffi.new("unsigned char[]", count)
        # The reader takes each verdict as one byte load through this view: the
        # cheapest look Python has (a cffi call per extent cost the reader ~2%).
        self.verdicts = memoryview(ffi.buffer(self._verdict_bytes))
        self._stop = ffi.new("int *")
        # The thread's arguments keep these buffers alive until the C call returns.
        self._thread = threading.Thread(
            target=lib.ns_crc32c_many, name="netspark-crc32c", daemon=True,
            args=(count, self._data, self._lengths, self._expected, self._verdict_bytes,
                  self._stop))
        self._thread.start()
        # A stream dropped unread stops its helper at the next extent.
        self._finalizer = weakref.finalize(self, lib.ns_crc_stop, self._stop)

    @staticmethod
    def worth_it(extents: Sequence[Extent]) -> bool:
        return len(extents) > 1 and sum(ext.length for ext in extents) >= MIN_AHEAD_BYTES

    def verdict(self, index: int) -> bool | None:
        """Whether extent `index` matches its crc32c; None if the helper has not got
        to it yet."""
        found = self.verdicts[index]
        return None if found == UNCHECKED else found == CRC_MATCHES

    def close(self) -> None:
        """Stops the helper and waits for it (it may be reading a block right now)."""
        lib.ns_crc_stop(self._stop)
        self._thread.join()
