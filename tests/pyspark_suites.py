"""PySpark's own test suites, shipped inside pyspark.zip, unpacked to be run with the
flag on: by tests/spark (local contexts) and tests/multihost (a real cluster). Each
suite is named by its module's path under `pyspark/`.

`python/test_support/`, which three of test_rdd's tests read, is not shipped: a
SPARK_HOME overlay supplies the one file they need, with the text they expect. The
suites' `ReusedPySparkTestCase.master()` says "local[4]"; it is the hook PySpark
gives for another master, and a conftest.py beside the unpacked suites points it at
`$NETSPARK_TEST_MASTER` when that is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
SUITES = ["tests/test_shuffle", "tests/test_join", "tests/test_rdd"]
# The SQL suites whose tests shuffle in the JVM (with spark.netspark.jvm=true): grouping and
# aggregation, repartitioning, grouped and cogrouped pandas UDFs (an exchange, then Python).
# sql/tests/test_subquery (joins and aggregates under subqueries) passes too (105 s here),
# and is left out to keep CI within its hour.
SQL_SUITES = ["sql/tests/test_group", "sql/tests/test_repartition",
              "sql/tests/pandas/test_pandas_grouped_map",
              "sql/tests/pandas/test_pandas_cogrouped_map"]

MASTER_HOOK = '''
import os

if os.environ.get("NETSPARK_TEST_MASTER"):
    from pyspark.testing.utils import ReusedPySparkTestCase

    ReusedPySparkTestCase.master = classmethod(lambda cls: os.environ["NETSPARK_TEST_MASTER"])
'''


def unpack(root: Path) -> tuple[Path, Path]:
    """(the suites' source tree, a SPARK_HOME to run them with)."""
    with zipfile.ZipFile(SPARK_HOME / "python" / "lib" / "pyspark.zip") as zipped:
        zipped.extractall(root / "src", [n for n in zipped.namelist()
                                         if n.startswith("pyspark/")])
    (root / "src" / "conftest.py").write_text(MASTER_HOOK)
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


def run(src: Path, home: Path, suite: str, submit_args: str,
        env: dict[str, str] | None = None, timeout: float = 900,
        deselect: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    environ = {**os.environ, "SPARK_HOME": str(home), "PYTHONPATH": str(src),
               "SPARK_TESTING": "1", "PYSPARK_PYTHON": sys.executable,
               "PYSPARK_SUBMIT_ARGS": f"{submit_args} pyspark-shell", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "log_cli=true",
         "--log-cli-level=INFO", str(src / "pyspark" / f"{suite}.py"),
         *(f"--deselect=pyspark/{suite}.py::{test}" for test in deselect)],
        env=environ, cwd=src, capture_output=True, text=True, timeout=timeout)
