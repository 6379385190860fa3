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
import subprocess
import sys


def start_server() -> subprocess.Popen:
    """Starts the server; returns once it listens (its address is in os.environ)."""
    from netspark.config import NetsparkConf
    from netspark.spark.addresses import executor_id, server_addresses

    settings = json.loads(os.environ["NETSPARK_CONF"])
    conf = NetsparkConf.from_spark(settings)
    coordinator = os.environ["NETSPARK_COORDINATOR"]
    executor = os.getppid()  # PySpark's daemon is a child of its executor's JVM
    where = server_addresses(conf,
                             driver_host=coordinator.rpartition(":")[0],
                             executor_pid=executor,
                             local_only=os.environ.get("NETSPARK_LOCAL_ONLY") == "1")
    print(f"netspark: this executor's server advertises {where.advertise} ({where.why}), "
          f"listening on {where.bind}", file=sys.stderr)
    args = [sys.executable, "-m", "netspark.server", "--app-id", os.environ["NETSPARK_APP_ID"],
            "--host", where.bind, "--advertise-host", where.advertise,
            "--executor-id", executor_id(executor),
            "--parent", str(os.getpid()), "--coordinator", coordinator]
    for key, value in settings.items():
        args += ["--conf", f"{key}={value}"]
    server = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=sys.stderr, text=True)
    line = server.stdout.readline()
    server.stdout.close()
    if not line:
        raise RuntimeError(f"the server exited with status {server.wait()} (see stderr)")
    info = json.loads(line)
    if "error" in info:
        server.wait()
        raise RuntimeError(info["error"])
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
