"""The executors' Python daemon when netspark is on (`spark.python.daemon.module`).

It starts this executor's netspark server as a child process, tells the workers
where it is through the environment they inherit when PySpark's daemon forks
them, and hands over to `pyspark.daemon`. It must print nothing to stdout (the
JVM reads the daemon's port there) and start no thread before PySpark forks.
Whatever goes wrong with the server, the daemon still runs PySpark's loop; the
workers then report the server's error when a netspark shuffle needs it. Before
the workers fork, PySpark's spill measure is pointed at their private memory
(`netspark.spark.memory`): the shared arena pages they touch are not theirs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _advertised_host() -> str:
    host = os.environ.get("NETSPARK_HOST") or os.environ.get("SPARK_LOCAL_IP")
    if host:
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def start_server() -> subprocess.Popen:
    """Starts the server; returns once it listens (its address is in os.environ)."""
    conf = json.loads(os.environ["NETSPARK_CONF"])
    args = [sys.executable, "-m", "netspark.server", "--app-id", os.environ["NETSPARK_APP_ID"],
            "--host", _advertised_host(), "--parent", str(os.getpid()),
            "--coordinator", os.environ["NETSPARK_COORDINATOR"]]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    server = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=sys.stderr, text=True)
    line = server.stdout.readline()
    server.stdout.close()
    if not line:
        raise RuntimeError(f"the server exited with status {server.wait()} (see stderr)")
    info = json.loads(line)
    os.environ["NETSPARK_SERVER"] = info["local"]  # abstract name, without its NUL
    return server


def main() -> None:
    from netspark.spark import memory

    memory.install()  # before the workers fork: they inherit it
    server = None
    try:
        server = start_server()
    except Exception as err:
        os.environ["NETSPARK_SERVER_ERROR"] = str(err) or type(err).__name__
        print(f"netspark: no server on this executor: {err}", file=sys.stderr)
    from pyspark import daemon

    try:
        daemon.manager()
    finally:
        if server is not None and server.poll() is None:
            server.terminate()


if __name__ == "__main__":
    main()
