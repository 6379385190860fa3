"""RDMA connections: the reader's `RdmaPeer` and the serving side's `RdmaService`.

Set-up is out of band over the authenticated TCP connection (rather than
rdma_cm): the HMAC handshake already carries each side's QPN, PSN, GID and MTU
(protocol.RdmaEndpoint), so the queue pair is bound to a peer that proved it
holds the secret, with no second connection manager or port to open. The TCP
connection stays up: it carries BYE, it is the fallback, and its closing tells
either side at once that the other is gone (no waiting for RC retries).

Once connected, FETCH_REQ/ADVERTISE travel as SEND/RECV on the queue pair, and
the advertised extents carry the serving arena's virtual address and the rkey
of the memory region of its slab: the reader RDMA-READs them straight into its
own leased blocks. Regions allow REMOTE_READ only, never remote write.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any

from netspark.buffer_manager import Arena
from netspark.transport.auth import client_handshake
from netspark.transport.protocol import (
    Advertise,
    Bye,
    ErrorMsg,
    Extent,
    FetchReq,
    MapAttempt,
    ProtocolError,
    decode_message,
    send_message,
)
from netspark.transport.rdma.channel import (
    RECV_RING,
    SEND_DEPTH,
    Channel,
    ReadOp,
    split_reads,
)
from netspark.transport.rdma.device import (
    Device,
    QueuePair,
    SlabRegistrations,
    ffi,
    gid_text,
)
from netspark.transport.rdma.errors import RdmaError, RdmaUnavailable
from netspark.transport.rdma.naive import Bounce
from netspark.transport.tcp import RemoteError, tune

log = logging.getLogger(__name__)


def arena_registrations(device: Device, arena: Arena, *, remote_read: bool) -> SlabRegistrations:
    """Per-slab memory regions over this process's mapping of `arena`."""
    return SlabRegistrations(device, arena.address + arena.data_offset,
                             arena.slab_blocks * arena.block_size, remote_read)


def buffer_address(view: memoryview) -> int:
    return int(ffi.cast("uintptr_t", ffi.from_buffer(view)))


