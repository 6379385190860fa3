"""The benchmarks' shared loop and output: rounds of interleaved modes, checked answers,
figures per mode, ratios to Spark's shuffle, JSON, a markdown table and plots.

A benchmark supplies `run_mode(sc, args) -> (answer, [JobFigures, ...])`: one
JobFigures per timed job (GroupBy has one; PageRank one per iteration), and an
answer that must agree with Spark's (`agree`, exact equality unless told otherwise).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sparkrun
from tqdm import tqdm

RunMode = Callable[[Any, argparse.Namespace], tuple[Any, list[sparkrun.JobFigures]]]
DEFAULT_MODES = ["spark", "netspark-naive", "netspark-tcp", "netspark-local", "netspark-rdma"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--master", default="local-cluster[2,1,2048]",
                        help="any Spark master (default: two local executors)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="comma-separated; RDMA modes are skipped without a device")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode, A B A B")
    parser.add_argument("--warmup", action="store_true",
                        help="one untimed round first (JIT, page cache, Python imports)")
    parser.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT-*.png")
    parser.add_argument("--hosts", type=int, default=0,
                        help="run on a Spark standalone cluster of this many network-"
                             "namespace hosts, one 1-core executor each (needs root; "
                             "cluster/netns.py), instead of --master")
    parser.add_argument("--link-rate", help="with --hosts: each host's link limited to this "
                                            "rate both ways (tc tbf), e.g. 10gbit")
    parser.add_argument("--executor-memory", default="2g", help="with --hosts")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="a Spark setting for every mode (repeatable)")


def extra_settings(args: argparse.Namespace) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in args.conf]
    if any(len(pair) != 2 or not pair[0].startswith("spark.") for pair in pairs):
        raise SystemExit("--conf takes spark.KEY=VALUE")
    return dict(pairs)


def where(args: argparse.Namespace) -> str:
    """Where the benchmark runs, for its title."""
    if not args.hosts:
        return args.master
    link = f", links limited to {args.link_rate}" if args.link_rate else ""
    return f"a standalone cluster of {args.hosts} hosts (network namespaces){link}"


@contextmanager
def cluster(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, str]]]:
    """(master, its spark settings): the --hosts cluster, started for the whole run."""
    if not args.hosts:
        if args.link_rate:
            raise SystemExit("--link-rate needs --hosts")
        yield args.master, {}
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cluster.netns import NetnsCluster, unavailable

    if why := unavailable():
        raise SystemExit(f"--hosts: {why}")
    with NetnsCluster(args.hosts, memory=args.executor_memory,
                      link_rate=args.link_rate) as running:
        settings = running.spark_settings()
        yield settings.pop("spark.master"), settings


def run_benchmark(name: str, title: str, args: argparse.Namespace, settings: dict[str, str],
                  run_mode: RunMode, agree: Callable[[Any, Any], bool] = lambda a, b: a == b,
                  extra: tuple[Callable[[dict[str, Any]], str],
                               Callable[[dict[str, Any], Path], list[Path]]] | None = None,
                  iterations: bool = True) -> int:
    """`extra`: a benchmark's own (table, plots) from the result, beside the common ones;
    `iterations`: whether the timed jobs are iterations of one computation (PageRank's)."""
    modes, skipped = sparkrun.choose_modes(args.modes.split(","))
    if "spark" not in modes:
        raise SystemExit("the modes must include spark: every figure is a ratio to it")
    print(title, file=sys.stderr)
    for mode, why in skipped.items():
        print(f"skipping {mode}: {why}", file=sys.stderr)
    modes = ["spark"] + [m for m in modes if m != "spark"]  # the reference answer first
    runs: dict[str, list[list[sparkrun.JobFigures]]] = {m: [] for m in modes}
    startups: dict[str, list[float]] = {m: [] for m in modes}
    reference: list[Any] = []
    rounds = [("warm-up", False)] * args.warmup + [(f"{r + 1}", True)
                                                    for r in range(args.rounds)]
    with tqdm(total=len(rounds) * len(modes), unit="run", file=sys.stderr) as progress, \
            cluster(args) as (master, cluster_settings):
        for label, timed in rounds:
            for mode in modes:
                progress.set_description(f"round {label}: {mode}")
                with sparkrun.spark_context(mode, master, {**settings, **cluster_settings,
                                                           **extra_settings(args)}) as sc:
                    startups[mode].append(sparkrun.startup_seconds(sc))
                    answer, jobs = run_mode(sc, args)
                reference = reference or [answer]
                if not agree(reference[0], answer):
                    raise SystemExit(f"ANSWERS DIFFER: {mode} in round {label} disagrees "
                                     "with Spark's shuffle")
                if timed:
                    runs[mode].append(jobs)
                progress.set_postfix_str(f"{mode} {sum(j.wall_s for j in jobs):.1f} s")
                progress.update()
    summary = {mode: {**summarize(rounds_of_mode), "startup_s": statistics.median(startups[mode])}
               for mode, rounds_of_mode in runs.items()}
    result = {"benchmark": name, "title": title, "command": command_line(),
              "machine": sparkrun.machine(), "when": time.strftime("%Y-%m-%d %H:%M"),
              "skipped": skipped, "summary": summary, "iterations": iterations,
              "runs": {m: [[asdict(j) for j in jobs] for jobs in r] for m, r in runs.items()}}
    table = markdown(result) + ("\n" + extra[0](result) if extra else "")
    print("\nanswers: every mode agrees with Spark's shuffle\n" + table)
    if args.out:
        write(result, table, args.out, extra[1] if extra else None)
    return 0


def summarize(rounds: list[list[sparkrun.JobFigures]]) -> dict[str, Any]:
    """A mode's figures over its rounds: medians of per-round figures, pooled task times."""
    reduce_tasks = [t for jobs in rounds for j in jobs for t in j.stages[-1].task_s]
    per_round = [_round_figures(jobs) for jobs in rounds]
    iterations = [[j.wall_s for j in jobs] for jobs in rounds]
    medians = {key: statistics.median(r[key] for r in per_round) for key in PER_ROUND}
    return {**medians, "reduce_task_s": _quartiles(reduce_tasks), "reduce_tasks": reduce_tasks,
            "iteration_s": [statistics.median(its) for its in zip(*iterations, strict=True)],
            "routes": per_round[-1]["routes"]}


BREAKDOWN = {  # where a task's time goes: per task, median of rounds
    "map_netspark_write_s": "map task: netspark write (pickle into blocks, crc32c, commit)",
    "map_jvm_write_s": "map task: JVM shuffle write (Spark's data; handles for netspark)",
    "reduce_netspark_read_s": "reduce task: netspark read (fetch wait, crc32c, unpickle)",
    "reduce_spark_fetch_wait_s": "reduce task: Spark's fetch wait (handles for netspark)",
}
PER_ROUND = ["job_s", "map_stage_s", "reduce_stage_s", "fetch_wait_per_task_s",
             "netspark_fetch_wait_per_task_s", *BREAKDOWN, "shuffle_share",
             "spilled_mib"]  # medians of rounds


def _round_figures(jobs: list[sparkrun.JobFigures]) -> dict[str, Any]:
    reduce = [j.stages[-1] for j in jobs]
    tasks = sum(len(s.task_s) for s in reduce)
    spark_wait = sum(sum(s.fetch_wait_s) for s in reduce) / tasks
    summaries = [c for j in jobs for c in j.netspark.values()]
    reduces = sum(c.get("reduces", 0) for c in summaries)
    ours = sum(c.get("fetch_wait_s", 0.0) for c in summaries) / reduces if reduces else 0.0
    maps = [s for j in jobs for s in j.stages[:-1]]
    map_tasks = sum(len(s.task_s) for s in maps) or 1
    n_maps = sum(c.get("maps", 0) for c in summaries) or 1
    routes: dict[str, int] = {}
    for c in summaries:
        for route, n in c.get("routes", {}).items():
            routes[route] = routes.get(route, 0) + n
    stages = [s for j in jobs for s in j.stages]
    shuffle_s = sum(sum(s.jvm_write_s) + sum(s.fetch_wait_s) for s in stages) + sum(
        c.get("write_s", 0.0) + c.get("fetch_wait_s", 0.0) for c in summaries)
    return {"job_s": sum(j.wall_s for j in jobs),
            "map_stage_s": sum(s.wall_s for j in jobs for s in j.stages[:-1]),
            "reduce_stage_s": sum(s.wall_s for s in reduce),
            "fetch_wait_per_task_s": spark_wait + ours, "netspark_fetch_wait_per_task_s": ours,
            "routes": routes,
            "map_netspark_write_s": sum(c.get("write_s", 0.0) for c in summaries) / n_maps,
            "map_jvm_write_s": sum(sum(s.jvm_write_s) for s in maps) / map_tasks,
            "reduce_netspark_read_s": (sum(c.get("read_s", 0.0) for c in summaries) / reduces
                                       if reduces else 0.0),
            "reduce_spark_fetch_wait_s": spark_wait,
            "shuffle_share": shuffle_s / (sum(sum(s.task_s) for s in stages) or 1),
            "spilled_mib": sum(s.disk_spilled_bytes for j in jobs for s in j.stages) / 2**20}


def _quartiles(values: list[float]) -> dict[str, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"min": min(values), "p25": q1, "p50": q2, "p75": q3, "max": max(values)}


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [_repo_relative(sys.argv[0]),
                                                         *sys.argv[1:]])


