"""Batches of records pickled straight into block streams, and read back in place.

A batch on the stream is a little-endian header `(pickle length: u64, buffer count:
u32)`, the pickle (protocol 5, written by the pickler straight into block memory),
one u64 length per out-of-band buffer, then the buffers' raw bytes. numpy arrays
and other PEP 574 buffers travel out of band, so on read they can be views of
block memory (the block is reused only once the last such view is gone).

The C pickler is tried first; cloudpickle only for a batch the C pickler refuses
(lambdas, classes defined in `__main__` or locally): both produce plain pickles
that `pickle.loads` reads.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol

import cloudpickle

from netspark.serde.streams import BlockOutputStream

HEADER = struct.Struct("<QI")
MAX_BUFFERS = 1 << 20


class CorruptBatch(IOError):
    """A batch header on the stream makes no sense (the stream is damaged)."""


class ViewReader(Protocol):
    def read_view(self, size: int, scratch: bytearray | None = None) -> memoryview: ...
    def extent_view(self) -> memoryview | None: ...
    def skip_extent(self) -> None: ...
    @property
    def unread(self) -> int: ...


def write_batch(out: BlockOutputStream, records: list[Any]) -> tuple[int, bool]:
    """Pickles one batch straight into `out`; returns (bytes written, whether cloudpickle
    was needed)."""
    start, mark = out.tell(), out.mark()
    head = out.reserve(HEADER.size)
    buffers: list[pickle.PickleBuffer] = []
    used_cloudpickle = False
    try:
        pickle.Pickler(out, protocol=5, buffer_callback=buffers.append).dump(records)
    except (pickle.PicklingError, AttributeError, TypeError):
        out.rewind(mark)
        head = out.reserve(HEADER.size)
        buffers = []
        cloudpickle.CloudPickler(out, protocol=5, buffer_callback=buffers.append).dump(records)
        used_cloudpickle = True
    pickled = out.tell() - start - HEADER.size
    raws = [buf.raw() for buf in buffers]
    out.write(struct.pack(f"<{len(raws)}Q", *(raw.nbytes for raw in raws)))
    for raw in raws:
        out.write(raw)
    _fill(head, HEADER.pack(pickled, len(raws)))
    return out.tell() - start, used_cloudpickle


def _fill(slots: list[memoryview], data: bytes) -> None:
    pos = 0
    for slot in slots:
        slot[:] = data[pos:pos + len(slot)]
        pos += len(slot)


class RecordWriter:
    """Writes records to a stream in batches of about `batch_bytes` pickled bytes."""

    def __init__(self, out: BlockOutputStream, batch_bytes: int = 256 << 10) -> None:
        self.out = out
        self.batch_bytes = batch_bytes
        self.batch_size = 16  # records per batch, adapted to hit batch_bytes
        self.records = 0
        self.bytes = 0
        self.cloudpickled_batches = 0
        self._pending: list[Any] = []

    def write(self, record: Any) -> None:
        self._pending.append(record)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def write_all(self, records: Iterable[Any]) -> None:
        self.flush()
        it = iter(records)
        while batch := list(islice(it, self.batch_size)):
            self._pending = batch
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        written, used_cloudpickle = write_batch(self.out, self._pending)
        self.records += len(self._pending)
        self.bytes += written
        self.cloudpickled_batches += used_cloudpickle
        per_record = max(1, written // len(self._pending))
        self.batch_size = max(1, min(1 << 16, self.batch_bytes // per_record))
        self._pending = []


def read_batches(stream: ViewReader) -> Iterator[list[Any]]:
    """Yields each batch (a list of records) of the stream until its end. Nothing of a
    batch is held here once it is yielded: its blocks can go back while its records are
    used (no header view is kept across the yield)."""
    scratch = bytearray()  # a pickle that spans two extents is copied here, not anew
    while stream.unread:
        # A map cuts an extent per batch: most batches are exactly one extent.
        whole = stream.extent_view()
        if whole is not None and len(whole) > HEADER.size:
            length, count = HEADER.unpack_from(whole)
            if not count and len(whole) == HEADER.size + length:
                stream.skip_extent()
                data = whole[HEADER.size:]
                del whole  # held across the yield, it would hold the block
                yield _parse(data)  # which releases data
                continue
        del whole
        yield _next_batch(stream, scratch)


def _next_batch(stream: ViewReader, scratch: bytearray) -> list[Any]:
    """The next batch, read in place where it lies in one extent or in adjacent blocks,
    else copied into `scratch`; its out-of-band buffers are views of the stream."""
    head = stream.read_view(HEADER.size)
    if len(head) < HEADER.size:
        raise CorruptBatch(f"stream ends inside a batch header ({len(head)} bytes)")
    length, count = HEADER.unpack(head)
    if count > MAX_BUFFERS:
        raise CorruptBatch(f"batch header names {count} buffers")
    data = stream.read_view(length, scratch)
    if len(data) != length:
        raise CorruptBatch(f"stream ends {length - len(data)} bytes short of a batch")
    if not count:
        return _parse(data)
    sizes = struct.unpack(f"<{count}Q", _exact(stream, 8 * count))
    return _parse(data, [_exact(stream, size) for size in sizes])


def _parse(data: memoryview, buffers: list[memoryview] | None = None) -> list[Any]:
    try:
        batch = pickle.loads(data, buffers=buffers)
    finally:
        data.release()  # the unpickler keeps no reference: scratch can be reused
    if not isinstance(batch, list):
        raise CorruptBatch(f"batch is a {type(batch).__name__}, not a list")
    return batch


def _exact(stream: ViewReader, size: int) -> memoryview:
    view = stream.read_view(size)
    if len(view) != size:
        raise CorruptBatch(f"stream ends {size - len(view)} bytes short of a batch")
    return view


def read_records(stream: ViewReader) -> Iterator[Any]:
    for batch in read_batches(stream):
        yield from batch
