"""Keeps Python's cyclic garbage collector from walking a reduce task's records over and over.

A reduce task that keeps what it reads (groupByKey, reduceByKey, a join: PySpark's mergers
hold every record until the partition is read) grows a heap of hundreds of thousands of
tuples and lists, and each of the collector's full collections walks all of it again:
105-132 ms of a 0.5-0.7 s GroupBy reduce task (bench/reduce_replay.py). PySpark turns
the collector off while it unpickles a broadcast for the same reason (`Broadcast.load`).
Here the collector stays on, for the task's own garbage too, but once a read has taken
FREEZE_FROM_RECORDS records, everything alive after each batch is frozen (`gc.freeze`:
left out of later collections) and handed back (`gc.unfreeze`) when the process's last
read ends, however it ends. Frozen objects are still freed by reference counting as
usual; what waits for the end of the read is only cyclic garbage alive at a freeze.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FREEZE_FROM_RECORDS = 50_000
"""A read starts freezing once it has read this many records. A small read's records cost
the collector little, and freezing every read made small jobs' medians 7-9% slower in two
side-by-side runs of bench/latency.py (docs/benchmarks.md, "The freeze")."""

_reads = 0  # reads in progress: all of one task, as a worker runs one at a time
_task: object = None  # that task
_frozen = False  # whether a read of that task froze


@contextmanager
def frozen_between_batches(enabled: bool = True, task: object = None,
                           from_records: int = FREEZE_FROM_RECORDS
                           ) -> Iterator[Callable[[int], None]]:
    """Yields what to call with the size of each batch a read has taken; once the read
    has taken `from_records` records it freezes everything alive after each batch, until
    the last read of `task` ends, or else until a read of another task starts (a read kept
    alive in a reference cycle is frozen too, and would never end). A no-op when
    disabled. The end of a freeze unfreezes everything, a freeze made by the
    application's own code too (not looked for: `gc.get_freeze_count` walks every frozen
    object, milliseconds per read after an application froze its heap); that only has
    the collector look at those objects again."""
    global _reads, _task
    if task != _task:
        _end_freeze()
        _reads, _task = 0, task
    if not enabled:
        yield _ignore
        return
    taken = 0

    def after_batch(records: int) -> None:
        nonlocal taken
        taken += records
        if taken >= from_records:
            _freeze()

    _reads += 1
    try:
        yield after_batch
    finally:
        if task == _task:  # else a later task's read has taken over
            _reads -= 1
            if not _reads:
                _end_freeze()


def _ignore(records: int) -> None:
    pass


def _freeze() -> None:
    global _frozen
    gc.freeze()
    _frozen = True


def _end_freeze() -> None:
    global _frozen
    if _frozen:
        gc.unfreeze()
        _frozen = False
