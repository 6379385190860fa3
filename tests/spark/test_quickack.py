"""Python workers acknowledge their tasks' input at once (netspark/spark/quickack.py).

Over real loopback sockets, the JVM's side played by a client that, as PySpark's JVM
does, neither sets TCP_NODELAY nor sends a task in one write."""

import json
import socket
import statistics
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from netspark.spark import quickack

linux_only = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
TASK = (b"c" * 100, b"d" * 100)  # a task's command, then its data: two small writes


def daemon_module():
    """A stand-in for pyspark.daemon: its `worker` serves one task (reads its input,
    answers), as PySpark's daemon calls `worker(sock, authenticated)` once a task."""

    def worker(sock: socket.socket, authenticated: bool) -> int:
        wanted = sum(map(len, TASK))
        got = b""
        while len(got) < wanted:
            chunk = sock.recv(wanted - len(got))
            if not chunk:
                return 1
            got += chunk
        sock.sendall(b"k")
        return 0

    return types.SimpleNamespace(worker=worker)


def median_task_ms(daemon, tasks: int = 25) -> float:
    """The median time of a task, from the JVM's first write to the worker's answer."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while daemon.worker(conn, True) == 0:
                pass

    threading.Thread(target=serve, daemon=True).start()
    times = []
    with socket.create_connection(listener.getsockname()) as jvm:
        for _ in range(tasks):
            start = time.perf_counter()
            for part in TASK:
                jvm.send(part)
            assert jvm.recv(1) == b"k"
            times.append(time.perf_counter() - start)
    listener.close()
    return 1000 * statistics.median(times[5:])  # past the connection's first quick ACKs


@linux_only
def test_a_task_waits_for_the_delayed_ack_without_it():
    """The wait the module removes, shown (Linux delays an ACK by 40 ms at least)."""
    assert median_task_ms(daemon_module()) > 30


@linux_only
def test_installed_the_task_does_not_wait():
    daemon = daemon_module()
    quickack.install(daemon)
    assert median_task_ms(daemon) < 10


def in_module(function, module: str):
    """`function` as if defined in `module` (what PySpark's log context looks at)."""
    return types.FunctionType(function.__code__, {"__name__": module}, function.__name__, None,
                              function.__closure__)


def test_pyspark_still_names_log_records_after_the_user_s_function(monkeypatch):
    """PySpark's worker logging names a record after the innermost non-pyspark function
    that pyspark code called: the wrapper, between the daemon's loop and the worker, must
    count as the daemon's own frame (PySpark's test_apply_in_pandas_with_logging caught
    records named 'worker')."""
    from pyspark import daemon as pyspark_daemon
    from pyspark.logger.worker_io import context_provider

    def user_function() -> dict[str, str]:
        return context_provider()

    def serve(sock: socket.socket, authenticated: bool) -> dict[str, str]:
        return user_function()  # pyspark.worker calls the user's function

    def manager(sock: socket.socket) -> dict[str, str]:
        return pyspark_daemon.worker(sock, True)  # the daemon's loop calls worker()

    monkeypatch.setattr(pyspark_daemon, "worker", in_module(serve, "pyspark.worker"))
    quickack.install(pyspark_daemon)
    with socket.socket() as sock:
        assert in_module(manager, "pyspark.daemon")(sock) == {"func_name": "user_function"}


@linux_only
def test_only_tcp_sockets_are_touched():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert quickack.acknowledge_at_once(tcp)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert not quickack.acknowledge_at_once(unix)
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.close()
    assert not quickack.acknowledge_at_once(closed)  # the task goes on


def test_the_daemon_installs_it_unless_turned_off(monkeypatch):
    """netspark's daemon wraps pyspark.daemon's worker as the conf says (its manager loop,
    which takes the process over, and the server's start are left out here)."""
    from pyspark import daemon as pyspark_daemon

    from netspark.spark import daemon, launch, memory

    original = pyspark_daemon.worker
    monkeypatch.setattr(pyspark_daemon, "manager", lambda: None)
    monkeypatch.setattr(memory, "install", lambda: None)
    monkeypatch.setattr(launch, "find_or_start", lambda *args, **kwargs: (None, "unused"))
    monkeypatch.setenv("NETSPARK_SERVER", "unused")  # main() sets it; restored after
    for setting, wrapped in (({}, True), ({"spark.netspark.worker.quickAck": "false"}, False)):
        monkeypatch.setattr(pyspark_daemon, "worker", original)
        monkeypatch.setenv("NETSPARK_CONF", json.dumps(setting))
        daemon.main()
        assert (pyspark_daemon.worker is not original) == wrapped, setting


@pytest.mark.slow
def test_on_a_cluster_every_worker_acknowledges_at_once():
    from tests.spark.conftest import spark_context

    def installed(_: object) -> list[str]:
        return [Path(sys.modules["pyspark.daemon"].worker.__code__.co_filename).name]

    with spark_context(**{"netspark.enabled": "true"}) as sc:
        assert set(sc.parallelize(range(8), 8).mapPartitions(installed).collect()) == \
            {"quickack.py"}
