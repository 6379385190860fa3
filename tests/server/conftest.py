import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from netspark.server.server import ShuffleServer
from netspark.server.worker import ExecutorLink
from netspark.transport.fetch import FetchRequest, PeerAddress
from netspark.transport.protocol import MapAttempt
from tests.conftest import small_conf

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"test-secret-0123456789abcdef"
APP = "app-test"


def conf(**overrides: str):
    base = {"network.timeout": "5s", "network.retryWait": "50ms"}
    base.update(overrides)
    return small_conf(**base)


@contextmanager
def running_server(**overrides: str):
    server = ShuffleServer(conf(**overrides), secret=SECRET, app_id=APP).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def link_to_name(local_name: str, **overrides: str):
    """A worker's link to a server, by its local socket name (any process's server)."""
    link = ExecutorLink(local_name, conf(**overrides), secret=SECRET, app_id=APP)
    try:
        yield link
    finally:
        link.close()


def link_to(server: ShuffleServer, **overrides: str):
    return link_to_name(server.local_name, **overrides)


def write_map(link: ExecutorLink, shuffle: int, map_id: int, partitions: int,
              records: list, attempt: int = 0) -> dict[int, int]:
    """Buckets (key, value) records by key % partitions and commits them."""
    writer = link.writer(shuffle, map_id, attempt)
    buckets: dict[int, list] = {}
    for record in records:
        buckets.setdefault(record[0] % partitions, []).append(record)
    for reduce_id, bucket in sorted(buckets.items()):
        for start in range(0, len(bucket), 500):
            writer.write(reduce_id, bucket[start:start + 500])
    return writer.commit()


def request(peer: PeerAddress, shuffle: int, reduce_id: int, *maps: int) -> FetchRequest:
    return FetchRequest(peer, shuffle, reduce_id, tuple(MapAttempt(m, 0) for m in maps))


class ServerProcess:
    """`python -m netspark.server` in a child process (optionally in a netns)."""

    def __init__(self, *conf_args: str, host: str = "127.0.0.1", prefix: tuple = (),
                 extra: tuple = ()) -> None:
        env = {**os.environ, "NETSPARK_SECRET": SECRET.decode(), "PYTHONPATH": str(ROOT)}
        args = [*prefix, sys.executable, "-m", "netspark.server", "--app-id", APP,
                "--host", host, "--log-level", "WARNING", *extra]
        for item in conf_args:
            args += ["--conf", item]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server did not start: {self.proc.stderr.read()}")
        info = json.loads(line)
        self.address = PeerAddress(**info["address"])
        self.local_name = "\0" + info["local"]
        self.pid = info["pid"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture
def server_process():
    started = []

    def start(*conf_args: str, **kwargs) -> ServerProcess:
        started.append(ServerProcess(*conf_args, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
        proc.proc.wait()
