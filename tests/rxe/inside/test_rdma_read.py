"""RDMA READ of advertised extents from a netspark server, on the VM's rxe device."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from netspark.server.worker import ExecutorLink
from netspark.transport.protocol import MapAttempt
from netspark.transport.rdma import RdmaError, RemoteAccessError
from netspark.transport.rdma.peer import RdmaPeer, arena_registrations
from tests.rxe.inside.rdma_util import device, rdma_conf
from tests.server.conftest import (
    APP,
    SECRET,
    ServerProcess,
    conf,
    link_to,
    running_server,
    write_map,
)

pytestmark = pytest.mark.rxe_guest
SMALL_BLOCKS = {"buffer.blockSize": "64k", "buffer.slabSize": "256k",
                "buffer.initialSize": "256k"}


def records(count: int, width: int = 20) -> list:
    return [(k, "v" * (width + k % 7)) for k in range(count)]


def connect(server_port: int, link: ExecutorLink) -> RdmaPeer:
    dev = device()
    return RdmaPeer("127.0.0.1", server_port, secret=SECRET, app_id=APP, timeout=20,
                    device=dev, local=arena_registrations(dev, link.arena, remote_read=False))


def committed(server, ext) -> bytes:
    return bytes(server.arena.block_view(ext.block_id)[ext.offset:ext.offset + ext.length])


def land(link: ExecutorLink, extents) -> tuple[list[int], list[memoryview]]:
    """Packs extents into leased blocks, as the Fetcher does (so they span blocks)."""
    fetcher = link.fetcher()
    blocks, _, targets = fetcher._land(extents)
    return blocks, targets


def test_read_one_extent() -> None:
    with running_server(**rdma_conf()) as server, link_to(server, **rdma_conf()) as link:
        write_map(link, 1, 0, 1, records(200))
        peer = connect(server.address.port, link)
        [ext] = peer.advertise(1, 0, [MapAttempt(0, 0)])
        assert ext.rkey and ext.addr == server.arena.block_address(ext.block_id) + ext.offset
        _, [target] = land(link, [ext])
        peer.read_into(1, [ext], [target])
        assert bytes(target) == committed(server, ext)
        peer.close()


def test_read_many_extents_spanning_blocks() -> None:
    with running_server(**rdma_conf()) as server, link_to(server, **rdma_conf()) as link:
        for m in range(3):
            write_map(link, 2, m, 4, records(6000, 60))
        peer = connect(server.address.port, link)
        extents = []
        for reduce_id in range(4):
            extents += peer.advertise(2, reduce_id, [MapAttempt(m, 0) for m in range(3)])
        assert len(extents) > 20
        assert len({e.block_id for e in extents}) > 4  # many server blocks
        blocks, targets = land(link, extents)
        assert len(blocks) > 4  # and many local ones
        peer.read_into(2, extents, targets)
        for ext, target in zip(extents, targets, strict=True):
            assert bytes(target) == committed(server, ext)
        # Extents split at a (forced) small maximum message size: many READs each,
        # far more than the reads allowed in flight and the send queue's depth.
        peer.max_msg = 512
        for target in targets:
            target[:] = bytes(len(target))
        peer.read_into(2, extents, targets)
        for ext, target in zip(extents, targets, strict=True):
            assert bytes(target) == committed(server, ext)
        peer.close()


@pytest.mark.parametrize("bad", ["rkey", "addr"])
def test_an_invalid_key_or_address_is_a_remote_access_error(bad: str) -> None:
    with running_server(**rdma_conf()) as server, link_to(server, **rdma_conf()) as link:
        write_map(link, 3, 0, 1, records(200))
        peer = connect(server.address.port, link)
        [ext] = peer.advertise(3, 0, [MapAttempt(0, 0)])
        forged = ext._replace(rkey=ext.rkey ^ 0x5A5A00) if bad == "rkey" else \
            ext._replace(addr=ext.addr + (1 << 32))
        _, [target] = land(link, [ext])
        started = time.monotonic()
        with pytest.raises(RemoteAccessError, match="remote access error"):
            peer.read_into(3, [forged], [target])
        assert time.monotonic() - started < 15
        with pytest.raises(RdmaError, match="failed earlier"):  # the QP is done for
            peer.read_into(3, [ext], [target])
        peer.abort()
        again = connect(server.address.port, link)  # the server is unharmed
        again.read_into(3, [ext], [target])
        assert bytes(target) == committed(server, ext)
        again.close()


def test_a_peer_killed_mid_read() -> None:
    settings = {**SMALL_BLOCKS, **rdma_conf(), "buffer.poolSize": "64m"}
    proc = ServerProcess(*(f"spark.netspark.{k}={v}" for k, v in settings.items()))
    try:
        writer = ExecutorLink(proc.local_name, conf(**settings), secret=SECRET, app_id=APP)
        write_map(writer, 4, 0, 1, records(40000, 200))
        with running_server(**settings) as reader_server, \
                link_to(reader_server, **settings) as link:
            peer = connect(proc.address.port, link)
            extents = peer.advertise(4, 0, [MapAttempt(0, 0)])
            _, targets = land(link, extents)
            peer.read_into(4, extents, targets)  # reads fine while it lives
            killer = threading.Timer(0.3, os.kill, (proc.pid, signal.SIGKILL))
            killer.start()
            started = time.monotonic()
            with pytest.raises(RdmaError):
                while time.monotonic() - started < 60:
                    peer.read_into(4, extents, targets)
            assert time.monotonic() - started < 60
            peer.abort()
        writer.close()
    finally:
        proc.proc.kill()
        proc.proc.wait()



def test_naive_mode_copies_through_bounce_buffers() -> None:
    """The benchmarks' baseline: same bytes, but never read from or into the arenas."""
    naive = rdma_conf(**{"rdma.naive": "true"})
    with running_server(**naive) as server, link_to(server, **naive) as link:
        write_map(link, 6, 0, 2, records(3000))
        peer = RdmaPeer("127.0.0.1", server.address.port, secret=SECRET, app_id=APP,
                        timeout=20, device=device(), naive=True,
                        local=arena_registrations(device(), link.arena, remote_read=False))
        extents = peer.advertise(6, 1, [MapAttempt(0, 0)])
        bounce = server.rdma.bounce
        assert all(bounce.address <= e.addr < bounce.address + bounce.size for e in extents)
        _, targets = land(link, extents)
        peer.read_into(6, extents, targets)
        for ext, target in zip(extents, targets, strict=True):
            assert bytes(target) == committed(server, ext)
        peer.close()