class RdmaPeer:
    """A reader's connection to one serving peer: the TcpPeer interface, over RDMA."""

    def __init__(self, host: str, port: int, *, secret: bytes, app_id: str, timeout: float,
                 device: Device, local: SlabRegistrations, naive: bool = False,
                 connect_timeout: float | None = None) -> None:
        self.name = f"{host}:{port}"
        self.bounce = Bounce(device) if naive else None  # benchmarks only
        self.timeout = timeout
        self.local = local
        self.max_msg = device.limits.max_msg
        self._ids = itertools.count(1)
        self.sock = socket.create_connection((host, port), timeout=connect_timeout or timeout)
        self.sock.settimeout(timeout)
        self.channel: Channel | None = None
        try:
            tune(self.sock)
            qp = QueuePair(device, SEND_DEPTH, RECV_RING, serve_reads=False)
            try:
                self.channel = Channel(qp, self.name)
            except BaseException:
                qp.close()
                raise
            ok = client_handshake(self.sock, secret, app_id, rdma=qp.endpoint(), timeout=timeout)
            if ok.rdma is None:
                raise RdmaUnavailable(f"{self.name} does not offer RDMA to us: its server "
                                      "has no RDMA device, runs with transport=tcp, or could "
                                      "not connect a queue pair to ours (our device "
                                      f"{device.name}, GID {gid_text(device.gid)}; its log "
                                      "says which)")
            qp.connect(ok.rdma)
        except BaseException:
            self.abort()
            raise

    def _call(self, frame: bytes, request_id: int) -> Any:
        assert self.channel is not None
        fd = self.sock.fileno()
        self.channel.send_frame(frame, self.timeout, fd)
        reply = decode_message(self.channel.recv_frame(self.timeout, fd))
        if isinstance(reply, ErrorMsg):
            raise RemoteError(self.name, reply.code, reply.message)
        if getattr(reply, "request_id", None) != request_id:
            raise ProtocolError(f"{self.name} answered {type(reply).__name__} out of turn")
        return reply

    def advertise(self, shuffle: int, reduce_id: int,
                  maps: Sequence[MapAttempt]) -> list[Extent]:
        request_id = next(self._ids)
        reply = self._call(FetchReq(request_id, shuffle, reduce_id, tuple(maps)).encode(),
                           request_id)
        if not isinstance(reply, Advertise):
            raise ProtocolError(f"{self.name} answered a fetch with {type(reply).__name__}")
        if any(e.rkey == 0 and e.addr == 0 for e in reply.extents):
            raise ProtocolError(f"{self.name} advertised extents without RDMA addresses")
        return list(reply.extents)

    def read_into(self, shuffle: int, extents: Sequence[Extent],
                  targets: Sequence[memoryview]) -> None:
        """RDMA-READs each extent into the memory of the same index (arena blocks)."""
        assert self.channel is not None
        if self.bounce is not None:
            self._read_naive(extents, targets)
            return
        ops: list[ReadOp] = []
        for ext, target in zip(extents, targets, strict=True):
            if len(target) != ext.length:
                raise ValueError(f"extent of {ext.length} bytes, target of {len(target)}")
            laddr = buffer_address(target)
            lkey = self.local.mr_for(laddr, ext.length).lkey
            ops += split_reads(laddr, lkey, ext.length, ext.addr, ext.rkey, self.max_msg)
        self.channel.read(ops, self.timeout, self.sock.fileno())

    def _read_naive(self, extents: Sequence[Extent], targets: Sequence[memoryview]) -> None:
        """Benchmarks only: READ into the bounce buffer, then copy out into the blocks."""
        assert self.channel is not None and self.bounce is not None
        placed, ops = [], []
        for ext in extents:
            at = self.bounce.place(ext.length)
            placed.append(at)
            ops += split_reads(self.bounce.address + at, self.bounce.mr.lkey, ext.length,
                               ext.addr, ext.rkey, self.max_msg)
        self.channel.read(ops, self.timeout, self.sock.fileno())
        for at, ext, target in zip(placed, extents, targets, strict=True):
            target[:] = self.bounce.view(at, ext.length)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            send_message(self.sock, Bye())
        self.abort()

    def abort(self) -> None:
        """Drops the connection without a goodbye (after a failure)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.bounce is not None:
            self.bounce.close()
            self.bounce = None
        self.sock.close()


class RdmaService:
    """The serving side: the arena's registrations and a queue pair per reader."""

    def __init__(self, device: Device, arena: Arena, naive: bool = False) -> None:
        self.device = device
        self.arena = arena
        self.regs = arena_registrations(device, arena, remote_read=True)
        # Benchmarks only: serve copies from a bounce buffer, not the arena itself.
        self.bounce = Bounce(device, remote_read=True) if naive else None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.closed = False

    def register_active_slabs(self, slabs: list[int]) -> None:
        """Registers slabs as they become active, off the data path."""
        self.regs.register_slabs(slabs)

    def accept(self, sock: socket.socket, peer: str) -> RdmaAcceptor:
        with self._lock:
            self._conns.add(sock)
        return RdmaAcceptor(self, sock, peer)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def with_addresses(self, extents: list[Extent]) -> list[Extent]:
        """The extents with this arena's addresses and their slab's rkey filled in."""
        out = []
        for ext in extents:
            addr = self.arena.block_address(ext.block_id) + ext.offset
            if self.bounce is not None:
                at = self.bounce.place(ext.length)
                self.bounce.view(at, ext.length)[:] = self.arena.block_view(ext.block_id)[
                    ext.offset:ext.offset + ext.length]
                out.append(ext._replace(addr=self.bounce.address + at, rkey=self.bounce.mr.rkey))
                continue
            out.append(ext._replace(addr=addr, rkey=self.regs.mr_for(addr, ext.length).rkey))
        return out

    def close(self) -> None:
        """Wakes every connection (they clean up themselves), then deregisters."""
        self.closed = True
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.regs.close()
        if self.bounce is not None:
            self.bounce.close()


class RdmaAcceptor:
    """One reader's queue pair on the serving side, made during its handshake."""

    def __init__(self, service: RdmaService, sock: socket.socket, peer: str) -> None:
        self.service = service
        self.sock = sock
        self.peer = peer
        self.channel: Channel | None = None

    def endpoint_for(self, hello: Any) -> Any:
        """server_handshake's `rdma_for`: a queue pair connected to the reader's, or
        None (the reader stays on TCP) when the device cannot make one now."""
        try:
            qp = QueuePair(self.service.device, SEND_DEPTH, RECV_RING, serve_reads=True)
        except RdmaError as err:
            log.warning("netspark: no RDMA for %s, serving it over TCP: %s", self.peer, err)
            return None
        try:
            channel = Channel(qp, self.peer)
        except BaseException:
            qp.close()
            raise
        try:
            qp.connect(hello.rdma)
        except RdmaError as err:
            channel.close()
            dev = self.service.device
            log.warning("netspark: no RDMA for %s (its GID %s; ours %s on %s, GID index %d), "
                        "serving it over TCP: %s", self.peer, gid_text(hello.rdma.gid),
                        gid_text(dev.gid), dev.name, dev.gid_index, err)
            return None
        self.channel = channel
        return qp.endpoint()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.service.forget(self.sock)
