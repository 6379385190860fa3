import dataclasses
import errno
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from netspark.serde import BlockInputStream, read_records
from netspark.server.local_api import ServerClient, ServerError
from netspark.server.server import ShuffleServer
from netspark.server.worker import ExecutorLink, read_partition
from netspark.transport import protocol
from netspark.transport.fetch import Fetcher, FetchFailed
from netspark.transport.protocol import ErrorCode, MapAttempt
from netspark.transport.tcp import RemoteError, TcpPeer
from tests.server.conftest import (
    APP,
    SECRET,
    conf,
    link_to,
    link_to_name,
    request,
    running_server,
    write_map,
)

PARTS = 3


def records_of(map_id: int, count: int = 3000) -> list:
    return [(k, (map_id, k, "v" * (k % 13))) for k in range(map_id, map_id + count)]


def expected_partition(maps: list[int], reduce_id: int) -> list:
    return [r for m in maps for r in records_of(m) if r[0] % PARTS == reduce_id]


@pytest.mark.parametrize("short_circuit", ["false", "true"])
def test_three_servers_serve_a_shuffle(short_circuit):
    with running_server() as a, running_server() as b, running_server() as c:
        placement = {a: [0, 1], b: [2], c: [3, 4]}
        for server, maps in placement.items():
            with link_to(server) as link:
                for m in maps:
                    write_map(link, 7, m, PARTS, records_of(m))
        with link_to(a, localShortCircuit=short_circuit) as reader:
            fetcher = reader.fetcher()
            for reduce_id in range(PARTS):
                reqs = [request(s.address, 7, reduce_id, *maps) for s, maps in placement.items()]
                got = list(read_partition(fetcher, reqs))
                assert got == expected_partition([0, 1, 2, 3, 4], reduce_id)
            routes = set(fetcher.routes())
            assert routes == ({"local"} if short_circuit == "true" else {"tcp"})
            fetcher.close()
            reader.pool.flush()
            assert reader.arena.stats().leased_blocks == sum(
                len(o.blocks) for o in a.registry.outputs())  # fetched blocks all came back


def test_short_circuit_reads_in_place(tmp_path):
    with running_server() as a, link_to(a) as link:
        write_map(link, 1, 0, 1, records_of(0))
        fetcher = link.fetcher()
        [landed] = list(fetcher.fetch_all([request(a.address, 1, 0, 0)]))
        committed = a.registry.partition(1, 0, 0, 0).extents
        assert landed.via == "local"
        assert [(e.block_id, e.offset) for e in landed.extents] == \
            [(e.block_id, e.offset) for e in committed]  # no copy: the committed blocks
        fetcher.close()


def test_unregister_frees_the_blocks():
    with running_server() as a, link_to(a) as link:
        write_map(link, 3, 0, PARTS, records_of(0))
        link.pool.flush()
        held = a.arena.stats().leased_blocks
        assert held > 0
        assert link.unregister(3) == held
        assert a.arena.stats().leased_blocks == 0
        with pytest.raises(FetchFailed, match="NOT_COMMITTED"):
            list(read_partition(link.fetcher(), [request(a.address, 3, 0, 0)]))


def test_a_commit_of_blocks_not_held_is_refused():
    with running_server() as a, link_to(a) as link:
        with pytest.raises(ServerError, match="not all are held"):
            link.client.call("commit", shuffle=1, map=0, attempt=0, blocks=[5],
                             partitions={"0": [1, [[5, 0, 10, 0]]]})
        writer = link.writer(1, 0, 0)
        writer.write(0, [1, 2, 3])
        writer.stream.close()
        with pytest.raises(ServerError, match="outside its block"):
            link.client.call("commit", shuffle=1, map=0, attempt=0,
                             blocks=writer.stream.blocks,
                             partitions={"0": [3, [[writer.stream.blocks[0], 0, 1 << 30, 0]]]})
        writer.abort()  # the refused attempt's blocks came back to it, and now go
        link.pool.flush()
        assert a.arena.stats().leased_blocks == 0