def _repo_relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return path


def markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    base = summary["spark"]
    rows = [("whole job (median of rounds)", "job_s"),
            ("map stage", "map_stage_s"), ("reduce stage", "reduce_stage_s"),
            ("reduce task, median", None), ("fetch wait per reduce task, mean", "fetch")]
    if result.get("iterations", True) and len(base["iteration_s"]) > 1:
        rows = [("median iteration", "iteration")] + rows

    def value(s: dict[str, Any], key: str | None) -> float:
        if key is None:
            return s["reduce_task_s"]["p50"]
        if key == "fetch":
            return s["fetch_wait_per_task_s"]
        if key == "iteration":
            return statistics.median(s["iteration_s"])
        return s[key]

    modes = list(summary)
    head = "| figure | " + " | ".join(modes) + " |\n|---|" + "---|" * len(modes) + "\n"
    lines = []
    for label, key in rows:
        cells = []
        for mode in modes:
            v = value(summary[mode], key)
            ratio = "" if mode == "spark" or not value(base, key) else \
                f" ({v / value(base, key):.2f}x)"
            cells.append(f"{v:.3f} s{ratio}" if key == "fetch" else f"{v:.2f} s{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| start-up: executors, Python daemons (and netspark servers) | " + " | ".join(
        f"{summary[m]['startup_s']:.1f} s" for m in modes) + " |")
    lines += [f"| {label} | " + " | ".join(f"{summary[m][key]:.3f} s" for m in modes) + " |"
              for key, label in BREAKDOWN.items()
              if any(summary[m][key] for m in modes)]  # JVM-only jobs have no Python part
    if not any(summary[m]["map_netspark_write_s"] for m in modes):  # JVM-only jobs: the
        # same parts in every mode (a Python job's netspark write includes its pickling)
        lines.append("| shuffle write + fetch wait, share of all tasks' time | " + " | ".join(
            f"{summary[m]['shuffle_share']:.1%}" for m in modes) + " |")
    lines.append("| PySpark's spills to disk, all tasks | " + " | ".join(
        f"{summary[m]['spilled_mib']:.0f} MiB" for m in modes) + " |")
    routes = "; ".join(f"{m}: " + (", ".join(f"{r} {n}" for r, n in sorted(s["routes"].items()))
                                   or ("Spark's shuffle" if not sparkrun.runs_netspark(m) else
                                       "not counted (JVM shuffles keep no summary)"))
                       for m, s in summary.items())
    skipped = "".join(f"\n- {m} not run: {why}" for m, why in result["skipped"].items())
    return (f"{result['title']}\n\n```\n{result['command']}\n```\n\n{head}"
            + "\n".join(lines) + f"\n\nRatios are to `spark`, measured in the same run. "
            f"Fetches by route: {routes}.{skipped}\n")


def write(result: dict[str, Any], table: str, out: Path,
          draw: Callable[[dict[str, Any], Path], list[Path]] | None = None) -> None:
    import plots

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    images = plots.draw(result, out) + (draw(result, out) if draw else [])
    links = "".join(f"\n![{p.stem}]({p.name})" for p in images)
    m = result["machine"]
    out.with_suffix(".md").write_text(
        table + f"\nMachine: {m['cpus']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python "
        f"{m['python']}, PySpark {m['pyspark']}, {result['when']}.\n{links}\n")
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}, "
          + ", ".join(str(p) for p in images), file=sys.stderr)
