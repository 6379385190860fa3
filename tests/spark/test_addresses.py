"""The address a server advertises and listens on: Spark's rule, the settings that
override it, and their errors."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netspark.config import ConfigError, NetsparkConf
from netspark.server.server import NoFreePort, listen_in_range
from netspark.spark import addresses


def conf(**settings: str) -> NetsparkConf:
    return NetsparkConf.from_spark({f"spark.netspark.{k}": v for k, v in settings.items()})


@pytest.fixture
def fake_executor():
    """A process whose command line looks like an executor JVM's."""
    procs = []

    def start(*args: str) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
        procs.append(proc)
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 10
        while args and args[-1].encode() not in cmdline.read_bytes():  # until it has exec'd
            assert time.monotonic() < deadline, "the fake executor never started"
            time.sleep(0.01)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_executors_own_hostname_comes_first(fake_executor, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.9.9.9")
    pid = fake_executor("--executor-id", "7", "--hostname", "10.1.2.3", "--cores", "1")
    assert addresses.default_advertised("127.0.0.1", pid) == ("10.1.2.3",
                                                            "the executor's --hostname")
    assert addresses.executor_id(pid) == "7"


def test_a_loopback_hostname_is_passed_over(fake_executor, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.9.9.9")
    pid = fake_executor("--hostname", "localhost")
    assert addresses.default_advertised("127.0.0.1", pid) == ("10.9.9.9", "SPARK_LOCAL_IP")


def test_without_any_hint_never_loopback_when_an_interface_has_an_address(
        fake_executor, monkeypatch):
    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)
    monkeypatch.setattr(addresses, "_resolve", lambda name: "127.0.1.1")  # stock Debian
    address, why = addresses.default_advertised("127.0.0.1", fake_executor())
    if addresses.any_interface_address() is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    assert not addresses.is_loopback(address), why
    assert why in ("the first non-loopback interface",) or why.startswith("the route toward")


def test_the_driver_in_local_mode_is_not_an_executor():
    assert addresses.executor_id(0) == "driver"  # no such process: no --executor-id


def test_settings_override_the_rule():
    where = addresses.server_addresses(conf(advertiseAddress="lo", bindAddress="0.0.0.0"),
                                       driver_host="127.0.0.1", executor_pid=0)
    assert (where.bind, where.advertise) == ("0.0.0.0", "127.0.0.1")
    assert "advertiseAddress=lo" in where.why
    where = addresses.server_addresses(conf(), driver_host="127.0.0.1", executor_pid=0,
                                       local_only=True)
    assert (where.bind, where.advertise) == ("127.0.0.1", "127.0.0.1")


def test_an_interface_names_its_address():
    assert addresses.interface_address("lo") == "127.0.0.1"
    assert addresses.interface_address("no-such-nic") is None


@pytest.mark.parametrize("key", ["advertiseAddress", "bindAddress"])
def test_a_bad_address_setting_names_its_key(key):
    with pytest.raises(ConfigError, match=f"spark.netspark.{key}='eth-nope'.*interface"):
        addresses.server_addresses(conf(**{key: "eth-nope"}), driver_host="127.0.0.1",
                                   executor_pid=0)


@pytest.mark.parametrize("text,expected", [("0", (0, 0)), ("7337", (7337, 7337)),
                                           (" 7337 - 7340 ", (7337, 7340))])
def test_port_settings(text, expected):
    assert conf(port=text).port == expected


@pytest.mark.parametrize("text", ["70000", "7340-7337", "abc", "0-5", "-1"])
def test_bad_port_settings_name_the_key(text):
    with pytest.raises(ConfigError, match="spark.netspark.port"):
        conf(port=text)


def test_a_port_range_takes_the_next_free_port():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with listen_in_range("127.0.0.1", (port, port + 1)) as got:
            assert got.getsockname()[1] == port + 1
        with pytest.raises(NoFreePort, match=f"port {port} .*spark.netspark.port"):
            listen_in_range("127.0.0.1", (port, port))
