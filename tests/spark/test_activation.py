"""The one flag, given every way Spark takes settings, reaching an unchanged program;
settings netspark cannot live with are refused by name; dropped shuffles are freed."""

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from netspark.buffer_manager import Arena
from tests.spark.conftest import spark_context

pytestmark = pytest.mark.slow
pyspark = pytest.importorskip("pyspark")
SPARK_HOME = Path(pyspark.__file__).parent
ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").getOrCreate()
sc = spark.sparkContext
assert sorted(sc.parallelize(range(100), 3).map(lambda i: (i % 7, i))
              .reduceByKey(lambda a, b: a + b).collect())[0] == (0, 735)
print("NETSPARK", getattr(sc, "_netspark", None) is not None)
spark.stop()
"""


def run_program(tmp_path: Path, *, args: tuple = (), env: dict | None = None,
                submit: bool = False) -> str:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(PROGRAM))
    command = ([str(SPARK_HOME / "bin" / "spark-submit"), *args, str(script)] if submit
               else [sys.executable, str(script)])
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable,
                              "PYSPARK_DRIVER_PYTHON": sys.executable, **(env or {})})
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_spark_submit_conf(tmp_path):
    out = run_program(tmp_path, submit=True, args=("--conf", "spark.netspark.enabled=true"))
    assert "NETSPARK True" in out


def test_spark_defaults_conf(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.netspark.enabled true\n")
    assert "NETSPARK True" in run_program(tmp_path, env={"SPARK_CONF_DIR": str(conf_dir)})


def test_pyspark_submit_args(tmp_path):
    env = {"PYSPARK_SUBMIT_ARGS": "--conf spark.netspark.enabled=true pyspark-shell"}
    assert "NETSPARK True" in run_program(tmp_path, env=env)


def test_builder_config(tmp_path):
    program = PROGRAM.replace('.master("local[2]")',
                              '.master("local[2]").config("spark.netspark.enabled", "true")')
    script = tmp_path / "builder.py"
    script.write_text(textwrap.dedent(program))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert "NETSPARK True" in run.stdout, run.stderr[-3000:]


def test_without_the_flag_nothing_changes(tmp_path):
    assert "NETSPARK False" in run_program(tmp_path)


def test_the_external_shuffle_service_is_refused_by_name(caplog):
    with spark_context(**{"netspark.enabled": "true", "shuffle.service.enabled": "true",
                          "master": "local[2]"}) as sc:
        assert getattr(sc, "_netspark", None) is None
    assert "spark.shuffle.service.enabled=true" in caplog.text


def test_a_bad_value_stops_the_context_naming_the_key():
    from netspark.config import ConfigError

    with pytest.raises(ConfigError, match="spark.netspark.buffer.poolSize"), \
            spark_context(**{"netspark.enabled": "true", "netspark.buffer.poolSize": "lots",
                             "master": "local[1]"}):
        pass


def test_a_dropped_shuffle_is_freed_on_every_server():
    with spark_context(**{"netspark.enabled": "true"}) as sc:
        rdd = sc.parallelize(range(50_000), 4).map(lambda i: (i % 100, i)).groupByKey()
        assert rdd.count() == 100
        arenas = [Arena.attach(s["arena_path"]) for s in sc._netspark.coordinator.servers]
        held = sum(a.stats().leased_blocks for a in arenas)
        assert held > 0
        del rdd
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            gc.collect()
            sc._jvm.System.gc()
            if sum(a.stats().leased_blocks for a in arenas) < held:
                break
            time.sleep(1)
        assert sum(a.stats().leased_blocks for a in arenas) < held, "nothing was freed"
        for arena in arenas:
            arena.close()
