"""Committed map outputs moved out of the arena when it is full, and served from disk.

Each spilled output goes to an unnamed file (O_TMPFILE, or a file unlinked as soon
as it is made): it lives exactly as long as the server holds it open, so a server
that dies, SIGKILL included, leaves no spill file behind. Its extents keep their
checksums; their block id is the file's id with SPILLED_BLOCK_FLAG set, their
offset the offset in that file.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import threading

from netspark.buffer_manager import Arena
from netspark.serde import Extent
from netspark.server.registry import MapOutput, Partition, Registry, UnknownOutput
from netspark.transport.protocol import SPILLED_BLOCK_FLAG

log = logging.getLogger(__name__)
MAX_SPILL_FILE = 0xFFFFFFFF  # extent offsets are 32-bit on the wire


class SpillFile:
    """An unnamed file in `directory`, read and written at offsets."""

    def __init__(self, directory: str) -> None:
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:  # a file system without O_TMPFILE
            fd, path = tempfile.mkstemp(prefix="netspark-", suffix=".spill", dir=directory)
            os.unlink(path)
            self.fd = fd
        self.size = 0
        self._lock = threading.Lock()

    def append(self, data: memoryview) -> int:
        with self._lock:
            offset = self.size
            written = 0
            while written < len(data):
                written += os.pwrite(self.fd, data[written:], offset + written)
            self.size += len(data)
        return offset

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"spill file ends {length - len(data)} bytes early")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def spill_output(output: MapOutput, arena: Arena, directory: str,
                 spill_id: int) -> tuple[dict[int, Partition], SpillFile] | None:
    """Copies an output's extents to a new spill file; None if it is too big for one."""
    if output.size > MAX_SPILL_FILE:
        return None
    spill = SpillFile(directory)
    block = SPILLED_BLOCK_FLAG | spill_id
    partitions = {}
    for reduce_id, part in output.partitions.items():
        extents = []
        for ext in part.extents:
            data = arena.block_view(ext.block_id)[ext.offset:ext.offset + ext.length]
            extents.append(Extent(block, spill.append(data), ext.length, ext.crc))
        partitions[reduce_id] = Partition(part.records, tuple(extents))
    return partitions, spill


def default_directory(configured: str) -> str:
    """spill.dir, else Spark's first local dir, else the system's temporary dir."""
    for candidate in (configured, os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0]):
        if candidate and os.path.isdir(candidate):
            return candidate
    return tempfile.gettempdir()


class Spiller:
    """Keeps committed outputs from filling the arena: when fewer than `low` blocks are
    left, the oldest outputs move to disk until `high` are free again."""

    def __init__(self, registry: Registry, arena: Arena, directory: str, *,
                 low: int, high: int) -> None:
        self.registry = registry
        self.arena = arena
        self.directory = directory
        self.low, self.high = low, high
        self.files: dict[int, SpillFile] = {}
        self.spilled_bytes = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def headroom(self) -> int:
        stats = self.arena.stats()
        return stats.max_blocks - stats.leased_blocks

    def spill_some(self) -> int:
        """Spills if the arena is nearly full; returns how many outputs moved."""
        if self.headroom() >= self.low:
            return 0
        moved = 0
        for output in self.registry.outputs():  # oldest first
            if not output.blocks:
                continue  # already on disk
            spill_id = next(self._ids)
            result = spill_output(output, self.arena, self.directory, spill_id)
            if result is None:
                continue
            partitions, spill = result
            try:
                self.registry.replace(output, partitions)
            except UnknownOutput:  # unregistered meanwhile
                spill.close()
                continue
            with self._lock:
                self.files[spill_id] = spill
            self.arena.release(list(output.blocks))
            self.spilled_bytes += output.size
            moved += 1
            if self.headroom() >= self.high:
                break
        if moved:
            log.info("netspark: spilled %d outputs to %s (%d MiB spilled so far)", moved,
                     self.directory, self.spilled_bytes >> 20)
        return moved

    def read(self, block_id: int, offset: int, length: int) -> bytes:
        with self._lock:
            spill = self.files[block_id & ~SPILLED_BLOCK_FLAG]
        return spill.read(offset, length)

    def forget(self, outputs: list[MapOutput]) -> None:
        """Closes (and so deletes) the spill files of unregistered outputs."""
        ids = {e.block_id & ~SPILLED_BLOCK_FLAG for o in outputs for p in o.partitions.values()
               for e in p.extents if e.block_id & SPILLED_BLOCK_FLAG}
        with self._lock:
            for spill_id in ids:
                spill = self.files.pop(spill_id, None)
                if spill is not None:
                    spill.close()

    def run(self, stop: threading.Event, interval: float = 0.05) -> None:
        while not stop.wait(interval):
            try:
                self.spill_some()
            except Exception as err:  # keep serving; writers will see PoolExhausted
                log.warning("netspark: spilling failed: %s", err)

    def close(self) -> None:
        with self._lock:
            for spill in self.files.values():
                spill.close()
            self.files.clear()
