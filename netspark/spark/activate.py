"""Turning netspark on for a SparkContext created with `spark.netspark.enabled=true`.

Two moments matter. Before the JVM context exists (`_initialize_context`), the
settings are validated and the Spark settings the flag adds (`plan`) are set:
`spark.python.daemon.module` points at netspark's daemon, so every executor starts its
server, and (unless `spark.netspark.jvm=false`) netspark's JVM shuffle manager is named in
`spark.shuffle.manager` and its jar added to `spark.jars`. Right after (`_do_init`), the
coordinator starts, the executors' environment is filled in, and the RDD shuffles
are rerouted. Anything that prevents activation is logged and Spark's own shuffle
stays in place, except that `transport=rdma` and bad values fail loudly.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netspark import jvm
from netspark.config import PREFIX, ConfigError, NetsparkConf, parse_bool

log = logging.getLogger("netspark")
DAEMON_MODULE = "netspark.spark.daemon"
# Spark prefers to run a reduce task on a host holding >= 20% of its partition's map
# output as the JVM counts it: for Python shuffles, netspark's handles. A reducer reads
# every host's share anyway, and across hosts that preference piled every reduce task,
# then the cache, then the next map stage onto one host (docs/benchmarks.md, "Where
# PageRank's time goes across hosts"). Applied unless the application set the key.
DEFAULTS = {"spark.shuffle.reduceLocality.enabled": "false"}


class ActivationError(RuntimeError):
    """netspark was asked for explicitly (transport=rdma) and cannot run."""


def _incompatible(settings: dict[str, str]) -> str | None:
    """Settings under which Spark would keep map handles whose data is gone."""
    if parse_bool(settings.get("spark.shuffle.service.enabled", "false")):
        return ("spark.shuffle.service.enabled=true: the external shuffle service would serve "
                "handles after their executor (and its netspark server) is gone")
    if parse_bool(settings.get("spark.dynamicAllocation.enabled", "false")) and not parse_bool(
            settings.get("spark.dynamicAllocation.shuffleTracking.enabled", "true")):
        return ("spark.dynamicAllocation.enabled=true without "
                "spark.dynamicAllocation.shuffleTracking.enabled=true: executors holding "
                "shuffle data could be removed")
    return None


def _executor_python(settings: dict[str, str]) -> str | None:
    """The executors' Python when they run on this host, made to be one with netspark."""
    if not settings.get("spark.master", "").startswith("local"):
        return None  # remote executors: netspark must be installed there (see README)
    if "PYSPARK_PYTHON" not in os.environ:
        os.environ["PYSPARK_PYTHON"] = sys.executable
    return shutil.which(os.environ["PYSPARK_PYTHON"]) or os.environ["PYSPARK_PYTHON"]


@dataclass(frozen=True)
class Plan:
    """How netspark runs: its validated settings, and the Spark settings the flag adds
    (set on the JVM's conf before the context starts)."""

    conf: NetsparkConf
    spark: dict[str, str] = field(default_factory=dict)
    jar: Path | None = None  # netspark's JVM shuffle manager, when spark.shuffle.manager names it


def _check_shuffle_manager(settings: dict[str, str], conf: NetsparkConf) -> None:
    """A user's own spark.shuffle.manager and the JVM part cannot both hold. Asked for by
    name (jvm=true set), refuse; by default, keep the user's and turn the JVM part off."""
    for key, ours in (("spark.shuffle.manager", jvm.MANAGER_CLASS),
                      (jvm.DATA_IO_KEY, jvm.DATA_IO_CLASS)):
        chosen = settings.get(key, "").strip()
        if not conf.jvm or not chosen or chosen == ours:
            continue
        if PREFIX + "jvm" in settings:
            raise ConfigError(f"{key}={chosen} conflicts with {PREFIX}jvm=true, which sets it "
                              f"to {ours}: unset {key}, or set {PREFIX}jvm=false")
        log.warning("netspark: %s=%s is the application's own: JVM shuffles (DataFrame, SQL, "
                    "GraphX) stay out of netspark, RDD shuffles go through it (unset %s to "
                    "have both; %sjvm=false silences this)", key, chosen, key, PREFIX)
        conf.jvm = False
        return


