"""One process's routes and connections to its peers' servers, kept across fetches.

A reused Python worker (or the executor's server) fetches for task after task
from the same few peers. So the route to each peer (`local`, `rdma`, `tcp`) is
chosen once and logged with its reason, this process's RDMA registrations of its
arena are made once, and each authenticated connection goes back into an idle
pool when a fetcher is done with it: later tasks skip the connect, the HMAC
handshake and (for RDMA) the queue pair set-up.

A connection is leased to one fetcher at a time (one task may read two shuffles
at once). A connection that failed, or that a fetcher abandoned mid-request, is
closed instead of returned. An idle connection whose peer went away (its server
stopped or died) is noticed when it is leased, by a peek at its socket, and
replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from functools import cache
from typing import Any

from netspark.buffer_manager import Arena, ArenaError
from netspark.config import NetsparkConf
from netspark.transport.rdma import RdmaError, RdmaUnavailable
from netspark.transport.tcp import TcpPeer

log = logging.getLogger(__name__)
IDLE_PER_PEER = 2  # idle connections kept per peer; the rest are closed when given back


@cache
def host_key() -> str:
    """Identifies this host and network namespace: equal keys can share memory."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{boot}/{os.stat('/proc/self/ns/net').st_ino}"


class RouteRefused(IOError):
    """transport=rdma, and RDMA to this peer is not possible."""


def still_open(sock: socket.socket) -> bool:
    """Whether an idle connection is still up: an idle peer sends nothing, so anything
    to read (its EOF, an error, bytes no request asked for) means it is not."""
    if sock.fileno() < 0:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


class PeerConnections:
    """Routes, idle connections and RDMA registrations of one process (thread-safe)."""

    def __init__(self, arena: Arena, conf: NetsparkConf, *, secret: bytes, app_id: str,
                 local_address: str = "", arenas: dict[str, Arena] | None = None) -> None:
        """`arena`: where fetched data lands (RDMA registers it); `local_address`: the
        address our server advertises (RDMA uses its device); `arenas`: peers' arenas
        mapped for same-host reads, kept by the caller when given (records read in
        place may hold views of them after this closes)."""
        self.arena = arena
        self.conf = conf
        self.secret = secret
        self.app_id = app_id
        self.local_address = local_address
        self._own_arenas = arenas is None
        self.arenas: dict[str, Arena] = {} if arenas is None else arenas
        self._routes: dict[Any, str] = {}  # PeerAddress -> route
        self._idle: dict[Any, list[Any]] = {}  # PeerAddress -> idle TcpPeer/RdmaPeer
        self._lock = threading.RLock()
        self.rdma: Any = None  # (device, registrations of `arena`), made on first use

    # ---- routes ----

    def route(self, peer: Any) -> str:
        """The route to `peer`, chosen on first use and logged with its reason."""
        with self._lock:
            if peer not in self._routes:
                route, why = self._choose(peer)
                log.info("netspark: fetching from %s over %s (%s)", peer, route, why)
                self._routes[peer] = route
            return self._routes[peer]

    def _choose(self, peer: Any) -> tuple[str, str]:
        if not self.conf.localShortCircuit:
            why = "spark.netspark.localShortCircuit=false"
        elif peer.host_key != host_key():
            why = "a different host"
        else:
            try:
                self.peer_arena(peer.arena_path)
                return "local", "same host: reading its arena in place"
            except ArenaError as err:
                why = f"same host, but its arena cannot be mapped: {err}"
        if self.conf.transport == "tcp":
            return "tcp", f"{why}; spark.netspark.transport=tcp"
        try:
            self._idle.setdefault(peer, []).append(self._rdma_peer(peer))
        except (RdmaUnavailable, RdmaError) as err:
            if self.conf.transport == "rdma":
                raise RouteRefused(f"spark.netspark.transport=rdma, but RDMA to {peer} is "
                                   f"not possible: {err}") from err
            return "tcp", f"{why}; RDMA not possible: {err}"
        return "rdma", f"{why}; RDMA device {self.rdma[0].name}"

    def rdma_failed(self, peer: Any, err: RdmaError) -> bool:
        """Moves `peer` to TCP after an RDMA failure under transport=auto (logged once)."""
        with self._lock:
            if self.conf.transport != "auto" or self._routes.get(peer) != "rdma":
                return False
            self._routes[peer] = "tcp"
            for conn in self._idle.pop(peer, []):
                conn.abort()
        log.warning("netspark: RDMA to %s failed (%s); falling back to TCP for this peer",
                    peer, err)
        return True

    def peer_arena(self, path: str) -> Arena:
        """A same-host peer's arena, mapped once."""
        with self._lock:
            if path not in self.arenas:
                self.arenas[path] = Arena.attach(path)
            return self.arenas[path]

    # ---- connections ----

    def lease(self, peer: Any) -> Any:
        """An idle connection to `peer` that is still up, or a new one (TcpPeer or
        RdmaPeer, as its route says); give it back or discard it when done."""
        route = self.route(peer)
        with self._lock:
            idle = self._idle.get(peer, [])
            while idle:
                conn = idle.pop()
                if still_open(conn.sock):
                    if isinstance(conn, TcpPeer):
                        conn.expect_prompt_reply(self.conf.network_connectTimeout)
                    return conn
                conn.abort()
        if route == "rdma":
            return self._rdma_peer(peer)
        return TcpPeer(peer.host, peer.port, secret=self.secret, app_id=self.app_id,
                       timeout=self.conf.network_timeout,
                       connect_timeout=self.conf.network_connectTimeout)

    def give_back(self, peer: Any, conn: Any) -> None:
        """A connection with no request in progress, for the next fetcher."""
        is_rdma = getattr(conn, "channel", None) is not None
        with self._lock:
            idle = self._idle.setdefault(peer, [])
            # after a fall-back to TCP, an RDMA connection is not what the route says
            if is_rdma == (self._routes.get(peer) == "rdma") and len(idle) < IDLE_PER_PEER:
                idle.append(conn)
                return
        conn.close()

    def _rdma_peer(self, peer: Any) -> Any:
        from netspark.transport.rdma import require
        from netspark.transport.rdma.device import open_device
        from netspark.transport.rdma.peer import RdmaPeer, arena_registrations

        require()
        with self._lock:
            if self.rdma is None:
                device = open_device(self.conf.rdma_device, self.conf.rdma_port,
                                     self.conf.rdma_gidIndex, self.local_address)
                self.rdma = device, arena_registrations(device, self.arena, remote_read=False)
            device, local = self.rdma
        return RdmaPeer(peer.host, peer.port, secret=self.secret, app_id=self.app_id,
                        timeout=self.conf.network_timeout, device=device, local=local,
                        naive=self.conf.rdma_naive,
                        connect_timeout=self.conf.network_connectTimeout)

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    with contextlib.suppress(OSError):
                        conn.close()
            self._idle.clear()
            if self.rdma is not None:
                self.rdma[1].close()
                self.rdma = None
            if self._own_arenas:
                for arena in self.arenas.values():
                    arena.close()
                self.arenas.clear()
