"""What can go wrong with RDMA, as Python exceptions that say what to do.

`RdmaUnavailable`: RDMA cannot be used at all here (not built, no device, port
down); `transport=auto` then uses TCP, `transport=rdma` fails with the message.
`RdmaError` (an OSError, so the Fetcher treats it as a transport failure):
a verbs call failed or a completion came back with an error status.
"""

from __future__ import annotations

import errno as _errno

# ibv_wc_status values (enum ibv_wc_status in <infiniband/verbs.h>); fixed by the
# IB spec, so they are safe to use without the compiled module.
WC_SUCCESS = 0
WC_LOC_LEN_ERR = 1
WC_LOC_PROT_ERR = 4
WC_WR_FLUSH_ERR = 5
WC_REM_INV_REQ_ERR = 9
WC_REM_ACCESS_ERR = 10
WC_REM_OP_ERR = 11
WC_RETRY_EXC_ERR = 12
WC_RNR_RETRY_EXC_ERR = 13
WC_FATAL_ERR = 19

_STATUS_NAMES = {
    WC_LOC_LEN_ERR: "local length error",
    WC_LOC_PROT_ERR: "local protection error (target memory not registered?)",
    WC_WR_FLUSH_ERR: "work request flushed (the queue pair had already failed)",
    WC_REM_INV_REQ_ERR: "remote invalid request",
    WC_REM_ACCESS_ERR: "remote access error (bad rkey, address or length)",
    WC_REM_OP_ERR: "remote operation error",
    WC_RETRY_EXC_ERR: "transport retry counter exceeded (peer gone or unreachable)",
    WC_RNR_RETRY_EXC_ERR: "receiver-not-ready retry counter exceeded",
    WC_FATAL_ERR: "fatal device error",
}


class RdmaUnavailable(RuntimeError):
    """RDMA cannot be used in this process: not built, no device, or no usable port."""


class RdmaError(OSError):
    """A verbs operation failed; the queue pair it ran on is no longer usable."""


class CompletionError(RdmaError):
    """A work completion came back with an error status."""

    def __init__(self, peer: str, what: str, status: int, vendor_err: int = 0) -> None:
        self.status = status
        self.vendor_err = vendor_err
        name = _STATUS_NAMES.get(status, f"status {status}")
        super().__init__(_errno.EIO, f"RDMA {what} with {peer} failed: {name} "
                                     f"(ibv_wc_status {status}, vendor error {vendor_err:#x})")


class RemoteAccessError(CompletionError):
    """The peer refused an RDMA READ: its rkey, address or length is not valid there."""


class PeerUnreachable(CompletionError):
    """The peer stopped answering (retries exceeded): it died or the network broke."""


class Flushed(CompletionError):
    """Work flushed because the queue pair had already failed (see the first error)."""


def completion_error(peer: str, what: str, status: int, vendor_err: int = 0) -> CompletionError:
    """The most specific CompletionError for a failed completion's status."""
    cls: type[CompletionError] = {
        WC_REM_ACCESS_ERR: RemoteAccessError,
        WC_REM_INV_REQ_ERR: RemoteAccessError,
        WC_RETRY_EXC_ERR: PeerUnreachable,
        WC_RNR_RETRY_EXC_ERR: PeerUnreachable,
        WC_WR_FLUSH_ERR: Flushed,
    }.get(status, CompletionError)
    return cls(peer, what, status, vendor_err)


def verbs_error(what: str, err: int) -> RdmaError:
    """An RdmaError for a verbs call that returned (or set) errno `err`."""
    err = abs(err) or _errno.EIO
    return RdmaError(err, f"{what}: {_errno.errorcode.get(err, err)} ({_os_strerror(err)})")


def _os_strerror(err: int) -> str:
    import os

    return os.strerror(err)