def test_a_commit_can_lease_the_writers_next_block_and_bad_counts_are_refused():
    with running_server() as a, link_to(a) as link:
        [block] = link.client.call("lease", count=1)["blocks"]
        reply = link.client.call("commit", shuffle=1, map=0, attempt=0, blocks=[block],
                                 partitions={"0": [1, [[block, 0, 1, 0]]]}, lease=1)
        [spare] = reply["blocks"]  # the JVM writer's next task starts without a round trip
        assert spare != block and a.arena.stats().leased_blocks == 2
        for bad in (-1, "1", 1 << 40):
            with pytest.raises(ServerError, match="lease of"):
                link.client.call("lease", count=bad)
        link.client.call("release", blocks=[spare])
        assert a.arena.stats().leased_blocks == 1  # the committed output's block


def test_an_attempt_committed_twice_is_refused():
    with running_server() as a, link_to(a) as link:
        write_map(link, 1, 0, 1, [(0, 0)])
        with pytest.raises(ServerError, match="already committed"):
            write_map(link, 1, 0, 1, [(0, 0)])
        link.pool.flush()
        assert a.arena.stats().leased_blocks == 1  # only the first attempt's block


def test_only_committed_extents_can_be_read():
    with running_server() as a, link_to(a) as link:
        write_map(link, 2, 0, 1, records_of(0))
        peer = TcpPeer("127.0.0.1", a.address.port, secret=SECRET, app_id=APP, timeout=5)
        [ext, *_] = peer.advertise(2, 0, [MapAttempt(0, 0)])
        target = bytearray(ext.length)
        peer.read_into(2, [ext], [memoryview(target)])
        assert bytes(target) == bytes(a.arena.block_view(ext.block_id)[
            ext.offset:ext.offset + ext.length])
        forged = [
            ext._replace(length=ext.length + 1),  # past the extent
            ext._replace(offset=ext.offset + 1),
            ext._replace(block_id=ext.block_id + 1),  # a block never committed
            ext._replace(map_id=9),
        ]
        for bad in forged:
            with pytest.raises(RemoteError) as err:
                peer.read_into(2, [bad], [memoryview(bytearray(bad.length))])
            assert err.value.code == ErrorCode.OUT_OF_BOUNDS
        with pytest.raises(RemoteError) as err:
            peer.read_into(3, [ext], [memoryview(target)])  # another shuffle
        assert err.value.code == ErrorCode.OUT_OF_BOUNDS
        with pytest.raises(RemoteError) as err:
            peer.advertise(2, 0, [MapAttempt(0, 1)])  # an attempt that never committed
        assert err.value.code == ErrorCode.NOT_COMMITTED
        peer.close()


def test_a_wrong_secret_is_refused_by_network_and_local_servers():
    with running_server() as a, link_to(a) as link:
        write_map(link, 1, 0, 1, [(0, 0)])
        wrong = Fetcher(link.pool, conf(localShortCircuit="false"),
                        secret=b"another-secret-of-enough-length", app_id=APP)
        with pytest.raises(FetchFailed, match="shared secret"):
            wrong.fetch_one(request(a.address, 1, 0, 0))
        with pytest.raises(Exception, match="secret"):
            ServerClient(a.local_name, secret=b"another-secret-of-enough-length", app_id=APP)


def raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\n\r\n",  # not a netspark peer
    protocol.HEADER.pack(b"NSPK", 1, protocol.MsgType.HELLO, 0, 1 << 30),  # oversized
    protocol.HEADER.pack(b"NSPK", 1, protocol.MsgType.HELLO, 0, 40) + b"short",  # truncated
    protocol.HEADER.pack(b"NSPK", 9, protocol.MsgType.HELLO, 0, 0),  # unknown version
    protocol.HEADER.pack(b"NSPK", 1, 99, 0, 0),  # unknown type
])
def test_bad_messages_close_the_connection_and_nothing_else(garbage):
    with running_server() as a, link_to(a) as link:
        write_map(link, 1, 0, 1, [(0, "x")])
        sock = raw_connection(a.address.port)
        sock.sendall(garbage)
        try:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass  # an ERROR frame at most, then the close
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed with our bytes unread: also a close
        except OSError as err:  # the server closed it before our shutdown
            assert err.errno == errno.ENOTCONN, err
        sock.close()
        fetcher = Fetcher(link.pool, conf(localShortCircuit="false"), secret=SECRET, app_id=APP)
        assert list(read_partition(fetcher, [request(a.address, 1, 0, 0)])) == [(0, "x")]
        fetcher.close()


