"""Where an executor's server listens and what address it gives its peers.

A server must be reachable from the other hosts of the cluster, so it never
advertises a loopback address unless the whole application is on this host. By
default it uses the address Spark's own executor uses (the `--hostname` its
cluster manager gave it, which Spark derives by the `SPARK_LOCAL_IP` rule), else
`SPARK_LOCAL_IP`, else the host name's address unless that is loopback, else the
local address of the route toward the driver, else any non-loopback interface.
`spark.netspark.advertiseAddress` (an address, a host name or an interface name)
and `spark.netspark.bindAddress` override it for hosts with several interfaces.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from netspark.config import PREFIX, ConfigError, NetsparkConf

_SIOCGIFADDR = 0x8915


@dataclass(frozen=True)
class ServerAddresses:
    bind: str
    advertise: str
    why: str  # how the advertised address was chosen, for the log


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def interface_address(name: str) -> str | None:
    """The IPv4 address of network interface `name`, or None (no such interface, or
    no IPv4 address on it)."""
    if name not in {n for _, n in socket.if_nameindex()}:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _resolve(name: str) -> str | None:
    try:
        return socket.gethostbyname(name)
    except (OSError, UnicodeError):
        return None


def _resolve_setting(key: str, value: str) -> str:
    """An address setting's value as an IPv4 address: an address, an interface, a name."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    address = interface_address(value) or _resolve(value)
    if address is None:
        interfaces = ", ".join(n for _, n in socket.if_nameindex())
        raise ConfigError(f"{PREFIX}{key}={value!r} is neither an address, nor an interface "
                          f"with an IPv4 address ({interfaces}), nor a host name that resolves")
    return address


def executor_hostname(pid: int) -> str | None:
    """The `--hostname` argument of process `pid` (an executor JVM), if it has one."""
    return _argument(pid, "--hostname")


def executor_id(pid: int) -> str:
    """Spark's id of the executor JVM `pid` ("driver" for the driver in local mode)."""
    return _argument(pid, "--executor-id") or "driver"


def _argument(pid: int, flag: str) -> str | None:
    args = _command_line(pid)
    for given, value in zip(args, args[1:], strict=False):
        if given == flag:
            return value
    return None


def _command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [a.decode(errors="replace") for a in cmdline.read().split(b"\0")]
    except OSError:
        return []


def route_toward(host: str) -> str | None:
    """This host's address on the route to `host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, 9))
            return sock.getsockname()[0]
        except OSError:
            return None


def any_interface_address() -> str | None:
    for _, name in sorted(socket.if_nameindex()):
        address = interface_address(name)
        if address and not is_loopback(address) \
                and not ipaddress.ip_address(address).is_link_local:
            return address
    return None


def default_advertised(driver_host: str, executor_pid: int) -> tuple[str, str]:
    """(address, why) by Spark's rule, never loopback unless nothing else is there."""
    hostname = executor_hostname(executor_pid)
    candidates = [
        ("the executor's --hostname", hostname and _resolve(hostname)),
        ("SPARK_LOCAL_IP", os.environ.get("SPARK_LOCAL_IP")),
        (f"the host name {socket.gethostname()!r}", _resolve(socket.gethostname())),
        (f"the route toward the driver {driver_host}", route_toward(driver_host)),
        ("the first non-loopback interface", any_interface_address()),
    ]
    for why, address in candidates:
        if address and not is_loopback(address):
            return address, why
    return "127.0.0.1", "no non-loopback address on this host"


def server_addresses(conf: NetsparkConf, *, driver_host: str, executor_pid: int,
                     local_only: bool = False) -> ServerAddresses:
    """Where to listen and what to advertise; `local_only`: every executor is on this
    host (a local-cluster master), so loopback is right."""
    if conf.advertiseAddress:
        advertise = _resolve_setting("advertiseAddress", conf.advertiseAddress)
        why = f"{PREFIX}advertiseAddress={conf.advertiseAddress}"
    elif local_only:
        advertise, why = "127.0.0.1", "a local master: every executor is on this host"
    else:
        advertise, why = default_advertised(driver_host, executor_pid)
    bind = _resolve_setting("bindAddress", conf.bindAddress) if conf.bindAddress \
        else advertise
    return ServerAddresses(bind, advertise, why)
