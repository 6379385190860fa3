"""The netspark wire protocol: fixed binary frames between executor servers.

Every frame is a 12-byte little-endian header followed by its payload::

    magic b"NSPK" | version u8 | type u8 | flags u16 (0) | payload length u32

A payload is its message's fields in declaration order, each a fixed ``struct``
layout: unsigned ints, fixed-size byte strings, booleans as one byte (0/1), strings
as ``u16 length + utf-8``, an optional RDMA endpoint as a presence byte (0/1) plus a
fixed record, and lists as ``u32 count`` + that many fixed-size entries read with
``struct.iter_unpack``, so decoding is O(n) and every length is checked before use.
Nothing from the wire is unpickled or evaluated. Decoding is strict (no trailing
bytes, flags 0/1, known enums), so a valid payload has exactly one encoding; the
handshake relies on that when it MACs a HELLO.

Malformed input raises :class:`ProtocolError` (a ``ValueError``), and so do invalid
values given to a message constructor or found by ``encode()``.

``DATA`` is the one frame followed by bytes outside its payload: on a TCP stream,
after a :class:`Data` header the reader must :func:`recv_exact_into` exactly
``Data.length`` raw bytes (straight into a block) before reading the next frame.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple, TypeVar

from netspark.transport.fields import (  # noqa: F401 (MAX_ENTRIES: re-exported)
    MAX_ENTRIES,
    BoolField,
    Buffer,
    Cursor,
    EnumField,
    FixedBytes,
    FixedList,
    ProtocolError,
    UInt,
    Utf8,
    check_uint,
)

MAGIC = b"NSPK"
VERSION = 2  # 2: FETCH_READ_REQ
HEADER = struct.Struct("<4sBBHI")
MAX_CONTROL_PAYLOAD = 1 << 20
NONCE_SIZE = 32
PROOF_SIZE = 32
MAX_APP_ID_BYTES = 64
MAX_ERROR_MESSAGE_BYTES = 1024
RDMA_MTUS = frozenset({256, 512, 1024, 2048, 4096})
# An extent whose block id has this bit set lives in a server's spill file (the rest
# of the id names the file, its offset is within that file): it cannot be read in
# place or by RDMA, only by READ_REQ over TCP.
SPILLED_BLOCK_FLAG = 0x80000000



class MsgType(IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    AUTH_OK = 4
    FETCH_REQ = 5
    ADVERTISE = 6
    READ_REQ = 7
    DATA = 8
    ACK = 9
    ERROR = 10
    BYE = 11
    FETCH_READ_REQ = 12


class ErrorCode(IntEnum):
    UNKNOWN_SHUFFLE = 1
    NOT_COMMITTED = 2
    OUT_OF_BOUNDS = 3
    AUTH_FAILED = 4
    MALFORMED = 5
    BUSY = 6
    INTERNAL = 7


class ConnectionClosed(EOFError):
    """The peer closed the connection cleanly, between two frames."""


# List entries are NamedTuples, not dataclasses, so that decoding tens of thousands
# of them stays cheap; struct checks their field ranges when a message is encoded.
class MapAttempt(NamedTuple):
    map_id: int
    attempt: int


class Extent(NamedTuple):
    """A committed byte range in a server's arena; ``addr``/``rkey`` are 0 over TCP."""

    map_id: int
    block_id: int
    offset: int
    length: int
    crc: int
    addr: int = 0
    rkey: int = 0


class ExtentRef(NamedTuple):
    """A range a reader asks for; the server checks it against what was committed."""

    map_id: int
    block_id: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class RdmaEndpoint:
    """Queue-pair parameters for out-of-band RC setup (qpn and psn are 24-bit in IB)."""

    qpn: int
    psn: int
    gid: bytes
    mtu: int
    lid: int = 0

    def __post_init__(self) -> None:
        check_uint("qpn", self.qpn, 24)
        check_uint("psn", self.psn, 24)
        object.__setattr__(self, "gid", FixedBytes(16).check("gid", self.gid))
        if isinstance(self.mtu, bool) or self.mtu not in RDMA_MTUS:
            raise ProtocolError(f"mtu must be one of {sorted(RDMA_MTUS)}, got {self.mtu!r:.80}")
        check_uint("lid", self.lid, 16)


class _Endpoint(BoolField):
    """Optional RdmaEndpoint: presence byte (0/1), then the fixed record if 1."""

    record = struct.Struct("<II16sHH")

    def check(self, name: str, value: Any) -> Any:
        if value is not None and not isinstance(value, RdmaEndpoint):
            raise ProtocolError(f"{name} must be an RdmaEndpoint or None, got {value!r:.80}")
        return value

    def pack(self, ep: Any) -> bytes:
        if ep is None:
            return b"\x00"
        return b"\x01" + self.record.pack(ep.qpn, ep.psn, ep.gid, ep.mtu, ep.lid)

    def unpack(self, c: Cursor, name: str) -> Any:
        if not super().unpack(c, f"{name} presence flag"):
            return None
        return RdmaEndpoint(*c.take(self.record, name))


_U32, _U64, _PROOF, _ENDPOINT = UInt("I"), UInt("Q"), FixedBytes(PROOF_SIZE), _Endpoint()