def _jvm_settings(settings: dict[str, str], conf: NetsparkConf) -> dict[str, str]:
    """spark.jars and spark.shuffle.manager for the JVM part, when asked for and built.
    Executors load the manager from spark.jars (Spark 4, SPARK-45762), the driver from the
    loader `_load_on_driver` adds the jar to: no extraClassPath (fixed at JVM launch)."""
    if not conf.jvm:
        return {}
    jar = jvm.jar_path()
    if jar is None:
        log.warning("netspark: %sjvm is on (the default) but %s is not built (run `%s`; "
                    "needs a JDK): JVM shuffles (DataFrame, SQL, GraphX) stay Spark's own, "
                    "RDD shuffles go through netspark", PREFIX, jvm.JAR, jvm.BUILD_COMMAND)
        return {}
    jars = [entry.strip() for entry in settings.get("spark.jars", "").split(",")
            if entry.strip()]
    if not any(Path(entry.removeprefix("file:")) == jar for entry in jars):
        jars.append(str(jar))
    return {"spark.jars": ",".join(jars), "spark.shuffle.manager": jvm.MANAGER_CLASS,
            jvm.DATA_IO_KEY: jvm.DATA_IO_CLASS}


def plan(settings: dict[str, str]) -> Plan | None:
    """Decides, from the settings, whether and how netspark runs; None leaves Spark as is."""
    if not parse_bool(settings.get(PREFIX + "enabled", "false")):
        return None
    conf = NetsparkConf.from_spark(settings)  # a bad value is the user's to fix: raise
    _check_shuffle_manager(settings, conf)
    problem = _incompatible(settings)
    python = _executor_python(settings)
    if problem is None and python is not None:
        check = subprocess.run([python, "-c", "import netspark._native"],
                               capture_output=True, text=True)
        if check.returncode:
            problem = f"the executors' Python ({python}) cannot import netspark: " + \
                check.stderr.strip().splitlines()[-1]
    if problem is not None:
        if conf.transport == "rdma":
            raise ActivationError(f"netspark cannot run: {problem}")
        log.warning("netspark: not activated, Spark's own shuffle stays: %s", problem)
        return None
    extra = _jvm_settings(settings, conf)
    defaults = {key: value for key, value in DEFAULTS.items() if key not in settings}
    return Plan(conf, {"spark.python.daemon.module": DAEMON_MODULE, **defaults, **extra},
                jvm.JAR if extra else None)


def _load_on_driver(gateway_jvm: Any, jar: Path) -> None:
    """Puts `jar` on the driver's class loader, where SparkContext will look up the manager.
    Executors load it from spark.jars (SPARK-45762), but the driver sees only the jars that
    spark-submit put on its loader when the JVM was launched, and PySpark launches it before
    netspark adds the jar. That loader (SparkSubmit's MutableURLClassLoader, the py4j threads'
    context class loader) takes more URLs, as spark-submit's `--jars` do."""
    loader = gateway_jvm.java.lang.Thread.currentThread().getContextClassLoader()
    url = gateway_jvm.java.io.File(str(jar)).toURI().toURL()
    if url.toString() not in {known.toString() for known in loader.getURLs()}:
        loader.addURL(url)
    gateway_jvm.java.lang.Class.forName(jvm.MANAGER_CLASS, False, loader)  # fail here, not later


