"""Two RoCE hosts inside the soft-RoCE VM: a veth pair with an rxe device on each end.

    hostA: vethA 10.214.0.1/24, rxeA  <== veth ==>  rxeB, vethB 10.214.0.2/24 :hostB

Where the guest's kernel can (rdma_rxe carries traffic between network namespaces from
Linux 7 on; the VM's second boot, NETSPARK_RXE_NETNS=1, runs such a kernel), each host
is a network namespace of its own. A host's processes are started under `ip netns
exec`; a test's own code enters a host with `Host.inside()`, which moves only the
calling thread (and the threads and processes it starts from then on), so a server
started inside hostA keeps serving from hostA while the test reads from hostB.

On the main boot's 6.1 kernel both ends stay in the guest's root namespace: there an
rxe device made in a namespace goes ACTIVE with the right GIDs but nothing it sends
arrives (its UDP socket and route lookups are in `init_net`). In one namespace the
traffic still crosses the wire: rxe routes each packet out of its own netdev, and the
receiving end accepts a packet from an address of its own host with `accept_local=1`
and `rp_filter=0`. That boot keeps the PySpark test on two hosts, whose JVMs are not
stable on the newer kernel under TCG (docs/rdma.md).

Either way the RDMA subsystem is in shared mode (`rdma system`): every namespace sees
every device, rxe0 on dummy0 included, so each side must open the device of its own
address, and a wrong pick shows; and the tests check the veths' byte counters, so a
shortcut that skipped the wire would fail them. The devices stay until the VM powers
off: `rdma link delete` waits for every process that opened the device to close it,
and netspark keeps its device open.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SYSFS_IB = Path("/sys/class/infiniband")
IPV4_MAPPED = bytes(10) + b"\xff\xff"
NAMESPACED = os.environ.get("NETSPARK_RXE_NETNS") == "1"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclasses.dataclass(frozen=True)
class Host:
    netns: str
    netdev: str
    address: str
    device: str

    @property
    def gid(self) -> bytes:
        """The RoCE v2 GID of this host's address (IPv4-mapped)."""
        return IPV4_MAPPED + socket.inet_aton(self.address)

    def gid_index(self) -> int:
        """Where that GID sits in the device's table (read from sysfs, not from netspark)."""
        port = SYSFS_IB / self.device / "ports" / "1"
        for path in (port / "gids").iterdir():
            if bytes.fromhex(path.read_text().strip().replace(":", "")) != self.gid:
                continue
            try:
                kind = (port / "gid_attrs" / "types" / path.name).read_text().strip()
            except OSError:
                continue
            if kind == "RoCE v2":
                return int(path.name)
        raise AssertionError(f"{self.device} has no RoCE v2 GID for {self.address}")

    def ip(self, *argv: str) -> list[str]:
        """An `ip` command about this host's links."""
        return ["ip", "-n", self.netns, *argv] if NAMESPACED else ["ip", *argv]

    def tx_bytes(self) -> int:
        """Bytes this host sent on its veth (the wire)."""
        out = subprocess.run(self.ip("-j", "-s", "link", "show", self.netdev),
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def sent_packets(self) -> int:
        """Packets the rxe device sent (its hw counter)."""
        path = SYSFS_IB / self.device / "ports" / "1" / "hw_counters" / "sent_pkts"
        return int(path.read_text())

    def command(self, *argv: str) -> list[str]:
        """argv run on this host."""
        return ["ip", "netns", "exec", self.netns, *argv] if NAMESPACED else list(argv)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread in this host's namespace, back where it was after."""
        if not NAMESPACED:
            yield
            return
        with open(f"/run/netns/{self.netns}") as host, \
                open("/proc/thread-self/ns/net") as home:
            _setns(host.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())


A = Host("hostA", "vethA", "10.214.0.1", "rxeA")
B = Host("hostB", "vethB", "10.214.0.2", "rxeB")
PREFIX = 24


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{proc.stdout}{proc.stderr}")


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


def _configure() -> None:
    if NAMESPACED:
        for host in (A, B):
            _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", A.netdev, "netns", A.netns, "type", "veth",
             "peer", "name", B.netdev, "netns", B.netns)
        for host in (A, B):
            _run(*host.ip("link", "set", "lo", "up"))
    else:
        _run("ip", "link", "add", A.netdev, "type", "veth", "peer", "name", B.netdev)
        for host in (A, B):  # let each end take the other's packets, from its own host
            _sysctl(f"net.ipv4.conf.{host.netdev}.accept_local", "1")
            _sysctl(f"net.ipv4.conf.{host.netdev}.rp_filter", "0")
        _sysctl("net.ipv4.conf.all.rp_filter", "0")  # the stricter of all and the device wins
    # A read answer is many packets at once; under TCG the receiving end drains
    # its backlog slowly, and the default 1000 drops bursts (RC then retransmits).
    _sysctl("net.core.netdev_max_backlog", "20000")
    # Address, then rxe, then link up (on 6.1 an rxe added to a link that is
    # already up leaves its port DOWN).
    for host in (A, B):
        _run(*host.ip("addr", "add", f"{host.address}/{PREFIX}", "dev", host.netdev))
        _run(*host.command("rdma", "link", "add", host.device, "type", "rxe",
                           "netdev", host.netdev))
    for host in (A, B):
        _run(*host.ip("link", "set", host.netdev, "up"))


def _undo() -> None:
    for argv in (["ip", "netns", "del", A.netns], ["ip", "netns", "del", B.netns],
                 ["ip", "link", "del", A.netdev]):
        subprocess.run(argv, capture_output=True, check=False)


def bring_up(timeout: float = 30) -> tuple[Host, Host]:
    """Make the two hosts (once per boot; again is a no-op) and wait for both ports
    to be ACTIVE with their addresses' GIDs in place."""
    if not SYSFS_IB.is_dir():  # never touch the namespaces of a machine without RDMA
        raise RuntimeError(f"no {SYSFS_IB}: the two rxe hosts are made inside the VM only")
    if not (SYSFS_IB / A.device).exists():
        try:
            _configure()
        except BaseException:
            _undo()
            raise
    if NAMESPACED and subprocess.run(["ip", "link", "show", A.netdev],
                                     capture_output=True, check=False).returncode == 0:
        raise RuntimeError(f"{A.netdev} is in the root namespace, not in {A.netns}")
    deadline = time.monotonic() + timeout
    for host in (A, B):
        state = SYSFS_IB / host.device / "ports" / "1" / "state"
        while True:
            try:
                if "ACTIVE" in state.read_text():
                    host.gid_index()
                    break
            except AssertionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.device} not ready: port {state.read_text().strip()}")
            time.sleep(0.1)
    return A, B
