"""A Spark standalone cluster on the VM's two rxe hosts (tests/rxe/inside/hosts.py).

The master runs on hostA; one Worker per host runs there (in its network namespace
where hosts have one: tests/rxe/inside/hosts.py), bound to its address (`--host`,
`SPARK_LOCAL_IP`), so Spark gives each executor that address as its `--hostname`,
which its netspark server advertises and picks its RDMA device by. `stop()` kills
every process it started.

Under TCG a JVM now and then crashes while starting (SIGSEGV in its own JIT-compiled
code; tests/rxe/inside/spark_start.py says more): a start where one of the cluster's
JVMs crashed is tried again, up to ATTEMPTS starts in all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyspark

from tests.rxe.inside.hosts import Host

SPARK_HOME = Path(pyspark.__file__).parent
ATTEMPTS = 3
JVM_CRASHED = "A fatal error has been detected by the Java Runtime Environment"


class ProcessExitedEarly(RuntimeError):
    pass


def _free_port(host: Host) -> int:
    with host.inside(), socket.socket() as sock:
        sock.bind((host.address, 0))
        return sock.getsockname()[1]


class StandaloneCluster:
    def __init__(self, master_host: Host, workers: tuple[Host, ...], *,
                 worker_memory: str = "768m") -> None:
        self.master_host = master_host
        self.workers = workers
        self.worker_memory = worker_memory
        self.workdir = Path(tempfile.mkdtemp(prefix="rxe-standalone-"))
        self.procs: list[subprocess.Popen] = []
        self.port = self.ui_port = 0

    @property
    def url(self) -> str:
        return f"spark://{self.master_host.address}:{self.port}"

    def work_dir(self, host: Host) -> Path:
        """Where this host's Worker puts its executors' stdout and stderr."""
        return self.workdir / host.device / "work"

    def start(self, timeout: float) -> StandaloneCluster:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._start_once(timeout)
            except ProcessExitedEarly as err:
                if attempt == ATTEMPTS or JVM_CRASHED not in str(err):
                    raise
                print(f"cluster start {attempt}: a JVM crashed; again\n{err}", file=sys.stderr)
                self.workdir = Path(tempfile.mkdtemp(prefix="rxe-standalone-"))
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> StandaloneCluster:
        try:
            master = self.master_host
            self.port, self.ui_port = _free_port(master), _free_port(master)
            self._spawn("master", master, "org.apache.spark.deploy.master.Master",
                        "--host", master.address, "--port", str(self.port),
                        "--webui-port", str(self.ui_port))
            for host in self.workers:
                self.work_dir(host).mkdir(parents=True)
                self._spawn(f"worker-{host.device}", host,
                            "org.apache.spark.deploy.worker.Worker", "--host", host.address,
                            "--cores", "1", "--memory", self.worker_memory,
                            "--work-dir", str(self.work_dir(host)), self.url)
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, role: str, host: Host, main_class: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYSPARK_SUBMIT_ARGS"}
        env.update({"SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable,
                    "SPARK_NO_DAEMONIZE": "1", "SPARK_LOCAL_IP": host.address,
                    "SPARK_DAEMON_MEMORY": "192m"})
        with open(self.workdir / f"{role}.log", "wb") as log:
            self.procs.append(subprocess.Popen(
                host.command(str(SPARK_HOME / "bin" / "spark-class"), main_class, *args),
                env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.master_host.address}:{self.ui_port}/json/"
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise ProcessExitedEarly(f"a cluster process exited early:\n{self.logs()}")
            with contextlib.suppress(OSError, ValueError), self.master_host.inside():
                with urllib.request.urlopen(url, timeout=10) as answer:
                    alive = [w["host"] for w in json.load(answer)["workers"]
                             if w["state"] == "ALIVE"]
                if sorted(alive) == sorted(h.address for h in self.workers):
                    return
            time.sleep(1)
        raise RuntimeError(f"the workers did not register in {timeout:.0f} s:\n{self.logs()}")

    def executor_logs(self, host: Host) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.work_dir(host).glob("app-*/*/stderr")))

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:  # each a session: the Worker's executors go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
