"""The JVM part of netspark: a Spark ShuffleManager (Java sources in the repository's
`jvm/`), compiled at set-up against the jars of the installed pyspark into
`netspark-shuffle.jar` next to this file (`python -m netspark.jvm.build`).

Nothing here starts a JVM; `netspark.spark.activate` puts the jar on `spark.jars` and names
the manager in `spark.shuffle.manager` unless `spark.netspark.jvm=false`.
"""

from __future__ import annotations

from pathlib import Path

MANAGER_CLASS = "org.apache.spark.shuffle.netspark.NetsparkShuffleManager"
DATA_IO_CLASS = "org.apache.spark.shuffle.netspark.NetsparkDataIO"  # Spark's shuffle IO plugin
DATA_IO_KEY = "spark.shuffle.sort.io.plugin.class"
JAR = Path(__file__).resolve().parent / "netspark-shuffle.jar"
BUILD_COMMAND = "python -m netspark.jvm.build"


def jar_path() -> Path | None:
    """The built jar, or None when it has not been built (no JDK at set-up)."""
    return JAR if JAR.is_file() else None
