"""What the .pth hook costs a program that imports PySpark without the flag.

    python bench/hook_cost.py [--runs 20]

Starts `python -c "import pyspark.core.context"` alternately with the hook on and
off (NETSPARK_HOOK=0) and compares the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def once(hook: bool) -> float:
    env = {**os.environ, "NETSPARK_HOOK": "1" if hook else "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pyspark.core.context"], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.runs):
        for hook in (False, True):
            times[hook].append(once(hook))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    spread = statistics.pstdev(times[False])
    print(f"| import pyspark.core.context | hook off | hook on | difference | run-to-run spread |\n"
          f"|---|---|---|---|---|\n"
          f"| median of {args.runs} | {off * 1e3:.0f} ms | {on * 1e3:.0f} ms | "
          f"{(on - off) * 1e3:+.0f} ms | {spread * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
