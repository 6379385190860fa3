"""Starting a SparkContext inside the VM, where the JVM is slow and now and then stuck.

Under TCG the driver's JVM has crashed while starting (SIGSEGV in its own JIT-compiled
code: zip reading once, `AbstractStringBuilder.appendChars` once, in about one run out
of four) and, once in CI, hung for 15 minutes inside `new JavaSparkContext` before any
job ran. So a start gets a deadline: past it, what the driver and executors were doing
is printed (the driver's main thread from jstack, the tail of each executor's stderr)
and the JVMs are killed. A start that timed out or whose JVM died is tried again, up
to three starts in all; the test fails only if the last fails too, with every report
in its output.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.spark.conftest import spark_context

START_DEADLINE_S = float(os.environ.get("NETSPARK_RXE_SPARK_START_S", "360"))
ATTEMPTS = 3
DRIVER_CLASS = "org.apache.spark.deploy.SparkSubmit"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


class StartTimedOut(RuntimeError):
    pass


@contextlib.contextmanager
def spark_started(**settings: str) -> Iterator:
    """`tests.spark.conftest.spark_context`, with a deadline on its start, tried again
    (up to ATTEMPTS in all) when the start timed out or the driver's JVM died."""
    for attempt in range(1, ATTEMPTS + 1):
        began = time.monotonic()
        with contextlib.ExitStack() as stack:
            try:
                with _Watchdog(START_DEADLINE_S, since=time.time()):
                    sc = stack.enter_context(spark_context(**settings))
            except Exception as err:
                if attempt == ATTEMPTS or not (isinstance(err, StartTimedOut) or _driver_died()):
                    raise
                print(f"spark start {attempt} failed ({type(err).__name__}: {err}); again",
                      file=sys.stderr)
                _forget_jvm()
                continue
            print(f"spark started in {time.monotonic() - began:.0f} s", file=sys.stderr)
            yield sc
            return


def _driver_died(grace_s: float = 30) -> bool:
    """The driver's JVM is gone: it never came up, or it crashed while starting (its
    socket closes before it has exited, so give it a moment)."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is None:
        return True
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        return False
    return True


class _Watchdog:
    """Past `deadline` seconds: report what the JVMs are doing, then kill them."""

    def __init__(self, deadline: float, since: float) -> None:
        self.fired = False
        self._since = since
        self._timer = threading.Timer(deadline, self._fire)
        self._timer.daemon = True
        self._deadline = deadline

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        self._timer.cancel()
        self._timer.join()
        if self.fired:  # whatever the start raised, or even if it got through as it fired
            raise StartTimedOut(f"spark did not start within {self._deadline:.0f} s") from exc

    def _fire(self) -> None:
        self.fired = True
        drivers, executors = _java_pids(DRIVER_CLASS), _java_pids(EXECUTOR_CLASS)
        print(f"spark not started after {self._deadline:.0f} s: driver JVM {drivers}, "
              f"executor JVMs {executors}", file=sys.stderr)
        for pid in drivers:
            print(_main_thread(pid), file=sys.stderr)
        print(_executor_logs(self._since), file=sys.stderr)
        _kill_jvms()


def _main_thread(pid: int) -> str:
    try:
        dump = subprocess.run(["jstack", str(pid)], capture_output=True, text=True,
                              timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no thread dump: {err}"
    match = re.search(r'^"main".*?(?=^\s*$)', dump, re.M | re.S)
    lines = (match.group(0) if match else "no main thread in the dump").splitlines()
    return "\n".join(lines[:40])


def _executor_logs(since: float, tail: int = 12) -> str:
    """The last lines of the stderr of each executor launched since `since`."""
    import pyspark

    work = Path(pyspark.__file__).parent / "work"
    parts = []
    for log in sorted(work.glob("app-*/*/stderr")):
        if log.stat().st_mtime >= since:
            lines = log.read_text(errors="replace").splitlines()
            lines = [line for line in lines if not line.startswith("Spark Executor Command")]
            parts.append(f"--- {log.relative_to(work)}\n" + "\n".join(lines[-tail:]))
    return "\n".join(parts) or f"no executor has logged under {work} yet"


def _kill_jvms() -> None:
    for pid in _java_pids(DRIVER_CLASS) + _java_pids(EXECUTOR_CLASS):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _java_pids(main_class: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"java") and main_class.encode() in argv:
                    pids.append(int(proc.name))
    return pids


def _forget_jvm() -> None:
    """Make the next SparkContext launch a new JVM instead of calling the dead one, and
    stop the dead one's executors, which would otherwise wait for it for minutes."""
    from pyspark import SparkContext

    _kill_jvms()

    gateway = SparkContext._gateway
    if gateway is not None:
        with contextlib.suppress(Exception):
            gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None
    SparkContext._active_spark_context = None
