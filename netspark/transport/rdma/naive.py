"""The "naive RDMA" of the paper's comparison (benchmarks only: `rdma.naive=true`).

An RDMA transport without zero-copy buffer management: the serving side copies
each extent out of its arena into a separate registered bounce buffer before
advertising it, and the reader RDMA-READs into its own bounce buffer and copies
the bytes out into the block afterwards. Same wire, same verbs; two extra copies.
"""

from __future__ import annotations

import mmap
import threading
from typing import Any

from netspark.transport.rdma.device import Device, ffi, lib

BOUNCE_BYTES = 64 << 20


class Bounce:
    """A registered ring of bytes; a placement stays valid until the ring wraps past it."""

    def __init__(self, device: Device, size: int = BOUNCE_BYTES, remote_read: bool = False):
        self.size = size
        self._mem = mmap.mmap(-1, size)
        self._ptr = ffi.from_buffer(self._mem)
        self.address = int(ffi.cast("uintptr_t", self._ptr))
        self.mr: Any = device.register(self.address, size, remote_read)
        self._next = 0
        self._lock = threading.Lock()

    def place(self, length: int) -> int:
        """Room for `length` bytes: returns its offset in the ring."""
        if length > self.size:
            raise ValueError(f"{length} bytes do not fit a {self.size}-byte bounce buffer")
        with self._lock:
            if self._next + length > self.size:
                self._next = 0
            at, self._next = self._next, self._next + length
        return at

    def view(self, at: int, length: int) -> memoryview:
        return memoryview(self._mem)[at:at + length]

    def close(self) -> None:
        if self.mr is not None:
            lib.ibv_dereg_mr(self.mr)
            self.mr = None
