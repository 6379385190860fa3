"""One RC queue pair as a channel: control frames by SEND/RECV, data by RDMA READ.

Control: the receive ring (`RECV_RING` buffers of `SLOT` bytes) is posted before
the queue pair connects; a frame longer than a slot goes as several SENDs, the
immediate data of each saying whether more follow and returning credits (see
window.py). Frames up to the device's inline limit are sent inline (copied into
the work request: no registered send buffer, no DMA read of it); longer ones
are copied into a registered send slot.

Data: `read` posts RDMA READs (chained, in C) as the send window and the
device's read limit allow, and waits for the last one. Everything runs on the
calling thread, with the GIL released while C posts and waits; one thread uses
a channel at a time. An error completion fails the channel for good: an RC
queue pair in the error state only flushes what follows.
"""

from __future__ import annotations

import errno
import mmap
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from netspark.transport.rdma.device import QueuePair, ffi, lib
from netspark.transport.rdma.errors import (
    CompletionError,
    RdmaError,
    completion_error,
    verbs_error,
)
from netspark.transport.rdma.window import (
    Credits,
    SendWindow,
    decode_imm,
    encode_imm,
)

RECV_RING = 32  # receive buffers per queue pair (a constant of protocol version 1)
SLOT = 4096  # bytes per receive buffer and per send buffer
SEND_DEPTH = 128  # send queue entries: control SENDs and RDMA READs together
SIGNAL_EVERY = 16
SPIN_US = 0  # see ns_wait; bench/rdma.py measures what spinning buys
RECV_TAG = 1 << 63  # wr_id bit of receive work requests
_WC_BATCH = 32


class ReadOp(NamedTuple):
    """One RDMA READ: `length` bytes from (raddr, rkey) at the peer to (laddr, lkey) here."""

    laddr: int
    lkey: int
    length: int
    raddr: int
    rkey: int


def split_reads(laddr: int, lkey: int, length: int, raddr: int, rkey: int,
                max_msg: int) -> list[ReadOp]:
    """One extent as READs of at most the device's maximum message size."""
    return [ReadOp(laddr + at, lkey, min(max_msg, length - at), raddr + at, rkey)
            for at in range(0, length, max_msg)]


class PeerClosed(RdmaError):
    """The peer's TCP connection closed while we waited on RDMA: it is gone."""


