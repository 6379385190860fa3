"""Compiles the repository's `jvm/` Java sources against the installed pyspark's jars and
packs them into `netspark/jvm/netspark-shuffle.jar`.

Run as `python -m netspark.jvm.build` (scripts/setup.sh does, after `pip install`). It does
nothing when the jar is newer than every source, and says in one line (exit status 2) when
there is no `javac`: netspark's RDD path works without the JVM part. No Maven: the jars in
the pyspark wheel are the whole classpath, so the classes match the Spark that loads them.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netspark.jvm import JAR

SOURCES = Path(__file__).resolve().parents[2] / "jvm" / "src" / "main" / "java"


class BuildError(RuntimeError):
    """The jar cannot be built here (no JDK, no pyspark, no sources, or javac failed)."""


def pyspark_jars() -> Path:
    """The `jars/` folder of the installed pyspark (found without importing pyspark)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("pyspark is not installed in this Python")
    for location in spec.submodule_search_locations:
        jars = Path(location) / "jars"
        if any(jars.glob("spark-core_*.jar")):
            return jars
    raise BuildError("this pyspark has no jars/ folder with spark-core (pyspark-client?)")


def java_sources(root: Path = SOURCES) -> list[Path]:
    if not root.is_dir():
        raise BuildError(f"no Java sources at {root} (the jar is built from a source checkout)")
    return sorted(root.rglob("*.java"))


def up_to_date(jar: Path = JAR, root: Path = SOURCES) -> bool:
    """Whether `jar` exists and is newer than every source and than the Spark it was built
    against (a pyspark upgrade rebuilds it)."""
    if not jar.is_file():
        return False
    built = jar.stat().st_mtime
    inputs = [*java_sources(root), *pyspark_jars().glob("spark-core_*.jar")]
    return all(path.stat().st_mtime <= built for path in inputs)


def build(jar: Path = JAR, root: Path = SOURCES, *, force: bool = False) -> bool:
    """Builds `jar` if it is missing or older than its sources; True if it was (re)built."""
    sources = java_sources(root)
    if not force and up_to_date(jar, root):
        return False
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar_tool is None:
        raise BuildError("no javac/jar on the PATH (Debian: apt-get install default-jdk-headless)")
    classpath = str(pyspark_jars() / "*")  # javac expands the wildcard itself
    with tempfile.TemporaryDirectory(prefix="netspark-jvm-") as out:
        compiled = subprocess.run(
            [javac, "--release", "17", "-Xlint:-path", "-cp", classpath, "-d", out,
             *map(str, sources)], capture_output=True, text=True)
        if compiled.returncode:
            raise BuildError("javac failed:\n" + (compiled.stderr or compiled.stdout).strip())
        partial = jar.with_suffix(".jar.tmp")
        packed = subprocess.run([jar_tool, "cf", str(partial), "-C", out, "."],
                                capture_output=True, text=True)
        if packed.returncode:
            partial.unlink(missing_ok=True)
            raise BuildError("jar failed:\n" + (packed.stderr or packed.stdout).strip())
        partial.replace(jar)  # a reader never sees half a jar
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netspark.jvm.build", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--out", type=Path, default=JAR, help=f"the jar to write ({JAR})")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        built = build(args.out, force=args.force)
    except BuildError as err:
        print(f"netspark: JVM shuffle manager not built: {err}", file=sys.stderr)
        return 2
    if built:
        print(f"netspark: built {args.out} in {time.monotonic() - start:.1f}s")
    else:
        print(f"netspark: {args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
