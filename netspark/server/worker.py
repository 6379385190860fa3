"""A task process's side of its executor's server: write and commit, fetch and read.

`ExecutorLink` attaches the executor's shared arena (blocks are leased from it
directly, no round trip) and keeps the control channel to the server.
`MapOutputWriter` writes one map attempt's partitions into blocks and commits them;
`read_partition` fetches a reduce partition from every map's server and yields its
records, each block going back as soon as it is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import BlockInputStream, BlockOutputStream, Extent
from netspark.serde.records import read_batches, write_batch
from netspark.server.local_api import ServerClient
from netspark.transport.fetch import Fetcher, FetchRequest, Landed, PeerAddress
from netspark.transport.peers import PeerConnections


class ExecutorLink:
    """One per task process (re-made after a fork)."""

    def __init__(self, local_name: str, conf: NetsparkConf, *, secret: bytes,
                 app_id: str) -> None:
        self.conf = conf
        self.secret = secret
        self.app_id = app_id
        self.client = ServerClient(local_name, secret=secret, app_id=app_id,
                                   timeout=conf.network_timeout)
        info = self.client.call("info")
        self.address = PeerAddress(*info["address"])
        self.server_pid = int(info["pid"])
        self.arena = Arena.attach(self.address.arena_path)
        self.pool = BlockPool(self.arena, batch=conf.buffer_leaseBatch,
                              acquire_timeout=conf.buffer_acquireTimeout)
        self.pid = os.getpid()
        self.peer_arenas: dict[str, Arena] = {}  # mapped for short-circuit reads
        # routes and connections to peers, kept from task to task
        self.peers = PeerConnections(self.arena, conf, secret=secret, app_id=app_id,
                                     local_address=self.address.host, arenas=self.peer_arenas)

    def writer(self, shuffle: int, map_id: int, attempt: int) -> MapOutputWriter:
        return MapOutputWriter(self, shuffle, map_id, attempt)

    def fetcher(self) -> Fetcher:
        return Fetcher(self.pool, self.conf, secret=self.secret, app_id=self.app_id,
                       peers=self.peers)

    def fetch_via_server(self, requests: list[FetchRequest]) -> list[Landed]:
        """Asks the executor's server to fetch (it holds the RDMA queue pairs); what it
        lands in our arena becomes ours to release."""
        answers = self.client.call("fetch", requests=[
            [*vars(r.peer).values(), r.shuffle, r.reduce_id, [list(m) for m in r.maps]]
            for r in requests])["landed"]
        landed = []
        for req, answer in zip(requests, answers, strict=True):
            extents = [Extent(*e) for e in answer["extents"]]
            if answer["owned"]:
                landed.append(Landed(req, self.arena, extents, self.pool.release, "server"))
                continue
            landed.append(Landed(req, self.peers.peer_arena(answer["arena"]), extents,
                                 lambda b: None, "server"))
        return landed

    def unregister(self, shuffle: int) -> int:
        return int(self.client.call("unregister", shuffle=shuffle)["freed"])

    def stats(self) -> dict[str, Any]:
        return self.client.call("stats")

    def close(self) -> None:
        self.peers.close()
        self.pool.close()
        self.client.close()
        for arena in self.peer_arenas.values():
            arena.close()
        self.arena.close()


class MapOutputWriter:
    """The partitions of one map attempt, written into shared blocks, then committed."""

    def __init__(self, link: ExecutorLink, shuffle: int, map_id: int, attempt: int) -> None:
        self.link = link
        self.key = (shuffle, map_id, attempt)
        self.stream = BlockOutputStream(link.pool, checksum=link.conf.checksum == "crc32c")
        self.partitions: dict[int, tuple[int, list[Extent]]] = {}
        self.cloudpickled = 0

    def write(self, reduce_id: int, records: list[Any]) -> None:
        """Appends one batch of records to partition `reduce_id`."""
        _, used_cloudpickle = write_batch(self.stream, records)
        self.cloudpickled += used_cloudpickle
        count, extents = self.partitions.get(reduce_id, (0, []))
        extents.extend(self.stream.cut())
        self.partitions[reduce_id] = (count + len(records), extents)

    def sizes(self) -> dict[int, int]:
        return {r: sum(e.length for e in exts) for r, (_, exts) in self.partitions.items()}

    def commit(self) -> dict[int, int]:
        """Hands the blocks to the server; returns the bytes of each non-empty partition."""
        self.stream.close()
        shuffle, map_id, attempt = self.key
        try:
            self.link.client.call(
                "commit", shuffle=shuffle, map=map_id, attempt=attempt,
                blocks=self.stream.blocks,
                partitions={str(r): [count, [list(e) for e in exts]]
                            for r, (count, exts) in self.partitions.items()})
        except BaseException:
            self.abort()
            raise
        return self.sizes()

    def abort(self) -> None:
        """Frees the blocks of an attempt that will not commit."""
        self.stream.discard()


def read_partition(fetcher: Fetcher, requests: Iterable[FetchRequest], *,
                   checksum: bool = True) -> Iterator[Any]:
    """The records of every request in turn, fetched ahead of the reader."""
    for batch in read_partition_batches(fetcher, requests, checksum=checksum):
        yield from batch


def read_partition_batches(fetcher: Fetcher, requests: Iterable[FetchRequest], *,
                           checksum: bool = True) -> Iterator[list[Any]]:
    """The same, a batch of records at a time."""
    for landed in fetcher.fetch_all(requests):
        stream = BlockInputStream(landed.arena, landed.extents, landed.release,
                                  checksum=checksum)
        try:
            yield from read_batches(stream)
        finally:
            stream.close()
