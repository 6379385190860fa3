"""Running one benchmark job per mode on a local Spark cluster, and what Spark says of it.

A mode is a set of `spark.*` settings: Spark's own shuffle, or netspark over one of
its routes. Each (round, mode) gets a fresh SparkContext, because the flag takes
effect when a context starts; rounds interleave the modes (A B A B) so that the
machine's drift falls on all of them alike. Task times and Spark's fetch-wait
metric come from Spark's own status REST API (`/api/v1`), the same figures the
web UI shows.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark import SparkConf, SparkContext

NETSPARK = {"spark.netspark.enabled": "true"}
MODES: dict[str, dict[str, str]] = {
    "spark": {"spark.netspark.enabled": "false"},
    "netspark-naive": {**NETSPARK, "spark.netspark.transport": "rdma",
                       "spark.netspark.rdma.naive": "true",
                       "spark.netspark.localShortCircuit": "false"},
    "netspark-tcp": {**NETSPARK, "spark.netspark.transport": "tcp",
                     "spark.netspark.localShortCircuit": "false"},
    "netspark-local": {**NETSPARK, "spark.netspark.localShortCircuit": "true"},
    # JVM shuffles left Spark's own: the RDD path's handles then go through Spark's shuffle
    "netspark-local-nojvm": {**NETSPARK, "spark.netspark.localShortCircuit": "true",
                             "spark.netspark.jvm": "false"},
    # the reduce side's gc.freeze of what it has read turned off (netspark/spark/collector.py)
    "netspark-local-nofreeze": {**NETSPARK, "spark.netspark.localShortCircuit": "true",
                                "spark.netspark.reader.freezeGc": "false"},
    # Python workers left to delay their acknowledgements (netspark/spark/quickack.py)
    "netspark-local-delayedack": {**NETSPARK, "spark.netspark.localShortCircuit": "true",
                                  "spark.netspark.worker.quickAck": "false"},
    # Spark's own shuffle, its Python workers reached over Unix sockets (no TCP, so no
    # delayed acknowledgements either): Spark's own setting, off by default
    "spark-unixsockets": {"spark.netspark.enabled": "false",
                          "spark.python.unix.domain.socket.enabled": "true"},
    "netspark-rdma": {**NETSPARK, "spark.netspark.transport": "rdma",
                      "spark.netspark.localShortCircuit": "false"},
}
NEEDS_RDMA = ("netspark-naive", "netspark-rdma")


def runs_netspark(mode: str) -> bool:
    """Whether `mode` turns netspark on (the others are Spark's own shuffle)."""
    return mode.startswith("netspark")


def rdma_device() -> str | None:
    """The first RDMA device this host has, if netspark was built with RDMA support."""
    from netspark.transport import rdma

    devices = sorted(os.listdir("/sys/class/infiniband")) \
        if os.path.isdir("/sys/class/infiniband") else []
    return devices[0] if devices and rdma.built() else None


def choose_modes(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The modes that can run here, and why the others cannot."""
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    device = rdma_device()
    skipped = {m: "no RDMA device on this host (run it inside the soft-RoCE VM)"
               for m in wanted if m in NEEDS_RDMA and device is None}
    return [m for m in wanted if m not in skipped], skipped


@dataclass
class StageFigures:
    """One stage of a timed job, as Spark's status API reports it."""

    stage_id: int
    name: str
    wall_s: float  # from the first task's launch to the last one's end
    task_s: list[float]  # each successful task's duration
    fetch_wait_s: list[float]  # Spark's fetch-wait metric per task (its own shuffle)
    jvm_write_s: list[float]  # Spark's shuffle write time per task (in the JVM)
    shuffle_read_bytes: int
    shuffle_write_bytes: int
    disk_spilled_bytes: int  # by PySpark's external merger/sorter, when over its memory
    task_hosts: list[str] = field(default_factory=list)  # where each task ran


@dataclass
class JobFigures:
    wall_s: float
    stages: list[StageFigures]
    netspark: dict[int, dict[str, Any]] = field(default_factory=dict)  # per-shuffle summaries


@contextmanager
def spark_context(mode: str, master: str, settings: dict[str, str]) -> Iterator[SparkContext]:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    SparkContext._ensure_initialized()  # launch the JVM neutral: modes must not leak
    conf = (SparkConf().setMaster(master).setAppName(f"netspark-bench-{mode}")
            .set("spark.ui.enabled", "true").set("spark.ui.port", "0")
            .set("spark.ui.showConsoleProgress", "false")
            .set("spark.python.worker.reuse", "true"))
    for key, value in {**settings, **MODES[mode]}.items():
        conf.set(key, value)
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        active = getattr(sc, "_netspark", None) is not None
        if active != runs_netspark(mode):
            raise RuntimeError(f"mode {mode}: netspark is {'on' if active else 'off'}")
        yield sc
    finally:
        sc.stop()


def startup_seconds(sc: SparkContext) -> float:
    """From the context's creation until every executor has run a Python task, which
    starts its Python daemon (and, with netspark, the executor's server)."""
    executors = _expected_executors(sc)
    deadline = time.monotonic() + 120
    while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < executors:  # minus the driver
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {executors} executors registered in 120 s")
        time.sleep(0.05)
    sc.parallelize(range(2 * executors), 2 * executors).map(lambda x: x).count()
    return time.time() - sc.startTime / 1000


def _expected_executors(sc: SparkContext) -> int:
    master = sc.master
    if master.startswith("local-cluster["):
        return int(master.split("[", 1)[1].split(",", 1)[0])
    return max(1, int(sc.getConf().get("spark.executor.instances", "2")))


def _rest(sc: SparkContext, path: str) -> Any:
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/{path}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def _settled(sc: SparkContext, path: str, ready: Callable[[Any], bool]) -> Any:
    """The status API's answer at `path` once `ready` holds of it: the status store is fed
    by Spark's listener bus, a moment behind a job's end."""
    for _ in range(100):
        answer = _rest(sc, path)
        if ready(answer):
            return answer
        time.sleep(0.1)
    raise RuntimeError(f"{path} never reported completion")


def _stage(sc: SparkContext, stage_id: int, tasks_expected: int) -> StageFigures:
    def complete(attempts: list[dict[str, Any]]) -> bool:
        done = [a for a in attempts if a["status"] == "COMPLETE"]
        return bool(done) and done[-1]["numCompleteTasks"] >= tasks_expected

    attempts = _settled(sc, f"stages/{stage_id}", complete)
    stage = [a for a in attempts if a["status"] == "COMPLETE"][-1]
    tasks = _rest(sc, f"stages/{stage_id}/{stage['attemptId']}/taskList?length=100000")
    ok = [t for t in tasks if t["status"] == "SUCCESS"]
    starts = [_epoch(t["launchTime"]) for t in ok]
    ends = [s + t["duration"] / 1000 for s, t in zip(starts, ok, strict=True)]
    return StageFigures(
        stage_id, stage["name"], max(ends) - min(starts), [t["duration"] / 1000 for t in ok],
        [t["taskMetrics"]["shuffleReadMetrics"]["fetchWaitTime"] / 1000 for t in ok],
        [t["taskMetrics"]["shuffleWriteMetrics"]["writeTime"] / 1e9 for t in ok],
        stage["shuffleReadBytes"], stage["shuffleWriteBytes"], stage["diskBytesSpilled"],
        [t["host"] for t in ok])


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def timed_job(sc: SparkContext, name: str, action: Callable[[], Any]) -> tuple[Any, JobFigures]:
    """Runs `action` (one or more Spark jobs) and returns its result and figures."""
    result, wall, jobs, grown = _in_group(sc, name, action)
    stages = [stage for job in jobs for stage in _stages(sc, job)]
    return result, JobFigures(wall, stages, grown)


def timed_jobs(sc: SparkContext, name: str,
               action: Callable[[], Any]) -> tuple[Any, list[JobFigures]]:
    """Runs `action` and returns its result and the figures of each Spark job it ran, with
    that job's own wall time (for computations such as GraphX's PageRank, which runs one
    job an iteration). netspark's per-shuffle summaries go with the first job."""
    result, _, jobs, grown = _in_group(sc, name, action)
    figures = []
    for job in jobs:
        info = _settled(sc, f"jobs/{job}", lambda answer: "completionTime" in answer)
        wall = _epoch(info["completionTime"]) - _epoch(info["submissionTime"])
        figures.append(JobFigures(wall, _stages(sc, job), grown if not figures else {}))
    return result, figures


def _in_group(sc: SparkContext, name: str, action: Callable[[], Any]
              ) -> tuple[Any, float, list[int], dict[int, dict[str, Any]]]:
    """`action`'s result and wall time, the Spark jobs it ran, netspark's summaries' growth."""
    group = f"bench-{name}-{time.monotonic_ns()}"
    sc.setJobGroup(group, name)
    before = {k: dict(v) for k, v in _netspark_summaries(sc).items()}
    start = time.perf_counter()
    try:
        result = action()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    wall = time.perf_counter() - start
    after = _netspark_summaries(sc)
    grown = {s: _minus(c, before.get(s)) for s, c in after.items() if c != before.get(s)}
    return result, wall, sorted(sc.statusTracker().getJobIdsForGroup(group)), grown


def _stages(sc: SparkContext, job: int) -> list[StageFigures]:
    """The stages of `job` that ran (those skipped, their output reused, are left out)."""
    tracker = sc.statusTracker()
    stages = []
    for stage_id in sorted(tracker.getJobInfo(job).stageIds):
        stage = tracker.getStageInfo(stage_id)
        if stage is not None and stage.numTasks and stage.numCompletedTasks:
            stages.append(_stage(sc, stage_id, stage.numTasks))
    return stages


def _netspark_summaries(sc: SparkContext) -> dict[int, dict[str, Any]]:
    state = getattr(sc, "_netspark", None)
    return {} if state is None else state.summaries()


def _minus(now: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    if before is None:
        return dict(now)
    return {k: (v - before.get(k, 0) if isinstance(v, int | float) else v) for k, v in now.items()}


def machine() -> dict[str, Any]:
    """What the figures came from (they are ratios; this says on what)."""
    import platform

    import pyspark

    cpus = os.cpu_count()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.machine())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) >> 20
    return {"cpus": cpus, "cpu": model, "memory_gib": memory, "python": platform.python_version(),
            "pyspark": pyspark.__version__, "kernel": platform.release()}
