"""The coordinator's judgement of lost servers, with real sockets and handshakes and
an injected `on_lost` (what would have Spark replace the executor)."""

import contextlib
import socket
import threading
import time

import pytest

from netspark.server.local_api import send_json
from netspark.spark.coordinator import Coordinator, report_unreachable
from netspark.transport.auth import AuthError, client_handshake, server_handshake

SECRET, APP = b"s" * 32, "app-test"


class PeerServer:
    """Answers the handshake on a port, as a netspark server does; `close()` kills it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with contextlib.suppress(Exception), conn:
                server_handshake(conn, SECRET, APP, timeout=5)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone would not)
        self.listener.close()


@pytest.fixture
def coordinator():
    lost = []
    made = Coordinator("127.0.0.1", secret=SECRET, app_id=APP, timeout=5,
                       on_lost=lambda executor, why: lost.append((executor, why)))
    made.lost_calls = lost
    yield made
    made.stop()


def join(coordinator, port: int, executor: str) -> socket.socket:
    link = socket.create_connection(coordinator.address)
    client_handshake(link, SECRET, APP, timeout=5)
    send_json(link, {"op": "hello", "executor": executor,
                     "address": {"host": "127.0.0.1", "port": port, "host_key": "k",
                                 "arena_path": "/x"}})
    wait_until(lambda: any(s["executor"] == executor for s in coordinator.servers))
    return link


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def report(coordinator, port: int) -> dict:
    return report_unreachable("{}:{}".format(*coordinator.address), secret=SECRET, app_id=APP,
                              host="127.0.0.1", port=port, error="refused", timeout=5)


def test_a_server_whose_link_ends_is_lost(coordinator):
    peer = PeerServer()
    link = join(coordinator, peer.port, "3")
    link.close()
    wait_until(lambda: coordinator.lost_calls)
    assert coordinator.lost_calls[0][0] == "3" and "is gone" in coordinator.lost_calls[0][1]


def test_no_loss_while_the_application_stops(coordinator):
    peer = PeerServer()
    link = join(coordinator, peer.port, "3")
    coordinator.stopping()
    link.close()
    time.sleep(0.3)
    assert coordinator.lost_calls == []


def test_a_report_is_confirmed_before_anything_is_lost(coordinator):
    peer = PeerServer()
    link = join(coordinator, peer.port, "5")
    verdict = report(coordinator, peer.port)  # the driver reaches it: the reporter's fault
    assert not verdict["lost"] and "reporting host" in verdict["message"]
    peer.close()
    verdict = report(coordinator, peer.port)
    assert verdict["lost"] and "executor 5" in verdict["message"]
    assert [e for e, _ in coordinator.lost_calls] == ["5"]
    assert report(coordinator, peer.port)["lost"]  # a second reporter: told once only
    assert [e for e, _ in coordinator.lost_calls] == ["5"]
    link.close()


def test_a_server_the_driver_never_reached_is_not_replaced(coordinator):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there
    link = join(coordinator, port, "8")
    verdict = report(coordinator, port)
    assert not verdict["lost"] and "when it joined either" in verdict["message"]
    assert coordinator.lost_calls == []
    coordinator.stopping()
    link.close()


def test_an_unknown_server_is_not_replaced(coordinator):
    verdict = report(coordinator, 1)
    assert not verdict["lost"] and "ever joined" in verdict["message"]


def test_a_wrong_secret_is_refused(coordinator):
    with socket.create_connection(coordinator.address) as conn, pytest.raises(AuthError):
        client_handshake(conn, b"x" * 32, APP, timeout=5)


def test_a_reporter_waits_as_long_as_spark_may_take_to_replace():
    """The verdict comes after Spark removed the executor, which may take longer than
    the reporter's connect timeout many times over: the reporter must still get it."""
    def slow_replace(executor: str, why: str) -> None:
        time.sleep(1.5)

    made = Coordinator("127.0.0.1", secret=SECRET, app_id=APP, timeout=5, on_lost=slow_replace)
    try:
        peer = PeerServer()
        link = join(made, peer.port, "6")
        peer.close()
        verdict = report_unreachable("{}:{}".format(*made.address), secret=SECRET, app_id=APP,
                                     host="127.0.0.1", port=peer.port, error="refused",
                                     timeout=0.3)
        assert verdict["lost"] and "executor 6" in verdict["message"]
        link.close()
    finally:
        made.stop()