_M = TypeVar("_M", bound="_Message")


class _Message:
    __slots__ = ()
    TYPE: ClassVar[MsgType]
    WIRE: ClassVar[tuple[tuple[str, Any], ...]] = ()

    def __post_init__(self) -> None:
        for name, kind in self.WIRE:
            object.__setattr__(self, name, kind.check(name, getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        """Cross-field checks, for the messages that need them."""

    def payload(self) -> bytes:
        return b"".join([kind.pack(getattr(self, name)) for name, kind in self.WIRE])

    def encode(self) -> bytes:
        """The whole frame: header and payload."""
        body = self.payload()
        return HEADER.pack(MAGIC, VERSION, self.TYPE, 0, len(body)) + body

    @classmethod
    def decode(cls: type[_M], payload: Buffer) -> _M:
        """Decode this message's payload (the bytes after the frame header)."""
        c = Cursor(payload, cls.TYPE.name)
        values = [kind.unpack(c, name) for name, kind in cls.WIRE]
        c.finish()
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    WIRE = (
        ("app_id", Utf8(MAX_APP_ID_BYTES, 1)),
        ("client_nonce", FixedBytes(NONCE_SIZE)),
        ("want_rdma", BoolField()),
        ("rdma", _ENDPOINT),
    )
    app_id: str
    client_nonce: bytes
    want_rdma: bool = False
    rdma: RdmaEndpoint | None = None

    def _validate(self) -> None:
        if self.rdma is not None and not self.want_rdma:
            raise ProtocolError("HELLO carries an rdma endpoint but want_rdma is False")


@dataclass(frozen=True, slots=True)
class Challenge(_Message):
    TYPE: ClassVar[MsgType] = MsgType.CHALLENGE
    WIRE = (("server_nonce", FixedBytes(NONCE_SIZE)), ("server_proof", _PROOF))
    server_nonce: bytes
    server_proof: bytes


@dataclass(frozen=True, slots=True)
class Auth(_Message):
    TYPE: ClassVar[MsgType] = MsgType.AUTH
    WIRE = (("client_proof", _PROOF),)
    client_proof: bytes


@dataclass(frozen=True, slots=True)
class AuthOk(_Message):
    TYPE: ClassVar[MsgType] = MsgType.AUTH_OK
    WIRE = (("rdma", _ENDPOINT),)
    rdma: RdmaEndpoint | None = None


@dataclass(frozen=True, slots=True)
class FetchReq(_Message):
    """Where do the outputs of ``maps`` (map id, attempt) for ``reduce_id`` live?"""

    TYPE: ClassVar[MsgType] = MsgType.FETCH_REQ
    WIRE = (
        ("request_id", _U64),
        ("shuffle_id", _U32),
        ("reduce_id", _U32),
        ("maps", FixedList("II", MapAttempt, 1)),
    )
    request_id: int
    shuffle_id: int
    reduce_id: int
    maps: tuple[MapAttempt, ...]


@dataclass(frozen=True, slots=True)
class FetchReadReq(_Message):
    """FETCH_REQ and READ_REQ in one (TCP): ADVERTISE, then the DATA of every extent
    it names. For requests small enough to sit in the socket buffers (the reader says
    when), it saves a round trip."""

    TYPE: ClassVar[MsgType] = MsgType.FETCH_READ_REQ
    WIRE = FetchReq.WIRE
    request_id: int
    shuffle_id: int
    reduce_id: int
    maps: tuple[MapAttempt, ...]


@dataclass(frozen=True, slots=True)
class Advertise(_Message):
    """Answer to a FETCH_REQ: the committed extents (two-sided address exchange)."""

    TYPE: ClassVar[MsgType] = MsgType.ADVERTISE
    WIRE = (("request_id", _U64), ("extents", FixedList("IIIIIQI", Extent, 0)))
    request_id: int
    extents: tuple[Extent, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadReq(_Message):
    """Stream these extents back as DATA frames (TCP); each is checked by the server."""

    TYPE: ClassVar[MsgType] = MsgType.READ_REQ
    WIRE = (("request_id", _U64), ("shuffle_id", _U32),
            ("extents", FixedList("IIII", ExtentRef, 1)))
    request_id: int
    shuffle_id: int
    extents: tuple[ExtentRef, ...]


@dataclass(frozen=True, slots=True)
class Data(_Message):
    """Header of ``length`` raw bytes of extent ``index`` of READ_REQ ``request_id``.

    The raw bytes follow on the stream and are not part of the payload: the reader
    must ``recv_exact_into`` exactly ``length`` bytes before the next frame.
    """

    TYPE: ClassVar[MsgType] = MsgType.DATA
    WIRE = (("request_id", _U64), ("index", _U32), ("length", _U32))
    request_id: int
    index: int
    length: int


@dataclass(frozen=True, slots=True)
class Ack(_Message):
    """The reader is done with these blocks; the server may free transient ones."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    WIRE = (("request_id", _U64), ("block_ids", FixedList("I", None, 1)))
    request_id: int
    block_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ErrorMsg(_Message):
    """A refusal; ``request_id`` is 0 when it answers no particular request."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    WIRE = (
        ("request_id", _U64),
        ("code", EnumField("H", ErrorCode)),
        ("message", Utf8(MAX_ERROR_MESSAGE_BYTES)),
    )
    request_id: int
    code: ErrorCode
    message: str = ""

    @classmethod
    def make(cls, request_id: int, code: ErrorCode, message: str) -> ErrorMsg:
        """Like the constructor, but cuts ``message`` to the limit on a utf-8 boundary."""
        cut = message.encode("utf-8")[:MAX_ERROR_MESSAGE_BYTES]
        return cls(request_id, code, cut.decode("utf-8", "ignore"))


@dataclass(frozen=True, slots=True)
class Bye(_Message):
    TYPE: ClassVar[MsgType] = MsgType.BYE


Message = (
    Hello | Challenge | Auth | AuthOk | FetchReq | FetchReadReq | Advertise | ReadReq | Data | Ack
    | ErrorMsg | Bye
)
MESSAGE_CLASSES: dict[MsgType, type[_Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Challenge,
        Auth,
        AuthOk,
        FetchReq,
        FetchReadReq,
        Advertise,
        ReadReq,
        Data,
        Ack,
        ErrorMsg,
        Bye,
    )
}


def decode_frame(msg_type: int, payload: Buffer) -> Message:
    """Decode one payload whose header named ``msg_type``."""
    cls = MESSAGE_CLASSES.get(msg_type) if isinstance(msg_type, int) else None  # type: ignore
    if cls is None:
        raise ProtocolError(f"unknown message type {msg_type!r:.80}")
    return cls.decode(payload)


def parse_header(header: Buffer, max_payload: int = MAX_CONTROL_PAYLOAD) -> tuple[MsgType, int]:
    """Validate a frame header; return its message type and payload length."""
    if len(header) < HEADER.size:
        raise ProtocolError(f"truncated frame header: {len(header)} of {HEADER.size} bytes")
    magic, version, msg_type, flags, length = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}: not a netspark peer")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}, this side speaks {VERSION}")
    if msg_type not in MESSAGE_CLASSES:
        raise ProtocolError(f"unknown message type {msg_type}")
    if flags:
        raise ProtocolError(f"flags must be 0 in protocol version {VERSION}, got {flags:#06x}")
    if length > max_payload:
        raise ProtocolError(
            f"{MsgType(msg_type).name} payload of {length} bytes exceeds the limit of "
            f"{max_payload} bytes"
        )
    return MsgType(msg_type), length


