"""Fetching committed map outputs into this process, over the best transport a peer allows.

The route to each peer is chosen once per process (`peers.PeerConnections`):
`local` (same host: ask the peer which extents, then read them in place from its
arena, no copy), `rdma` (RDMA-READ them into blocks leased from our own arena,
which this process registers slab by slab), or `tcp` (stream them into such
blocks). Under `transport=auto` an RDMA failure moves that peer to TCP (logged
once); under `transport=rdma` it fails the fetch with the reason.

`Fetcher.fetch_all` runs the fetches on a background thread so that the next
extents arrive while the caller deserializes the current ones, holding at most
`reducer.maxBytesInFlight` of landed-but-unread blocks. It keeps one request on
the wire ahead of the one it is receiving, and over TCP a request small enough
to sit in the socket's buffers asks for its data at once (FETCH_READ_REQ: the
extents and their bytes in one round trip, instead of FETCH_REQ then READ_REQ).
Transient failures (connection lost, timeout) are retried with backoff; a
refusal is not.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import Extent
from netspark.transport import protocol
from netspark.transport.auth import AuthError
from netspark.transport.peers import PeerConnections, RouteRefused, host_key
from netspark.transport.protocol import MapAttempt, ProtocolError
from netspark.transport.rdma import RdmaError, RemoteAccessError
from netspark.transport.tcp import RemoteError, TcpPeer

log = logging.getLogger(__name__)
__all__ = ["FetchFailed", "FetchRequest", "Fetcher", "Landed", "PeerAddress", "host_key"]


@dataclass(frozen=True)
class PeerAddress:
    """Where a server listens, and where its arena can be mapped from the same host."""

    host: str
    port: int
    host_key: str
    arena_path: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FetchRequest:
    """`size`: the bytes the handles promise (0: not known; with the JVM part on, a map
    status's size, rounded up by up to 10%), which lets a small request ask for its data
    with the extents."""

    peer: PeerAddress
    shuffle: int
    reduce_id: int
    maps: tuple[MapAttempt, ...]
    size: int = 0


@dataclass
class Landed:
    """A request's extents, ready to read from `arena`; `release(block)` hands each back."""

    request: FetchRequest
    arena: Arena
    extents: list[Extent]
    release: Callable[[int], None]
    via: str
    map_ids: list[int] = field(default_factory=list)  # the map of each extent


class FetchFailed(IOError):
    """A fetch could not be completed; `unreachable` is the peer, when the cause is that
    it could not be reached (refused, reset, silent) after every retry; `request`, the
    request that failed."""

    def __init__(self, message: str, unreachable: PeerAddress | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.request: FetchRequest | None = None

    def explained(self) -> str:
        """The failure as a user should read it: the peer that could not be reached, and
        what to check, when that was the cause."""
        if self.unreachable is None:
            return str(self)
        return f"the server at {self.unreachable} cannot be reached: {self}. {self.advice()}"

    def advice(self) -> str:
        """What a user should check when a peer could not be reached ("" otherwise)."""
        if self.unreachable is None:
            return ""
        return ("Check that every host reaches every other one's spark.netspark.port and "
                "that spark.netspark.advertiseAddress (default: the executor's own address) "
                "names an interface the others can reach.")


@dataclass
class _Sent:
    """A request on the wire: its connection, its id (None: nothing sent yet, as RDMA's
    two steps go together) and whether its data follows the extents."""

    conn: Any
    request_id: int | None
    with_data: bool


class Fetcher:
    """Fetches into blocks of `pool` on behalf of one reader."""

    def __init__(self, pool: BlockPool, conf: NetsparkConf, *, secret: bytes, app_id: str,
                 peers: PeerConnections | None = None, local_address: str = "",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """`peers`: the process's routes and idle connections, kept by the caller
        across fetchers (default: this fetcher's own, closed with it);
        `local_address`: the address our server advertises (RDMA uses its device)."""
        self.pool = pool
        self.conf = conf
        self._own_peers = peers is None
        self.peers = peers or PeerConnections(pool.arena, conf, secret=secret, app_id=app_id,
                                              local_address=local_address)
        self._sleep = sleep
        self._leased: dict[PeerAddress, Any] = {}  # TcpPeer or RdmaPeer, ours until close
        self._used: dict[PeerAddress, str] = {}  # the route each peer was fetched over
        self._cap_blocks = max(1, conf.reducer_maxBytesInFlight // pool.block_size)
        self._held = 0
        self._held_changed = threading.Condition()
        self._stop = threading.Event()
        self.wait_seconds = 0.0  # time the consumer waited for data
        self.landed_bytes = 0  # bytes of the extents handed to the consumer
        self.reading: FetchRequest | None = None  # the request the consumer was handed last

    def route_of(self, peer: PeerAddress) -> str:
        """The route this fetcher took to `peer`."""
        return self._used[peer]

    def _route(self, peer: PeerAddress) -> str:
        try:
            route = self.peers.route(peer)
        except RouteRefused as err:
            raise FetchFailed(str(err)) from err
        self._used[peer] = route
        return route

    def _connection(self, peer: PeerAddress) -> Any:
        self._route(peer)
        if peer not in self._leased:
            self._leased[peer] = self.peers.lease(peer)
        return self._leased[peer]

    def _drop(self, peer: PeerAddress) -> None:
        conn = self._leased.pop(peer, None)
        if conn is not None:
            conn.abort()

    def give_back(self) -> None:
        """Returns this fetcher's connections to the process's idle pool (call only when
        every request sent was answered)."""
        for peer, conn in self._leased.items():
            self.peers.give_back(peer, conn)
        self._leased.clear()

    def _rdma_failed(self, peer: PeerAddress, err: RdmaError) -> bool:
        """Moves `peer` to TCP after an RDMA failure under transport=auto (logged once)."""
        self._drop(peer)
        return self.peers.rdma_failed(peer, err)

    # ---- one request ----

    def fetch_one(self, req: FetchRequest, sent: _Sent | Exception | None = None) -> Landed:
        """`sent`: a first attempt already on the wire (or how sending it failed)."""
        try:
            return self._fetch_with_retries(req, sent)
        except FetchFailed as err:
            err.request = err.request or req
            raise

    def _fetch_with_retries(self, req: FetchRequest, sent: _Sent | Exception | None) -> Landed:
        retries = self.conf.network_maxRetries
        attempt = 0
        while True:
            first, sent = sent, None
            if isinstance(first, _Sent) and self._leased.get(req.peer) is not first.conn:
                first = None  # its connection failed under the request before: send again
            try:
                if isinstance(first, Exception):
                    raise first
                return self._receive(req, first or self._send(req))
            except FetchFailed:
                raise
            except (RemoteError, AuthError) as err:
                raise FetchFailed(f"fetching shuffle {req.shuffle} partition {req.reduce_id} "
                                  f"from {req.peer}: {err}") from err
            except RdmaError as err:
                if self._rdma_failed(req.peer, err):
                    continue  # at once, over TCP
                if isinstance(err, RemoteAccessError):  # no retry can fix a bad key
                    raise FetchFailed(f"fetching shuffle {req.shuffle} partition "
                                      f"{req.reduce_id} from {req.peer}: {err}") from err
                self._retry_wait(req, err, attempt, retries)
            except (OSError, EOFError, ProtocolError) as err:
                self._drop(req.peer)
                self._retry_wait(req, err, attempt, retries, unreachable=isinstance(err, OSError))
            attempt += 1

    def _retry_wait(self, req: FetchRequest, err: Exception, attempt: int, retries: int,
                    unreachable: bool = False) -> None:
        if attempt >= retries:
            raise FetchFailed(
                f"fetching shuffle {req.shuffle} partition {req.reduce_id} from "
                f"{req.peer} failed {retries + 1} times; last error: {err}",
                req.peer if unreachable else None) from err
        wait = self.conf.network_retryWait * 2 ** attempt
        log.warning("netspark: fetch from %s failed (%s); retry %d/%d in %.1f s",
                    req.peer, err, attempt + 1, retries, wait)
        self._sleep(wait)

    def _send(self, req: FetchRequest) -> _Sent:
        conn = self._connection(req.peer)
        if not isinstance(conn, TcpPeer):  # RDMA: advertise and READ go together
            return _Sent(conn, None, False)
        with_data = (self._route(req.peer) == "tcp" and 0 < req.size <= conn.push_limit)
        return _Sent(conn, conn.request(req.shuffle, req.reduce_id, req.maps,
                                        with_data=with_data), with_data)

    def _receive(self, req: FetchRequest, sent: _Sent) -> Landed:
        conn = sent.conn
        if sent.request_id is None:
            advertised = conn.advertise(req.shuffle, req.reduce_id, req.maps)
        else:
            advertised = conn.advertised(sent.request_id)
        route = self._route(req.peer)
        spilled = any(e.block_id & protocol.SPILLED_BLOCK_FLAG for e in advertised)
        if route == "local" and not spilled:  # spilled extents come over TCP
            arena = self.peers.peer_arena(req.peer.arena_path)
            extents = [Extent(e.block_id, e.offset, e.length, e.crc) for e in advertised]
            return Landed(req, arena, extents, lambda block: None, "local",
                          [e.map_id for e in advertised])
        blocks, extents, targets = self._land(advertised)
        try:
            if sent.with_data:
                conn.receive_data(sent.request_id, targets)
            else:
                conn.read_into(req.shuffle, advertised, targets)
        except BaseException:
            for block in blocks:
                self._release(block)
            raise
        return Landed(req, self.pool.arena, extents, self._release, route,
                      [e.map_id for e in advertised])

    def _land(self, advertised: Sequence[protocol.Extent]
              ) -> tuple[list[int], list[Extent], list[memoryview]]:
        """Packs the advertised extents into fresh local blocks."""
        size = self.pool.block_size
        needed, offset = 0, size
        for ext in advertised:
            if offset + ext.length > size:
                needed, offset = needed + 1, 0
            offset += ext.length
        self._reserve(needed)
        blocks: list[int] = []
        extents, targets = [], []
        view, offset = None, size
        for ext in advertised:
            if offset + ext.length > size:
                blocks.append(self.pool.acquire())
                view, offset = self.pool.view(blocks[-1]), 0
            extents.append(Extent(blocks[-1], offset, ext.length, ext.crc))
            targets.append(view[offset:offset + ext.length])
            offset += ext.length
        return blocks, extents, targets

    def _reserve(self, blocks: int) -> None:
        """Waits until `blocks` more fit under maxBytesInFlight (or nothing is held)."""
        with self._held_changed:
            self._held_changed.wait_for(
                lambda: self._stop.is_set() or self._held == 0
                or self._held + blocks <= self._cap_blocks)
            if self._stop.is_set():
                raise FetchFailed("the reader stopped")
            self._held += blocks

    def routes(self) -> dict[str, int]:
        """How many peers this fetcher reached over each route ("local", "tcp", "rdma")."""
        counts: dict[str, int] = {}
        for route in self._used.values():
            counts[route] = counts.get(route, 0) + 1
        return counts

    def disown(self, blocks: int) -> None:
        """Landed blocks were handed to another process: they no longer count here."""
        with self._held_changed:
            self._held -= blocks
            self._held_changed.notify_all()

    def _release(self, block: int) -> None:
        self.pool.release(block)
        with self._held_changed:
            self._held -= 1
            self._held_changed.notify_all()

    # ---- many requests, overlapped with the consumer ----

    def fetch_all(self, requests: Iterable[FetchRequest]) -> Iterator[Landed]:
        """Yields each request's extents in order while later ones are being fetched."""
        ready: queue.Queue[Landed | BaseException | None] = queue.Queue()
        stop = self._stop
        stop.clear()
        worker = threading.Thread(target=self._fetch_ahead, args=(requests, ready, stop),
                                  name="netspark-fetch", daemon=True)
        worker.start()
        try:
            while True:
                start = time.perf_counter()
                item = ready.get()
                self.wait_seconds += time.perf_counter() - start
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self.landed_bytes += sum(e.length for e in item.extents)
                self.reading = item.request
                yield item
        finally:
            stop.set()
            with self._held_changed:  # wake a fetch waiting for room
                self._held_changed.notify_all()
            if worker.is_alive():  # and one waiting on the network (which then drops
                for conn in list(self._leased.values()):  # its connections: mid-request)
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
            while worker.is_alive() or not ready.empty():
                try:
                    item = ready.get(timeout=0.05)
                except queue.Empty:
                    continue
                if isinstance(item, Landed):
                    for block in {e.block_id for e in item.extents}:
                        item.release(block)

    def _fetch_ahead(self, requests: Iterable[FetchRequest],
                     ready: queue.Queue[Landed | BaseException | None],
                     stop: threading.Event) -> None:
        """The fetch thread: sends each request before it receives the one before it,
        so that a peer works on the next while this side lands the current one."""
        try:
            pending: tuple[FetchRequest, _Sent | Exception] | None = None
            for req in requests:
                if stop.is_set():
                    raise FetchFailed("the reader stopped")
                if pending is not None and not self._may_send_ahead(*pending, req):
                    ready.put(self.fetch_one(*pending))
                    pending = None
                try:
                    sent: _Sent | Exception = self._send(req)
                except Exception as err:  # fetch_one's first attempt, when its turn comes
                    sent = err
                if pending is not None:
                    ready.put(self.fetch_one(*pending))
                pending = req, sent
            if pending is not None:
                ready.put(self.fetch_one(*pending))
            self.give_back()  # every request answered: the connections are clean
            ready.put(None)
        except BaseException as err:  # handed to the consumer, raised there
            for peer in list(self._leased):  # a request sent ahead may be in flight
                self._drop(peer)
            ready.put(err)

    @staticmethod
    def _may_send_ahead(previous: FetchRequest, sent: _Sent | Exception,
                        req: FetchRequest) -> bool:
        """A connection carries one request at a time, except after one whose answer
        comes all at once (its data with its extents): a READ_REQ sent after the
        ADVERTISE must not find the next request's answer in its way."""
        return previous.peer != req.peer or (isinstance(sent, _Sent) and sent.with_data)

    def close(self) -> None:
        for conn in self._leased.values():
            conn.close()
        self._leased.clear()
        if self._own_peers:
            self.peers.close()
