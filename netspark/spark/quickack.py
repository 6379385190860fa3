"""A Python worker acknowledges its executor's writes at once (TCP_QUICKACK).

An executor's JVM talks to its Python workers over loopback TCP, and neither end sets
TCP_NODELAY. The JVM hands a task to a worker in several small writes; Nagle's
algorithm holds a small write back until the one before it is acknowledged, and the
worker, which only reads until its input has come, delays its acknowledgements by up
to 40 ms (Linux's delayed ACK). So every Python task waited ~40 ms for the end of its
input: measured on bench/latency.py's small jobs, PySpark's own "finish" time of a
task (from its set-up to its last output, in the executors' logs) had a median of
43-51 ms, 7-11 ms with quick acknowledgements, as with
`spark.python.unix.domain.socket.enabled=true` (no TCP at all); about a third of a
small task, in Spark's shuffle and netspark's alike.

Quick acknowledgement is not a lasting socket mode (Linux returns to delayed ACKs
once the worker answers), so it is turned on again as each task starts: what the JVM
writes for that task is acknowledged as it comes. Linux only; over a Unix socket
there is nothing to do.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import FunctionType, ModuleType

_TCP = (socket.AF_INET, socket.AF_INET6)


def acknowledge_at_once(sock: socket.socket) -> bool:
    """Turns on quick acknowledgements on `sock` if it is TCP on Linux; says if it did.
    Only a wait is at stake, so a socket that refuses it is left as it is."""
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is None or sock.family not in _TCP:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except OSError:
        return False
    return True


def install(daemon: ModuleType) -> None:
    """Makes PySpark's daemon (`pyspark.daemon`) acknowledge at once in every task of its
    forked workers: its loop calls the module's `worker(sock, authenticated)` per task."""
    serve: Callable[[socket.socket, bool], int] = daemon.worker
    acknowledge = acknowledge_at_once

    def worker(sock: socket.socket, authenticated: bool) -> int:
        acknowledge(sock)
        return serve(sock, authenticated)

    # PySpark names a worker's log records after the innermost function outside pyspark
    # that pyspark code called (pyspark.logger.worker_io.context_provider); between the
    # daemon and the worker, this wrapper would be that function in every record. So it
    # runs in the daemon's own globals, as the daemon's frame (it uses none of them).
    daemon.worker = FunctionType(worker.__code__, vars(daemon), "worker", None,
                                 worker.__closure__)
