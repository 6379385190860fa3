"""Per-shuffle figures, gathered from the tasks through a PySpark accumulator.

Map tasks report what they wrote, reduce tasks what they read, how long they waited
for data and over which transport. On the driver, when every reduce partition of
a shuffle has reported, one summary line goes to the log at INFO; `summaries()` is
the same in machine-readable form (the benchmarks read it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pyspark.accumulators import AccumulatorParam

log = logging.getLogger("netspark")

COUNTERS = ("maps", "map_bytes", "records", "blocks", "reduces", "fetched_bytes",
            "fetch_wait_s", "cloudpickled_batches", "write_s", "read_s")


def empty() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTERS, 0), "routes": {}}


def merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    for key in COUNTERS:
        into[key] += more.get(key, 0)
    for route, count in more.get("routes", {}).items():
        into["routes"][route] = into["routes"].get(route, 0) + count
    return into


class ShuffleMetrics(AccumulatorParam):
    """Values are {shuffle id: counters}. The instance on the driver also logs."""

    def __init__(self) -> None:
        self.partitions: dict[int, int] = {}  # reduce partitions of each shuffle
        self._logged: dict[int, int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # tasks only merge; the driver's bookkeeping stays on the driver

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def zero(self, value: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {}

    def addInPlace(self, value: dict[int, dict[str, Any]],  # noqa: N802 (PySpark's name)
                   update: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        for shuffle, counters in update.items():
            merge(value.setdefault(shuffle, empty()), counters)
            self._maybe_log(shuffle, value[shuffle])
        return value

    def _maybe_log(self, shuffle: int, counters: dict[str, Any]) -> None:
        expected = self.partitions.get(shuffle)
        if not expected or counters["reduces"] % expected:
            return
        with self._lock:
            if self._logged.get(shuffle) == counters["reduces"]:
                return
            self._logged[shuffle] = counters["reduces"]
        log.info("netspark: %s", describe(shuffle, counters))


def describe(shuffle: int, c: dict[str, Any]) -> str:
    routes = ", ".join(f"{route} {n}" for route, n in sorted(c["routes"].items())) or "none"
    return (f"shuffle {shuffle}: {c['maps']} map outputs, {c['map_bytes'] / 2**20:.1f} MiB in "
            f"{c['blocks']} blocks, {c['records']} records; {c['reduces']} reduce reads of "
            f"{c['fetched_bytes'] / 2**20:.1f} MiB, fetch wait {c['fetch_wait_s']:.2f} s, "
            f"fetches by route: {routes}")
