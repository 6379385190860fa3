"""Serving one peer on a server that has RDMA: over RDMA if it asks, else over TCP.

Same requests and checks as `transport.tcp.serve_peer`; the difference is the
handshake's `rdma_for` (a queue pair for a reader that offered one) and, once
that queue pair is up, a loop that waits on its completion channel and on the
TCP socket at once (in C, GIL released): FETCH_REQ may come as a SEND (answered
by SEND) or on TCP (answered on TCP, e.g. by a pyverbs client); ADVERTISE
carries RDMA addresses and keys on such a connection either way.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from netspark.transport.auth import server_handshake
from netspark.transport.protocol import (
    Advertise,
    ConnectionClosed,
    ErrorCode,
    ErrorMsg,
    Extent,
    ExtentRef,
    FetchReq,
    MapAttempt,
    ProtocolError,
    decode_message,
    recv_message,
)
from netspark.transport.rdma.channel import Channel
from netspark.transport.rdma.peer import RdmaService
from netspark.transport.tcp import ExtentSource, answer_request, next_request, tune

log = logging.getLogger(__name__)


class _WithAddresses:
    """An ExtentSource whose advertised extents carry RDMA addresses and rkeys."""

    def __init__(self, source: ExtentSource, service: RdmaService) -> None:
        self.source = source
        self.service = service

    def advertise(self, shuffle: int, reduce_id: int,
                  maps: Sequence[MapAttempt]) -> list[Extent]:
        return self.service.with_addresses(self.source.advertise(shuffle, reduce_id, maps))

    def may_read(self, shuffle: int, ref: ExtentRef) -> bool:
        return self.source.may_read(shuffle, ref)

    def view(self, block_id: int) -> memoryview:
        return self.source.view(block_id)

    def extent_data(self, ref: ExtentRef) -> memoryview | bytes:
        return self.source.extent_data(ref)


def serve_peer(sock: socket.socket, source: ExtentSource, service: RdmaService, *,
               secret: bytes, app_id: str, timeout: float) -> None:
    """Answers one peer until it says BYE, leaves or breaks the protocol; closes `sock`."""
    try:
        peer = "{}:{}".format(*sock.getpeername()[:2])
    except (OSError, TypeError):
        peer = "peer"
    acceptor = service.accept(sock, peer)
    try:
        tune(sock)
        server_handshake(sock, secret, app_id, rdma_for=acceptor.endpoint_for, timeout=timeout)
        sock.settimeout(timeout)
        if acceptor.channel is None:
            while answer_request(sock, source, next_request(sock)):
                pass
        else:
            log.info("netspark: serving %s over RDMA", peer)
            _serve_rdma(sock, _WithAddresses(source, service), acceptor.channel, timeout)
    except ConnectionClosed:
        pass
    except Exception as err:  # a broken peer must never take the server down
        log.warning("netspark: closing the connection from %s: %s", peer, err)
    finally:
        acceptor.close()
        sock.close()


def _serve_rdma(sock: socket.socket, source: _WithAddresses, channel: Channel,
                timeout: float) -> None:
    fd = sock.fileno()
    while not source.service.closed:
        if channel.progress(None, fd) and not answer_request(sock, source, recv_message(sock)):
            return
        while channel.inbox:
            _answer_rdma(channel, source, channel.inbox.popleft(), timeout, fd)


def _answer_rdma(channel: Channel, source: _WithAddresses, frame: bytes, timeout: float,
                 fd: int) -> None:
    try:
        msg = decode_message(frame)
    except ProtocolError as err:
        channel.send_frame(ErrorMsg.make(0, ErrorCode.MALFORMED, err.reason).encode(), timeout, fd)
        raise
    if not isinstance(msg, FetchReq):
        reason = f"{type(msg).__name__} is not a request that RDMA control carries"
        channel.send_frame(ErrorMsg.make(0, ErrorCode.MALFORMED, reason).encode(), timeout, fd)
        raise ProtocolError(reason)
    try:
        extents = source.advertise(msg.shuffle_id, msg.reduce_id, msg.maps)
    except LookupError as err:
        reply = ErrorMsg.make(msg.request_id, ErrorCode.NOT_COMMITTED, str(err))
    else:
        reply = Advertise(msg.request_id, tuple(extents))
    channel.send_frame(reply.encode(), timeout, fd)
