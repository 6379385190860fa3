"""Across hosts, flag on vs off: every shuffling RDD operation returns exactly what
Spark's own shuffle returns, with the same-host short-circuit on and off, and the
short-circuit is never taken between hosts."""

import pytest

from tests.multihost.conftest import HOSTS, cluster_context
from tests.spark.operations import OPERATIONS
from tests.spark.test_correctness import MODES, run

pytestmark = pytest.mark.timeout(1500)
ACROSS = ("spark", "netspark-local", "netspark-tcp")  # the JVM part on, as by default


@pytest.fixture(scope="module")
def results(cluster):
    out = {}
    for mode in ACROSS:
        with cluster_context(cluster, **MODES[mode]) as sc:
            out[mode] = {name: run(fn, sc) for name, fn in OPERATIONS.items()}
            state = getattr(sc, "_netspark", None)
            assert (state is not None) == (mode != "spark"), mode
            if state is not None:
                out[mode]["servers"] = state.coordinator.servers
                out[mode]["summaries"] = state.summaries()
    return out


@pytest.mark.parametrize("mode", ["netspark-local", "netspark-tcp"])
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_same_result_as_spark_across_hosts(results, mode, name):
    expected = results["spark"][name]
    assert not (isinstance(expected, str) and expected.startswith("raised")), expected
    assert results[mode][name] == expected


@pytest.mark.parametrize("mode", ["netspark-local", "netspark-tcp"])
def test_each_host_serves_at_its_own_address(results, mode, cluster):
    servers = results[mode]["servers"]
    assert sorted(s["host"] for s in servers) == sorted(h.address for h in cluster.hosts)
    assert len({s["host_key"] for s in servers}) == HOSTS  # three distinct hosts


def test_short_circuit_only_within_a_host(results):
    """One executor a host: a reducer may read only its own server in place; every
    other server is on another host and must be fetched over TCP."""
    summaries = results["netspark-local"]["summaries"]
    crossed = 0
    for shuffle, counters in summaries.items():
        routes = counters["routes"]
        assert routes.get("local", 0) <= counters["reduces"], (shuffle, counters)
        crossed += routes.get("tcp", 0)
    assert crossed > 0


def test_no_short_circuit_when_it_is_off(results):
    summaries = results["netspark-tcp"]["summaries"]
    assert summaries and all("local" not in c["routes"] for c in summaries.values())
    assert sum(c["routes"].get("tcp", 0) for c in summaries.values()) > 0
