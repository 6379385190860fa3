"""Shuffles between netspark servers over RDMA, fallback, and a pyverbs reader."""

from __future__ import annotations

import logging
import socket

import pytest

from netspark.server.worker import read_partition
from netspark.transport.auth import client_handshake
from netspark.transport.fetch import FetchFailed
from netspark.transport.protocol import (
    Advertise,
    Bye,
    FetchReq,
    MapAttempt,
    RdmaEndpoint,
    recv_message,
    send_message,
)
from tests.rxe.inside.rdma_util import DEVICE, rdma_conf
from tests.server.conftest import APP, SECRET, link_to, request, running_server, write_map

pytestmark = pytest.mark.rxe_guest
PARTS = 3


def records_of(map_id: int, count: int = 3000) -> list:
    return [(k, (map_id, k, "v" * (k % 13))) for k in range(map_id, map_id + count)]


def expected(maps: list[int], reduce_id: int) -> list:
    return [r for m in maps for r in records_of(m) if r[0] % PARTS == reduce_id]


def test_a_shuffle_between_two_servers_over_rdma(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netspark")
    with running_server(**rdma_conf()) as a, running_server(**rdma_conf()) as b:
        placement = {a: [0, 1], b: [2, 3, 4]}
        for server, maps in placement.items():
            with link_to(server, **rdma_conf()) as link:
                for m in maps:
                    write_map(link, 7, m, PARTS, records_of(m))
        with link_to(a, **rdma_conf()) as reader:
            fetcher = reader.fetcher()
            for reduce_id in range(PARTS):
                reqs = [request(s.address, 7, reduce_id, *m) for s, m in placement.items()]
                landed_via = []
                got = []
                for landed in fetcher.fetch_all(reqs):
                    landed_via.append(landed.via)
                    got += list(read_partition_one(landed))
                assert got == expected([0, 1, 2, 3, 4], reduce_id)
                assert set(landed_via) == {"rdma"}
            assert set(fetcher.routes()) == {"rdma"}
            fetcher.close()
            reader.pool.flush()
            assert reader.arena.stats().leased_blocks == sum(
                len(o.blocks) for o in a.registry.outputs())  # fetched blocks all came back
    routes = [r.getMessage() for r in caplog.records if "fetching from" in r.getMessage()]
    assert len(routes) == 2 and all("over rdma" in r and "RDMA device rxe0" in r
                                    for r in routes), routes


def read_partition_one(landed):
    from netspark.serde import BlockInputStream, read_records

    stream = BlockInputStream(landed.arena, landed.extents, landed.release, checksum=True)
    try:
        yield from read_records(stream)
    finally:
        stream.close()


def test_auto_uses_tcp_with_a_peer_without_rdma(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netspark")
    with running_server(**rdma_conf()) as a, running_server(transport="tcp") as b:
        with link_to(b, transport="tcp") as link:
            write_map(link, 1, 0, PARTS, records_of(0))
        with link_to(a, **rdma_conf(transport="auto")) as reader:
            fetcher = reader.fetcher()
            got = list(read_partition(fetcher, [request(b.address, 1, 0, 0)]))
            assert got == expected([0], 0)
            assert fetcher.route_of(b.address) == "tcp"
            fetcher.close()
        assert any("over tcp" in r.getMessage() and "does not offer RDMA" in r.getMessage()
                   for r in caplog.records)
        with link_to(a, **rdma_conf(transport="rdma")) as reader, \
                pytest.raises(FetchFailed, match="transport=rdma, but RDMA to .* not possible"):
            list(read_partition(reader.fetcher(), [request(b.address, 1, 0, 0)]))


def test_a_pyverbs_client_reads_what_a_netspark_server_advertised() -> None:
    """Interoperability: rdma-core's own Python binding, not netspark's, does the READ."""
    import pyverbs.enums as e
    from pyverbs.addr import GID, AHAttr, GlobalRoute
    from pyverbs.cq import CQ
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
    from pyverbs.wr import SGE, SendWR

    with running_server(**rdma_conf()) as server, link_to(server, **rdma_conf()) as link:
        write_map(link, 5, 0, 2, records_of(0, 8000))
        ctx = Context(name=DEVICE)
        try:
            pd, cq = PD(ctx), CQ(ctx, 64)
            qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                                   cap=QPCap(max_send_wr=64, max_recv_wr=4)))
            gid_index = 1
            gid = ctx.query_gid(1, gid_index)
            mine = RdmaEndpoint(qp.qp_num, 4242, bytes.fromhex(gid.gid.replace(":", "")), 1024)
            sock = socket.create_connection(("127.0.0.1", server.address.port), timeout=20)
            theirs = client_handshake(sock, SECRET, APP, rdma=mine).rdma
            assert theirs is not None
            attr = QPAttr(qp_state=e.IBV_QPS_RTR)
            attr.path_mtu, attr.dest_qp_num, attr.rq_psn = e.IBV_MTU_1024, theirs.qpn, theirs.psn
            attr.sq_psn, attr.max_rd_atomic, attr.max_dest_rd_atomic = 4242, 1, 1
            attr.timeout, attr.retry_cnt, attr.rnr_retry, attr.min_rnr_timer = 14, 7, 7, 12
            dgid = GID(":".join(theirs.gid[i:i + 2].hex() for i in range(0, 16, 2)))
            attr.ah_attr = AHAttr(gr=GlobalRoute(dgid=dgid, sgid_index=gid_index),
                                  is_global=1, port_num=1)
            qp.to_rts(attr)
            # Ask on TCP (the same authenticated connection): the answer carries
            # the server arena's addresses and rkeys all the same.
            extents = []
            for reduce_id in range(2):
                send_message(sock, FetchReq(reduce_id + 1, 5, reduce_id, (MapAttempt(0, 0),)))
                reply = recv_message(sock)
                assert isinstance(reply, Advertise), reply
                extents += reply.extents
            assert len(extents) > 2
            total = sum(x.length for x in extents)
            mr = MR(pd, total, e.IBV_ACCESS_LOCAL_WRITE)
            at = 0
            for i, x in enumerate(extents):
                wr = SendWR(wr_id=i, opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                            sg=[SGE(mr.buf + at, x.length, mr.lkey)],
                            send_flags=e.IBV_SEND_SIGNALED)
                wr.set_wr_rdma(x.rkey, x.addr)
                qp.post_send(wr)
                at += x.length
            done = 0
            while done < len(extents):
                n, wcs = cq.poll(num_entries=16)
                for wc in wcs[:n]:
                    assert wc.status == e.IBV_WC_SUCCESS, wc
                done += n
            at = 0
            for x in extents:
                want = bytes(server.arena.block_view(x.block_id)[x.offset:x.offset + x.length])
                assert mr.read(x.length, at) == want
                at += x.length
            send_message(sock, Bye())
            sock.close()
        finally:
            ctx.close()
