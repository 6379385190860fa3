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

import os
import sys
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


def _check_all(extents: ffi.CData, columns: list[ffi.CData], count: int,
               verdicts: ffi.CData, stop: ffi.CData) -> None:
    """The helper thread: holds `columns` (which `extents` points into) while it runs.
    It runs at the lowest priority (on Linux, a nice value is a thread's own): where
    no core is idle it must not take the reader's, who then checks extents itself."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    lib.ns_crc32c_many(extents, count, verdicts, stop)


class AheadChecks:
    """Verdicts on `extents` of `arena` (does each still match its recorded crc32c?),
    filled in by a helper thread, in order."""

    def __init__(self, arena: Arena, extents: Sequence[Extent]) -> None:
        count = len(extents)
        # Lists turned into C arrays in one call each: a Python loop setting up each
        # extent cost the reader ~1% of its time.
        columns = [ffi.new("uint32_t[]", column) for column in zip(*extents, strict=True)]
        self._extents = ffi.new("ns_extents *", {
            "data": ffi.cast("unsigned char *", arena.block_address(0)),
            "block_size": arena.block_size, "max_blocks": arena.max_blocks,
            "blocks": columns[0], "offsets": columns[1], "lengths": columns[2],
            "expected": columns[3]})
        self._verdict_bytes = ffi.new("unsigned char[]", count)
        # The reader takes each verdict as one byte load through this view: the
        # cheapest look Python has (a cffi call per extent cost the reader ~2%).
        self.verdicts = memoryview(ffi.buffer(self._verdict_bytes))
        self._stop = ffi.new("int *")
        # The thread's arguments keep these buffers alive until the C call returns.
        self._thread = threading.Thread(
            target=_check_all, name="netspark-crc32c", daemon=True,
            args=(self._extents, columns, count, self._verdict_bytes, self._stop))
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