class ShuffleState:
    """netspark's bookkeeping for one SparkContext."""

    def __init__(self, sc: Any, conf: NetsparkConf, coordinator: Any,
                 jvm_shuffles: bool = False) -> None:
        from netspark.spark.metrics import ShuffleMetrics

        self.conf = conf
        self.coordinator = coordinator
        self.jvm_shuffles = jvm_shuffles  # netspark's JVM shuffle manager is on
        self.metrics_param = ShuffleMetrics()
        self.metrics = sc.accumulator({}, self.metrics_param)
        self._ids = itertools.count(1)
        self._by_jvm_id: dict[int, int] = {}
        self._lock = threading.Lock()

    def next_shuffle_id(self) -> int:
        return next(self._ids)

    def track(self, jvm_shuffle_id: int, shuffle_id: int) -> None:
        with self._lock:
            self._by_jvm_id[jvm_shuffle_id] = shuffle_id

    def shuffle_cleaned(self, jvm_shuffle_id: int) -> None:
        with self._lock:
            shuffle_id = self._by_jvm_id.pop(jvm_shuffle_id, None)
        if shuffle_id is not None:
            self.coordinator.unregister(shuffle_id)

    def summaries(self) -> dict[int, dict[str, Any]]:
        """Each shuffle's figures so far (see netspark.spark.metrics)."""
        return self.metrics.value

    def stop(self) -> None:
        self.coordinator.stop()


class CleanerListener:
    """Spark's ContextCleaner calls this (through py4j) when a shuffle is dropped."""

    def __init__(self, state: ShuffleState) -> None:
        self.state = state

    def shuffleCleaned(self, shuffle_id: int) -> None:  # noqa: N802 (Java's name)
        self.state.shuffle_cleaned(shuffle_id)

    def rddCleaned(self, rdd_id: int) -> None:  # noqa: N802
        pass

    def broadcastCleaned(self, broadcast_id: int) -> None:  # noqa: N802
        pass

    def accumCleaned(self, acc_id: int) -> None:  # noqa: N802
        pass

    def checkpointCleaned(self, rdd_id: int) -> None:  # noqa: N802
        pass

    class Java:
        implements = ["org.apache.spark.CleanerListener"]


def _attach_cleaner(sc: Any, state: ShuffleState) -> None:
    from pyspark.java_gateway import ensure_callback_server_started

    try:
        ensure_callback_server_started(sc._gateway)
        cleaner = sc._jsc.sc().cleaner()
        if cleaner.isDefined():
            cleaner.get().attachListener(CleanerListener(state))
    except Exception as err:  # cleanup then happens at the application's end only
        log.warning("netspark: shuffles will be freed only when the application ends: %s", err)


def activate(sc: Any, conf: NetsparkConf) -> None:
    """Starts the coordinator and reroutes the shuffles of `sc`."""
    from netspark.spark import shuffle
    from netspark.spark.coordinator import Coordinator

    settings = dict(sc._conf.getAll())
    secret = settings.get("spark.authenticate.secret") or secrets.token_hex(32)
    local = sc.master.startswith("local")
    host = "127.0.0.1" if local else settings.get("spark.driver.host", "127.0.0.1")
    bind = "127.0.0.1" if local else settings.get("spark.driver.bindAddress", host)
    coordinator = Coordinator(host, bind_host=bind, secret=secret.encode(),
                              app_id=sc.applicationId, timeout=conf.network_timeout,
                              on_lost=lambda executor, why: replace_executor(sc, executor))
    environment = {  # for the executors' servers (netspark.spark.launch) and workers
        "NETSPARK_CONF": json.dumps({k: v for k, v in settings.items()
                                     if k.startswith(PREFIX)}),
        "NETSPARK_SECRET": secret,
        "NETSPARK_APP_ID": sc.applicationId,
        "NETSPARK_COORDINATOR": "{}:{}".format(*coordinator.address),
        "NETSPARK_LOCAL_ONLY": "1" if local else "",
    }
    sc.environment.update(environment)
    jvm_shuffles = settings.get("spark.shuffle.manager") == jvm.MANAGER_CLASS
    if jvm_shuffles:
        _configure_jvm(sc, {"python": sc.pythonExec, "env": environment})
    state = ShuffleState(sc, conf, coordinator, jvm_shuffles)
    sc._netspark = state
    shuffle.install()
    _attach_cleaner(sc, state)
    log.info("netspark: enabled for %s (transport=%s, localShortCircuit=%s, pool %d MiB, "
             "JVM shuffles %s)", sc.applicationId, conf.transport, conf.localShortCircuit,
             conf.buffer_poolSize >> 20, "too" if jvm_shuffles else "not")


