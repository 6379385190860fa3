from pathlib import Path

import pytest

from netspark.config import KEYS, ConfigError, NetsparkConf, example_file

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_parse():
    conf = NetsparkConf.from_spark({})
    assert conf.enabled is False
    assert conf.buffer_blockSize == 2 << 20
    assert conf.reducer_maxBytesInFlight == 48 << 20
    assert conf.buffer_idleTimeout == 30.0
    assert conf.transport == "auto"


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("buffer.blockSize", "3q", "not a size"),
        ("buffer.blockSize", "3m", "power of two"),
        ("transport", "infiniband", "auto, rdma, tcp"),
        ("enabled", "maybe", "boolean"),
        ("rdma.port", "0", "outside"),
        ("buffer.idleTimeout", "soon", "duration"),
        ("buffer.poolSize", "1m", "smaller than one slab"),
        ("reducer.maxBytesInFlight", "1k", "at least one block"),
    ],
)
def test_bad_value_names_the_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        NetsparkConf.from_spark({f"spark.netspark.{key}": value})
    assert f"spark.netspark.{key}" in str(err.value)
    assert words in str(err.value)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="spark.netspark.bufer.poolSize"):
        NetsparkConf.from_spark({"spark.netspark.bufer.poolSize": "1g"})


def test_other_spark_keys_are_ignored():
    assert NetsparkConf.from_spark({"spark.master": "local"}).enabled is False


def test_example_file_lists_every_key_with_its_default():
    text = (ROOT / "conf" / "spark-defaults.conf.example").read_text()
    assert text == example_file()
    for key in KEYS:
        assert f"spark.netspark.{key.name}" in text
