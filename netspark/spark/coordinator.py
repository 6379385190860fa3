"""The driver's side of the executor servers: who they are, telling them things, and
telling Spark when one's map outputs are gone.

Servers connect here when they start (authenticated with the application's
secret) and stay connected; `unregister` and `stop` are broadcast to all. A
server whose link drops stops itself, so killing the driver cleans up too.

Spark recomputes lost map outputs only when a reducer's *JVM* fetch fails, and a
netspark reducer fails in Python. So the coordinator makes the loss visible to
Spark: when a server's link drops while the application runs (the server died),
or a reducer reports a server it cannot reach and the coordinator cannot reach it
either, it calls `on_lost(executor, why)`, which has Spark replace that executor.
Spark then drops the executor's map outputs, the reducer's retry fails to fetch
their handles (a real `FetchFailedException`), and Spark reruns those map tasks.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from netspark.server.local_api import recv_json, send_json
from netspark.transport.auth import client_handshake, server_handshake

log = logging.getLogger(__name__)

OnLost = Callable[[str, str], None]  # (executor id, why): make Spark recompute its outputs
PROBE_TIMEOUT = 10.0  # for each step (connect, handshake) of the driver's probe of a server
REPLACE_WAIT = 60.0  # how long Spark may take to remove an executor it was asked to replace
MARGIN = 10.0  # for the messages around those waits
# How long a reducer's report may wait for its verdict: the probe, then Spark's removal.
VERDICT_TIMEOUT = 2 * PROBE_TIMEOUT + REPLACE_WAIT + MARGIN


class Joined(NamedTuple):
    executor: str
    unreachable: str | None  # why the driver could not reach the server when it joined


class Coordinator:
    def __init__(self, host: str, *, secret: bytes, app_id: str, timeout: float = 30.0,
                 bind_host: str | None = None, on_lost: OnLost | None = None) -> None:
        self.secret = secret
        self.app_id = app_id
        self.timeout = timeout
        self.probe_timeout = min(timeout, PROBE_TIMEOUT)
        self._on_lost = on_lost
        self._listener = socket.create_server((bind_host or host, 0))
        self.address = (host, self._listener.getsockname()[1])
        self._servers: dict[socket.socket, dict[str, Any]] = {}
        self._executors: dict[tuple[str, int], Joined] = {}  # every server ever joined
        self._lost: dict[str, threading.Event] = {}  # executor -> handled
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, name="netspark-coordinator", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._welcome, args=(conn,), daemon=True).start()

    def _welcome(self, conn: socket.socket) -> None:
        try:
            server_handshake(conn, self.secret, self.app_id, timeout=self.timeout)
            message = recv_json(conn)
            op = message.get("op") if isinstance(message, dict) else None
            if op == "unreachable":
                send_json(conn, self._unreachable(message))
                conn.close()
                return
            if op != "hello":
                raise ValueError(f"unknown first message {op!r}")
        except Exception as err:
            log.warning("netspark: refused a connection to the coordinator: %s", err)
            conn.close()
            return
        address, executor = message["address"], str(message.get("executor", ""))
        where = (address["host"], int(address["port"]))
        problem = self._probe(*where)
        with self._lock:
            self._servers[conn] = {**address, "executor": executor}
            self._executors[where] = Joined(executor, problem)
        log.info("netspark: executor server at %s:%s joined (executor %s)", *where,
                 executor or "?")
        if problem is not None:
            log.warning("netspark: the driver cannot reach executor %s's server at %s:%s (%s); "
                        "unless the executors share a network the driver is not on, other "
                        "hosts cannot either: check spark.netspark.advertiseAddress", executor,
                        *where, problem)
        self._follow(conn, executor)

    def _follow(self, conn: socket.socket, executor: str) -> None:
        """Reads a server's link until it ends: an end while the app runs is a loss."""
        try:
            while True:
                recv_json(conn)  # servers say nothing after hello; this waits for the end
        except Exception:  # EOF, reset, garbage: the link is over either way
            pass
        with self._lock:
            known = self._servers.pop(conn, None)
        conn.close()
        if known is not None and not self._stopping.is_set():
            self.declare_lost(executor, f"its netspark server at {known['host']}:"
                                        f"{known['port']} is gone (its link to the driver ended)")

    def _unreachable(self, report: dict[str, Any]) -> dict[str, Any]:
        """A reducer cannot reach a server: confirm, then make Spark recompute."""
        host, port = str(report["host"]), int(report["port"])
        with self._lock:
            joined = self._executors.get((host, port))
        if joined is None:
            return {"lost": False, "message": f"no netspark server at {host}:{port} ever "
                                              "joined this application"}
        executor = joined.executor
        if joined.unreachable is not None:  # then the driver's view tells nothing
            return {"lost": False, "message": f"the driver could not reach executor "
                                              f"{executor}'s server when it joined either "
                                              f"({joined.unreachable})"}
        problem = self._probe(host, port)
        if problem is None:
            return {"lost": False, "message": f"the driver reaches executor {executor}'s "
                                              f"server at {host}:{port}: the reporting "
                                              "host's own network is at fault"}
        self.declare_lost(executor, f"its netspark server at {host}:{port} cannot be reached "
                                    f"(from a reducer: {report.get('error')}; from the driver: "
                                    f"{problem})")
        return {"lost": True, "message": f"Spark was asked to replace executor {executor} and "
                                         "recompute its map outputs"}

    def _probe(self, host: str, port: int) -> str | None:
        """None if the server at host:port answers the handshake, else what went wrong."""
        try:
            with socket.create_connection((host, port), timeout=self.probe_timeout) as sock:
                client_handshake(sock, self.secret, self.app_id, timeout=self.probe_timeout)
            return None
        except Exception as err:
            return f"{type(err).__name__}: {err}"

    def declare_lost(self, executor: str, why: str) -> None:
        """Tells Spark (once per executor) that `executor`'s map outputs are gone; returns
        when that is done, also to callers that arrive while another one does it."""
        with self._lock:
            done = self._lost.get(executor)
            first = done is None
            if first:
                done = self._lost[executor] = threading.Event()
        if not first:
            done.wait(REPLACE_WAIT + MARGIN)
            return
        try:
            log.warning("netspark: executor %s: %s", executor, why)
            if self._on_lost is not None and not self._stopping.is_set():
                self._on_lost(executor, why)
        except Exception as err:
            log.error("netspark: could not tell Spark that executor %s is lost: %s",
                      executor, err)
        finally:
            done.set()

    @property
    def lost(self) -> list[str]:
        """The executors Spark was told are lost, in no order."""
        with self._lock:
            return list(self._lost)

    @property
    def servers(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._servers.values())

    def broadcast(self, command: dict[str, Any]) -> None:
        with self._lock:
            for conn in list(self._servers):
                try:
                    send_json(conn, command)
                except OSError:
                    conn.close()
                    del self._servers[conn]

    def unregister(self, shuffle: int) -> None:
        self.broadcast({"op": "unregister", "shuffle": shuffle})

    def stopping(self) -> None:
        """The application is ending: servers that go now are not lost."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        self.broadcast({"op": "stop"})
        self._listener.close()
        with self._lock:
            for conn in self._servers:
                conn.close()
            self._servers.clear()


def report_unreachable(coordinator: str, *, secret: bytes, app_id: str, host: str, port: int,
                       error: str, timeout: float) -> dict[str, Any]:
    """A reducer's report that the server at host:port cannot be reached; returns the
    coordinator's verdict ({"lost": bool, "message": str}) once Spark has been told."""
    chost, _, cport = coordinator.rpartition(":")
    with socket.create_connection((chost, int(cport)), timeout=timeout) as sock:
        client_handshake(sock, secret, app_id, timeout=timeout)
        send_json(sock, {"op": "unreachable", "host": host, "port": port, "error": error})
        sock.settimeout(VERDICT_TIMEOUT)  # the coordinator probes, then waits for Spark
        return recv_json(sock)
