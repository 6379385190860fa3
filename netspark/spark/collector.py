"""Keeps Python's cyclic garbage collector from walking a reduce task's records over and over.

A reduce task that keeps what it reads (groupByKey, reduceByKey, a join: PySpark's mergers
hold every record until the partition is read) grows a heap of hundreds of thousands of
tuples and lists, and each of the collector's full collections walks all of it again:
in the GroupBy benchmark that was a third of a reduce task (docs/benchmarks.md). PySpark
turns the collector off while it unpickles a broadcast for the same reason
(`Broadcast.load`). Here the collector stays on, for the task's own garbage too, but
everything alive once a batch has been read is frozen (`gc.freeze`: left out of later
collections) and handed back (`gc.unfreeze`) when the process's last read ends, however
it ends. Frozen objects are still freed by reference counting as usual; what waits for
the end of the read is only cyclic garbage that was alive at a freeze.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_reads = 0  # reads in progress that froze: all of one task, as a worker runs one at a time
_task: object = None  # that task


def _nothing() -> None:
    pass


@contextmanager
def frozen_between_batches(enabled: bool = True, task: object = None
                           ) -> Iterator[Callable[[], None]]:
    """Yields what to call after each batch a read has taken; the freeze is undone when
    the last read of `task` that used it ends, or else when a read of another task
    starts (a read kept alive in a reference cycle is frozen too, and would never end).
    A no-op when disabled. The end of the read unfreezes everything, a freeze made by
    the application's own code too (not looked for: `gc.get_freeze_count` walks every
    frozen object, milliseconds per read after an application froze its heap); that
    only has the collector look at those objects again."""
    global _reads, _task
    if task != _task:
        if _reads:
            gc.unfreeze()
        _reads, _task = 0, task
    if not enabled:
        yield _nothing
        return
    _reads += 1
    try:
        yield gc.freeze
    finally:
        if task == _task:  # else a later task's read has taken over
            _reads -= 1
            if not _reads:
                gc.unfreeze()
