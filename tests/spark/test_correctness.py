"""Flag on vs off: every shuffling RDD operation returns exactly the same, with the
same-host short-circuit on and off, on a local cluster of two executors."""

import pytest

from tests.spark.conftest import spark_context
from tests.spark.operations import OPERATIONS

# The module's fixture runs every operation on four clusters in turn (about 6 minutes
# here, the 1000-partition one the longest): more than the default per-test timeout.
pytestmark = pytest.mark.timeout(1200)

MODES = {
    "spark": {},
    "netspark-local": {"netspark.enabled": "true"},
    "netspark-tcp": {"netspark.enabled": "true", "netspark.localShortCircuit": "false"},
    # JVM shuffles left Spark's own: the handles go through Spark's sort shuffle
    "netspark-nojvm": {"netspark.enabled": "true", "netspark.jvm": "false"},
}
NETSPARK_MODES = [mode for mode in MODES if mode != "spark"]


@pytest.fixture(scope="module")
def results():
    """Each mode's results, one cluster at a time (never two at once on 2 cores)."""
    out = {}
    for mode, settings in MODES.items():
        with spark_context(**settings) as sc:
            active = getattr(sc, "_netspark", None)
            assert (active is not None) == ("netspark.enabled" in settings), mode
            out[mode] = {name: run(fn, sc) for name, fn in OPERATIONS.items()}
            if active is not None:
                out[mode]["servers"] = len(active.coordinator.servers)
    return out


def run(fn, sc):
    try:
        return fn(sc)
    except Exception as err:  # recorded, so one failure does not hide the others
        return f"raised {type(err).__name__}: {str(err)[:2000]}"


@pytest.mark.slow
@pytest.mark.parametrize("mode", NETSPARK_MODES)
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_same_result_as_spark(results, mode, name):
    expected = results["spark"][name]
    assert not (isinstance(expected, str) and expected.startswith("raised")), expected
    assert results[mode][name] == expected


@pytest.mark.slow
@pytest.mark.parametrize("mode", NETSPARK_MODES)
def test_every_executor_ran_a_server(results, mode):
    assert results[mode]["servers"] == 2