def test_an_unauthenticated_request_is_refused():
    with running_server() as a:
        sock = raw_connection(a.address.port)
        protocol.send_message(sock, protocol.FetchReq(1, 1, 0, (MapAttempt(0, 0),)))
        reply = protocol.recv_message(sock)
        assert isinstance(reply, protocol.ErrorMsg)
        assert sock.recv(1) == b""  # and closed
        sock.close()


def test_a_local_client_of_another_user_is_refused():
    with running_server() as a:
        pid = os.fork()
        if pid == 0:  # child: become nobody, then try
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(5)
                sock.connect(a.local_name)
                code = 0 if sock.recv(1) == b"" else 1  # closed without a word
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_slow_reader_holds_no_more_than_max_bytes_in_flight():
    with running_server() as a, running_server() as b:
        with link_to(b) as link:
            for m in range(6):
                write_map(link, 4, m, 1, [(0, os.urandom(40_000)) for _ in range(10)])
        # One map's output is seven 64 KiB blocks; a request larger than the cap is let
        # in only when nothing is held, so the cap is set to hold one request, not two.
        limit = 8 * (64 << 10)
        with link_to(a, localShortCircuit="false",
                     **{"reducer.maxBytesInFlight": str(limit)}) as reader:
            fetcher = reader.fetcher()
            peak = 0
            count = 0
            for _ in read_partition(fetcher, [request(b.address, 4, 0, m) for m in range(6)]):
                peak = max(peak, fetcher._held)
                count += 1
                time.sleep(0.002)
            assert count == 60
            assert 0 < peak * reader.pool.block_size <= limit
            assert fetcher._held == 0
            fetcher.close()


def test_server_process_stops_cleanly_on_sigterm(server_process):
    proc = server_process("spark.netspark.buffer.initialSize=32m")
    arena_path = proc.address.arena_path
    assert os.path.exists(arena_path)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=20) == 0
    assert not os.path.exists(arena_path)


def test_server_process_dies_with_its_parent(server_process):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = server_process(extra=("--parent", str(sleeper.pid)))
    sleeper.kill()
    sleeper.wait()
    assert proc.proc.wait(timeout=20) == 0
    assert not os.path.exists(proc.address.arena_path)


def test_server_process_dies_with_a_parent_left_a_zombie(server_process):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = server_process(extra=("--parent", str(sleeper.pid)))
    sleeper.kill()  # and not reaped until the server is gone: a zombie, as under a lax init
    try:
        assert proc.proc.wait(timeout=20) == 0
    finally:
        sleeper.wait()
    assert not os.path.exists(proc.address.arena_path)


def test_a_peer_killed_mid_transfer_fails_cleanly_without_leaks(server_process):
    proc = server_process()
    with link_to_process(proc) as link:
        big = [(0, os.urandom(1 << 20)) for _ in range(60)]  # 60 MiB in one partition
        write_map(link, 5, 0, 1, big)
    with running_server() as a, link_to(a, localShortCircuit="false",
                                        **{"network.maxRetries": "1"}) as reader:
        fetcher = reader.fetcher()
        got = 0
        with pytest.raises(FetchFailed, match="failed 2 times"):
            for _ in read_partition(fetcher, [request(proc.address, 5, 0, 0)] * 3):
                if got == 0:
                    proc.proc.kill()
                got += 1
        fetcher.close()
        reader.pool.flush()
        assert fetcher._held == 0
        assert reader.arena.stats().leased_blocks == 0


def link_to_process(proc):
    return link_to_name(proc.local_name)


def test_two_applications_on_one_host_are_isolated():
    other_secret = b"the-other-application-secret!"
    with running_server() as mine, link_to(mine) as link:
        write_map(link, 1, 0, 1, [(0, "mine")])
        other = ShuffleServer(conf(), secret=other_secret, app_id="app-other").start()
        try:
            theirs = ExecutorLink(other.local_name, conf(), secret=other_secret,
                                  app_id="app-other")
            fetcher = theirs.fetcher()
            for short_circuit in (True, False):  # in place or over TCP: auth comes first
                fetcher.conf = conf(localShortCircuit=str(short_circuit).lower())
                with pytest.raises(FetchFailed, match="refused|secret|app id"):
                    fetcher.fetch_one(request(mine.address, 1, 0, 0))
            with pytest.raises(Exception, match="refused|secret|app id"):
                ServerClient(mine.local_name, secret=other_secret, app_id="app-other")
            fetcher.close()
            theirs.close()
        finally:
            other.stop()


