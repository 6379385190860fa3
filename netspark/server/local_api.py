"""The executor-local control channel: workers to their server over a UNIX socket.

Abstract-namespace socket (paths under Spark's local dirs exceed the 108-byte
limit). A connecting process must run as the server's user (SO_PEERCRED) and pass
the same HMAC handshake as a network peer; then each request and reply is one
length-prefixed JSON object (never pickle: JSON carries data, not code).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from netspark.transport.auth import client_handshake
from netspark.transport.protocol import ProtocolError, recv_exact_into

LENGTH = struct.Struct("<I")
MAX_REQUEST = 16 << 20


class ServerError(RuntimeError):
    """The local server refused a request."""


def socket_name(app_id: str, tcp_port: int) -> str:
    """Unique on the host (and network namespace) while the server's TCP port is."""
    return f"\0netspark-{app_id}-{tcp_port}"


def is_served(path: str) -> bool:
    """Whether a process accepts connections on the UNIX socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def send_json(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(LENGTH.pack(len(data)) + data)


def recv_json(sock: socket.socket) -> Any:
    head = bytearray(LENGTH.size)
    got = sock.recv_into(head, LENGTH.size, socket.MSG_WAITALL)
    if got == 0:
        raise EOFError("the peer closed the connection")
    if got < LENGTH.size:
        raise ProtocolError("the peer closed the connection inside a request header")
    (length,) = LENGTH.unpack(head)
    if length > MAX_REQUEST:
        raise ProtocolError(f"a local request of {length} bytes exceeds {MAX_REQUEST}")
    body = bytearray(length)
    recv_exact_into(sock, body)
    try:
        return json.loads(body)
    except ValueError as err:
        raise ProtocolError(f"a local request is not JSON: {err}") from None


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel knows them."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


class ServerClient:
    """A worker's connection to its executor's server."""

    def __init__(self, name: str, *, secret: bytes, app_id: str, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(name)
            client_handshake(self.sock, secret, app_id, timeout=timeout)
        except BaseException:
            self.sock.close()
            raise
        self.pid = os.getpid()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        send_json(self.sock, {"op": op, **args})
        reply = recv_json(self.sock)
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise ServerError(f"the netspark server refused {op}: {error}")
        return reply

    def close(self) -> None:
        self.sock.close()
