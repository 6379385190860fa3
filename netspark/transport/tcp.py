"""The TCP transport: extents streamed from the serving arena into the reader's blocks.

Serving side: `serve_peer` answers one authenticated connection. FETCH_REQ gets the
committed extents (ADVERTISE); READ_REQ is checked extent by extent against what
was committed, then each extent goes out as a DATA header plus the block memory
itself in one `sendmsg` (no staging copy); FETCH_READ_REQ gets both at once.
Connections are long-lived (a reader's process keeps them across tasks): between
requests the server waits without a timeout, TCP keepalive noticing a peer that
vanished. Reading side: `TcpPeer` asks and then `recv_into`s every extent straight
into the memory it is given.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
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
    FetchReadReq,
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


KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}  # gone in ~60 s


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE.items():
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def next_request(sock: socket.socket) -> object:
    """Waits as long as it takes for the peer's next request (an idle connection is
    kept for later tasks), then reads it within the socket's timeout."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    while not poller.poll():
        pass
    return recv_message(sock)


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
        while answer_request(sock, source, next_request(sock)):
            pass
    except ConnectionClosed:
        pass
    except Exception as err:  # a broken peer must never take the server down
        log.warning("netspark: closing the connection from %s: %s", peer, err)
    finally:
        sock.close()


def answer_request(sock: socket.socket, source: ExtentSource, msg: object) -> bool:
    """Answers one request; False when the peer said BYE."""
    if isinstance(msg, FetchReadReq):
        _answer_fetch_read(sock, source, msg)
    elif isinstance(msg, FetchReq):
        _answer_fetch(sock, source, msg)
    elif isinstance(msg, ReadReq):
        _answer_read(sock, source, msg)
    elif isinstance(msg, Bye):
        return False
    else:
        reason = f"{type(msg).__name__} is not a request"
        send_message(sock, ErrorMsg.make(0, ErrorCode.MALFORMED, reason))
        raise ProtocolError(reason)
    return True


def _answer_fetch(sock: socket.socket, source: ExtentSource,
                  req: FetchReq | FetchReadReq) -> list[Extent] | None:
    try:
        extents = source.advertise(req.shuffle_id, req.reduce_id, req.maps)
    except LookupError as err:
        send_message(sock, ErrorMsg.make(req.request_id, ErrorCode.NOT_COMMITTED, str(err)))
        return None
    send_message(sock, Advertise(req.request_id, tuple(extents)))
    return extents


def _answer_fetch_read(sock: socket.socket, source: ExtentSource, req: FetchReadReq) -> None:
    """ADVERTISE, then the DATA of every extent it named (all committed, by definition)."""
    extents = _answer_fetch(sock, source, req)
    _send_extents(sock, source, req.request_id, refs_of(extents or ()))


def _answer_read(sock: socket.socket, source: ExtentSource, req: ReadReq) -> None:
    for index, ref in enumerate(req.extents):
        if not source.may_read(req.shuffle_id, ref):
            send_message(sock, ErrorMsg.make(
                req.request_id, ErrorCode.OUT_OF_BOUNDS,
                f"extent {index} {tuple(ref)} was not committed for shuffle {req.shuffle_id}"))
            return
    _send_extents(sock, source, req.request_id, req.extents)


def refs_of(extents: Sequence[Extent]) -> tuple[ExtentRef, ...]:
    return tuple(ExtentRef(e.map_id, e.block_id, e.offset, e.length) for e in extents)


def _send_extents(sock: socket.socket, source: ExtentSource, request_id: int,
                  refs: Sequence[ExtentRef]) -> None:
    """Each extent as a DATA header and its bytes, in one `sendmsg` (no staging copy)."""
    for index, ref in enumerate(refs):
        _send_all(sock, [Data(request_id, index, ref.length).encode(), source.extent_data(ref)])


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
            # authenticating is part of connecting: a peer that cannot do it promptly
            # is as unreachable as one that does not accept
            client_handshake(self.sock, secret, app_id, timeout=connect_timeout or timeout)
        except BaseException:
            self.sock.close()
            raise
        # What a peer may push unasked: it fits in our receive buffer, so the peer's
        # send never waits on us however long our reader takes to get to it.
        self.push_limit = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        self.timeout = timeout
        self._prompt: float | None = None

    def expect_prompt_reply(self, timeout: float) -> None:
        """The next reply must come within `timeout`: a connection taken from the idle
        pool may lead to a peer that vanished without a word (its host unreachable),
        which only silence tells; this bounds it as a new connection's connect is."""
        self._prompt = timeout

    def _reply(self, request_id: int) -> object:
        if self._prompt is None:
            msg = recv_message(self.sock)
        else:
            self.sock.settimeout(self._prompt)
            try:
                msg = recv_message(self.sock)
            finally:
                self._prompt = None
                self.sock.settimeout(self.timeout)
        if isinstance(msg, ErrorMsg):
            raise RemoteError(self.name, msg.code, msg.message)
        if getattr(msg, "request_id", None) != request_id:
            raise ProtocolError(f"{self.name} answered {type(msg).__name__} out of turn")
        return msg

    def advertise(self, shuffle: int, reduce_id: int,
                  maps: Sequence[MapAttempt]) -> list[Extent]:
        """The committed extents of `maps` for `reduce_id`."""
        return self.advertised(self.request(shuffle, reduce_id, maps, with_data=False))

    def request(self, shuffle: int, reduce_id: int, maps: Sequence[MapAttempt], *,
                with_data: bool) -> int:
        """Sends FETCH_REQ (or FETCH_READ_REQ: the data follows the extents) and returns
        its id; the answer is taken with `advertised` (then `receive_data`)."""
        request_id = next(self._ids)
        kind = FetchReadReq if with_data else FetchReq
        send_message(self.sock, kind(request_id, shuffle, reduce_id, tuple(maps)))
        return request_id

    def advertised(self, request_id: int) -> list[Extent]:
        reply = self._reply(request_id)
        if not isinstance(reply, Advertise):
            raise ProtocolError(f"{self.name} answered a fetch with {type(reply).__name__}")
        return list(reply.extents)

    def read_into(self, shuffle: int, extents: Sequence[Extent],
                  targets: Sequence[memoryview]) -> None:
        """Streams each extent into the memory of the same index."""
        request_id = next(self._ids)
        send_message(self.sock, ReadReq(request_id, shuffle, refs_of(extents)))
        self.receive_data(request_id, targets)

    def receive_data(self, request_id: int, targets: Sequence[memoryview]) -> None:
        """The DATA of a request, extent by extent, into the memory of the same index."""
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

    def abort(self) -> None:
        """Drops the connection without a goodbye (after a failure)."""
        self.sock.close()
