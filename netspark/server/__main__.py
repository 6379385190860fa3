"""python -m netspark.server: run one executor's netspark server.

Prints one JSON line with its address on stdout once it listens, then logs to
stderr. SIGTERM or SIGINT stops it cleanly; so does the death of --parent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from netspark.config import ConfigError, NetsparkConf, parse_port_range
from netspark.server.control import follow_coordinator
from netspark.server.server import PathTaken, ShuffleServer
from netspark.transport.auth import AuthError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m netspark.server",
                                     description="Run one executor's netspark server.")
    parser.add_argument("--app-id", required=True, help="the Spark application id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", help="TCP port, or a range LOW-HIGH (0: any free one; "
                                       "default: spark.netspark.port)")
    parser.add_argument("--advertise-host", help="address peers should use (default: --host)")
    parser.add_argument("--secret-env", default="NETSPARK_SECRET",
                        help="environment variable holding the shared secret")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="a spark.netspark.* setting (repeatable)")
    parser.add_argument("--parent", type=int, help="exit when this process dies")
    parser.add_argument("--executor-id", default="", help="Spark's id of this executor")
    parser.add_argument("--local-path", help="also serve local clients on this UNIX "
                                             "socket path (the JVM's); exit if it is served")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="the application's coordinator; exit when it goes away")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def is_running(pid: int) -> bool:
    """False for a process that is gone or a zombie. os.kill(pid, 0) finds zombies,
    and a dead process that nobody reaps stays one (containers' inits often don't)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def watch_parent(pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if not is_running(pid):
            logging.getLogger("netspark.server").warning(
                "netspark: parent process %d is gone; stopping", pid)
            stop.set()


def exit_if_stuck(seconds: float) -> None:
    """A stop that does not finish in time must not leave the process behind."""
    def force() -> None:
        logging.getLogger("netspark.server").error(
            "netspark: the server did not stop within %.0f s; exiting now", seconds)
        os._exit(1)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret = os.environ.get(args.secret_env, "").encode()
    if not secret:
        print(f"netspark.server: ${args.secret_env} holds no secret", file=sys.stderr)
        return 2
    try:
        settings = dict(item.split("=", 1) for item in args.conf)
        conf = NetsparkConf.from_spark(settings)
        ports = conf.port if args.port is None else parse_port_range(args.port)
    except (ConfigError, ValueError) as err:
        print(f"netspark.server: {err}", file=sys.stderr)
        return 2
    try:
        server = ShuffleServer(conf, secret=secret, app_id=args.app_id, host=args.host,
                               port=ports, advertise_host=args.advertise_host,
                               executor_id=args.executor_id,
                               local_path=args.local_path).start()
    except Exception as err:  # the reason goes where the starter reads the address
        print(json.dumps({"error": f"{type(err).__name__}: {err}",
                          "already_served": isinstance(err, PathTaken)}), flush=True)
        print(f"netspark.server: cannot start: {err}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.parent:
        threading.Thread(target=watch_parent, args=(args.parent, stop), daemon=True).start()
    if args.coordinator:
        host, _, port = args.coordinator.rpartition(":")
        try:
            follow_coordinator(server, host, int(port), stop)
        except (OSError, ValueError, AuthError) as err:
            problem = f"cannot reach the driver's coordinator at {args.coordinator}: {err}"
            print(json.dumps({"error": problem}), flush=True)
            print(f"netspark.server: {problem}", file=sys.stderr)
            server.stop()
            return 1
    print(json.dumps({"address": vars(server.address), "local": server.local_name[1:],
                      "pid": os.getpid()}), flush=True)
    while not stop.wait(0.5):
        pass
    exit_if_stuck(30.0)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
