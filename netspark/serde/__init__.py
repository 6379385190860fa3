"""Streams over chains of blocks and PySpark-compatible record batches over them."""

from netspark.serde.records import CorruptBatch, RecordWriter, read_batches, read_records
from netspark.serde.streams import BlockInputStream, BlockOutputStream, ChecksumError, Extent

__all__ = ["BlockInputStream", "BlockOutputStream", "ChecksumError", "CorruptBatch", "Extent",
           "RecordWriter", "read_batches", "read_records"]
