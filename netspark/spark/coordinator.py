"""The driver's side of the executor servers: who they are, and telling them things.

Servers connect here when they start (authenticated with the application's
secret) and stay connected; `unregister` and `stop` are broadcast to all. A
server whose link drops stops itself, so killing the driver cleans up too.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from netspark.server.local_api import recv_json, send_json
from netspark.transport.auth import server_handshake

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, host: str, *, secret: bytes, app_id: str, timeout: float = 30.0) -> None:
        self.secret = secret
        self.app_id = app_id
        self.timeout = timeout
        self._listener = socket.create_server((host, 0))
        self.address = (host, self._listener.getsockname()[1])
        self._servers: dict[socket.socket, dict[str, Any]] = {}
        self._lock = threading.Lock()
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
            hello = recv_json(conn)
            with self._lock:
                self._servers[conn] = hello["address"]
            log.info("netspark: executor server at %s:%s joined", hello["address"]["host"],
                     hello["address"]["port"])
        except Exception as err:
            log.warning("netspark: refused a server connection: %s", err)
            conn.close()

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

    def stop(self) -> None:
        self.broadcast({"op": "stop"})
        self._listener.close()
        with self._lock:
            for conn in self._servers:
                conn.close()
            self._servers.clear()
