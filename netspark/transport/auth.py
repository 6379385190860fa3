"""Mutual HMAC-SHA256 challenge/response handshake between netspark peers.

With K the shared secret (Spark's ``spark.authenticate.secret`` or a per-app secret),
Nc and Ns fresh 32-byte nonces, and H the canonical HELLO payload (it carries the
app id, Nc, want_rdma and the client's RDMA endpoint)::

    client -> server  HELLO(app_id, Nc, want_rdma, rdma)
    server -> client  CHALLENGE(Ns, Ps = HMAC(K, SERVER_LABEL || H || Ns))
    client -> server  AUTH(Pc = HMAC(K, CLIENT_LABEL || H || Ns))
    server -> client  AUTH_OK(rdma)          or ERROR(AUTH_FAILED), then close

Each proof binds both nonces, the app id and the RDMA endpoint offered, and its
direction: a server proof reflected back as a client proof fails, and a client
proof captured from one session fails in the next because the server's nonce is
new. The client checks the server's proof before it proves anything itself and
tells the server ERROR(AUTH_FAILED) if it does not verify, so a wrong secret gives
``AuthError`` on both sides. The handshake authenticates the peers; it does not
encrypt or MAC the stream that follows (as with Spark's own auth without TLS).

Both functions leave the socket open on failure: the caller owns and closes it.
``timeout`` applies to each socket operation of the handshake (then the socket's
previous timeout is restored); a silent peer raises ``TimeoutError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

from netspark.transport.protocol import (
    NONCE_SIZE,
    Auth,
    AuthOk,
    Challenge,
    ErrorCode,
    ErrorMsg,
    Hello,
    ProtocolError,
    RdmaEndpoint,
    recv_message,
    send_message,
)

MIN_SECRET_BYTES = 16
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
SERVER_LABEL = b"netspark/1 server proof\x00"
CLIENT_LABEL = b"netspark/1 client proof\x00"
# The handshake's frames are tiny; refuse anything bigger before authentication.
_MAX_HANDSHAKE_PAYLOAD = 4096
_M = TypeVar("_M", Challenge, Auth, AuthOk, Hello)


class AuthError(Exception):
    """The peer could not prove it holds the shared secret, or refused our proof."""


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray):
        raise TypeError(f"the netspark auth secret must be bytes, got {type(secret).__name__}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the netspark auth secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
            "are required (use e.g. secrets.token_bytes(32))"
        )


def _proof(secret: bytes, label: bytes, hello: Hello, server_nonce: bytes) -> bytes:
    transcript = label + hello.payload() + server_nonce
    return hmac.new(secret, transcript, hashlib.sha256).digest()


@contextlib.contextmanager
def _timeout(sock: socket.socket, seconds: float | None) -> Iterator[None]:
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)


def _refuse(sock: socket.socket, code: ErrorCode, message: str) -> None:
    """Best effort: tell the peer why, ignoring a connection that is already gone."""
    with contextlib.suppress(OSError):
        send_message(sock, ErrorMsg.make(0, code, message))


def _recv(sock: socket.socket, expected: type[_M], peer: str) -> _M:
    """Receive the next handshake message; turn ERROR and surprises into exceptions."""
    try:
        msg = recv_message(sock, _MAX_HANDSHAKE_PAYLOAD)
    except ProtocolError as exc:
        _refuse(sock, ErrorCode.MALFORMED, exc.reason)
        raise
    if isinstance(msg, expected):
        return msg
    if isinstance(msg, ErrorMsg):
        if msg.code == ErrorCode.AUTH_FAILED:
            raise AuthError(f"{peer} refused authentication: {msg.message}")
        raise ProtocolError(f"{peer} refused the handshake: {msg.code.name}: {msg.message}")
    reason = f"expected {expected.__name__} during the handshake, got {type(msg).__name__}"
    _refuse(sock, ErrorCode.MALFORMED, reason)
    raise ProtocolError(f"{peer} sent {type(msg).__name__}; {reason}")


def client_handshake(
    sock: socket.socket,
    secret: bytes,
    app_id: str,
    rdma: RdmaEndpoint | None = None,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
) -> AuthOk:
    """Authenticate to the server on ``sock``; offer ``rdma`` to ask for RDMA.

    Returns the server's AUTH_OK, whose ``rdma`` is the server's endpoint or None.
    Raises AuthError, ProtocolError, ConnectionClosed, TimeoutError or OSError.
    """
    _check_secret(secret)
    secret = bytes(secret)
    hello = Hello(app_id, secrets.token_bytes(NONCE_SIZE), rdma is not None, rdma)
    with _timeout(sock, timeout):
        send_message(sock, hello)
        challenge = _recv(sock, Challenge, "server")
        expected = _proof(secret, SERVER_LABEL, hello, challenge.server_nonce)
        if not hmac.compare_digest(expected, challenge.server_proof):
            _refuse(sock, ErrorCode.AUTH_FAILED, "server proof did not verify")
            raise AuthError(
                "the server could not prove it holds the shared secret (wrong secret, "
                "or not the netspark server of this application)"
            )
        proof = _proof(secret, CLIENT_LABEL, hello, challenge.server_nonce)
        send_message(sock, Auth(proof))
        ok = _recv(sock, AuthOk, "server")
    if ok.rdma is not None and rdma is None:
        raise ProtocolError("server sent an RDMA endpoint although the client did not ask")
    return ok


def server_handshake(
    sock: socket.socket,
    secret: bytes,
    expected_app_id: str | None = None,
    rdma_for: Callable[[Hello], RdmaEndpoint | None] | None = None,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Hello:
    """Authenticate the client on ``sock``; return its HELLO once it proved itself.

    ``rdma_for(hello)`` is called only for a proven client that wants RDMA; the
    endpoint it returns (or None: stay on TCP) is sent in AUTH_OK. On failure the
    client is told ERROR(AUTH_FAILED) and AuthError is raised.
    """
    _check_secret(secret)
    secret = bytes(secret)
    with _timeout(sock, timeout):
        hello = _recv(sock, Hello, "client")
        if expected_app_id is not None and hello.app_id != expected_app_id:
            _refuse(sock, ErrorCode.AUTH_FAILED, "unexpected application id")
            raise AuthError(
                f"client announced app id {hello.app_id!r}, expected {expected_app_id!r}"
            )
        nonce = secrets.token_bytes(NONCE_SIZE)
        send_message(sock, Challenge(nonce, _proof(secret, SERVER_LABEL, hello, nonce)))
        auth = _recv(sock, Auth, "client")
        expected = _proof(secret, CLIENT_LABEL, hello, nonce)
        if not hmac.compare_digest(expected, auth.client_proof):
            _refuse(sock, ErrorCode.AUTH_FAILED, "client proof did not verify")
            raise AuthError(
                "the client could not prove it holds the shared secret "
                "(wrong secret, or a replayed or reflected proof)"
            )
        rdma = None
        if hello.want_rdma and rdma_for is not None:
            try:
                rdma = rdma_for(hello)
            except Exception as exc:
                _refuse(sock, ErrorCode.INTERNAL, f"cannot set up RDMA: {exc}")
                raise
        send_message(sock, AuthOk(rdma))
    return hello
