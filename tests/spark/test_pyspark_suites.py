"""PySpark's own RDD test suites, shipped inside pyspark.zip, run with the flag on.

They create their own contexts (local[4]); the flag reaches them the way it would
reach any unchanged program: PYSPARK_SUBMIT_ARGS. `python/test_support/`, which
three of test_rdd's tests read, is not shipped: a SPARK_HOME overlay supplies the
one file they need, with the text they expect.
"""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pyspark = pytest.importorskip("pyspark")
SPARK_HOME = Path(pyspark.__file__).parent


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyspark-suites")
    with zipfile.ZipFile(SPARK_HOME / "python" / "lib" / "pyspark.zip") as zipped:
        zipped.extractall(root / "src", [n for n in zipped.namelist()
                                         if n.startswith("pyspark/")])
    home = root / "spark-home"
    home.mkdir()
    for entry in SPARK_HOME.iterdir():
        if entry.name != "python":
            (home / entry.name).symlink_to(entry)
    (home / "python").mkdir()
    for entry in (SPARK_HOME / "python").iterdir():
        (home / "python" / entry.name).symlink_to(entry)
    hello = home / "python" / "test_support" / "hello" / "hello.txt"
    hello.parent.mkdir(parents=True)
    hello.write_text("Hello World!\n")
    return root / "src", home


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["test_shuffle", "test_join", "test_rdd"])
def test_pyspark_suite_passes_with_netspark_on(suites, suite):
    src, home = suites
    env = {**os.environ, "SPARK_HOME": str(home), "PYTHONPATH": str(src),
           "SPARK_TESTING": "1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_SUBMIT_ARGS": "--conf spark.netspark.enabled=true pyspark-shell"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "log_cli=true",
         "--log-cli-level=INFO", str(src / "pyspark" / "tests" / f"{suite}.py")],
        env=env, cwd=src, capture_output=True, text=True, timeout=900,
    )
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert "netspark: enabled for" in run.stdout, "netspark did not activate"
    assert re.search(r"executor server at \S+ joined", run.stdout), tail
    assert re.search(r"\d+ passed", tail)
