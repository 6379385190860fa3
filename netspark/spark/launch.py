"""Starting an executor's server, or finding the one that is already running.

One server per executor serves its Python workers and its JVM tasks alike. Whichever
side needs it first starts it: PySpark's daemon (`netspark.spark.daemon`) when a
Python task comes first, netspark's JVM shuffle manager (`python -m
netspark.spark.launch`) when a JVM shuffle does, as in a DataFrame-only job. Both
find it at the same UNIX socket path, named after the application and the
executor's JVM, which is the parent of both. The server binds that path before it
does anything else, so of two started at once one serves and the other exits
saying the path is taken; its starter then uses the first.

`python -m netspark.spark.launch` reads the same environment as the daemon
(NETSPARK_CONF, NETSPARK_SECRET, NETSPARK_APP_ID, NETSPARK_COORDINATOR,
NETSPARK_LOCAL_ONLY) and prints one JSON line: `{"local": path}` or `{"error": why}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

from netspark.server.local_api import is_served

READY_TIMEOUT = 60.0  # for a server another starter launched to start answering


class AlreadyServed(RuntimeError):
    """Another server of this executor holds the socket path."""


def socket_path(app_id: str, executor_pid: int) -> str:
    """Where the server of executor JVM `executor_pid` listens for local clients
    (short: a UNIX socket path has 108 bytes at most)."""
    return os.path.join(tempfile.gettempdir(), f"netspark-{app_id}-{executor_pid}.sock")


def remove_if_unserved(path: str) -> None:
    """Deletes the socket file of a server that is gone (stopped ones delete their own)."""
    if os.path.exists(path) and not is_served(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def find_or_start(executor_pid: int, parent: int) -> tuple[subprocess.Popen | None, str]:
    """This executor's server: (the process, if we started it; its local socket path).
    The server stops when `parent` does."""
    path = socket_path(os.environ["NETSPARK_APP_ID"], executor_pid)
    if is_served(path):
        return None, path
    try:
        return _start(executor_pid, parent, path), path
    except AlreadyServed:
        deadline = time.monotonic() + READY_TIMEOUT
        while not is_served(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server at {path} does not answer") from None
            time.sleep(0.1)
        return None, path


def _start(executor_pid: int, parent: int, path: str) -> subprocess.Popen:
    """Starts the server; returns once it listens."""
    from netspark.config import NetsparkConf
    from netspark.spark.addresses import executor_id, server_addresses

    settings = json.loads(os.environ["NETSPARK_CONF"])
    conf = NetsparkConf.from_spark(settings)
    coordinator = os.environ["NETSPARK_COORDINATOR"]
    where = server_addresses(conf,
                             driver_host=coordinator.rpartition(":")[0],
                             executor_pid=executor_pid,
                             local_only=os.environ.get("NETSPARK_LOCAL_ONLY") == "1")
    print(f"netspark: this executor's server advertises {where.advertise} ({where.why}), "
          f"listening on {where.bind}", file=sys.stderr)
    args = [sys.executable, "-m", "netspark.server", "--app-id", os.environ["NETSPARK_APP_ID"],
            "--host", where.bind, "--advertise-host", where.advertise,
            "--executor-id", executor_id(executor_pid), "--local-path", path,
            "--parent", str(parent), "--coordinator", coordinator]
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
        if info.get("already_served"):
            raise AlreadyServed(info["error"])
        raise RuntimeError(info["error"])
    return server


def main() -> int:
    """For the JVM: find or start the server of the executor that runs us."""
    executor = os.getppid()
    try:
        _, path = find_or_start(executor, parent=executor)
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return 1
    print(json.dumps({"local": path}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
