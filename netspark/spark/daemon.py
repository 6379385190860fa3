"""The executors' Python daemon when netspark is on (`spark.python.daemon.module`).

It starts this executor's netspark server as a child process (or finds the one
the JVM side started: `netspark.spark.launch`), tells the workers where it is
through the environment they inherit when PySpark's daemon forks them, and hands
over to `pyspark.daemon`. It must print nothing to stdout (the
JVM reads the daemon's port there) and start no thread before PySpark forks.
Whatever goes wrong with the server, the daemon still runs PySpark's loop; the
workers then report the server's error when a netspark shuffle needs it. Before
the workers fork, PySpark's spill measure is pointed at their private memory
(`netspark.spark.memory`): the shared arena pages they touch are not theirs; and
the workers are made to acknowledge their tasks' input at once
(`netspark.spark.quickack`), which spares every Python task a 40 ms wait.
"""

from __future__ import annotations

import json
import os
import sys

from netspark.config import NetsparkConf


def main() -> None:
    from pyspark import daemon

    from netspark.spark import launch, memory, quickack

    memory.install()  # before the workers fork: they inherit it
    if _conf().worker_quickAck:
        quickack.install(daemon)
    server, path = None, None
    try:
        executor = os.getppid()  # PySpark's daemon is a child of its executor's JVM
        server, path = launch.find_or_start(executor, parent=os.getpid())
        os.environ["NETSPARK_SERVER"] = path
    except Exception as err:
        os.environ["NETSPARK_SERVER_ERROR"] = str(err) or type(err).__name__
        print(f"netspark: no server on this executor: {err}", file=sys.stderr)
    try:
        daemon.manager()
    finally:
        if server is not None:
            if server.poll() is None:
                server.terminate()
            launch.remove_if_unserved(path)  # a killed server leaves its socket file


def _conf() -> NetsparkConf:
    """The application's settings, checked on the driver before they were passed on."""
    return NetsparkConf.from_spark(json.loads(os.environ.get("NETSPARK_CONF", "{}")))


if __name__ == "__main__":
    main()
