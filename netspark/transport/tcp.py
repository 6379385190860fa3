"""The TCP transport: extents streamed from the serving arena into the reader's blocks.

Serving side: `serve_peer` answers one authenticated connection. FETCH_REQ gets the
committed extents (ADVERTISE); READ_REQ is checked extent by extent against what
was committed, then each extent goes out as a DATA header plus the block memory
itself in one `sendmsg` (no staging copy). Reading side: `TcpPeer` asks and then
`recv_into`s every extent straight into the memory it is given.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from netspark.transport.auth import client_handshake, server_handshake
from netspark.transport.protocol import (
    Advertise,
    Bye,
    ConnectionClosed,
    Data,
    ErrorCode,
    ErrorMsg,
    Extent,
    ExtentRef,
    FetchReq,
    MapAttempt,
    ProtocolError,
    ReadReq,
    recv_exact_into,
    recv_message,
    send_message,
)

log = logging.getLogger(__name__)
SOCKET_BUFFER = 4 << 20


class RemoteError(IOError):
    """The serving peer refused a request (not a transient failure: no retry helps)."""

    def __init__(self, peer: str, code: ErrorCode, message: str) -> None:
        super().__init__(f"{peer} refused: {code.name}: {message}")
        self.code = code


class ExtentSource(Protocol):
    """What a server serves: committed extents and the memory behind them."""

    def advertise(self, shuffle: int, reduce_id: int,
                  maps: Sequence[MapAttempt]) -> list[Extent]: ...  # LookupError if unknown

    def may_read(self, shuffle: int, ref: ExtentRef) -> bool: ...

    def view(self, block_id: int) -> memoryview: ...

    def extent_data(self, ref: ExtentRef) -> memoryview | bytes: ...  # in memory or on disk


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)


def serve_peer(sock: socket.socket, source: ExtentSource, *, secret: bytes, app_id: str,
               timeout: float) -> None:
    """Answers one peer until it says BYE or breaks the protocol; closes the socket."""
    try:
        peer = "{}:{}".format(*sock.getpeername()[:2])
    except (OSError, TypeError):
        peer = "local peer"
    try:
        if sock.family != socket.AF_UNIX:
            tune(sock)
        server_handshake(sock, secret, app_id, timeout=timeout)
        sock.settimeout(timeout)
        while True:
            msg = recv_message(sock)
            if isinstance(msg, FetchReq):
                _answer_fetch(sock, source, msg)
            elif isinstance(msg, ReadReq):
                _answer_read(sock, source, msg)
            elif isinstance(msg, Bye):
                return
            else:
                reason = f"{type(msg).__name__} is not a request"
                send_message(sock, ErrorMsg.make(0, ErrorCode.MALFORMED, reason))
                raise ProtocolError(reason)
    except ConnectionClosed:
        pass
    except Exception as err:  # a broken peer must never take the server down
        log.warning("netspark: closing the connection from %s: %s", peer, err)
    finally:
        sock.close()


def _answer_fetch(sock: socket.socket, source: ExtentSource, req: FetchReq) -> None:
    try:
        extents = source.advertise(req.shuffle_id, req.reduce_id, req.maps)
    except LookupError as err:
        send_message(sock, ErrorMsg.make(req.request_id, ErrorCode.NOT_COMMITTED, str(err)))
        return
    send_message(sock, Advertise(req.request_id, tuple(extents)))


def _answer_read(sock: socket.socket, source: ExtentSource, req: ReadReq) -> None:
    for index, ref in enumerate(req.extents):
        if not source.may_read(req.shuffle_id, ref):
            send_message(sock, ErrorMsg.make(
                req.request_id, ErrorCode.OUT_OF_BOUNDS,
                f"extent {index} {tuple(ref)} was not committed for shuffle {req.shuffle_id}"))
            return
    for index, ref in enumerate(req.extents):
        data = source.extent_data(ref)
        _send_all(sock, [Data(req.request_id, index, ref.length).encode(), data])


def _send_all(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    views = [memoryview(b) for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


class TcpPeer:
    """An authenticated connection to one serving peer; one request at a time."""

    def __init__(self, host: str, port: int, *, secret: bytes, app_id: str,
                 timeout: float, connect_timeout: float | None = None) -> None:
        self.name = f"{host}:{port}"
        self._ids = itertools.count(1)
        self.sock = socket.create_connection((host, port), timeout=connect_timeout or timeout)
        self.sock.settimeout(timeout)
        try:
            tune(self.sock)
            client_handshake(self.sock, secret, app_id, timeout=timeout)
        except BaseException:
            self.sock.close()
            raise

    def _reply(self, request_id: int) -> object:
        msg = recv_message(self.sock)
        if isinstance(msg, ErrorMsg):
            raise RemoteError(self.name, msg.code, msg.message)
        if getattr(msg, "request_id", None) != request_id:
            raise ProtocolError(f"{self.name} answered {type(msg).__name__} out of turn")
        return msg

    def advertise(self, shuffle: int, reduce_id: int,
                  maps: Sequence[MapAttempt]) -> list[Extent]:
        """The committed extents of `maps` for `reduce_id`."""
        request_id = next(self._ids)
        send_message(self.sock, FetchReq(request_id, shuffle, reduce_id, tuple(maps)))
        reply = self._reply(request_id)
        if not isinstance(reply, Advertise):
            raise ProtocolError(f"{self.name} answered a fetch with {type(reply).__name__}")
        return list(reply.extents)

    def read_into(self, shuffle: int, extents: Sequence[Extent],
                  targets: Sequence[memoryview]) -> None:
        """Streams each extent into the memory of the same index."""
        request_id = next(self._ids)
        refs = tuple(ExtentRef(e.map_id, e.block_id, e.offset, e.length) for e in extents)
        send_message(self.sock, ReadReq(request_id, shuffle, refs))
        for index, target in enumerate(targets):
            header = self._reply(request_id)
            if not isinstance(header, Data) or header.index != index \
                    or header.length != len(target):
                raise ProtocolError(f"{self.name} sent {header} where extent {index} of "
                                    f"{len(target)} bytes was due")
            recv_exact_into(self.sock, target)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            send_message(self.sock, Bye())
        self.sock.close()
