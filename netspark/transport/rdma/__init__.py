"""The RDMA transport (RoCE v2): two-sided SEND/RECV control, one-sided RDMA READ data.

Optional at build time: without libibverbs-dev the package builds without
`netspark._verbs`, and `require()` (as every entry point here) raises
`RdmaUnavailable` saying so. Modules: `window` (send-queue and credit
bookkeeping, pure Python), `device` (device, port, GID, memory regions, queue
pairs), `channel` (control frames and READs over one queue pair), `peer` (the
reader's RdmaPeer, the server's RdmaService), `serve` (a server's connection loop).
"""

from __future__ import annotations

from netspark.transport.rdma.errors import (
    CompletionError,
    Flushed,
    PeerUnreachable,
    RdmaError,
    RdmaUnavailable,
    RemoteAccessError,
)

__all__ = ["CompletionError", "Flushed", "PeerUnreachable", "RdmaError", "RdmaUnavailable",
           "RemoteAccessError", "built", "require"]


def built() -> bool:
    """Whether netspark was built with RDMA support (libibverbs headers were found)."""
    from netspark.transport.rdma import device

    return device.lib is not None


def require() -> None:
    """Raises RdmaUnavailable with the reason when RDMA support was not built."""
    from netspark.transport.rdma import device

    device.require_built()
