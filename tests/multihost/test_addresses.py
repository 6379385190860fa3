"""Address settings on a real cluster of hosts with the same interface name each, as
an operator writes them once in spark-defaults.conf for every host."""

import time

import pytest

from cluster.netns import NIC
from tests.multihost.conftest import cluster_context

pytestmark = pytest.mark.timeout(600)


def groupby(sc):
    return sorted(sc.parallelize(range(20_000), 6).map(lambda i: (i % 31, i))
                  .groupByKey().mapValues(sum).collect())


EXPECTED = sorted({k: sum(range(k, 20_000, 31)) for k in range(31)}.items())


def test_an_interface_name_a_port_range_and_all_interfaces(cluster):
    settings = {"netspark.enabled": "true", "netspark.advertiseAddress": NIC,
                "netspark.bindAddress": "0.0.0.0", "netspark.port": "47400-47402"}
    with cluster_context(cluster, **settings) as sc:
        assert groupby(sc) == EXPECTED
        servers = sc._netspark.coordinator.servers
    assert sorted(s["host"] for s in servers) == sorted(h.address for h in cluster.hosts)
    assert all(s["port"] == 47400 for s in servers)  # one executor a host: the first port


def test_an_interface_that_is_not_there_is_a_clear_error(cluster):
    with cluster_context(cluster, **{"netspark.enabled": "true", "task.maxFailures": "1",
                                     "netspark.advertiseAddress": "eth9"}) as sc, \
            pytest.raises(Exception) as raised:
        groupby(sc)
    message = str(raised.value)
    assert "did not start" in message
    assert "spark.netspark.advertiseAddress='eth9'" in message and NIC in message


def test_a_server_nobody_can_reach_is_named_within_the_timeouts(cluster):
    """Every server advertises an address no host has: reducers say which, and why."""
    settings = {"netspark.enabled": "true", "netspark.advertiseAddress": "10.213.7.250",
                "netspark.bindAddress": "0.0.0.0", "netspark.network.connectTimeout": "2s",
                "netspark.network.maxRetries": "1", "netspark.network.retryWait": "100ms",
                "task.maxFailures": "2"}
    with cluster_context(cluster, **settings) as sc:
        start = time.monotonic()
        with pytest.raises(Exception) as raised:
            groupby(sc)
        took = time.monotonic() - start
    message = str(raised.value)
    assert "the server at 10.213.7.250:" in message and "cannot be reached" in message
    assert "spark.netspark.advertiseAddress" in message and "spark.netspark.port" in message
    assert took < 240
