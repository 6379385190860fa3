"""What an executor server has committed: map outputs by (shuffle, map, attempt, reduce).

Pure bookkeeping, no I/O: the server consults it to answer fetches, to check
every read against what was committed (no raw address is trusted), and to know
which blocks to free when a shuffle is unregistered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from netspark.serde import Extent


class UnknownOutput(LookupError):
    """No committed output matches the request."""


class BadCommit(ValueError):
    """A commit names blocks it does not own or extents outside them."""


@dataclass(frozen=True)
class Partition:
    records: int
    extents: tuple[Extent, ...]

    @property
    def size(self) -> int:
        return sum(e.length for e in self.extents)


@dataclass(frozen=True)
class MapOutput:
    shuffle: int
    map_id: int
    attempt: int
    partitions: Mapping[int, Partition]  # by reduce id; absent: empty
    blocks: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.partitions.values())


class Registry:
    """Committed map outputs of one server; thread-safe."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._outputs: dict[tuple[int, int, int], MapOutput] = {}
        self._readable: set[tuple[int, int, int, int, int]] = set()
        self._lock = threading.Lock()

    def commit(self, shuffle: int, map_id: int, attempt: int,
               partitions: Mapping[int, Partition], blocks: Sequence[int]) -> MapOutput:
        owned = set(blocks)
        for reduce_id, part in partitions.items():
            for ext in part.extents:
                if ext.block_id not in owned:
                    raise BadCommit(f"partition {reduce_id} names block {ext.block_id}, "
                                    "which the commit does not hand over")
                if ext.offset < 0 or ext.length <= 0 or \
                        ext.offset + ext.length > self.block_size:
                    raise BadCommit(f"partition {reduce_id} has an extent outside its block: "
                                    f"{ext}")
        output = MapOutput(shuffle, map_id, attempt, dict(partitions), tuple(blocks))
        key = (shuffle, map_id, attempt)
        with self._lock:
            if key in self._outputs:
                raise BadCommit(f"shuffle {shuffle} map {map_id} attempt {attempt} "
                                "is already committed")
            self._outputs[key] = output
            for part in output.partitions.values():
                for ext in part.extents:
                    self._readable.add((shuffle, map_id, ext.block_id, ext.offset, ext.length))
        return output

    def partition(self, shuffle: int, map_id: int, attempt: int, reduce_id: int) -> Partition:
        with self._lock:
            output = self._outputs.get((shuffle, map_id, attempt))
        if output is None:
            raise UnknownOutput(f"shuffle {shuffle} map {map_id} attempt {attempt} "
                                "was never committed here (or was unregistered)")
        return output.partitions.get(reduce_id, Partition(0, ()))

    def may_read(self, shuffle: int, map_id: int, block_id: int, offset: int,
                 length: int) -> bool:
        """Whether exactly this extent was committed for this shuffle and map."""
        with self._lock:
            return (shuffle, map_id, block_id, offset, length) in self._readable

    def replace(self, output: MapOutput, partitions: Mapping[int, Partition]) -> MapOutput:
        """Moves a committed output's extents (it was spilled); returns the new record,
        whose `blocks` are empty: the old ones are the caller's to free."""
        moved = MapOutput(output.shuffle, output.map_id, output.attempt, dict(partitions), ())
        key = (output.shuffle, output.map_id, output.attempt)
        with self._lock:
            if self._outputs.get(key) is not output:
                raise UnknownOutput(f"shuffle {key[0]} map {key[1]} attempt {key[2]} changed")
            self._outputs[key] = moved
            for old, new in ((output, False), (moved, True)):
                for part in old.partitions.values():
                    for ext in part.extents:
                        entry = (output.shuffle, output.map_id, ext.block_id, ext.offset,
                                 ext.length)
                        if new:
                            self._readable.add(entry)
                        else:
                            self._readable.discard(entry)
        return moved

    def unregister(self, shuffle: int) -> list[MapOutput]:
        """Forgets a shuffle; returns its outputs, whose blocks are now the caller's to free."""
        with self._lock:
            gone = [key for key in self._outputs if key[0] == shuffle]
            outputs = [self._outputs.pop(key) for key in gone]
            self._readable = {r for r in self._readable if r[0] != shuffle}
        return outputs

    def outputs(self) -> Iterable[MapOutput]:
        with self._lock:
            return list(self._outputs.values())

    def shuffles(self) -> set[int]:
        with self._lock:
            return {key[0] for key in self._outputs}
