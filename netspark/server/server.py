"""The executor's netspark server: owns the arena, keeps the registry, serves peers.

Three kinds of connection, each on its own thread:
- network peers: fetch and read committed extents (`transport.tcp.serve_peer`), or,
  when this server has an RDMA device and the peer offers a queue pair, fetch
  over SEND/RECV and RDMA-READ the extents (`transport.rdma.serve.serve_peer`);
- local workers (UNIX socket, `local_api`): commit outputs, unregister shuffles;
- nobody else: every connection must pass the HMAC handshake first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from netspark.buffer_manager import Arena, ArenaError, BlockPool
from netspark.config import NetsparkConf
from netspark.serde import Extent
from netspark.server.local_api import (
    is_served,
    peer_credentials,
    recv_json,
    send_json,
    socket_name,
)
from netspark.server.registry import BadCommit, Partition, Registry
from netspark.server.spill import Spiller, default_directory
from netspark.transport import protocol
from netspark.transport.auth import server_handshake
from netspark.transport.fetch import Fetcher, FetchFailed, FetchRequest, PeerAddress, host_key
from netspark.transport.peers import PeerConnections
from netspark.transport.tcp import serve_peer

log = logging.getLogger(__name__)


class NoFreePort(OSError):
    """Every port of the configured range is taken (or the address is not this host's)."""


def listen_in_range(host: str, ports: int | tuple[int, int]) -> socket.socket:
    """A listening socket on the first free port of `ports` (0: any free port)."""
    low, high = (ports, ports) if isinstance(ports, int) else ports
    last: OSError | None = None
    for port in range(low, high + 1):
        try:
            return socket.create_server((host, port), backlog=128)
        except OSError as err:
            last = err
            if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                break  # e.g. EADDRNOTAVAIL: no other port would do better
    where = f"port {low}" if low == high else f"ports {low}-{high}"
    raise NoFreePort(f"cannot listen on {host}, {where} (spark.netspark.port, "
                     f"spark.netspark.bindAddress): {last}")


class PathTaken(OSError):
    """Another live server listens on the local socket path."""


def listen_on_path(path: str) -> socket.socket:
    """A UNIX listener at `path`; a socket file that nobody serves (its server was
    killed) is replaced, one that somebody does raises PathTaken."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            listener.bind(path)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            if is_served(path):
                raise PathTaken(errno.EADDRINUSE, f"{path} is served already") from None
            os.unlink(path)
            listener.bind(path)
        listener.listen(128)
    except BaseException:
        listener.close()
        raise
    return listener


class ShuffleServer:
    """One per executor. `start()` serves in background threads; `stop()` ends it all."""

    def __init__(self, conf: NetsparkConf, *, secret: bytes, app_id: str,
                 host: str = "127.0.0.1", port: int | tuple[int, int] = 0,
                 advertise_host: str | None = None, executor_id: str = "",
                 local_path: str | None = None) -> None:
        """`local_path`: a UNIX socket path to serve local clients on too (the JVM's,
        which cannot reach the abstract name), taken before anything else is made."""
        self.conf = conf
        self.local_path = local_path
        self._path_listener = listen_on_path(local_path) if local_path else None
        self.executor_id = executor_id
        self.secret = secret
        self.app_id = app_id
        try:
            self.arena = Arena.create(conf, name=f"netspark-{app_id}")
        except BaseException:
            self._close_path()
            raise
        self.registry = Registry(self.arena.block_size)
        blocks = self.arena.max_blocks
        self.spiller = Spiller(self.registry, self.arena, default_directory(conf.spill_dir),
                               low=max(4, blocks // 16), high=max(8, blocks // 8))
        self.rdma: Any = None  # transport.rdma.peer.RdmaService when RDMA is on
        # For clients that ask us to fetch (the JVM's tasks, several at once): each call
        # gets a Fetcher of its own over these shared blocks, routes and idle connections.
        self._pool = BlockPool(self.arena, acquire_timeout=conf.buffer_acquireTimeout)
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()  # accepted, still open
        self.peers_accepted = 0  # network connections accepted so far (peers keep theirs)
        self._stopped = threading.Event()
        try:
            self._tcp = listen_in_range(host, port)
            self.local_name = socket_name(app_id, self._tcp.getsockname()[1])
            self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._unix.bind(self.local_name)
            self._unix.listen(128)
            self.rdma = self._open_rdma(advertise_host or host)
        except BaseException:
            self.arena.close()
            self._close_path()
            raise
        port = self._tcp.getsockname()[1]
        self.address = PeerAddress(advertise_host or host, port, host_key(), self.arena.path)
        self._peers = PeerConnections(self.arena, conf, secret=secret, app_id=app_id,
                                      local_address=self.address.host)  # see self._pool

    def _open_rdma(self, address: str) -> Any:
        """The RDMA service, or None: transport=tcp, or auto without a usable device."""
        if self.conf.transport == "tcp":
            return None
        from netspark.transport.rdma import RdmaUnavailable, require
        try:
            require()
            from netspark.transport.rdma.device import open_device
            from netspark.transport.rdma.peer import RdmaService

            device = open_device(self.conf.rdma_device, self.conf.rdma_port,
                                 self.conf.rdma_gidIndex, address)
        except RdmaUnavailable as err:
            if self.conf.transport == "rdma":
                raise RdmaUnavailable(f"spark.netspark.transport=rdma: {err}") from None
            log.info("netspark: serving over TCP only: %s", err)
            return None
        service = RdmaService(device, self.arena, naive=self.conf.rdma_naive)
        slab_bytes = self.arena.slab_blocks * self.arena.block_size
        service.register_active_slabs(list(range(-(-self.conf.buffer_initialSize // slab_bytes))))
        return service

    # ---- lifecycle ----

    def start(self) -> ShuffleServer:
        slab_bytes = self.arena.slab_blocks * self.arena.block_size
        min_slabs = -(-self.conf.buffer_initialSize // slab_bytes)
        if self.rdma is not None:
            # A registered slab pins its pages: punching them out would leave readers'
            # and our own memory regions on stale pages. So idle slabs stay while RDMA is on.
            min_slabs = self.arena.max_blocks // self.arena.slab_blocks
            log.info("netspark: RDMA on (%s): idle arena slabs are kept, not shrunk, "
                     "because their pages are registered", self.rdma.device.name)
        self.arena.start_maintenance(self.conf.buffer_idleTimeout, min_slabs)
        if self.rdma is None:  # spilled extents are served over TCP only
            spill = threading.Thread(target=self.spiller.run, args=(self._stopped,),
                                     name="netspark-spill", daemon=True)
            spill.start()
            self._threads.append(spill)
        else:
            log.info("netspark: RDMA on: committed outputs are not spilled; a full pool "
                     "makes writers wait, then fail with PoolExhausted")
        self._spawn(self._accept, self._tcp, self._serve_network, "netspark-tcp")
        self._spawn(self._accept, self._unix, self._serve_local, "netspark-local")
        if self._path_listener is not None:
            self._spawn(self._accept, self._path_listener, self._serve_local, "netspark-local")
        log.info("netspark server for %s listening on %s (local %r); arena: %s",
                 self.app_id, self.address, self.local_name[1:], self.arena.stats())
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=args[-1], daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket, handler: Callable[[socket.socket], None],
                name: str) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            self._connections.add(conn)
            self.peers_accepted += conn.family != socket.AF_UNIX
            threading.Thread(target=self._handle, args=(handler, conn), name=name,
                             daemon=True).start()

    def _handle(self, handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        try:
            handler(conn)
        finally:
            self._connections.discard(conn)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        for listener in (self._tcp, self._unix):
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._close_path()
        for conn in list(self._connections):  # peers keep theirs open between tasks
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._peers.close()
        if self.rdma is not None:
            self.rdma.close()
        self.spiller.close()
        stats = self.arena.stats()
        self.arena.close()
        log.info("netspark server for %s stopped; arena: %s", self.app_id, stats)

    def _close_path(self) -> None:
        if self._path_listener is None:
            return
        with contextlib.suppress(OSError):
            self._path_listener.shutdown(socket.SHUT_RDWR)
        self._path_listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.local_path)
        self._path_listener = None

    # ---- network peers: what transport.tcp.ExtentSource asks ----

    def _serve_network(self, conn: socket.socket) -> None:
        if self.rdma is not None:
            from netspark.transport.rdma.serve import serve_peer as serve_rdma_peer

            serve_rdma_peer(conn, self, self.rdma, secret=self.secret, app_id=self.app_id,
                            timeout=self.conf.network_timeout)
            return
        serve_peer(conn, self, secret=self.secret, app_id=self.app_id,
                   timeout=self.conf.network_timeout)

    def advertise(self, shuffle: int, reduce_id: int,
                  maps: Sequence[protocol.MapAttempt]) -> list[protocol.Extent]:
        extents = []
        for map_id, attempt in maps:
            part = self.registry.partition(shuffle, map_id, attempt, reduce_id)
            extents += [protocol.Extent(map_id, e.block_id, e.offset, e.length, e.crc)
                        for e in part.extents]
        return extents

    def may_read(self, shuffle: int, ref: protocol.ExtentRef) -> bool:
        return self.registry.may_read(shuffle, ref.map_id, ref.block_id, ref.offset,
                                      ref.length)

    def view(self, block_id: int) -> memoryview:
        return self.arena.block_view(block_id)

    def extent_data(self, ref: protocol.ExtentRef) -> memoryview | bytes:
        """The bytes of a committed extent (checked with may_read first)."""
        if ref.block_id & protocol.SPILLED_BLOCK_FLAG:
            return self.spiller.read(ref.block_id, ref.offset, ref.length)
        return self.arena.block_view(ref.block_id)[ref.offset:ref.offset + ref.length]

    # ---- local workers ----

    def _serve_local(self, conn: socket.socket) -> None:
        try:
            pid, uid = peer_credentials(conn)
            if uid != os.getuid():
                log.warning("netspark: refusing local pid %d of uid %d", pid, uid)
                return
            server_handshake(conn, self.secret, self.app_id,
                             timeout=self.conf.network_timeout)
            conn.settimeout(None)
            while True:
                request = recv_json(conn)
                send_json(conn, self._local_request(pid, request))
        except EOFError:
            pass
        except Exception as err:
            log.warning("netspark: closing the local connection: %s", err)
        finally:
            conn.close()

    def _local_request(self, pid: int, request: Any) -> dict[str, Any]:
        op = request.get("op") if isinstance(request, dict) else None
        try:
            if op == "info":
                return {"ok": True, "address": list(vars(self.address).values()),
                        "block_size": self.arena.block_size, "pid": os.getpid(),
                        "data_offset": self.arena.data_offset,
                        "acquire_timeout": self.conf.buffer_acquireTimeout,
                        "max_bytes_in_flight": self.conf.reducer_maxBytesInFlight}
            if op == "lease":  # for clients that cannot lease from the arena themselves
                return {"ok": True, "blocks": self._lease_for(pid, request["count"])}
            if op == "release":
                self.arena.release([int(b) for b in request["blocks"]], pid)
                return {"ok": True}
            if op == "commit":  # with "lease": n, the writer's blocks for its next task too
                self.commit(pid, request)
                return {"ok": True, "blocks": self._lease_for(pid, request.get("lease", 0))}
            if op == "unregister":
                return {"ok": True, "freed": self.unregister(int(request["shuffle"]))}
            if op == "stats":
                return {"ok": True, **self.stats()}
            if op == "fetch":
                return {"ok": True, "landed": self.fetch_for(pid, request["requests"])}
            return {"ok": False, "error": f"unknown request {op!r}"}
        except FetchFailed as err:  # the JVM reader's FetchFailedException says this
            return {"ok": False, "error": f"FetchFailed: {err.explained()}"}
        except (BadCommit, ArenaError, KeyError, TypeError, ValueError) as err:
            return {"ok": False, "error": f"{type(err).__name__}: {err}"}

    def _lease_for(self, pid: int, count: Any) -> list[int]:
        """Up to `count` free blocks for a client that cannot lease them itself (the JVM)."""
        most = self.conf.buffer_poolSize // self.arena.block_size
        if not isinstance(count, int) or not 0 <= count <= most:
            raise ValueError(f"lease of {count!r} blocks: 0 to {most} (the pool's size)")
        return self.arena.lease(count, pid) if count else []

    def commit(self, pid: int, request: dict[str, Any]) -> None:
        """Takes over the blocks of a finished map attempt and records its extents."""
        blocks = [int(b) for b in request["blocks"]]
        partitions = {
            int(reduce_id): Partition(int(records), tuple(Extent(*map(int, e)) for e in exts))
            for reduce_id, (records, exts) in request["partitions"].items()
        }
        self.arena.transfer(blocks, to_pid=os.getpid(), from_pid=pid)
        try:
            self.registry.commit(int(request["shuffle"]), int(request["map"]),
                                 int(request["attempt"]), partitions, blocks)
        except BadCommit:
            self.arena.transfer(blocks, to_pid=pid)  # back to the writer to discard
            raise

    def fetch_for(self, pid: int, requests: list[Any]) -> list[dict[str, Any]]:
        """Fetches on behalf of a local client: what lands in our blocks becomes its own.
        Calls of several clients run at once, each with its own Fetcher."""
        fetcher = Fetcher(self._pool, self.conf, secret=self.secret, app_id=self.app_id,
                          peers=self._peers, local_address=self.address.host)
        answers: list[dict[str, Any]] = []
        try:
            for request in requests:
                answers.append(self._fetch_one_for(pid, fetcher, request))
            fetcher.give_back()  # every request answered: its connections are clean
            return answers
        except BaseException:  # the client never hears of the blocks landed before
            for answer in answers:
                if answer["owned"]:
                    self.arena.release(sorted({e[0] for e in answer["extents"]}), pid)
            raise
        finally:
            fetcher.close()  # closes what a failure left mid-request

    def _fetch_one_for(self, pid: int, fetcher: Fetcher, request: Any) -> dict[str, Any]:
        host, port, key, path, shuffle, reduce_id, maps = request
        req = FetchRequest(PeerAddress(host, int(port), key, path), int(shuffle),
                           int(reduce_id), tuple(protocol.MapAttempt(*m) for m in maps))
        landed = fetcher.fetch_one(req)
        owned = landed.arena is self.arena
        if owned:  # blocks we leased: the client releases them once read
            blocks = sorted({e.block_id for e in landed.extents})
            self.arena.transfer(blocks, to_pid=pid)
            fetcher.disown(len(blocks))
        return {"arena": self.arena.path if owned else path, "owned": owned,
                "extents": [list(e) for e in landed.extents], "maps": landed.map_ids}

    def unregister(self, shuffle: int) -> int:
        outputs = self.registry.unregister(shuffle)
        self.spiller.forget(outputs)
        blocks = [block for output in outputs for block in output.blocks]
        if blocks:
            self.arena.release(blocks)
        return len(blocks)

    def stats(self) -> dict[str, Any]:
        outputs = self.registry.outputs()
        return {"arena": vars(self.arena.stats()), "shuffles": len(self.registry.shuffles()),
                "outputs": len(outputs), "bytes": sum(o.size for o in outputs),
                "spilled_outputs": sum(1 for o in outputs if not o.blocks),
                "peers_accepted": self.peers_accepted,
                "spilled_bytes": self.spiller.spilled_bytes}
