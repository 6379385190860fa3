"""The reduce side's freeze of what it has read (netspark/spark/collector.py)."""

import gc
import weakref

import pytest

from netspark.spark.collector import frozen_between_batches


@pytest.fixture(autouse=True)
def nothing_frozen():
    gc.unfreeze()
    yield
    assert gc.get_freeze_count() == 0, "a test left objects frozen"


def read(batches, enabled=True, from_records=1, task=None):
    """Yields the records of `batches` as read_reduce_partition does."""
    with frozen_between_batches(enabled, task, from_records) as freeze:
        for batch in batches:
            freeze(len(batch))
            yield from batch


def batches_of_lists(count=3):
    return [[(key, [key]) for key in range(i * 100, i * 100 + 100)] for i in range(count)]


def test_records_read_are_frozen_until_the_read_ends():
    records = read(batches_of_lists())
    first = next(records)
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(first[1])  # frozen, not untracked: unfreeze gives them back
    assert sum(1 for _ in records) == 299
    assert gc.get_freeze_count() == 0


def test_disabled_freezes_nothing():
    records = read(batches_of_lists(), enabled=False)
    next(records)
    assert gc.get_freeze_count() == 0
    assert len(list(records)) == 299


def test_a_read_freezes_only_once_it_has_taken_enough_records():
    records = read(batches_of_lists(3), from_records=150)
    next(records)
    assert gc.get_freeze_count() == 0  # 100 records taken
    for _ in range(100):
        next(records)
    assert gc.get_freeze_count() > 0  # 200
    list(records)
    assert gc.get_freeze_count() == 0


def test_a_small_read_leaves_the_application_s_own_freeze_alone():
    gc.freeze()
    try:
        assert len(list(read(batches_of_lists(), from_records=1000))) == 300
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_read_given_up_half_way_unfreezes():
    records = read(batches_of_lists())
    next(records)
    records.close()
    assert gc.get_freeze_count() == 0


def test_a_read_that_fails_unfreezes():
    def failing():
        yield [1, 2]
        raise OSError("peer gone")

    records = read(failing())
    assert next(records) == 1
    with pytest.raises(OSError, match="peer gone"):
        list(records)
    assert gc.get_freeze_count() == 0


def test_the_last_of_two_interleaved_reads_unfreezes():
    one, two = read(batches_of_lists()), read(batches_of_lists())
    next(one), next(two)
    list(one)
    assert gc.get_freeze_count() > 0  # the other read still goes on
    list(two)
    assert gc.get_freeze_count() == 0


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_cyclic_garbage_alive_at_a_freeze_is_freed_once_the_read_ends():
    node = Node()
    alive = weakref.ref(node)
    records = read(batches_of_lists())
    next(records)  # node was alive at the first freeze
    del node
    gc.collect()
    assert alive() is not None  # frozen: the collector does not look at it
    list(records)
    gc.collect()
    assert alive() is None


def test_cyclic_garbage_made_after_the_last_freeze_is_collected_during_the_read():
    records = read(batches_of_lists(1))
    next(records)
    node = Node()
    alive = weakref.ref(node)
    del node
    gc.collect()
    assert alive() is None
    list(records)


def test_a_read_that_never_ended_is_unfrozen_when_the_next_task_reads():
    stale = frozen_between_batches(task=1, from_records=1)  # a read of task 1 that never ends
    stale.__enter__()(1)
    records = read(batches_of_lists(), task=2)
    next(records)
    list(records)
    assert gc.get_freeze_count() == 0  # task 1's freeze ended with task 2's read


def test_a_stale_read_ending_late_leaves_the_current_task_s_freeze():
    stale = frozen_between_batches(task=1, from_records=1)
    stale.__enter__()(1)
    records = read(batches_of_lists(), task=2)
    next(records)
    stale.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # task 2 still reads
    list(records)
    assert gc.get_freeze_count() == 0

