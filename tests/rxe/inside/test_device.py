"""The soft-RoCE device inside the VM: visible, ACTIVE, moves bytes.

Also measures `ib_read_bw` with 2 MiB messages on the same boot: the
reference figure netspark's RDMA path is compared with (under TCG it is only
a relative reference).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.rxe_guest

DEVICE = "rxe0"
PORT = 1
GID_INDEX = 1  # RoCEv2, IPv4-mapped address of dummy0
GUEST_ADDR_GID_TAIL = "ffff:c0a8:6401"  # ::ffff:192.168.100.1
PERFTEST_PORT = 18515  # perftest's default TCP port for the exchange


def _run(argv: list[str], timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_device_is_listed() -> None:
    assert DEVICE in _run(["ibv_devices"]).split()


def test_port_is_active() -> None:
    out = _run(["ibv_devinfo", "-d", DEVICE])
    assert re.search(r"state:\s+PORT_ACTIVE", out), out
    assert re.search(r"link_layer:\s+Ethernet", out), out


def test_gid_index_1_is_ipv4_mapped_rocev2() -> None:
    port = Path(f"/sys/class/infiniband/{DEVICE}/ports/{PORT}")
    gid = (port / "gids" / str(GID_INDEX)).read_text().strip()
    assert gid.endswith(GUEST_ADDR_GID_TAIL), gid
    assert (port / "gid_attrs" / "types" / str(GID_INDEX)).read_text().strip() == "RoCE v2"


def test_pyverbs_rc_rdma_read_1mib() -> None:
    """One RDMA READ of 1 MiB between two RC QPs on the same device."""
    import pyverbs.enums as e
    from pyverbs.addr import AHAttr, GlobalRoute
    from pyverbs.cq import CQ
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
    from pyverbs.wr import SGE, SendWR

    size = 1 << 20
    payload = os.urandom(size)
    ctx = Context(name=DEVICE)
    try:
        pd = PD(ctx)
        cq = CQ(ctx, 8)
        remote = MR(pd, size, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ)
        local = MR(pd, size, e.IBV_ACCESS_LOCAL_WRITE)
        remote.write(payload, size)
        init = QPInitAttr(
            qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=QPCap(max_send_wr=4, max_recv_wr=4)
        )
        reader, owner = QP(pd, init), QP(pd, init)
        gid = ctx.query_gid(PORT, GID_INDEX)
        assert gid.gid.endswith(GUEST_ADDR_GID_TAIL), gid.gid

        def connect(qp: QP, peer: QP) -> None:
            attr = QPAttr()
            attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ
            attr.pkey_index = 0
            attr.port_num = PORT
            attr.path_mtu = e.IBV_MTU_1024
            attr.dest_qp_num = peer.qp_num
            attr.rq_psn = attr.sq_psn = 0
            attr.max_dest_rd_atomic = attr.max_rd_atomic = 1
            attr.min_rnr_timer = 12
            attr.timeout = 14
            attr.retry_cnt = attr.rnr_retry = 7
            route = GlobalRoute(dgid=gid, sgid_index=GID_INDEX)
            attr.ah_attr = AHAttr(gr=route, is_global=1, port_num=PORT)
            qp.to_rts(attr)

        connect(reader, owner)
        connect(owner, reader)
        wr = SendWR(
            wr_id=1, opcode=e.IBV_WR_RDMA_READ, num_sge=1, sg=[SGE(local.buf, size, local.lkey)]
        )
        wr.set_wr_rdma(remote.rkey, remote.buf)
        reader.post_send(wr)

        deadline = time.monotonic() + 60
        polled, wcs = cq.poll()
        while polled == 0:
            assert time.monotonic() < deadline, "no completion for the RDMA READ within 60 s"
            time.sleep(0.001)
            polled, wcs = cq.poll()
        (wc,) = wcs
        assert wc.status == e.IBV_WC_SUCCESS, f"completion status {wc.status}"
        assert wc.opcode == e.IBV_WC_RDMA_READ
        assert wc.wr_id == 1
        assert local.read(size, 0) == payload
    finally:
        ctx.close()


def _listening(port: int) -> bool:
    hex_port = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        # local_address is field 1, state 0A is LISTEN
        if any(hex_port in f"{f[1]} " and f[3] == "0A" for f in (line.split() for line in lines)):
            return True
    return False


def test_ib_read_bw_2mib(record_metric: Callable[[str, float], None]) -> None:
    """Reference figure: perftest's RDMA READ bandwidth, 2 MiB messages, same device."""
    args = ["ib_read_bw", "-d", DEVICE, "-x", str(GID_INDEX), "-s", "2097152", "-n", "200"]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _listening(PERFTEST_PORT):
            assert server.poll() is None, (
                f"ib_read_bw server exited early:\n{server.communicate()[0]}"
            )
            assert time.monotonic() < deadline, "ib_read_bw server did not listen within 30 s"
            time.sleep(0.05)
        client = subprocess.run(
            [*args, "127.0.0.1"], capture_output=True, text=True, timeout=240, check=False
        )
        server_out = server.communicate(timeout=60)[0]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print(client.stdout)
    assert client.returncode == 0, f"client:\n{client.stdout}{client.stderr}\nserver:\n{server_out}"
    assert server.returncode == 0, f"server:\n{server_out}"
    # " #bytes #iterations BW peak[MB/sec] BW average[MB/sec] MsgRate[Mpps]"
    m = re.search(
        r"^\s*2097152\s+200\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", client.stdout, re.MULTILINE
    )
    assert m, f"no result line in:\n{client.stdout}"
    avg_mib_s = float(m.group(2))  # perftest's MB/sec is 2**20 bytes per second
    assert avg_mib_s > 0
    record_metric("ib_read_bw_2MiB_MBps", avg_mib_s)
    record_metric("ib_read_bw_2MiB_Gbps", avg_mib_s * 2**20 * 8 / 1e9)
