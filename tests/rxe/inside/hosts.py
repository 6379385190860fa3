"""Two RoCE "hosts" inside the soft-RoCE VM: a veth pair with an rxe device on each end.

    vethA 10.214.0.1/24  rxeA  <== veth wire ==>  rxeB  vethB 10.214.0.2/24

Both ends stay in the guest's root network namespace. On the 6.1 kernel rdma_rxe
only works there: its UDP socket (port 4791) and its route lookups are in
`init_net`, so an rxe device on a netdev moved into another namespace shows ACTIVE
ports and the right GIDs (they follow the netdev's addresses), but nothing it sends
arrives (`ib_read_bw` between two namespaces fails with WC status 2, local QP
operation error). In one namespace the traffic still crosses the wire: rxe routes
each packet with the output interface set to its own netdev, which skips the local
route to the other end's address (whose nexthop is the other netdev) and takes the
/24 through the veth; the receiving end accepts a packet from an address of its own
host only with `accept_local=1` and `rp_filter=0`. The tests check the veth's byte
counters, so a silent shortcut through rxe's loopback would fail them.

The devices stay until the VM powers off: `rdma link delete` waits for every process
that opened the device to close it, and netspark keeps its device open.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from pathlib import Path

SYSFS_IB = Path("/sys/class/infiniband")
SYSFS_NET = Path("/sys/class/net")
IPV4_MAPPED = bytes(10) + b"\xff\xff"


@dataclasses.dataclass(frozen=True)
class Host:
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

    def tx_bytes(self) -> int:
        return int((SYSFS_NET / self.netdev / "statistics" / "tx_bytes").read_text())

    def sent_packets(self) -> int:
        """Packets the rxe device sent (its hw counter)."""
        path = SYSFS_IB / self.device / "ports" / "1" / "hw_counters" / "sent_pkts"
        return int(path.read_text())


A = Host("vethA", "10.214.0.1", "rxeA")
B = Host("vethB", "10.214.0.2", "rxeB")
PREFIX = 24


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{proc.stdout}{proc.stderr}")


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


def _configure() -> None:
    for host in (A, B):
        _run("ip", "addr", "add", f"{host.address}/{PREFIX}", "dev", host.netdev)
        _sysctl(f"net.ipv4.conf.{host.netdev}.accept_local", "1")
        _sysctl(f"net.ipv4.conf.{host.netdev}.rp_filter", "0")
    _sysctl("net.ipv4.conf.all.rp_filter", "0")  # the stricter of all and the device wins
    # A read answer is many packets at once; under TCG the receiving end drains
    # its backlog slowly, and the default 1000 drops bursts (RC then retransmits).
    _sysctl("net.core.netdev_max_backlog", "20000")
    # Address, then rxe, then link up (on 6.1 an rxe added to a link that is
    # already up leaves its port DOWN).
    for host in (A, B):
        _run("rdma", "link", "add", host.device, "type", "rxe", "netdev", host.netdev)
    for host in (A, B):
        _run("ip", "link", "set", host.netdev, "up")


def bring_up(timeout: float = 30) -> tuple[Host, Host]:
    """Make the pair (once per boot; again is a no-op) and wait for both ports to be
    ACTIVE with their addresses' GIDs in place."""
    if not SYSFS_IB.is_dir():  # never touch the links of a machine without RDMA
        raise RuntimeError(f"no {SYSFS_IB}: the two rxe hosts are made inside the VM only")
    if not (SYSFS_IB / A.device).exists():
        _run("ip", "link", "add", A.netdev, "type", "veth", "peer", "name", B.netdev)
        try:
            _configure()
        except BaseException:
            subprocess.run(["ip", "link", "del", A.netdev], capture_output=True, check=False)
            raise
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
