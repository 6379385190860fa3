"""Helpers of the RDMA tests inside the soft-RoCE VM (tests marked rxe_guest)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from netspark.transport.rdma.channel import RECV_RING, SEND_DEPTH, Channel
from netspark.transport.rdma.device import Device, QueuePair, open_device

DEVICE = "rxe0"


def device() -> Device:
    return open_device(DEVICE, 1, -1)


@contextlib.contextmanager
def channel_pair(serve_reads: bool = True) -> Iterator[tuple[Channel, Channel]]:
    """Two channels on the one rxe device, their queue pairs connected to each other."""
    dev = device()
    qa = QueuePair(dev, SEND_DEPTH, RECV_RING, serve_reads=False)
    qb = QueuePair(dev, SEND_DEPTH, RECV_RING, serve_reads=serve_reads)
    a, b = Channel(qa, "b"), Channel(qb, "a")
    try:
        qa.connect(qb.endpoint())
        qb.connect(qa.endpoint())
        yield a, b
    finally:
        a.close()
        b.close()


def rdma_conf(**overrides: str) -> dict[str, str]:
    base = {"transport": "rdma", "localShortCircuit": "false", "rdma.device": DEVICE}
    base.update(overrides)
    return base


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc.stdout
