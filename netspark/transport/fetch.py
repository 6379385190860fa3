"""Fetching committed map outputs into this process, over the best transport a peer allows.

For each peer the choice is made once and logged with its reason: `local` (same
host: ask the peer which extents, then read them in place from its arena, no
copy), `rdma` (RDMA-READ them into blocks leased from our own arena, which this
process registers slab by slab), or `tcp` (stream them into such blocks).
Under `transport=auto` an RDMA failure moves that peer to TCP (logged once);
under `transport=rdma` it fails the fetch with the reason.

`Fetcher.fetch_all` runs the fetches on a background thread so that the next
extents arrive while the caller deserializes the current ones, holding at most
`reducer.maxBytesInFlight` of landed-but-unread blocks. Transient failures
(connection lost, timeout) are retried with backoff; a refusal is not.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from netspark.buffer_manager import Arena, ArenaError, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import Extent
from netspark.transport import protocol
from netspark.transport.auth import AuthError
from netspark.transport.protocol import MapAttempt, ProtocolError
from netspark.transport.rdma import RdmaError, RdmaUnavailable, RemoteAccessError
from netspark.transport.tcp import RemoteError, TcpPeer

log = logging.getLogger(__name__)


@cache
def host_key() -> str:
    """Identifies this host and network namespace: equal keys can share memory."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{boot}/{os.stat('/proc/self/ns/net').st_ino}"


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
    peer: PeerAddress
    shuffle: int
    reduce_id: int
    maps: tuple[MapAttempt, ...]


@dataclass
class Landed:
    """A request's extents, ready to read from `arena`; `release(block)` hands each back."""

    request: FetchRequest
    arena: Arena
    extents: list[Extent]
    release: Callable[[int], None]
    via: str


