"""A server's link to its application's coordinator (the Spark driver).

The server announces its address, then obeys: `unregister` a shuffle, `stop`.
When the link drops (the driver ended or was killed) the server stops too, so
nothing outlives the application.
"""

from __future__ import annotations

import logging
import socket
import threading

from netspark.server.local_api import recv_json, send_json
from netspark.server.server import ShuffleServer
from netspark.transport.auth import client_handshake

log = logging.getLogger(__name__)


def follow_coordinator(server: ShuffleServer, host: str, port: int,
                       stop: threading.Event) -> threading.Thread:
    """Connects now (so a wrong address fails at start), then follows on a thread."""
    sock = socket.create_connection((host, port), timeout=server.conf.network_timeout)
    client_handshake(sock, server.secret, server.app_id, timeout=server.conf.network_timeout)
    sock.settimeout(None)
    send_json(sock, {"op": "hello", "address": vars(server.address),
                     "executor": server.executor_id})

    def follow() -> None:
        try:
            while not stop.is_set():
                command = recv_json(sock)
                op = command.get("op") if isinstance(command, dict) else None
                if op == "unregister":
                    freed = server.unregister(int(command["shuffle"]))
                    log.info("netspark: shuffle %s unregistered, %d blocks freed",
                             command["shuffle"], freed)
                elif op == "stop":
                    log.info("netspark: the application ended")
                    return
                else:
                    log.warning("netspark: ignoring coordinator command %r", op)
        except (EOFError, OSError, ValueError) as err:
            log.warning("netspark: lost the coordinator (%s); stopping", err)
        finally:
            sock.close()
            stop.set()

    thread = threading.Thread(target=follow, name="netspark-coordinator", daemon=True)
    thread.start()
    return thread
