"""The map side buckets records exactly as PySpark's partitionBy would."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyspark.core.rdd import portable_hash

from netspark.spark.tasks import partition_index

scalars = st.one_of(st.none(), st.integers(), st.text(), st.binary(), st.booleans(),
                    st.floats(allow_nan=False))
keys = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=6)


@pytest.fixture(autouse=True)
def hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # as Spark sets it for its workers


@given(key=keys, partitions=st.integers(1, 2000))
def test_default_partitioning_is_portable_hash_mod_n(key, partitions):
    assert partition_index(portable_hash, partitions)(key) == portable_hash(key) % partitions


def test_numpy_keys_and_a_custom_function():
    for key in (np.int64(-3), np.float64(2.5), np.str_("x")):
        assert partition_index(portable_hash, 7)(key) == portable_hash(key) % 7
    assert partition_index(lambda k: -k, 5)(3) == 2  # Python's modulo, as PySpark's


def test_without_pythonhashseed_pyspark_s_own_error(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with pytest.raises(Exception, match="PYTHON_HASH_SEED_NOT_SET"):
        partition_index(portable_hash, 4)