def _configure_jvm(sc: Any, runtime: dict[str, Any] | None) -> None:
    """From now on (until None) the driver's JVM shuffle manager registers netspark shuffles:
    their handles carry `runtime` to the executors, which start or find their servers with
    it (netspark.spark.launch)."""
    sc._jvm.org.apache.spark.shuffle.netspark.NetsparkShuffleManager.configure(
        None if runtime is None else json.dumps(runtime))


def _executor_ids(sc: Any) -> set[str]:
    return set(filter(None, str(sc._jsc.sc().getExecutorIds().mkString(",")).split(",")))


def replace_executor(sc: Any, executor: str, timeout: float | None = None) -> None:
    """Has Spark kill `executor` and start another in its place; returns once Spark has
    removed it, and with it its map outputs (the next fetch of their handles fails, so
    Spark reruns those map tasks: its own recovery of lost shuffle output)."""
    if executor not in _executor_ids(sc):
        return  # already gone (or the driver itself, in local mode: nothing to replace)
    log.warning("netspark: asking Spark to replace executor %s so that its map outputs are "
                "recomputed", executor)
    from netspark.spark.coordinator import REPLACE_WAIT

    sc._jsc.sc().killAndReplaceExecutor(executor)
    deadline = time.monotonic() + (REPLACE_WAIT if timeout is None else timeout)
    while executor in _executor_ids(sc) and time.monotonic() < deadline:
        time.sleep(0.2)


def wrap_spark_context(context_class: type) -> None:
    """Wraps SparkContext so that contexts with the flag activate netspark."""
    if getattr(context_class, "_netspark_wrapped", False):
        return
    initialize_context = context_class._initialize_context
    do_init = context_class._do_init
    stop = context_class.stop

    def _initialize_context(self: Any, jconf: Any) -> Any:
        settings = dict(self._conf.getAll())
        try:
            self.__dict__["_netspark_plan"] = plan(settings)
        except (ConfigError, ActivationError):
            raise
        except Exception as err:
            if settings.get(PREFIX + "transport", "").strip().lower() == "rdma":
                raise ActivationError(f"netspark cannot run: {err}") from err
            log.warning("netspark: not activated, Spark's own shuffle stays: %s", err)
        chosen = self.__dict__.get("_netspark_plan")
        if chosen is not None:
            extra = dict(chosen.spark)
            if chosen.jar is not None:
                try:
                    _load_on_driver(self._jvm, chosen.jar)
                except Exception as err:
                    log.warning("netspark: the driver cannot load %s, JVM shuffles stay "
                                "Spark's own: %s", jvm.MANAGER_CLASS, err)
                    del extra["spark.shuffle.manager"], extra[jvm.DATA_IO_KEY]
            for key, value in extra.items():
                jconf.set(key, value)
        return initialize_context(self, jconf)

    def _do_init(self: Any, *args: Any, **kwargs: Any) -> None:
        do_init(self, *args, **kwargs)
        chosen = self.__dict__.pop("_netspark_plan", None)
        if chosen is not None:
            activate(self, chosen.conf)

    def _stop(self: Any) -> None:
        state = self.__dict__.get("_netspark")
        if state is not None:
            state.coordinator.stopping()  # executors ending now are not lost
        try:
            if state is not None and self._conf.get("spark.shuffle.manager") == jvm.MANAGER_CLASS:
                _configure_jvm(self, None)
            stop(self)
        finally:
            state = self.__dict__.pop("_netspark", None)
            if state is not None:
                state.stop()

    context_class._initialize_context = _initialize_context
    context_class._do_init = _do_init
    context_class.stop = _stop
    context_class._netspark_wrapped = True
