"""Send-queue and credit bookkeeping of an RDMA queue pair, in pure Python.

Kept apart from the verbs calls so that it is tested without a device.

`SendWindow`: every work request posted to the send queue (SENDs and RDMA
READs) gets a sequence number. Only some are signaled (every `signal_every`-th
and the last of a burst), because a completion costs the device a DMA write and
the poller a CQ entry; completions on one RC send queue arrive in order, so a
signaled completion for seq s retires every request up to s. The window never
lets more than `depth` requests be outstanding (a full send queue makes
ibv_post_send fail), and since `depth >= signal_every`, a full window always
holds a signaled request whose completion will free it.

`Credits`: the peer pre-posts a ring of `ring` receive buffers; a SEND that
finds none is an RNR error. We may send only while we hold credits; each
receive buffer the peer re-posts comes back as a credit in the immediate data
of its next SEND. The last credit is kept for a credit-only message, so two
peers flooding each other cannot both end up with no way to return credits.
"""

from __future__ import annotations

from collections import deque

# Immediate data of every control SEND: credits returned in the low 16 bits.
IMM_CREDITS_MASK = 0xFFFF
IMM_MORE = 1 << 31  # more fragments of this frame follow
IMM_CREDIT_ONLY = 1 << 30  # no payload: a credit update


def encode_imm(credits: int, *, more: bool = False, credit_only: bool = False) -> int:
    if not 0 <= credits <= IMM_CREDITS_MASK:
        raise ValueError(f"cannot return {credits} credits in one message")
    return credits | (IMM_MORE if more else 0) | (IMM_CREDIT_ONLY if credit_only else 0)


def decode_imm(imm: int) -> tuple[int, bool, bool]:
    """(credits, more fragments follow, credit-only)."""
    return imm & IMM_CREDITS_MASK, bool(imm & IMM_MORE), bool(imm & IMM_CREDIT_ONLY)


class SendWindow:
    """Sequence numbers, selective signaling and occupancy of one send queue."""

    def __init__(self, depth: int, signal_every: int, read_cap: int | None = None) -> None:
        if not 1 <= signal_every <= depth:
            raise ValueError(f"signal_every={signal_every} must be in 1..depth={depth}")
        self.depth = depth
        self.signal_every = signal_every
        self.read_cap = min(read_cap or depth, depth)  # RDMA READs in flight (max_rd_atomic)
        self.posted = 0  # sequence number of the last request posted
        self.completed = 0  # every request up to this one is known complete
        self._reads: deque[int] = deque()  # sequence numbers of outstanding reads

    @property
    def outstanding(self) -> int:
        return self.posted - self.completed

    @property
    def room(self) -> int:
        return self.depth - self.outstanding

    @property
    def reads_outstanding(self) -> int:
        return len(self._reads)

    @property
    def read_room(self) -> int:
        return min(self.room, self.read_cap - len(self._reads))

    def post(self, *, last: bool = False, read: bool = False) -> tuple[int, bool]:
        """Takes the next slot: (sequence number, whether to signal it)."""
        if self.room <= 0:
            raise RuntimeError("send queue full: wait for a completion first")
        self.posted += 1
        seq = self.posted
        if read:
            self._reads.append(seq)
        # A request that fills the window (or the reads' share of it) must be signaled
        # too, or nothing would ever free it.
        signal = (last or seq % self.signal_every == 0 or self.room == 0
                  or (read and len(self._reads) >= self.read_cap))
        return seq, signal

    def complete(self, seq: int) -> None:
        """A signaled completion for `seq`: it and everything before it are done."""
        if not self.completed <= seq <= self.posted:
            raise ValueError(f"completion for {seq} outside ({self.completed}, {self.posted}]")
        self.completed = seq
        while self._reads and self._reads[0] <= seq:
            self._reads.popleft()

    def fail_all(self) -> None:
        """The queue pair failed: nothing outstanding will complete normally."""
        self.completed = self.posted
        self._reads.clear()


class Credits:
    """Our right to SEND into the peer's receive ring, and the credits we owe it."""

    def __init__(self, ring: int) -> None:
        if ring < 2:
            raise ValueError("a receive ring needs at least 2 buffers (one is kept for credits)")
        self.ring = ring
        self.available = ring  # the peer pre-posted its whole ring
        self.owed = 0  # buffers we re-posted and have not told the peer about

    def may_send(self) -> bool:
        """A message with a payload may go (one credit stays for a credit update)."""
        return self.available > 1

    def may_send_update(self) -> bool:
        return self.available > 0

    def spend(self) -> int:
        """Takes one credit for a SEND; returns the credits to piggyback on it."""
        if self.available <= 0:
            raise RuntimeError("no credit left: the peer's receive ring could overflow")
        self.available -= 1
        owed, self.owed = self.owed, 0
        return owed

    def received(self, credits: int) -> None:
        self.available += credits
        if self.available > self.ring:
            raise ValueError(f"peer returned more credits than its ring holds "
                             f"({self.available} > {self.ring})")

    def reposted(self) -> None:
        """One of our receive buffers is posted again: a credit owed to the peer."""
        self.owed += 1

    def update_due(self) -> bool:
        """Half our ring waits to be returned: send a credit-only message now."""
        return self.owed >= self.ring // 2 and self.may_send_update()
