"""What runs inside PySpark's Python workers: the map side and the reduce side.

Map: records are bucketed by `partitionFunc(k) % n` (as PySpark does), written in
batches straight into shared blocks, committed to this executor's server, and only
one small handle per non-empty partition is yielded to Spark's own shuffle.
Reduce: the handles of a partition are turned into fetches, and the records are
read from the fetched blocks while later ones are still arriving.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from itertools import islice, zip_longest
from typing import Any

from pyspark.core.rdd import portable_hash
from pyspark.taskcontext import TaskContext

from netspark.config import NetsparkConf
from netspark.serde import ChecksumError, CorruptBatch
from netspark.server.worker import ExecutorLink, read_partition_batches
from netspark.spark.collector import frozen_between_batches
from netspark.spark.coordinator import report_unreachable
from netspark.spark.handles import BadHandle, Handle
from netspark.transport.fetch import FetchFailed, FetchRequest
from netspark.transport.protocol import MapAttempt

BATCH_BYTES = 1 << 20  # aim for batches of about this many pickled bytes
_link: ExecutorLink | None = None


class NetsparkUnavailable(RuntimeError):
    """This executor has no working netspark server."""


def executor_link() -> ExecutorLink:
    """This process's link to its executor's server (one per process, made on first use)."""
    global _link
    if _link is None or _link.pid != os.getpid():
        error = os.environ.get("NETSPARK_SERVER_ERROR")
        if error:
            raise NetsparkUnavailable(f"the netspark server of this executor did not start: "
                                      f"{error}")
        try:
            conf = NetsparkConf.from_spark(json.loads(os.environ["NETSPARK_CONF"]))
            _link = ExecutorLink(os.environ["NETSPARK_SERVER"], conf,
                                 secret=os.environ["NETSPARK_SECRET"].encode(),
                                 app_id=os.environ["NETSPARK_APP_ID"])
        except KeyError as err:
            raise NetsparkUnavailable(
                f"{err} is not set: this Python worker was not started by netspark's "
                "daemon (is netspark installed in the executors' Python?)") from None
    return _link


def _pack_long(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)  # as pyspark.serializers.pack_long


Report = Callable[[dict[str, Any]], None]


def partition_index(partition_func: Callable[[Any], int], partitions: int
                    ) -> Callable[[Any], int]:
    """`partitionFunc(key) % partitions`, as PySpark computes it. PySpark's default,
    `portable_hash`, looks up PYTHONHASHSEED in the environment for every record;
    here that check is made once, and the hash is the same."""
    if partition_func is not portable_hash:
        return lambda key: partition_func(key) % partitions
    portable_hash(0)  # PySpark's own error if PYTHONHASHSEED is not set

    def index(key: Any) -> int:
        if key is None:
            return 0
        if isinstance(key, tuple):
            return portable_hash(key) % partitions
        return hash(key) % partitions

    return index


def write_map_output(shuffle: int, split: int, records: Iterable[tuple[Any, Any]],
                     partition_func: Callable[[Any], int], partitions: int,
                     attempt: int, report: Report) -> Iterator[bytes]:
    """Writes one map partition; yields (reduce id, handle) pairs for Spark's shuffle."""
    link = executor_link()
    writer = link.writer(shuffle, split, attempt)
    index = partition_index(partition_func, partitions)
    writing = 0.0  # in netspark's hands: pickling into blocks, checksums, the commit
    try:
        records = iter(records)
        chunk = min(10 * partitions, 1000)  # records bucketed before a batch is written
        while True:
            buckets: list[list[Any]] = [[] for _ in range(partitions)]
            appends = [bucket.append for bucket in buckets]
            taken = list(islice(records, chunk))
            if not taken:
                break
            for record in taken:
                appends[index(record[0])](record)
            before, start = writer.stream.tell(), time.perf_counter()
            for reduce_id, bucket in enumerate(buckets):
                if bucket:
                    writer.write(reduce_id, bucket)
            writing += time.perf_counter() - start
            per_record = max(1, (writer.stream.tell() - before) // len(taken))
            chunk = max(100, min(1 << 20, partitions * BATCH_BYTES // per_record // 4))
        start = time.perf_counter()
        sizes = writer.commit()
        writing += time.perf_counter() - start
    except BaseException:
        writer.abort()
        raise
    report({"maps": 1, "map_bytes": sum(sizes.values()), "write_s": writing,
            "blocks": len(writer.stream.blocks),
            "records": sum(count for count, _ in writer.partitions.values()),
            "cloudpickled_batches": writer.cloudpickled})
    for reduce_id, (count, extents) in sorted(writer.partitions.items()):
        handle = Handle(link.address, shuffle, split, attempt, reduce_id,
                        sum(e.length for e in extents), count)
        yield _pack_long(reduce_id)
        yield handle.encode()


def read_reduce_partition(shuffle: int, split: int, handles: Iterable[bytes],
                          report: Report, spark_reruns: bool = False) -> Iterator[Any]:
    """The records of one reduce partition, from every map output Spark committed.
    `spark_reruns`: netspark's JVM shuffle made the handles, and turns a failure that
    names a lost map output (`MapOutputLost.tag`) into Spark's fetch failure."""
    by_server: dict[Any, list[Handle]] = defaultdict(list)
    for data in handles:
        handle = Handle.decode(data)
        if handle.shuffle != shuffle or handle.reduce_id != split:
            raise BadHandle(f"partition {split} of shuffle {shuffle} received a handle of "
                            f"shuffle {handle.shuffle} partition {handle.reduce_id}")
        by_server[handle.server].append(handle)
    if not by_server:
        report({"reduces": 1})
        return
    link = executor_link()
    requests = plan_requests(shuffle, split, by_server,
                             max(link.pool.block_size, link.conf.reducer_maxBytesInFlight // 2))
    fetcher = link.fetcher()
    try:
        batches = read_partition_batches(fetcher, requests,
                                         checksum=link.conf.checksum == "crc32c")
        reading = 0.0  # in netspark's hands: waiting for data, checking, unpickling
        with frozen_between_batches(link.conf.reader_freezeGc, _task_attempt()) as freeze:
            while True:
                start = time.perf_counter()
                try:
                    batch = next(batches, None)
                except (FetchFailed, ChecksumError, CorruptBatch) as err:
                    _raise_read_failure(link, err, fetcher.reading, spark_reruns)
                    raise
                if batch is None:
                    break
                freeze(len(batch))  # the records read so far: out of the collector's walks
                reading += time.perf_counter() - start
                yield from batch
        report({"reduces": 1, "fetch_wait_s": fetcher.wait_seconds, "routes": fetcher.routes(),
                "read_s": reading,
                "fetched_bytes": fetcher.landed_bytes})
    finally:
        fetcher.close()
        if fetcher.wait_seconds > 1:
            print(f"netspark: partition {split} of shuffle {shuffle} waited "
                  f"{fetcher.wait_seconds:.1f} s for data", file=sys.stderr)


def _task_attempt() -> int | None:
    context = TaskContext.get()
    return context.taskAttemptId() if context is not None else None


FIRST_REQUEST_BYTES = 1 << 20  # the reader starts on this much while the rest comes


def plan_requests(shuffle: int, split: int, by_server: dict[Any, list[Handle]],
                  largest: int) -> list[FetchRequest]:
    """The fetches of one reduce partition: for each server, a first request of about
    FIRST_REQUEST_BYTES (small enough to come back with its data in one round trip),
    then requests growing 4x up to `largest` bytes; servers taken in turn, so that
    each works while the reader lands another's data."""
    per_server = []
    for server, handles in by_server.items():
        planned: list[FetchRequest] = []
        maps: list[MapAttempt] = []
        size, limit = 0, min(FIRST_REQUEST_BYTES, largest)
        for h in handles:
            if maps and size + h.size > limit:
                planned.append(FetchRequest(server, shuffle, split, tuple(maps), size))
                maps, size, limit = [], 0, min(4 * limit, largest)
            maps.append(MapAttempt(h.map_id, h.attempt))
            size += h.size
        planned.append(FetchRequest(server, shuffle, split, tuple(maps), size))
        per_server.append(planned)
    return [req for turn in zip_longest(*per_server) for req in turn if req is not None]


class ServerUnreachable(IOError):
    """A map output's server cannot be reached; the driver was told (see coordinator)."""


class MapOutputLost(IOError):
    """A map output Spark committed cannot be read (fetch failed, checksum, corrupt batch);
    its message ends with `tag`, by which netspark's JVM shuffle tells Spark which map to
    rerun (jvm/.../PythonHandles.java)."""

    @staticmethod
    def tag(request: FetchRequest) -> str:
        first = request.maps[0]
        return (f"[netspark lost: shuffle={request.shuffle} map={first.map_id} "
                f"attempt={first.attempt} partition={request.reduce_id}]")


def _raise_read_failure(link: ExecutorLink, err: Exception, reading: FetchRequest | None,
                        spark_reruns: bool) -> None:
    """Raises what a reduce task should fail with when a map output cannot be read: tagged
    for Spark when it reruns lost maps, with the unreachable server named and the driver
    told (coordinator) when that was the cause; returns to re-raise `err` as it is."""
    failed = err if isinstance(err, FetchFailed) else None
    request = failed.request if failed is not None else reading
    unreachable = failed if failed is not None and failed.unreachable is not None else None
    message = _unreachable_message(link, unreachable) if unreachable else str(err)
    if spark_reruns and request is not None:
        lost = ServerUnreachable if unreachable else MapOutputLost
        raise lost(f"{message} {MapOutputLost.tag(request)}") from err
    if unreachable:
        raise ServerUnreachable(message) from err


def _unreachable_message(link: ExecutorLink, err: FetchFailed) -> str:
    """Reports the peer to the driver, which makes Spark recompute its outputs if the
    driver cannot reach it either; says what happened and what to check."""
    peer = err.unreachable
    assert peer is not None
    try:
        verdict = report_unreachable(os.environ["NETSPARK_COORDINATOR"], secret=link.secret,
                                     app_id=link.app_id, host=peer.host, port=peer.port,
                                     error=str(err.__cause__ or err),
                                     timeout=link.conf.network_connectTimeout)
        outcome = verdict["message"]
    except Exception as report_err:
        outcome = f"the driver could not be told either ({report_err})"
    return (f"netspark: the server at {peer} (from {link.address.host}) cannot be reached: "
            f"{err}. {outcome}. {err.advice()}")


def round_robin(split: int, records: Iterable[Any], partitions: int) -> Iterator[tuple[int, Any]]:
    """Keys records for repartition: spread evenly, starting where the split says."""
    start = (split * 0x9E3779B1) % partitions
    for i, record in enumerate(records):
        yield (start + i) % partitions, record