def decode_message(frame: Buffer, max_payload: int = MAX_CONTROL_PAYLOAD) -> Message:
    """Decode exactly one whole frame (e.g. the contents of one RDMA SEND)."""
    view = memoryview(frame)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    msg_type, length = parse_header(view, max_payload)
    body = len(view) - HEADER.size
    if body != length:
        what = "truncated" if body < length else "oversized"
        raise ProtocolError(f"{what} {msg_type.name} frame: header says {length}, got {body}")
    return decode_frame(msg_type, view[HEADER.size :])


def send_message(sock: socket.socket, msg: Message, max_payload: int = MAX_CONTROL_PAYLOAD) -> None:
    """Encode and ``sendall`` one frame; refuse a payload the peer would reject."""
    frame = msg.encode()
    if len(frame) - HEADER.size > max_payload:
        raise ProtocolError(
            f"{msg.TYPE.name} payload of {len(frame) - HEADER.size} bytes exceeds the limit "
            f"of {max_payload} bytes; split it into several messages"
        )
    sock.sendall(frame)


def _recv_upto(sock: socket.socket, view: memoryview) -> int:
    """Fill ``view`` from ``sock``; return how many bytes arrived before EOF."""
    pos, size = 0, len(view)
    while pos < size:
        # MSG_WAITALL: one call per buffer in the common case, not one per segment
        n = sock.recv_into(view[pos:], size - pos, socket.MSG_WAITALL)
        if n == 0:
            break
        pos += n
    return pos


def recv_exact_into(sock: socket.socket, buf: Buffer) -> None:
    """Receive exactly ``len(buf)`` bytes into the writable buffer ``buf``."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    got = _recv_upto(sock, view)
    if got < len(view):
        raise ProtocolError(f"truncated stream: connection closed after {got} of {len(view)} bytes")


def recv_message(sock: socket.socket, max_payload: int = MAX_CONTROL_PAYLOAD) -> Message:
    """Read one frame; ConnectionClosed if the peer closed cleanly before its first byte."""
    header = bytearray(HEADER.size)
    got = _recv_upto(sock, memoryview(header))
    if got == 0:
        raise ConnectionClosed("connection closed by peer")
    if got < HEADER.size:
        raise ProtocolError(f"truncated frame header: connection closed after {got} bytes")
    msg_type, length = parse_header(header, max_payload)
    payload = bytearray(length)
    got = _recv_upto(sock, memoryview(payload))
    if got < length:
        raise ProtocolError(
            f"truncated {msg_type.name} payload: connection closed after {got} of {length} bytes"
        )
    return decode_frame(msg_type, payload)
