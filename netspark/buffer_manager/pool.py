"""A process's view of the shared arena: blocks leased in batches, handed out locally.

Acquiring and releasing a block is a list operation in this process; the shared
allocator is touched once per `leaseBatch` blocks. A full pool applies
back-pressure: `acquire` waits (with backoff, reclaiming blocks of dead processes)
and raises `PoolExhausted` after `buffer.acquireTimeout`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from netspark.buffer_manager.arena import Arena
from netspark.config import PREFIX


class PoolExhausted(RuntimeError):
    """No block became free within the acquire timeout."""


class BlockPool:
    """Leases blocks of `arena` for this process; thread-safe."""

    def __init__(self, arena: Arena, *, batch: int = 8, acquire_timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.arena = arena
        self.batch = batch
        self.acquire_timeout = acquire_timeout
        self._sleep = sleep
        self._cache: list[int] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def block_size(self) -> int:
        return self.arena.block_size

    def _forget_if_forked(self) -> None:
        # A forked child must not hand out blocks its parent holds.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._cache = []

    def acquire(self) -> int:
        """A block id held by this process, waiting while the pool is full."""
        with self._lock:
            self._forget_if_forked()
            if self._cache:
                return self._cache.pop()
        deadline = time.monotonic() + self.acquire_timeout
        delay = 0.0005
        while True:
            leased = self.arena.lease(self.batch)
            if leased:
                with self._lock:  # handed out in the arena's order: a stream's blocks
                    self._cache.extend(reversed(leased[1:]))  # then tend to be adjacent
                return leased[0]
            if self.arena.reclaim_dead():
                continue
            if time.monotonic() >= deadline:
                raise self._exhausted()
            self._sleep(delay)
            delay = min(delay * 2, 0.05)

    def _exhausted(self) -> PoolExhausted:
        stats = self.arena.stats()
        pool_mib = stats.max_blocks * stats.block_size >> 20
        return PoolExhausted(
            f"netspark buffer pool exhausted: all {stats.max_blocks} blocks ({pool_mib} MiB, "
            f"{PREFIX}buffer.poolSize) stayed in use for {self.acquire_timeout:g} s "
            f"({stats.leased_blocks} leased). Raise {PREFIX}buffer.poolSize or "
            f"{PREFIX}buffer.acquireTimeout, or lower {PREFIX}reducer.maxBytesInFlight."
        )

    def release(self, block_id: int) -> None:
        """Gives a block back; the shared pool gets it when a batch has gathered."""
        with self._lock:
            self._forget_if_forked()
            self._cache.append(block_id)
            if len(self._cache) < 2 * self.batch:
                return
            surplus = self._cache[self.batch:]
            del self._cache[self.batch:]
        self.arena.release(surplus)

    def flush(self) -> None:
        """Returns every cached block to the shared pool."""
        with self._lock:
            self._forget_if_forked()
            cached, self._cache = self._cache, []
        if cached:
            self.arena.release(cached)

    def view(self, block_id: int) -> memoryview:
        return self.arena.block_view(block_id)

    def close(self) -> None:
        self.flush()
