"""The tiny records that go through Spark's own shuffle instead of the data.

One handle per (map attempt, reduce partition): where the server is, which output,
how big. A fixed binary layout (never pickle: these bytes cross the network inside
Spark's shuffle), checked on the way back in.

With the JVM part on they are not stored: netspark's JVM shuffle keeps what they say in
the map statuses and makes them again for each reducer, in this same layout
(jvm/.../PythonHandles.java), so the map's attempt is its Spark task attempt id's low half.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netspark.transport.fetch import PeerAddress

MAGIC = b"NSH1"
_FIXED = struct.Struct("<4sIIIIQIIH")  # magic, shuffle, map, attempt, reduce, bytes,
#                                        records, port, len(host)
_STR = struct.Struct("<H")


class BadHandle(ValueError):
    """Bytes that are not a netspark handle reached a reduce task."""


@dataclass(frozen=True)
class Handle:
    server: PeerAddress
    shuffle: int
    map_id: int
    attempt: int
    reduce_id: int
    size: int
    records: int

    def encode(self) -> bytes:
        host = self.server.host.encode()
        tail = b"".join(_STR.pack(len(s)) + s for s in (
            self.server.host_key.encode(), self.server.arena_path.encode()))
        return _FIXED.pack(MAGIC, self.shuffle, self.map_id, self.attempt, self.reduce_id,
                           self.size, self.records, self.server.port, len(host)) + host + tail

    @classmethod
    def decode(cls, data: bytes) -> Handle:
        try:
            magic, shuffle, map_id, attempt, reduce_id, size, records, port, n = \
                _FIXED.unpack_from(data)
            if magic != MAGIC:
                raise BadHandle(f"bad magic {magic!r}")
            pos = _FIXED.size
            strings = [data[pos:pos + n]]
            pos += n
            for _ in range(2):
                (n,) = _STR.unpack_from(data, pos)
                strings.append(data[pos + 2:pos + 2 + n])
                pos += 2 + n
            if pos != len(data) or any(len(s) == 0 for s in strings[:1]):
                raise BadHandle("wrong length")
            host, key, path = (s.decode() for s in strings)
        except (struct.error, UnicodeDecodeError) as err:
            raise BadHandle(f"not a netspark handle: {err}") from None
        return cls(PeerAddress(host, port, key, path), shuffle, map_id, attempt, reduce_id,
                   size, records)
