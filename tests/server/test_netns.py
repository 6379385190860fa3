"""Two hosts on one machine: a server in its own network namespace, joined to ours by
a veth pair, so fetches cross a real interface between distinct addresses."""

import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest

from netspark.buffer_manager import Arena, BlockPool
from netspark.server.worker import read_partition
from netspark.transport.fetch import Fetcher
from tests.server.conftest import APP, ROOT, SECRET, ServerProcess, conf, request

HOST_SIDE, NS_SIDE = "10.199.77.1", "10.199.77.2"  # this test's own two hosts


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespace():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    name = f"nsp{secrets.token_hex(3)}"
    outer, inner = f"{name}a", f"{name}b"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as err:
        pytest.skip(f"this machine does not allow network namespaces: {err.stderr.strip()}")
    try:
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        ip("addr", "add", f"{HOST_SIDE}/30", "dev", outer)
        ip("link", "set", outer, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{NS_SIDE}/30", "dev", inner)
        ip("netns", "exec", name, "ip", "link", "set", inner, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


WRITER = """
import sys
from tests.server.conftest import link_to_name, write_map
with link_to_name("\\0" + sys.argv[1]) as link:
    for m in range(3):
        write_map(link, 9, m, 2, [(k, ("netns", m, k)) for k in range(m, 5000, 3)])
print("committed")
"""


def test_fetch_across_a_veth_pair(namespace):
    server = ServerProcess(host=NS_SIDE, prefix=("ip", "netns", "exec", namespace))
    try:
        writer = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", textwrap.dedent(WRITER),
             server.local_name[1:]],  # an argument cannot hold the abstract name's NUL
            capture_output=True, text=True, cwd=ROOT, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert writer.stdout.strip() == "committed", writer.stderr
        with Arena.create(conf()) as arena:
            fetcher = Fetcher(BlockPool(arena), conf(), secret=SECRET, app_id=APP)
            got = list(read_partition(fetcher, [request(server.address, 9, 1, 0, 1, 2)]))
            assert fetcher.route_of(server.address) == "tcp"  # another host: no short-circuit
            assert server.address.host == NS_SIDE
            expected = [(k, ("netns", m, k)) for m in range(3)
                        for k in range(m, 5000, 3) if k % 2 == 1]
            assert got == expected
            fetcher.close()
    finally:
        assert server.stop() == 0
