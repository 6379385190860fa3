"""A real Spark standalone cluster of several hosts on one machine, for tests and
benchmarks: each Worker host is a network namespace with its own address on a
shared bridge; the driver and the master run on the bridge's own host.

The hosts are started the way an operator starts them: `spark-class ... Worker
spark://master:7077`, no `SPARK_LOCAL_IP`, and a host name that resolves to
loopback (as on a stock Debian or Ubuntu machine), so Spark itself picks the
interface address. Each host can have its link rate limited (`tc tbf`) and its
link cut and restored. `stop()` leaves nothing: processes, links, namespaces,
directories. It needs root and iproute2; `unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
SUBNET = "10.213.7"  # a private /24 of the cluster's own; .1 is the driver's host
NIC = "eth0"  # each host's interface on the bridge


def unavailable() -> str | None:
    """Why a namespace cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"nsprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"network namespaces are not allowed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    name: str  # the namespace
    address: str
    veth: str  # the bridge's end of its link
    worker: subprocess.Popen | None = None


class NetnsCluster:
    """`hosts` Worker hosts of `cores` cores each, one executor per host by default."""

    def __init__(self, hosts: int = 3, *, cores: int = 1, memory: str = "1g",
                 link_rate: str | None = None, subnet: str = SUBNET) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError(f"hosts must be within 1-200, not {hosts}")
        self.tag = secrets.token_hex(2)
        self.cores, self.memory, self.link_rate = cores, memory, link_rate
        self.driver_host = f"{subnet}.1"
        self.bridge = f"nsb{self.tag}"
        self.hosts = [Host(f"nsh{self.tag}{i}", f"{subnet}.{10 + i}", f"nsv{self.tag}{i}")
                      for i in range(1, hosts + 1)]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"netns-cluster-{self.tag}-"))
        self.master: subprocess.Popen | None = None
        self.master_port = self.ui_port = 0

    @property
    def master_url(self) -> str:
        return f"spark://{self.driver_host}:{self.master_port}"

    def spark_settings(self) -> dict[str, str]:
        """What a driver on the bridge's host sets to use this cluster."""
        return {
            "spark.master": self.master_url,
            "spark.driver.host": self.driver_host,
            "spark.executor.cores": str(self.cores),
            "spark.executor.memory": self.memory,
            "spark.cores.max": str(self.cores * len(self.hosts)),
            "spark.executor.instances": str(len(self.hosts)),
        }

    # ---- lifecycle ----

    def start(self, timeout: float = 180.0) -> NetnsCluster:
        try:
            self._make_network()
            self._start_master()
            for host in self.hosts:
                self._start_worker(host)
            self._wait_for_workers(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> NetnsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _make_network(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.driver_host}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for host in self.hosts:
            inner = f"{host.veth}i"
            _run("ip", "netns", "add", host.name)
            _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", host.name)
            _run("ip", "link", "set", host.veth, "master", self.bridge)
            _run("ip", "link", "set", host.veth, "up")
            self.ns(host, "ip", "link", "set", inner, "name", NIC)  # the same on every host
            self.ns(host, "ip", "addr", "add", f"{host.address}/24", "dev", NIC)
            self.ns(host, "ip", "link", "set", NIC, "up")
            self.ns(host, "ip", "link", "set", "lo", "up")
            if self.link_rate:
                self.limit_link(host, self.link_rate)

    def limit_link(self, host: Host, rate: str) -> None:
        """Caps the host's link both ways (each end's egress) with a token bucket."""
        for prefix, dev in (((), host.veth), (("ip", "netns", "exec", host.name), NIC)):
            _run(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                 "burst", "4mb", "latency", "100ms")

    def _start_master(self) -> None:
        self.master_port, self.ui_port = _free_port(self.driver_host), _free_port(self.driver_host)
        self.master = self._spawn(
            None, "master", "org.apache.spark.deploy.master.Master", "--host", self.driver_host,
            "--port", str(self.master_port), "--webui-port", str(self.ui_port))

    def _start_worker(self, host: Host) -> None:
        home = self.workdir / host.name
        (home / "work").mkdir(parents=True)
        (home / "local").mkdir()
        host.worker = self._spawn(
            host, "worker", "org.apache.spark.deploy.worker.Worker", "--cores", str(self.cores),
            "--memory", _worker_memory(self.memory), "--work-dir", str(home / "work"),
            self.master_url, env={"SPARK_LOCAL_DIRS": str(home / "local")})

    def _spawn(self, host: Host | None, role: str, main_class: str, *args: str,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("SPARK_LOCAL_IP", "SPARK_LOCAL_HOSTNAME", "PYSPARK_SUBMIT_ARGS")}
        environ.update({"SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable,
                        "SPARK_NO_DAEMONIZE": "1", **(env or {})})
        prefix = ("ip", "netns", "exec", host.name) if host else ()
        with open(self.workdir / f"{host.name if host else 'master'}-{role}.log", "wb") as log:
            return subprocess.Popen(
                [*prefix, str(SPARK_HOME / "bin" / "spark-class"), main_class, *args],
                env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def master_state(self) -> dict:
        url = f"http://{self.driver_host}:{self.ui_port}/json/"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)

    def _wait_for_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in [self.master] + [h.worker for h in self.hosts]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"a cluster process exited early:\n{self.logs()}")
            try:
                alive = [w for w in self.master_state()["workers"] if w["state"] == "ALIVE"]
                if len(alive) == len(self.hosts):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the workers did not all register in {timeout:.0f} s:\n"
                           f"{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-tail:]}"
                         for log in sorted(self.workdir.glob("*.log")))

    def stop(self) -> None:
        """Kills every process of the cluster, then removes links, namespaces, files."""
        for host in self.hosts:
            self._kill_all(host)
        if self.master is not None:
            _kill_group(self.master)
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_all(self, host: Host, sig: int = signal.SIGKILL) -> None:
        if host.worker is not None:
            _kill_group(host.worker)
        for _ in range(50):  # executors, Python daemons and servers of this host
            pids = self.pids(host)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.1)

    # ---- what tests do to hosts ----

    def ns(self, host: Host, *argv: str) -> str:
        return _run("ip", "netns", "exec", host.name, *argv)

    def pids(self, host: Host) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True,
                              text=True)
        return [int(p) for p in done.stdout.split()]

    def cut_link(self, host: Host) -> None:
        _run("ip", "link", "set", host.veth, "down")

    def restore_link(self, host: Host) -> None:
        _run("ip", "link", "set", host.veth, "up")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _worker_memory(executor_memory: str) -> str:
    """Room for one executor of `executor_memory` and then some."""
    digits = "".join(c for c in executor_memory if c.isdigit())
    unit = executor_memory[len(digits):] or "m"
    return f"{int(digits) * 2}{unit}"
