"""The field codec of netspark's wire protocol: each field kind checks (and normalizes)
a constructor value, packs it, and unpacks it from a bounds-checked cursor over one
payload. A message (netspark.transport.protocol) lists its (field name, kind) pairs in
field order; nothing here knows any message.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

Buffer = bytes | bytearray | memoryview
MAX_ENTRIES = 0xFFFF  # per list (maps, extents, block ids) in one message


class ProtocolError(ValueError):
    """A frame or field that violates the wire protocol; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_uint(name: str, value: Any, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ProtocolError(f"{name} must be an unsigned {bits}-bit integer, got {value!r:.80}")


class Cursor:
    """Bounds-checked sequential reader over one payload."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, payload: Buffer, what: str) -> None:
        view = memoryview(payload)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        self.buf = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self.pos = 0
        self.what = what

    def need(self, n: int, field: str) -> memoryview:
        have = len(self.buf) - self.pos
        if n > have:
            raise ProtocolError(
                f"truncated {self.what} payload: {field} needs {n} bytes at offset "
                f"{self.pos}, only {have} left"
            )
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def take(self, st: struct.Struct, field: str) -> tuple[Any, ...]:
        return st.unpack(self.need(st.size, field))

    def finish(self) -> None:
        if extra := len(self.buf) - self.pos:
            raise ProtocolError(f"{self.what} payload has {extra} unexpected trailing bytes")


class UInt:
    """An unsigned little-endian integer of one `struct` code ("B", "H", "I", "Q")."""

    def __init__(self, code: str) -> None:
        self.st = struct.Struct("<" + code)

    def check(self, name: str, value: Any) -> Any:
        check_uint(name, value, self.st.size * 8)
        return value

    def pack(self, value: Any) -> bytes:
        return self.st.pack(value)

    def unpack(self, c: Cursor, name: str) -> Any:
        return c.take(self.st, name)[0]


class EnumField(UInt):
    """An integer that must be a member of `enum`; decoded as that member."""

    def __init__(self, code: str, enum: type[IntEnum]) -> None:
        super().__init__(code)
        self.enum = enum

    def check(self, name: str, value: Any) -> Any:
        super().check(name, value)
        try:
            return self.enum(value)
        except ValueError:
            raise ProtocolError(f"unknown {name} {value!r:.80}") from None


class BoolField(UInt):
    """One byte, 0 or 1 and nothing else (so a payload has one encoding)."""

    def __init__(self) -> None:
        super().__init__("B")

    def check(self, name: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ProtocolError(f"{name} must be a bool, got {value!r:.80}")
        return value

    def unpack(self, c: Cursor, name: str) -> Any:
        (value,) = c.take(self.st, name)
        if value > 1:
            raise ProtocolError(f"{c.what} {name} must be 0 or 1, got {value}")
        return value == 1


class FixedBytes:
    """Exactly `size` raw bytes (nonces, proofs, GIDs)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def check(self, name: str, value: Any) -> Any:
        if (
            not isinstance(value, bytes | bytearray | memoryview)
            or len(data := bytes(value)) != self.size
        ):
            raise ProtocolError(f"{name} must be exactly {self.size} bytes, got {value!r:.80}")
        return data

    def pack(self, value: Any) -> bytes:
        return value

    def unpack(self, c: Cursor, name: str) -> Any:
        return bytes(c.need(self.size, name))


_LEN16 = struct.Struct("<H")
_COUNT = struct.Struct("<I")


class Utf8:
    """u16 length + utf-8, at most `max_bytes` (checked before the bytes are read)."""

    def __init__(self, max_bytes: int, min_bytes: int = 0) -> None:
        self.max_bytes, self.min_bytes = max_bytes, min_bytes

    def check(self, name: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise ProtocolError(f"{name} must be a str, got {type(value).__name__}")
        n = len(value.encode("utf-8"))
        if not self.min_bytes <= n <= self.max_bytes:
            raise ProtocolError(
                f"{name} is {n} bytes of utf-8, must be {self.min_bytes}..{self.max_bytes}"
            )
        return value

    def pack(self, value: Any) -> bytes:
        data = value.encode("utf-8")
        return _LEN16.pack(len(data)) + data

    def unpack(self, c: Cursor, name: str) -> Any:
        (n,) = c.take(_LEN16, f"{name} length")
        if n > self.max_bytes:
            raise ProtocolError(f"{c.what} {name} is {n} bytes, the limit is {self.max_bytes}")
        try:
            return str(c.need(n, name), "utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{c.what} {name} is not valid utf-8: {exc}") from None


class FixedList:
    """u32 count + fixed-size entries; ``entry=None`` means bare u32 values."""

    def __init__(self, code: str, entry: Any, minimum: int) -> None:
        self.st, self.entry, self.minimum = struct.Struct("<" + code), entry, minimum

    def check(self, name: str, value: Any) -> Any:
        try:
            value = tuple(value)
        except TypeError:
            raise ProtocolError(f"{name} must be a sequence, got {value!r:.80}") from None
        if not self.minimum <= len(value) <= MAX_ENTRIES:
            raise ProtocolError(
                f"{name} has {len(value)} entries, must be {self.minimum}..{MAX_ENTRIES}"
            )
        return value

    def pack(self, items: Any) -> bytes:
        try:
            if self.entry is None:
                body = struct.pack(f"<{len(items)}I", *items)
            else:
                body = b"".join([self.st.pack(*e) for e in items])
        except (struct.error, TypeError) as exc:
            raise ProtocolError(f"invalid list entry: {exc}") from None
        return _COUNT.pack(len(items)) + body

    def unpack(self, c: Cursor, name: str) -> Any:
        (count,) = c.take(_COUNT, f"{name} count")
        if not self.minimum <= count <= MAX_ENTRIES:
            raise ProtocolError(
                f"{c.what} {name} count {count} out of range {self.minimum}..{MAX_ENTRIES}"
            )
        rows = self.st.iter_unpack(c.need(count * self.st.size, f"{count} {name}"))
        if self.entry is None:
            return tuple(v for (v,) in rows)
        return tuple(map(self.entry._make, rows))