def test_a_worker_can_ask_its_server_to_fetch():
    with running_server() as b:
        with link_to(b) as link:
            write_map(link, 6, 0, PARTS, records_of(0))
        for short_circuit in ("true", "false"):
            with running_server(localShortCircuit=short_circuit) as c, link_to(c) as reader:
                for reduce_id in range(PARTS):
                    [landed] = reader.fetch_via_server([request(b.address, 6, reduce_id, 0)])
                    stream = BlockInputStream(landed.arena, landed.extents, landed.release)
                    assert list(read_records(stream)) == expected_partition([0], reduce_id)
                reader.pool.flush()
                c._pool.flush()  # the server's own cache of leased blocks
                assert reader.arena.stats().leased_blocks == 0  # all released by the reader


def test_clients_fetch_through_their_server_at_once():
    """The JVM's tasks of one executor ask its server to fetch side by side: each call is
    answered with its own partition, and the connections to the peer are shared, not
    one per call."""
    import threading

    with running_server() as b:
        with link_to(b) as link:
            for m in range(2):
                write_map(link, 8, m, PARTS, records_of(m, 20_000))
        with running_server(localShortCircuit="false") as c:
            readers = [link_to(c) for _ in range(PARTS)]
            got, inside, overlapped = {}, [0], threading.Event()
            lock = threading.Lock()
            fetch_one = c._fetch_one_for

            def counted(*args):  # notices two calls inside the server at the same time
                with lock:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlapped.set()
                try:
                    overlapped.wait(2.0)
                    return fetch_one(*args)
                finally:
                    with lock:
                        inside[0] -= 1

            c._fetch_one_for = counted

            def read(reduce_id: int) -> None:
                with readers[reduce_id] as reader:
                    [landed] = reader.fetch_via_server([request(b.address, 8, reduce_id, 0, 1)])
                    stream = BlockInputStream(landed.arena, landed.extents, landed.release)
                    got[reduce_id] = list(read_records(stream))
                    reader.pool.flush()

            threads = [threading.Thread(target=read, args=(r,)) for r in range(PARTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert overlapped.is_set()  # the calls did not wait for one another
            for reduce_id in range(PARTS):
                assert got[reduce_id] == [r for m in range(2) for r in records_of(m, 20_000)
                                          if r[0] % PARTS == reduce_id]
            c._pool.flush()
            assert c.arena.stats().leased_blocks == 0  # every landed block came back
            assert b.peers_accepted <= PARTS


def test_a_failed_request_of_a_batch_gives_back_what_landed_before_it():
    with running_server() as b:
        with link_to(b) as link:
            write_map(link, 9, 0, PARTS, records_of(0))
        with running_server(localShortCircuit="false") as c, link_to(c) as reader:
            good, missing = request(b.address, 9, 0, 0), request(b.address, 99, 0, 0)
            with pytest.raises(ServerError, match="FetchFailed"):
                reader.fetch_via_server([good, missing])
            c._pool.flush()
            assert c.arena.stats().leased_blocks == 0  # the first request's blocks came back


def test_a_peer_that_cannot_be_reached_is_named_to_the_client_with_what_to_check():
    """The JVM reader turns this error into its FetchFailedException: the user reads it."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = closed.getsockname()[1]
    closed.close()
    with running_server(localShortCircuit="false", **{"network.maxRetries": "1"}) as c, \
            link_to(c) as reader:
        gone = dataclasses.replace(c.address, port=port, host_key="another-host")
        with pytest.raises(ServerError) as err:
            reader.fetch_via_server([request(gone, 1, 0, 0)])
    message = str(err.value)
    assert f"the server at 127.0.0.1:{port} cannot be reached" in message
    assert "spark.netspark.advertiseAddress" in message and "spark.netspark.port" in message