class Channel:
    """Control frames and RDMA READs over one connected (or connecting) queue pair."""

    def __init__(self, qp: QueuePair, peer: str) -> None:
        self.qp = qp
        self.peer = peer
        limits = qp.device.limits
        self.window = SendWindow(qp.send_depth, SIGNAL_EVERY, limits.max_rd_atomic)
        self.credits = Credits(RECV_RING)
        self.failed: RdmaError | None = None
        self.spin_us = SPIN_US  # poll this long before sleeping on the completion channel
        self.send_completions = 0  # polled for the send queue (signaled requests only)
        self.credit_updates = 0  # credit-only messages sent
        self.inbox: deque[bytes] = deque()
        self._partial: list[bytes] = []
        self._wcs = ffi.new("ns_wc[]", _WC_BATCH)
        self._recv_mem = mmap.mmap(-1, RECV_RING * SLOT)
        self._send_mem = mmap.mmap(-1, qp.send_depth * SLOT)
        self._recv_ptr = ffi.from_buffer(self._recv_mem)
        self._send_ptr = ffi.from_buffer(self._send_mem)
        self._recv_addr = int(ffi.cast("uintptr_t", self._recv_ptr))
        self._send_addr = int(ffi.cast("uintptr_t", self._send_ptr))
        dev = qp.device
        self._recv_mr = dev.register(self._recv_addr, RECV_RING * SLOT, remote_read=False)
        self._send_mr = dev.register(self._send_addr, qp.send_depth * SLOT, remote_read=False)
        for slot in range(RECV_RING):  # before the peer may send: posted in INIT already
            self._post_recv(slot)

    # ---- control ----

    def send_frame(self, frame: bytes, timeout: float, extra_fd: int = -1) -> None:
        """Sends one whole frame (in fragments of at most SLOT bytes)."""
        self._check()
        deadline = time.monotonic() + timeout
        pieces = [frame[i:i + SLOT] for i in range(0, len(frame), SLOT)] or [b""]
        for index, piece in enumerate(pieces):
            while not (self.credits.may_send() and self.window.room > 0):
                self._wait(deadline, extra_fd, "waiting for send credits")
            self._send(piece, more=index + 1 < len(pieces))

    def _send(self, data: bytes, *, more: bool = False, credit_only: bool = False) -> None:
        imm = encode_imm(self.credits.spend(), more=more, credit_only=credit_only)
        seq, signal = self.window.post()
        flags = lib.NS_SIGNALED if signal else 0
        if len(data) <= self.qp.max_inline:
            flags |= lib.NS_INLINE
            buf = ffi.from_buffer(data)
            addr, lkey = int(ffi.cast("uintptr_t", buf)), 0
        else:  # slot seq % depth is free: the window never holds `depth` requests
            at = (seq % self.qp.send_depth) * SLOT
            self._send_mem[at:at + len(data)] = data
            addr, lkey = self._send_addr + at, self._send_mr.lkey
        err = lib.ns_post_send(self.qp.qp, seq, addr, len(data), lkey, imm, flags)
        if err:
            self._fail(verbs_error(f"posting a SEND to {self.peer}", err))

    def recv_frame(self, timeout: float, extra_fd: int = -1) -> bytes:
        """The next whole frame the peer sent."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            self._check()
            self._wait(deadline, extra_fd, "waiting for a control message")
        return self.inbox.popleft()

    def _post_recv(self, slot: int) -> None:
        err = lib.ns_post_recv(self.qp.qp, RECV_TAG | slot, self._recv_addr + slot * SLOT, SLOT,
                               self._recv_mr.lkey)
        if err:
            self._fail(verbs_error(f"posting a receive buffer for {self.peer}", err))

    def _received(self, slot: int, length: int, imm: int) -> None:
        credits, more, credit_only = decode_imm(imm)
        data = b"" if credit_only else self._recv_mem[slot * SLOT:slot * SLOT + length]
        self._post_recv(slot)
        self.credits.reposted()
        try:
            self.credits.received(credits)
        except ValueError as err:
            self._fail(RdmaError(errno.EPROTO, f"{self.peer}: {err}"))
        if credit_only:
            return
        self._partial.append(data)
        if not more:
            self.inbox.append(b"".join(self._partial))
            self._partial.clear()

    # ---- data ----

    def read(self, ops: Sequence[ReadOp], timeout: float, extra_fd: int = -1) -> None:
        """Runs every READ, as many in flight as allowed; returns when all landed."""
        self._check()
        deadline = time.monotonic() + timeout
        done, last = 0, 0
        while done < len(ops):
            count = min(self.window.read_room, len(ops) - done)
            if count > 0:
                last = self._post_reads(ops[done:done + count], done + count == len(ops))
                done += count
            else:
                self._wait(deadline, extra_fd, "waiting for RDMA READs")
        while self.window.completed < last:
            self._wait(deadline, extra_fd, "waiting for RDMA READs")

    def _post_reads(self, ops: Sequence[ReadOp], ends: bool) -> int:
        n = len(ops)
        ids, signaled = ffi.new("uint64_t[]", n), ffi.new("uint8_t[]", n)
        for i in range(n):
            ids[i], signaled[i] = self.window.post(read=True, last=ends and i == n - 1)
        laddr, lkey, length, raddr, rkey = zip(*ops, strict=True)
        posted = ffi.new("uint32_t *")
        err = lib.ns_post_reads(self.qp.qp, n, ids, ffi.new("uint64_t[]", laddr),
                                ffi.new("uint32_t[]", lkey), ffi.new("uint32_t[]", length),
                                ffi.new("uint64_t[]", raddr), ffi.new("uint32_t[]", rkey),
                                signaled, posted)
        if err:
            self._fail(verbs_error(f"posting RDMA READs to {self.peer} ({posted[0]} of {n} "
                                   "posted)", err))
        return int(ids[n - 1])

    # ---- completions ----

    def _wait(self, deadline: float, extra_fd: int, what: str) -> None:
        """progress(), where the TCP connection (extra_fd) becoming readable means the
        peer is gone: a serving peer never writes to it while RDMA is up."""
        if self.progress(deadline, extra_fd, what):
            self._fail(PeerClosed(errno.ECONNRESET, f"{self.peer} closed its connection "
                                                    f"while {what}"))

    def progress(self, deadline: float | None, extra_fd: int = -1, what: str = "") -> bool:
        """Waits for and handles completions; True if `extra_fd` became readable instead."""
        left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        got = lib.ns_wait(self.qp.cq, self.qp.channel, extra_fd, left, self.spin_us, self._wcs,
                          _WC_BATCH)
        if got == lib.NS_WAIT_FD:
            return True
        if got < 0:
            self._fail(verbs_error(f"waiting for completions from {self.peer}", got))
        if got == 0 and deadline is not None and time.monotonic() >= deadline:
            self._fail(RdmaError(errno.ETIMEDOUT, f"{self.peer}: timed out {what}"))
        for i in range(got):
            self._handle(self._wcs[i])
        if self.credits.update_due() and self.window.room > 0:
            self.credit_updates += 1
            self._send(b"", credit_only=True)
        return False

    def _handle(self, wc: Any) -> None:
        is_recv = bool(wc.wr_id & RECV_TAG)
        if wc.status != 0:
            what = "RECV" if is_recv else "READ or SEND"
            self._fail(completion_error(self.peer, what, wc.status, wc.vendor_err))
        if is_recv:
            self._received(wc.wr_id & ~RECV_TAG, wc.byte_len, wc.imm)
        else:
            self.send_completions += 1
            self.window.complete(wc.wr_id)

    def _fail(self, err: RdmaError) -> None:
        if self.failed is None:
            self.failed = err
            self.window.fail_all()
        raise err

    def _check(self) -> None:
        if self.failed is not None:
            raise self.failed if not isinstance(self.failed, CompletionError) else \
                RdmaError(errno.EIO, f"the RDMA connection to {self.peer} failed earlier: "
                                     f"{self.failed}")

    def close(self) -> None:
        """Destroys the queue pair first (it flushes), then frees its buffers."""
        self.qp.close()
        for mr in (self._recv_mr, self._send_mr):
            if mr is not None:
                lib.ibv_dereg_mr(mr)
        self._recv_mr = self._send_mr = None
