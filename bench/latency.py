"""Small interactive jobs, netspark against Spark's own shuffle: p50 and p99 per job.

    python bench/latency.py --jobs 30 --rounds 3 --out docs/results/latency

N (int key, int value) records are generated and cached, untimed, in P partitions.
Each context then runs `--jobs` pairs of small jobs, one after the other:
`one-shuffle` is `reduceByKey(add).collect()`, `two-shuffles` is
`reduceByKey(add).map(regroup).groupByKey().collect()`. Every job's answer is
checked against Spark's. Modes alternate context by context, round after round.
The figures are each job's wall time (p50, p99) and, for the small reduce tasks,
where their time goes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from operator import add
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import sparkrun  # noqa: E402

KINDS = ("one-shuffle", "two-shuffles")


def regroup(pair: tuple[int, int]) -> tuple[int, int]:
    key, total = pair
    return key % 97, total


def run_mode(sc: Any, args: argparse.Namespace) -> tuple[Any, list[sparkrun.JobFigures]]:
    parts = args.partitions
    data = sc.parallelize(range(args.records), parts).map(
        lambda i: (i * 7919 % args.keys, i)).cache()
    data.count()  # generate and cache, untimed
    answers: dict[str, Any] = {}
    jobs = []
    for _ in range(args.jobs):
        for kind in KINDS:
            def action(kind: str = kind) -> Any:
                sums = data.reduceByKey(add, parts)
                if kind == "one-shuffle":
                    return sorted(sums.collect())
                return sorted((k, sorted(v)) for k, v in
                              sums.map(regroup).groupByKey(parts).collect())

            answer, figures = sparkrun.timed_job(sc, kind, action)
            if answers.setdefault(kind, answer) != answer:
                raise SystemExit(f"{kind} gave two different answers in one context")
            jobs.append(figures)
    data.unpersist()
    return answers, jobs


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p99": cuts[98]}


def latency_table(result: dict[str, Any]) -> str:
    """p50 and p99 of each kind of job, and where a reduce task's time goes, per mode."""
    modes = list(result["runs"])
    per_mode = {m: _job_times(result["runs"][m]) for m in modes}
    lines = ["| job | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for kind in KINDS:
        for cut in ("p50", "p99"):
            base = percentiles(per_mode["spark"][kind])[cut]
            cells = []
            for m in modes:
                v = percentiles(per_mode[m][kind])[cut]
                cells.append(f"{v * 1000:.0f} ms" + ("" if m == "spark" else
                                                     f" ({v / base:.2f}x)"))
            lines.append(f"| {kind}, {cut} | " + " | ".join(cells) + " |")
    for label, key in TASK_PARTS:
        lines.append(f"| reduce task: {label} | " + " | ".join(
            f"{reduce_task_parts(result['runs'][m])[key] * 1000:.1f} ms" for m in modes) + " |")
    return "\n".join(lines) + "\n"


TASK_PARTS = [("whole task, mean", "task_s"),
              ("Spark's fetch wait (handles, for netspark)", "spark_wait_s"),
              ("netspark fetch wait", "netspark_wait_s"),
              ("netspark read besides its wait", "netspark_read_s")]


def _job_times(rounds: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for jobs in rounds:
        for i, job in enumerate(jobs):
            times[KINDS[i % len(KINDS)]].append(job["wall_s"])
    return times


def reduce_task_parts(rounds: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Means per reduce task (every stage that read a shuffle) over all jobs."""
    tasks = wait = ours_wait = ours_read = 0.0
    count = reduces = 0
    for jobs in rounds:
        for job in jobs:
            for stage in job["stages"][1:]:  # the first stage of a job reads the cache
                tasks += sum(stage["task_s"])
                wait += sum(stage["fetch_wait_s"])
                count += len(stage["task_s"])
            for summary in job["netspark"].values():
                reduces += summary.get("reduces", 0)
                ours_wait += summary.get("fetch_wait_s", 0.0)
                ours_read += summary.get("read_s", 0.0)
    count, reduces = max(count, 1), max(reduces, 1)
    return {"task_s": tasks / count, "spark_wait_s": wait / count,
            "netspark_wait_s": ours_wait / reduces,
            "netspark_read_s": (ours_read - ours_wait) / reduces}


def draw(result: dict[str, Any], out: Path) -> list[Path]:
    import plots

    modes = list(result["runs"])
    fig, (left, right) = plots.plt.subplots(1, 2, figsize=(4 + 2.4 * len(modes), 4))
    for offset, kind in enumerate(KINDS):
        series = [_job_times(result["runs"][m])[kind] for m in modes]
        positions = [i * 3 + offset for i in range(len(modes))]
        left.boxplot([[t * 1000 for t in s] for s in series], positions=positions,
                     whis=(1, 99), widths=0.8)
    left.set_xticks([i * 3 + 0.5 for i in range(len(modes))], modes, rotation=20, ha="right")
    left.set_ylabel("job wall time (ms); whiskers p1-p99")
    left.set_title(f"left box: {KINDS[0]}, right box: {KINDS[1]}")
    parts = {m: reduce_task_parts(result["runs"][m]) for m in modes}
    bottom = [0.0] * len(modes)
    for label, key in TASK_PARTS[1:]:
        heights = [parts[m][key] * 1000 for m in modes]
        right.bar(modes, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    rest = [parts[m]["task_s"] * 1000 - b for m, b in zip(modes, bottom, strict=True)]
    right.bar(modes, rest, bottom=bottom, label="the rest: the task's own work, PySpark, JVM")
    right.set_xticks(range(len(modes)), modes, rotation=20, ha="right")
    right.set_ylim(top=1.6 * max(parts[m]["task_s"] * 1000 for m in modes))  # room: legend
    right.set_ylabel("mean per reduce task (ms)")
    right.set_title("where a small reduce task's time goes")
    right.legend(fontsize="small")
    return [plots._save(fig, out, "jobs")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=30, help="pairs of jobs per context")
    report.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.records, args.keys, args.partitions, args.jobs) < 1:
        parser.error("--records, --keys, --partitions and --jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title = (f"Small jobs on {args.records:,} cached (int, int) records, {args.partitions} "
             f"partitions, {args.jobs} of each kind per context, {report.where(args)}")
    settings = {"spark.default.parallelism": str(args.partitions)}
    return report.run_benchmark("latency", title, args, settings, run_mode,
                                extra=(latency_table, draw), iterations=False)


if __name__ == "__main__":
    sys.exit(main())