class FetchFailed(IOError):
    """A fetch could not be completed; `unreachable` is the peer, when the cause is that
    it could not be reached (refused, reset, silent) after every retry."""

    def __init__(self, message: str, unreachable: PeerAddress | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Fetcher:
    """Fetches into blocks of `pool` on behalf of one reader."""

    def __init__(self, pool: BlockPool, conf: NetsparkConf, *, secret: bytes, app_id: str,
                 arenas: dict[str, Arena] | None = None, local_address: str = "",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """`arenas`: peers' arenas mapped for short-circuit reads, kept by the caller
        (records read in place may hold views of them after this fetcher closes);
        `local_address`: the address our server advertises (RDMA uses its device)."""
        self.local_address = local_address
        self.pool = pool
        self.conf = conf
        self.secret = secret
        self.app_id = app_id
        self._sleep = sleep
        self._peers: dict[PeerAddress, Any] = {}  # TcpPeer or RdmaPeer
        self._own_arenas = arenas is None
        self._arenas: dict[str, Arena] = {} if arenas is None else arenas
        self._routes: dict[PeerAddress, str] = {}
        self._cap_blocks = max(1, conf.reducer_maxBytesInFlight // pool.block_size)
        self._held = 0
        self._held_changed = threading.Condition()
        self._stop = threading.Event()
        self._rdma: Any = None  # (device, this process's registrations of our arena)
        self.wait_seconds = 0.0  # time the consumer waited for data

    # ---- choosing a route, once per peer ----

    def _route(self, peer: PeerAddress) -> str:
        if peer not in self._routes:
            route, why = self._choose(peer)
            log.info("netspark: fetching from %s over %s (%s)", peer, route, why)
            self._routes[peer] = route
        return self._routes[peer]

    def _choose(self, peer: PeerAddress) -> tuple[str, str]:
        if not self.conf.localShortCircuit:
            why = "spark.netspark.localShortCircuit=false"
        elif peer.host_key != host_key():
            why = "a different host"
        else:
            try:
                self._arenas[peer.arena_path] = Arena.attach(peer.arena_path)
                return "local", "same host: reading its arena in place"
            except ArenaError as err:
                why = f"same host, but its arena cannot be mapped: {err}"
        if self.conf.transport == "tcp":
            return "tcp", f"{why}; spark.netspark.transport=tcp"
        try:
            self._peers[peer] = self._rdma_peer(peer)
        except (RdmaUnavailable, RdmaError) as err:
            if self.conf.transport == "rdma":
                raise FetchFailed(f"spark.netspark.transport=rdma, but RDMA to {peer} is not "
                                  f"possible: {err}") from err
            return "tcp", f"{why}; RDMA not possible: {err}"
        return "rdma", f"{why}; RDMA device {self._rdma[0].name}"

    def _rdma_peer(self, peer: PeerAddress) -> Any:
        from netspark.transport.rdma import require
        from netspark.transport.rdma.device import open_device
        from netspark.transport.rdma.peer import RdmaPeer, arena_registrations

        require()
        if self._rdma is None:
            device = open_device(self.conf.rdma_device, self.conf.rdma_port,
                                 self.conf.rdma_gidIndex, self.local_address)
            self._rdma = device, arena_registrations(device, self.pool.arena, remote_read=False)
        device, local = self._rdma
        return RdmaPeer(peer.host, peer.port, secret=self.secret, app_id=self.app_id,
                        timeout=self.conf.network_timeout, device=device, local=local,
                        naive=self.conf.rdma_naive,
                        connect_timeout=self.conf.network_connectTimeout)

    def _connection(self, peer: PeerAddress) -> Any:
        route = self._route(peer)
        if peer not in self._peers:
            if route == "rdma":
                self._peers[peer] = self._rdma_peer(peer)
            else:
                self._peers[peer] = TcpPeer(peer.host, peer.port, secret=self.secret,
                                            app_id=self.app_id,
                                            timeout=self.conf.network_timeout,
                                            connect_timeout=self.conf.network_connectTimeout)
        return self._peers[peer]

    def _drop(self, peer: PeerAddress) -> None:
        conn = self._peers.pop(peer, None)
        if conn is not None:
            getattr(conn, "abort", conn.sock.close)()

    def _rdma_failed(self, peer: PeerAddress, err: RdmaError) -> bool:
        """Moves `peer` to TCP after an RDMA failure under transport=auto (logged once)."""
        self._drop(peer)
        if self.conf.transport != "auto" or self._routes.get(peer) != "rdma":
            return False
        self._routes[peer] = "tcp"
        log.warning("netspark: RDMA to %s failed (%s); falling back to TCP for this peer",
                    peer, err)
        return True

    # ---- one request ----

    def fetch_one(self, req: FetchRequest) -> Landed:
        retries = self.conf.network_maxRetries
        attempt = 0
        while True:
            try:
                return self._try_fetch(req)
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

    def _try_fetch(self, req: FetchRequest) -> Landed:
        conn = self._connection(req.peer)
        advertised = conn.advertise(req.shuffle, req.reduce_id, req.maps)
        route = self._route(req.peer)
        spilled = any(e.block_id & protocol.SPILLED_BLOCK_FLAG for e in advertised)
        if route == "local" and not spilled:  # spilled extents come over TCP
            arena = self._arenas[req.peer.arena_path]
            extents = [Extent(e.block_id, e.offset, e.length, e.crc) for e in advertised]
            return Landed(req, arena, extents, lambda block: None, "local")
        blocks, extents, targets = self._land(advertised)
        try:
            conn.read_into(req.shuffle, advertised, targets)
        except BaseException:
            for block in blocks:
                self._release(block)
            raise
        return Landed(req, self.pool.arena, extents, self._release, route)

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
        """How many peers went over each route ("local", "tcp", "rdma")."""
        counts: dict[str, int] = {}
        for route in self._routes.values():
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

        def run() -> None:
            try:
                for req in requests:
                    if stop.is_set():
                        return
                    ready.put(self.fetch_one(req))
                ready.put(None)
            except BaseException as err:  # handed to the consumer, raised there
                ready.put(err)

        worker = threading.Thread(target=run, name="netspark-fetch", daemon=True)
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
                yield item
        finally:
            stop.set()
            with self._held_changed:  # wake a fetch waiting for room
                self._held_changed.notify_all()
            if worker.is_alive():  # and one waiting on the network
                for conn in list(self._peers.values()):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            while worker.is_alive() or not ready.empty():
                try:
                    item = ready.get(timeout=0.05)
                except queue.Empty:
                    continue
                if isinstance(item, Landed):
                    for block in {e.block_id for e in item.extents}:
                        item.release(block)

    def close(self) -> None:
        for conn in self._peers.values():
            conn.close()
        self._peers.clear()
        if self._rdma is not None:
            self._rdma[1].close()
            self._rdma = None
        if self._own_arenas:
            for arena in self._arenas.values():
                arena.close()
            self._arenas.clear()
